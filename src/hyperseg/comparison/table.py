"""The paper's quoted numbers and the markdown table of a benchmark run."""
from __future__ import annotations

LEVELS = ("1", "2", "3")

#: Hsu et al. 2021, NeurIPS submission, simple synthetic dataset (paper.md section 3):
#: Table 1 (prior approaches) and Table 2 (ablations). No +- was given.
PAPER_ROWS: list[tuple[str, tuple[float, float, float]]] = [
    ("3D U-Net (Cicek et al. 2016), semi-supervised", (0.968, 0.829, 0.668)),
    ("Zhao et al. 2019, semi-supervised", (0.989, 0.655, 0.357)),
    ("Nalepa et al. 2020, 3D conv autoencoder", (0.530, 0.276, 0.112)),
    ("IIC (Ji et al. 2019), 2D to 3D", (0.589, 0.291, 0.150)),
    ("Moriya et al. 2018", (0.628, 0.311, 0.141)),
    ("Euclidean base", (0.784, 0.322, 0.109)),
    ("Euclidean + triplet", (0.761, 0.342, 0.153)),
    ("hyperbolic base", (0.832, 0.352, 0.135)),
    ("hyperbolic + gyroplane conv", (0.905, 0.473, 0.204)),
    ("hyperbolic + triplet", (0.945, 0.534, 0.222)),
    ("hyperbolic + gyroplane conv + triplet", (0.952, 0.540, 0.216)),
]


def quoted_rows() -> list[dict]:
    """The paper's rows in the results.json row format, ``measured: False``."""
    return [{"dataset": "simple", "method": f"paper: {name}", "dice": dict(zip(LEVELS, vals)),
             "dice_std": {lvl: None for lvl in LEVELS}, "seconds": None, "peak_mb": None, "measured": False,
             "source": "Hsu et al. 2021 (NeurIPS submission), Tables 1-2, quoted"}
            for name, vals in PAPER_ROWS]


def _cell(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} +- {std:.3f}"


def format_table(rows: list[dict]) -> str:
    """Markdown, one table per dataset: method, Dice per level (mean +- std), seconds, peak MB."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        out += [f"### {dataset}", "",
                "| method | Dice L1 | Dice L2 | Dice L3 | seconds | peak MB | measured |",
                "|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["dataset"] == dataset):
            cells = [_cell(r["dice"].get(lvl), r["dice_std"].get(lvl)) for lvl in LEVELS]
            secs = "-" if r.get("seconds") is None else f"{r['seconds']:.0f}"
            mb = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
            out.append(f"| {r['method']} | {' | '.join(cells)} | {secs} | {mb} | "
                       f"{'yes' if r['measured'] else 'quoted'} |")
        out.append("")
    return "\n".join(out)
