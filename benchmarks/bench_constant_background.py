"""The dense pass with and without skipping a constant background (``embed_volume(skip_constant=...)``).

A skull-stripped brain, or a volume padded or masked with one value, holds a constant background; tiles that
see only it take the embedding of a constant volume (``hyperseg/embed.py``, "Constant background"). For each
volume the dense pass runs both ways in one process, alternating which goes first, and the table gives the
seconds of each, their ratio, the share of tiles encoded and the largest difference between the two
embeddings. The model is an untrained default one (the pass's cost does not depend on the weights); the
volume is normalised as the pipeline normalises it.

Volumes: Colin27 ``ch2bet`` at 1 mm (``--colin`` folder, README in ``shared/data/colin27``), the MNI152 2009a
template at 1 mm (nilearn's wheel), and ``bench_large.py``'s four-channel 240 x 240 x 155 volume (a zero
background around a head-like ellipsoid)::

    python benchmarks/bench_constant_background.py --colin shared/data/colin27 \\
        --out benchmarks/results/embed_constant_background.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _record  # noqa: E402
import bench_large  # noqa: E402
import bench_mri  # noqa: E402


def volumes(colin: Path | None) -> dict[str, np.ndarray]:
    """``{name: (C, D, H, W) float32}``: the raw volumes, as read."""
    out = {}
    if colin is not None:
        x, _ = bench_mri.load_colin(colin, "ch2bet")
        out["Colin27 ch2bet, 1 mm, 181 x 217 x 181"] = x[None].astype(np.float32)
    folder = bench_mri.nilearn_data()
    if folder is not None:
        x, _ = bench_mri.load_mni152(folder)
        out[f"MNI152 2009a, 1 mm, {' x '.join(map(str, x.shape))}"] = x[None].astype(np.float32)
    out["bench_large.py, 4 channels, 240 x 240 x 155"] = bench_large.synthetic_volume((240, 240, 155), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--colin", type=Path, default=None, help="folder holding ch2bet.nii.gz and aal.nii.gz")
    ap.add_argument("--out", default=str(_record.RESULTS / "embed_constant_background.json"))
    args = ap.parse_args()

    from hyperseg.config import Config
    from hyperseg.data.preprocess import normalize_for
    from hyperseg.embed import constant_background, embed_volume, padding_for
    from hyperseg.model import HyperVAE
    from hyperseg.nn.precision import resolve_dtype

    rows = []
    for i, (name, raw) in enumerate(volumes(args.colin).items()):
        cfg = Config(in_channels=raw.shape[0])
        torch.manual_seed(0)
        model = HyperVAE(cfg).eval()
        x = torch.from_numpy(np.ascontiguousarray(normalize_for(cfg, raw, None), dtype=np.float32))
        found = constant_background(x, padding_for(cfg.embed_patch_edge), cfg.pad_mode)
        tile = cfg.embed_tile
        corners = [(a, b, c) for a in range(0, x.shape[1], tile) for b in range(0, x.shape[2], tile)
                   for c in range(0, x.shape[3], tile)]
        encoded = len(corners) if found is None else sum(
            bool(found[1][a:a + tile, b:b + tile, c:c + tile].any()) for a, b, c in corners)
        seconds, emb = {}, {}
        order = (True, False) if i % 2 == 0 else (False, True)
        for skip in order:
            t0 = time.perf_counter()
            emb[skip] = embed_volume(model, x, skip_constant=skip)
            seconds[skip] = time.perf_counter() - t0
        diff = float((emb[True] - emb[False]).abs().max())
        rows.append({"volume": name, "voxels": int(np.prod(x.shape[1:])),
                     "background_share": None if found is None else float(1 - found[1].mean()),
                     "tiles": len(corners), "tiles_encoded": encoded, "seconds_full": seconds[False],
                     "seconds_skip": seconds[True], "speedup": seconds[False] / seconds[True],
                     "max_abs_difference": diff, "first": "skip" if order[0] else "full",
                     "embed_dtype": str(resolve_dtype(cfg.embed_dtype)).removeprefix("torch.")})
        print(rows[-1], flush=True)
        del emb
    lines = ["| volume | tiles encoded | s, every tile | s, background skipped | speed-up | max difference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['tiles_encoded']} of {r['tiles']} | {r['seconds_full']:.1f} | "
                     f"{r['seconds_skip']:.1f} | {r['speedup']:.2f}x | {r['max_abs_difference']:.1e} |")
    md = "\n".join(lines)
    print(md)
    _record.write(args.out, __file__, md, rows)


if __name__ == "__main__":
    main()
