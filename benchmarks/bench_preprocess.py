"""How bias-field corrections change the classical baselines, no training needed.

    python benchmarks/bench_preprocess.py --data DATA/val [--cases 10]
        [--inputs raw highpass:4 highpass:6 highpass:10 lcn:6 lcn:10]

For each input transform, applies k-means on local mean + std and k-means on
intensity (:mod:`hyperseg.comparison.baselines`) to the first ``--cases``
volumes of ``DATA`` (a split folder written by ``hyperseg synth``, with
``labels/``) at 2 / 4 / 6 clusters and prints the Hungarian-matched Dice per
level (mean over volumes) as a markdown table. Transforms:

* ``raw``: the volume as written;
* ``highpass:S``: :func:`hyperseg.data.preprocess.highpass` with sigma ``S``
  voxels, what ``hyperseg train --highpass S`` does before normalising;
* ``lcn:S``: local contrast normalisation, the high-pass divided by its own
  local standard deviation over the same sigma (``h / sqrt(G_S * h^2)``),
  which would also undo a multiplicative bias. Defined here only, for the
  comparison.

Use a validation split to choose: the test split is for the final numbers.
"""
from __future__ import annotations

import argparse
import datetime
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

import _record
from hyperseg.comparison.baselines import kmeans_intensity, kmeans_local_stats
from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import highpass
from hyperseg.metrics import mean_dice

LEVELS = {1: 2, 2: 4, 3: 6}
#: Keeps the local standard deviation of a flat region away from 0.
LCN_EPS = 1e-6


def local_contrast_normalise(volume: np.ndarray, sigma: float) -> np.ndarray:
    """``(C, D, H, W)``: each channel's high-pass over its local standard deviation (sigma in voxels)."""
    h = highpass(volume, sigma, mask="none").astype(np.float64)
    local_var = np.stack([ndi.gaussian_filter(c * c, sigma, mode="nearest") for c in h])
    return (h / np.sqrt(local_var + LCN_EPS)).astype(np.float32)


def transform(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """``raw``, ``highpass:S`` or ``lcn:S`` to a function of a ``(C, D, H, W)`` volume."""
    if spec == "raw":
        return lambda v: v
    kind, _, sigma = spec.partition(":")
    if kind == "highpass":
        return lambda v: highpass(v, float(sigma), mask="auto")
    if kind == "lcn":
        return lambda v: local_contrast_normalise(v, float(sigma))
    raise SystemExit(f"unknown input transform {spec!r}: use raw, highpass:SIGMA or lcn:SIGMA")


def main() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="split folder with caseNNN.nii.gz and labels/")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--inputs", nargs="+", default=["raw", "highpass:4", "highpass:6", "highpass:10", "lcn:6",
                                                      "lcn:10"])
    ap.add_argument("--out", default=str(_record.RESULTS / "preprocess.json"), help="results file (JSON)")
    args = ap.parse_args()
    files = sorted(args.data.glob("case*.nii.gz"))[: args.cases]
    if not files:
        raise SystemExit(f"no caseNNN.nii.gz in {args.data}")
    volumes = [read_volume(f).array for f in files]
    truth = [{lvl: read_labels(args.data / "labels" / f"{f.name[:-7]}_level{lvl}.nii.gz") for lvl in LEVELS}
             for f in files]
    print(f"{len(files)} volumes of {args.data}, {datetime.date.today()}, {platform.machine()}\n")
    print("| input | k-means on local mean + std (L1 / L2 / L3) | k-means on intensity (L1 / L2 / L3) |")
    print("|---|---|---|")
    for spec in args.inputs:
        inputs = [transform(spec)(vol) for vol in volumes]  # once per volume, shared by both methods
        cells = []
        for method in (kmeans_local_stats, kmeans_intensity):
            dice = {lvl: [] for lvl in LEVELS}
            for x, t in zip(inputs, truth):
                for lvl, k in LEVELS.items():
                    dice[lvl].append(mean_dice(method(x, k, seed=0), t[lvl]))
            cells.append(" / ".join(f"{np.mean(dice[lvl]):.3f}" for lvl in LEVELS))
        print(f"| {spec} | {cells[0]} | {cells[1]} |", flush=True)
    return args


if __name__ == "__main__":
    with _record.tee() as kept:
        used = main()
    _record.write(used.out, __file__, kept.getvalue(), rows=[])
