"""Real-MRI benchmark: Colin27 degraded as a scanner would, every peer and hyperseg's default.

Data: Colin27 from the Debian package ``mricron-data`` (``apt-get install
mricron-data``: ``/usr/share/mricron/templates/``, the default ``--data``), or
any folder holding ``ch2.nii.gz``, ``ch2bet.nii.gz`` and ``aal.nii.gz``.

A second brain with real tissue truth, ``--image mni152``: the MNI ICBM 2009a
symmetric T1 template (152 brains registered and averaged, skull removed, 1 mm,
197 x 233 x 189) with its grey- and white-matter probability maps, as shipped
inside the ``nilearn`` wheel (``nilearn/datasets/data/``; ``pip install nilearn``,
or ``pip download nilearn --no-deps`` and unzip, then ``--data`` that folder).
Truth: background outside the template's brain, else the largest of CSF
(``1 - GM - WM``), grey matter and white matter; level 3 merges CSF and white
matter into "rest of the brain" as for Colin27, and level 4 is also scored
against the true four classes (``dice["4t"]``: background / CSF / GM / WM).

Degradation of the 1 mm image ``--image`` (``ch2bet``, skull-stripped, by
default; ``ch2`` keeps skull and scalp; ``mni152``), one setting per (grid, noise, bias):

1. bias: ``x * b`` with ``b = 1 + s * (p - (max p + min p) / 2) / (max p - min p)``,
   ``p`` a cubic polynomial in the normalised coordinates with seeded normal
   coefficients (the same field shape for every strength), max / min taken
   over the brain, so ``b`` spans ``s`` peak to peak over the brain;
2. grid: 1 mm as is, or 2 mm by block averaging ``2 x 2 x 2`` voxels (the
   grid cropped to even sizes), what a larger voxel integrates;
3. Rician noise on that grid: ``|x + n_1 + i n_2|`` with ``n ~ N(0, sigma)``,
   ``sigma = noise * WM``, ``WM`` the brightest of three 1D k-means centres of
   the clean brain's intensities on that grid.

Truth: brain / background (``ch2bet > 0``, level 2) and background / grey matter
(``aal > 0`` in the brain) / rest of the brain (level 3); on the 2 mm grid the
most frequent label of each block. Score: Hungarian-matched mean Dice
(:func:`hyperseg.metrics.dice_iou`) over the whole grid. Level 4 (four labels,
three tissue classes as FAST and Atropos are run for CSF / grey / white matter)
is scored by :func:`merged_tissue_score` (no CSF / white-matter truth exists).

Rows: every peer of :mod:`hyperseg.comparison.peers`, and the hyperseg rows of
:data:`HYPERSEG_ROWS`: one model per setting, :func:`hyperseg.train.train` with
``Config(in_channels=1)`` and no step limit for ``--minutes`` (default 10, what
``hyperseg train -i VOL -o RUN --minutes 10`` runs), kept in ``--runs DIR`` and
reused by every hyperseg row of the setting, then the
encoder's means of every voxel (:func:`hyperseg.embed.embed_volume`, once per
setting, cached per dense-pass dtype in the run folder) are segmented at levels 2, 3 and 4 by
:func:`hyperseg.segment.segment_embedding` with the row's segmentation stage
(what :func:`hyperseg.pipeline.segment_volume` runs on an isotropic volume): the default
(``foreground: auto``), its intensity-only version (the masked stage with the
embedding weight at 0: same mask, same prior, same EM, same bias field), the
default without the EM's bias field (``bias_fwhm: 0``), the previous default
(the 2-cluster split as foreground) with and without its intensity term, the
paper's stage and the ``mri`` preset. The row "hyperseg default, Euclidean
model" trains its own model per setting (``latent: euclidean``, ``decoder_input:
linear``, same budget; run folder ``{setting}_decoder_input-linear_latent-euclidean``)
and segments it with the default stage. Each row runs in a fresh
process (``spawn``) that loads the degraded volume; ``seconds`` is the wall time
of the row's calls (for hyperseg rows the segmentation, with the training in
``train_seconds``, and the embedding pass, run once per setting and
shared by its hyperseg rows, counted in each row's ``seconds``; ``load_avg_1min``, the machine's load when the row ended, says
how shared the CPUs were), ``peak_rss_mb`` that process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end (the Python interpreter
and imports included, about 0.2-0.4 GB).

Results: ``--out`` (default ``benchmarks/results/mri_colin27.json``),
resumable: a (setting, row) already in the file is skipped. Run nice'd with
``OMP_NUM_THREADS=1`` (set here for the children if unset)::

    OMP_NUM_THREADS=1 nice python benchmarks/bench_mri.py --data /path/colin27 --grid 2 --runs RUNS
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hyperseg.config import Config

DEBIAN = Path("/usr/share/mricron/templates")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mri_colin27.json"
HYPERSEG = "hyperseg default"
#: hyperseg rows: one model trained per setting (``hyperseg train --minutes M``), segmented with each of these
#: segmentation stages (Config fields on top of the field defaults, bench_default.stage_config).
HYPERSEG_ROWS: dict[str, dict] = {
    HYPERSEG: {},
    "hyperseg default, intensity only": {"masked_stage": {**Config().masked_stage, "embedding_weight": 0.0}},
    "hyperseg default, embedding weight 0.15 at every voxel size": {
        "masked_stage": {**Config().masked_stage, "embedding_weight_mm": 0.0}},
    "hyperseg default, Euclidean model": {"latent": "euclidean", "decoder_input": "linear"},
    "hyperseg default, trained in bfloat16": {"train_dtype": "bfloat16"},
    "hyperseg default, no bias field": {"masked_stage": {**Config().masked_stage, "bias_fwhm": 0.0}},
    "hyperseg split foreground (previous default)": {"foreground": "split"},
    "hyperseg split foreground, embedding only": {"foreground": "split", "intensity_weight": 0.0},
    "hyperseg paper segmentation stage": {"hierarchy": "independent", "intensity_weight": 0.0, "potts_beta": 0.0,
                                          "smooth_sigma": 0.0, "level_clustering": {}, "refine": "once"},
    # the default's parts one at a time, as bench_default.STAGES
    "hyperseg + smoothing sigma 2, k-medians at 2 clusters": {"hierarchy": "independent", "intensity_weight": 0.0,
                                                              "potts_beta": 0.0, "refine": "once"},
    "hyperseg + finer levels inside the 2-cluster split": {"foreground": "split", "intensity_weight": 0.0,
                                                           "potts_beta": 0.0},
    "hyperseg + intensity term (weight 6)": {"foreground": "split", "potts_beta": 0.0},
    "hyperseg mri preset": {"preset": "mri"},
    # the paper's configuration end to end: its own model (hyperseg train --preset paper) and its stage
    "hyperseg paper preset": {"preset": "paper", "train_preset": "paper"},
}
#: rows whose model is trained with other Config fields than the default (their own run folder per setting);
#: ``train_preset``: the model is trained from that shipped preset (``hyperseg train --preset NAME``)
MODEL_FIELDS = ("latent", "decoder_input", "train_preset", "train_dtype")
LEVELS = (2, 3, 4)
BIAS_SEED = 27
BIAS_DEGREE = 3


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def load_colin(data: Path, image: str) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm image ``(D, H, W)`` and the 3-class truth (0 background, 1 grey matter, 2 rest of brain)."""
    files = {n: data / f"{n}.nii.gz" for n in (image, "ch2bet", "aal")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SystemExit(f"bench_mri.py: missing {missing}; install Colin27 with `apt-get install mricron-data` "
                         f"(files under {DEBIAN}) or give --data FOLDER holding ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz")
    x = _read(files[image])
    brain = _read(files["ch2bet"]) > 0
    gm = (_read(files["aal"]) > 0) & brain
    truth = np.where(brain, np.where(gm, 1, 2), 0).astype(np.int64)
    return x, truth


MNI_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
             "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def nilearn_data() -> Path | None:
    """``nilearn/datasets/data`` of an installed nilearn (its templates ship in the wheel), else None."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def load_mni152(data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 ``(D, H, W)`` and its 4-class tissue truth (0 background, 1 CSF, 2 GM, 3 WM)."""
    folder = data if data is not None else nilearn_data()
    files = {k: (folder / f) if folder is not None else Path(f) for k, f in MNI_FILES.items()}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SystemExit(f"bench_mri.py: missing {missing}; `pip install nilearn` (its wheel ships the MNI152 "
                         "templates) or give --data FOLDER holding the three files")
    x = _read(files["t1"])
    gm, wm = _read(files["gm"]) / 255.0, _read(files["wm"]) / 255.0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    truth = (np.argmax(np.stack([csf, gm, wm]), 0) + 1) * (x > 0)
    return x, truth.astype(np.int64)


def three_class(truth: np.ndarray) -> np.ndarray:
    """Level-3 truth (0 background, 1 grey matter, 2 rest of brain) from a 3- or 4-class truth."""
    if truth.max() <= 2:
        return truth
    return np.where(truth == 0, 0, np.where(truth == 2, 1, 2)).astype(np.int64)


def bias_field(shape: tuple[int, int, int], brain: np.ndarray, strength: float, seed: int = BIAS_SEED
               ) -> np.ndarray:
    """Multiplicative field ``(D, H, W)`` spanning ``strength`` peak to peak over ``brain`` (module docstring)."""
    if strength == 0:
        return np.ones(shape)
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s) for s in shape]
    d, h, w = np.meshgrid(*axes, indexing="ij", sparse=True)
    p = np.zeros(shape)
    for i in range(BIAS_DEGREE + 1):
        for j in range(BIAS_DEGREE + 1 - i):
            for k in range(BIAS_DEGREE + 1 - i - j):
                if i + j + k:
                    p = p + rng.normal() * d ** i * h ** j * w ** k
    lo, hi = p[brain].min(), p[brain].max()
    return 1 + strength * (p - (hi + lo) / 2) / (hi - lo)


def block_mean(x: np.ndarray, f: int = 2) -> np.ndarray:
    s = [n - n % f for n in x.shape]
    x = x[: s[0], : s[1], : s[2]]
    return x.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean((1, 3, 5))


def block_mode(t: np.ndarray, n_labels: int, f: int = 2) -> np.ndarray:
    """Most frequent label of each ``f^3`` block (ties to the lower label)."""
    counts = np.stack([block_mean((t == c).astype(np.float64), f) for c in range(n_labels)])
    return counts.argmax(0).astype(np.int64)


def degrade(x: np.ndarray, truth: np.ndarray, grid: int, noise: float, bias: float, seed: int
            ) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(image, truth, info)`` on the ``grid`` mm grid; ``noise`` and ``bias`` as fractions."""
    from hyperseg.potts import kmeans_1d

    brain = truth > 0
    y = x * bias_field(x.shape, brain, bias)
    if grid == 2:
        y, t, clean = block_mean(y), block_mode(truth, int(truth.max()) + 1), block_mean(x)
    elif grid == 1:
        t, clean = truth, x
    else:
        raise SystemExit(f"bench_mri.py: --grid {grid} is not supported; use 1 or 2")
    wm = float(kmeans_1d(clean[t > 0], 3)[-1])
    sigma = noise * wm
    rng = np.random.default_rng(seed)
    y = np.abs(y + rng.normal(0, sigma, y.shape) + 1j * rng.normal(0, sigma, y.shape)) if sigma > 0 else y
    return y.astype(np.float32), t, {"wm_intensity": wm, "noise_sigma": sigma}


def score(labels: dict[int, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    from hyperseg.metrics import dice_iou

    t3 = three_class(truth)
    out = {"2": float(dice_iou(labels[2], (truth > 0).astype(np.int64))["mean_dice"]),
           "3": float(dice_iou(labels[3], t3)["mean_dice"])}
    if 4 in labels:
        out["4"] = merged_tissue_score(labels[4], t3)
        if truth.max() == 3:  # real CSF / GM / WM truth (mni152)
            d = dice_iou(labels[4], truth, n_classes=4)
            out["4t"] = float(d["mean_dice"])
            out["4t_classes"] = [float(v) for v in d["dice"]]
    return out


def merged_tissue_score(labels: np.ndarray, truth: np.ndarray) -> float:
    """Level 4 (four labels: background and three tissue classes, as CSF / grey / white matter): the label that
    best matches the background (Dice) and, of the others, the one that best matches grey matter are kept, the
    other two merged, then the level-3 score against background / grey matter / rest of the brain.

    Colin27 has no CSF / white-matter truth; this scores how well the grey-matter class of a three-tissue
    segmentation comes out, which a level-3 run with two tissue classes cannot show.
    """
    from hyperseg.metrics import dice_iou

    lab = np.asarray(labels, dtype=np.int64)

    def dice(c: int, cls: int) -> float:
        a, b = lab == c, truth == cls
        return 2.0 * float(np.sum(a & b)) / max(int(a.sum() + b.sum()), 1)

    names = [int(c) for c in np.unique(lab)]
    bg = max(names, key=lambda c: dice(c, 0))
    gm = max([c for c in names if c != bg] or [bg], key=lambda c: dice(c, 1))
    merged = np.where(lab == bg, 0, np.where(lab == gm, 1, 2))
    return float(dice_iou(merged, truth)["mean_dice"])


# ----------------------------------------------------------------------------------------------------------
def train_or_load(x: np.ndarray, run: Path, minutes: float | None, steps: int | None,
                  model_fields: dict | None = None) -> tuple[object, dict]:
    """The default model of this setting: loaded from ``run`` when it holds one, else trained there
    (``Config(in_channels=1)`` with ``model_fields`` on top, ``--minutes`` or ``--steps``, what
    ``hyperseg train`` runs)."""
    from hyperseg.checkpoint import load_model
    from hyperseg.config import Config
    from hyperseg.train import UNLIMITED_STEPS, train

    t0 = time.perf_counter()
    if (run / "model.safetensors").exists():
        model = load_model(run)
        trained = False
    else:
        fields = dict(model_fields or {})
        preset = fields.pop("train_preset", None)
        cfg = Config.from_preset(preset) if preset else Config()
        model = train(cfg.replace(in_channels=1, **fields), [x[None]], run,
                      steps=UNLIMITED_STEPS if steps is None else steps,
                      minutes=minutes if steps is None else None, progress=False, device="cpu")
        trained = True
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    extra = {"steps": info.get("steps_done"), "run": str(run),
             "train_seconds": time.perf_counter() - t0 if trained else info.get("seconds")}
    return model, extra


def _child(row: str, volume_file: str, spacing: tuple, minutes: float | None, seed: int, queue,
           steps: int | None = None, run: str | None = None) -> None:
    """Run one row in this fresh process; put ``(labels, seconds, extra, peak_rss_mb)`` or an error on ``queue``.

    A hyperseg row trains the setting's model in ``run`` (or loads it from there) and reports the training
    time in ``extra["train_seconds"]`` and the segmentation time as ``seconds``.
    """
    import resource

    try:
        x = np.load(volume_file)
        extra: dict = {}
        t0 = time.perf_counter()
        if row in HYPERSEG_ROWS:
            import torch

            from bench_default import stage_config
            from hyperseg.data.preprocess import normalize_for
            from hyperseg.embed import embed_volume
            from hyperseg.segment import segment_embedding

            if len(set(spacing)) != 1:
                raise ValueError("bench_mri.py: the hyperseg rows need isotropic voxels (no resampling)")
            spec = dict(HYPERSEG_ROWS[row])
            model_fields = {k: spec.pop(k) for k in MODEL_FIELDS if k in spec}
            if model_fields:  # another model: its own run folder
                run = f"{run}_" + "_".join(f"{k}-{v}" for k, v in sorted(model_fields.items()))
            model, extra = train_or_load(x, Path(run), minutes, steps, model_fields)
            model.eval()
            extra["config"] = HYPERSEG_ROWS[row]
            # the encoder's output does not depend on the segmentation stage: embedded once per setting
            from hyperseg.nn.precision import resolve_dtype

            dtype = str(resolve_dtype(model.cfg.embed_dtype)).removeprefix("torch.")  # one cache per dense-pass dtype
            cache, timing = Path(run) / f"embedding_{dtype}.npy", Path(run) / f"embedding_{dtype}_seconds.json"
            xn = normalize_for(model.cfg, x[None], None)
            if cache.exists():
                emb, embed_seconds = np.load(cache), json.loads(timing.read_text())["seconds"]
            else:
                t1 = time.perf_counter()
                emb = embed_volume(model, torch.from_numpy(xn)).numpy()
                embed_seconds = time.perf_counter() - t1
                np.save(cache, emb)
                timing.write_text(json.dumps({"seconds": embed_seconds}))
            extra["embed_dtype"] = dtype
            cfg = stage_config(model.cfg, spec)
            t0 = time.perf_counter() - embed_seconds  # seconds = the embedding pass + this row's stage
            seg = segment_embedding(cfg, emb, xn, list(LEVELS), seed=seed, array=x[None], voxel_size=float(spacing[0]))
            extra["embed_seconds"] = embed_seconds
            if seg.agreement is not None:  # foreground auto: the Dice of the intensity mask and the split
                extra.update(agreement=seg.agreement, foreground=seg.foreground)
            labels = {k: np.asarray(v, dtype=np.int64) for k, v in seg.labels.items()}
        else:
            from hyperseg.comparison.peers import PEERS

            labels = {k: PEERS[row](x, k, spacing, seed=seed) for k in LEVELS}
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        queue.put(("ok", labels, seconds, extra, peak))
    except BaseException as err:  # report any failure to the parent, which records it
        queue.put(("error", f"{type(err).__name__}: {err}", 0.0, {}, 0.0))


def run_row(row: str, volume_file: str, spacing: tuple, minutes: float | None, steps: int | None, seed: int,
            run: str | None = None):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(row, volume_file, spacing, minutes, seed, q),
                    kwargs={"steps": steps, "run": run})
    p.start()
    out = q.get()
    p.join()
    return out


def save_labels(path: Path, row: str, labels: dict[int, np.ndarray], truth: np.ndarray) -> None:
    """Add ``row``'s label maps (uint8) to the npz ``path`` (keys ``"{row} L{k}"`` and ``"truth"``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = dict(np.load(path)) if path.exists() else {}
    old.update({f"{row} L{k}": v.astype(np.uint8) for k, v in labels.items()}, truth=truth.astype(np.uint8))
    np.savez_compressed(path, **old)


def markdown(results: dict) -> str:
    lines = ["| setting | row | Dice L2 (brain) | Dice L3 (GM) | L4 (3 tissues, GM merged score) | seconds | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for key, setting in results["settings"].items():
        for row, r in setting["rows"].items():
            if "error" in r:
                lines.append(f"| {key} | {row} | error: {r['error'][:60]} | | | | |")
                continue
            l4 = f"{r['dice']['4']:.3f}" if "4" in r["dice"] else "-"
            if "4t" in r["dice"]:
                l4 += f" (CSF / GM / WM truth: {r['dice']['4t']:.3f})"
            lines.append(f"| {key} | {row} | {r['dice']['2']:.3f} | {r['dice']['3']:.3f} | {l4} | "
                         f"{r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def summary(results: dict) -> str:
    """Mean Dice per row over the settings of each grid."""
    acc: dict = {}
    for setting in results["settings"].values():
        for row, r in setting["rows"].items():
            if "dice" in r:
                acc.setdefault((setting["grid_mm"], row), []).append((r["dice"]["2"], r["dice"]["3"], r["seconds"]))
    lines = ["| grid | row | settings | mean Dice L2 | mean Dice L3 | mean seconds |", "|---|---|---|---|---|---|"]
    for (grid, row), v in sorted(acc.items(), key=lambda kv: (kv[0][0], -np.mean([a[1] for a in kv[1]]))):
        a = np.array(v)
        lines.append(f"| {grid} mm | {row} | {len(v)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | "
                     f"{a[:, 2].mean():.1f} |")
    return "\n".join(lines)


PROTOCOL = {
    "data": "Colin27 (mricron-data), or with image mni152 the MNI ICBM 2009a T1 template and its tissue maps (nilearn)",
    "levels": {"2": "brain / background (ch2bet > 0)", "3": "background / grey matter (aal > 0) / rest of brain"},
    "degradation": "bias x (1 + s * cubic polynomial, s peak to peak over the brain, seed 27), 2 mm by 2x2x2 "
                   "block averaging, then Rician noise sigma = noise * WM intensity on that grid",
    "score": "Hungarian-matched mean Dice over the whole grid (hyperseg.metrics.dice_iou)",
    "memory": "peak RSS of a fresh spawned process running the row (resource.getrusage ru_maxrss)",
    "threads": "OMP_NUM_THREADS=1, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1",
}


def update(out: Path, new: tuple | None) -> dict:
    """Merge one result ``(setting key, setting info, row, entry)`` into ``out`` and return the file's content.

    The file is re-read under an exclusive lock (``{tmp}/{out.name}.lock``) and replaced
    atomically, so several runs on this machine of this script (e.g. peers and hyperseg) can
    share one results file.
    """
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(out.read_text()) if out.exists() else {}
        results.setdefault("protocol", PROTOCOL)
        results.setdefault("settings", {})
        if new is not None:
            key, info, row, entry = new
            setting = results["settings"].setdefault(key, {**info, "rows": {}})
            setting["rows"][row] = entry
            tmp = out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(out)
    return results


def main(argv: list[str] | None = None) -> int:
    from hyperseg.comparison.peers import PEERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help=f"folder with ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz (default {DEBIAN}, from mricron-data); "
                         "with --image mni152 the folder of the MNI152 files (default: the installed nilearn's)")
    ap.add_argument("--image", choices=["ch2bet", "ch2", "mni152"], default="ch2bet", help="image to degrade")
    ap.add_argument("--grid", type=int, nargs="+", default=[2, 1], help="grids in mm (2 = block average)")
    ap.add_argument("--noise", type=float, nargs="+", default=[3, 6, 9], help="Rician sigma, %% of WM intensity")
    ap.add_argument("--bias", type=float, nargs="+", default=[0, 20, 40], help="bias field, %% peak to peak")
    ap.add_argument("--rows", nargs="+", default=None, help=f"rows to run (default all): {list(PEERS)} and "
                    f"{list(HYPERSEG_ROWS)}")
    ap.add_argument("--hyperseg-grid", type=int, nargs="*", default=[2],
                    help="grids at which the hyperseg row runs (default 2)")
    ap.add_argument("--minutes", type=float, default=10.0, help="hyperseg training budget per setting")
    ap.add_argument("--runs", type=Path, default=None, metavar="DIR",
                    help="keep each setting's trained model in DIR/{setting} and reuse it when there (default: a "
                         "temporary folder, one model per setting shared by the hyperseg rows)")
    ap.add_argument("--steps", type=int, default=None,
                    help="train hyperseg for this many steps instead (no time limit): a budget that does not "
                         "depend on how shared the CPUs are")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--save-labels", type=Path, default=None, metavar="DIR",
                    help="also write each row's label maps and the truth to DIR/{setting}.npz")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    rows = args.rows or [*PEERS, *HYPERSEG_ROWS]
    unknown = [r for r in rows if r not in PEERS and r not in HYPERSEG_ROWS]
    if unknown:
        raise SystemExit(f"bench_mri.py: unknown rows {unknown}; choose from {list(PEERS) + list(HYPERSEG_ROWS)}")

    if args.image == "mni152":
        x, truth = load_mni152(args.data)
    else:
        x, truth = load_colin(args.data if args.data is not None else DEBIAN, args.image)
    results = update(args.out, None)
    with tempfile.TemporaryDirectory(prefix="bench-mri-") as tmp:
        for grid in args.grid:
            for noise in args.noise:
                for bias in args.bias:
                    key = f"{args.image} {grid}mm noise {noise:g}% bias {bias:g}%"
                    results = update(args.out, None)  # another run may have added rows
                    todo = [r for r in rows if (r not in HYPERSEG_ROWS or grid in args.hyperseg_grid)
                            and r not in results["settings"].get(key, {}).get("rows", {})]
                    if not todo:
                        continue
                    img, t, info = degrade(x, truth, grid, noise / 100, bias / 100, seed=args.seed)
                    setting = {"image": args.image, "grid_mm": grid, "noise_pct": noise, "bias_pct": bias,
                               "shape": list(img.shape), **info}
                    vol = str(Path(tmp) / "volume.npy")
                    np.save(vol, img)
                    runs = args.runs if args.runs is not None else Path(tmp) / "runs"
                    run = str(runs / key.replace(" ", "_").replace("%", "pct"))
                    for row in todo:
                        status, labels, seconds, extra, peak = run_row(row, vol, (float(grid),) * 3,
                                                                       args.minutes, args.steps, args.seed, run)
                        if status == "ok":
                            entry = {"dice": score(labels, t), "seconds": seconds, "peak_rss_mb": peak,
                                     "load_avg_1min": round(os.getloadavg()[0], 2), **extra}
                            if args.save_labels is not None:
                                save_labels(args.save_labels / f"{key.replace(' ', '_')}.npz", row, labels, t)
                            if row in HYPERSEG_ROWS:
                                entry.update({"train_minutes": args.minutes} if args.steps is None
                                             else {"train_steps": args.steps})
                        else:
                            entry = {"error": labels}
                        results = update(args.out, (key, setting, row, entry))
                        print(f"{key} | {row} | {entry.get('dice', entry.get('error'))} | "
                              f"{seconds:.1f} s", flush=True)
    print(markdown(results))
    print()
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
