"""How the steps after the encoder change Dice, for one trained model.

    python benchmarks/bench_clustering.py --run RUN --data DATA/val [--cases 10]
        [--patch-edges 5 10] [--smooth 0 2] [--methods kmeans agglomerative]

Embeds the first ``--cases`` volumes of ``DATA`` (a split folder written by
``hyperseg synth``, with ``labels/``) once per inference patch edge with the
model of ``RUN``, smooths each embedding field with each ``--smooth`` sigma
(:mod:`hyperseg.smooth`), then clusters it with each method (``Config.hierarchy``
and ``Config.clustering``) into 2 / 4 / 6 clusters and prints the
Hungarian-matched Dice per level (mean +- std over volumes) and the clustering time
per volume, as a markdown table. Use a validation split to choose: the test
split is for the final numbers.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import numpy as np
import torch

import _record
from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import normalize_for
from hyperseg.embed import embed_volume
from hyperseg.metrics import mean_dice
from hyperseg.segment import cluster_levels
from hyperseg.smooth import smooth_embedding
from hyperseg.checkpoint import load_model

METHODS = {
    "default": ("k-medians at 2 clusters, k-means above (default)", {}),
    "kmeans": ("k-means, independent levels (paper)", {"level_clustering": {}}),
    "divisive": ("k-means, nested (divisive)", {"hierarchy": "divisive"}),
    "agglomerative": ("k-means, nested (agglomerative)", {"hierarchy": "agglomerative"}),
    "mixture": ("mixture with a scale per cluster", {"clustering": "mixture", "level_clustering": {}}),
    "kmedians": ("k-medians, independent levels", {"clustering": "kmedians", "level_clustering": {}}),
}
LEVELS = {1: 2, 2: 4, 3: 6}


def main() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="split folder with caseNNN.nii.gz and labels/")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--patch-edges", type=int, nargs="+", default=[None],
                    help="inference patch edges (default: the run's embed_patch_edge)")
    ap.add_argument("--smooth", type=float, nargs="+", default=[None],
                    help="smoothing sigmas in voxels (default: the run's smooth_sigma)")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--out", default=str(_record.RESULTS / "clustering.json"), help="results file (JSON)")
    args = ap.parse_args()
    model = load_model(args.run)
    cfg = model.cfg
    files = sorted(args.data.glob("case*.nii.gz"))[: args.cases]
    sigmas = [cfg.smooth_sigma if s is None else s for s in args.smooth]
    edges = [cfg.embed_patch_edge if p is None else p for p in args.patch_edges]
    rows = [(p, s, m) for p in edges for s in sigmas for m in args.methods]
    scores = {r: {lvl: [] for lvl in LEVELS} for r in rows}
    seconds = {r: 0.0 for r in rows}
    for f in files:
        vol = read_volume(f)
        case = f.name[: -len(".nii.gz")]
        x = torch.from_numpy(normalize_for(cfg, vol.array, None))
        truth = {lvl: read_labels(args.data / "labels" / f"{case}_level{lvl}.nii.gz") for lvl in LEVELS}
        for p in edges:
            emb = embed_volume(model, x, patch_edge=p).numpy()
            for s in sigmas:
                t0 = time.perf_counter()
                points = smooth_embedding(emb, s, latent=cfg.latent, c=cfg.c)
                flat = points.reshape(-1, points.shape[-1])
                t_smooth = time.perf_counter() - t0
                for m in args.methods:
                    t = time.perf_counter()
                    maps = cluster_levels(flat, list(LEVELS.values()), cfg.replace(**METHODS[m][1]), seed=0)
                    seconds[(p, s, m)] += time.perf_counter() - t + t_smooth
                    for lvl, k in LEVELS.items():
                        scores[(p, s, m)][lvl].append(mean_dice(maps[k].reshape(emb.shape[:-1]), truth[lvl]))
    print(f"run {args.run}, {len(files)} volumes of {args.data}, {datetime.date.today()}, "
          f"{platform.machine()} torch {torch.__version__}\n")
    print("| patch edge | smoothing sigma | clustering | Dice L1 | Dice L2 | Dice L3 | seconds per volume (3 levels) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d = [f"{np.mean(scores[r][lvl]):.3f} +- {np.std(scores[r][lvl]):.3f}" for lvl in LEVELS]
        print(f"| {r[0]} | {r[1]:g} | {METHODS[r[2]][0]} | {' | '.join(d)} | {seconds[r] / len(files):.1f} |")
    return args


if __name__ == "__main__":
    with _record.tee() as kept:
        used = main()
    _record.write(used.out, __file__, kept.getvalue(), rows=[])
