"""How the clustering step changes Dice, for one trained model: k-means, nested levels, mixture.

    python benchmarks/bench_clustering.py --run RUN --data DATA/val [--cases 10] [--patch-edge 5]

Embeds the first ``--cases`` volumes of ``DATA`` (a split folder written by
``hyperseg synth``, with ``labels/``) once with the model of ``RUN``, then
clusters every embedding with each method (``Config.hierarchy`` and
``Config.clustering``) into 2 / 4 / 6 clusters and prints the
Hungarian-matched Dice per level (mean over volumes) and the clustering time per
volume, as a markdown table. Use a validation split to choose a method: the
test split is for the final numbers.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import normalize_for
from hyperseg.embed import embed_volume
from hyperseg.metrics import mean_dice
from hyperseg.segment import cluster_levels
from hyperseg.train import load_model

METHODS = {
    "k-means, independent levels (paper)": {},
    "k-means, nested (divisive)": {"hierarchy": "divisive"},
    "k-means, nested (agglomerative)": {"hierarchy": "agglomerative"},
    "mixture with a scale per cluster": {"clustering": "mixture"},
}
LEVELS = {1: 2, 2: 4, 3: 6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="split folder with caseNNN.nii.gz and labels/")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--patch-edge", type=int, default=None)
    args = ap.parse_args()
    model = load_model(args.run)
    cfg = model.cfg
    files = sorted(args.data.glob("case*.nii.gz"))[: args.cases]
    scores = {m: {lvl: [] for lvl in LEVELS} for m in METHODS}
    seconds = {m: 0.0 for m in METHODS}
    for f in files:
        vol = read_volume(f)
        case = f.name[: -len(".nii.gz")]
        x = torch.from_numpy(normalize_for(cfg, vol.array, None))
        emb = embed_volume(model, x, patch_edge=args.patch_edge).numpy()
        flat = emb.reshape(-1, emb.shape[-1])
        truth = {lvl: read_labels(args.data / "labels" / f"{case}_level{lvl}.nii.gz") for lvl in LEVELS}
        for name, change in METHODS.items():
            t = time.perf_counter()
            maps = cluster_levels(flat, list(LEVELS.values()), cfg.replace(**change), seed=0)
            seconds[name] += time.perf_counter() - t
            for lvl, k in LEVELS.items():
                scores[name][lvl].append(mean_dice(maps[k].reshape(emb.shape[:-1]), truth[lvl]))
    print(f"run {args.run}, {len(files)} volumes of {args.data}, {datetime.date.today()}, "
          f"{platform.machine()} torch {torch.__version__}\n")
    print("| clustering | Dice L1 | Dice L2 | Dice L3 | seconds per volume (3 levels) |")
    print("|---|---|---|---|---|")
    for name in METHODS:
        d = [f"{np.mean(scores[name][lvl]):.3f} +- {np.std(scores[name][lvl]):.3f}" for lvl in LEVELS]
        print(f"| {name} | {' | '.join(d)} | {seconds[name] / len(files):.1f} |")


if __name__ == "__main__":
    main()
