"""What a trained embedding holds beyond local intensity statistics, per level.

    python benchmarks/bench_features.py --runs RUN [RUN ...] --data DATA/val [--cases 20]

For every volume of ``DATA`` (a split folder written by ``hyperseg synth``, with
``labels/``) and every run, the embedding is computed once (the run's patch
edge and preprocessing, as ``hyperseg segment`` does) and clustered several
ways; the classical "k-means on local mean + std" row of ``hyperseg bench``
is computed on the same (high-passed) volumes. Printed: Hungarian-matched Dice
per level (mean over runs x volumes) as a markdown table, and how much of the
local mean and local standard deviation a linear map of the embedding
explains (R^2, on ``log_0`` of the smoothed ball points).

Variants (levels 2 and 3; level 1 is the default clustering everywhere):

* ``default``: the run's configuration (smoothing, k-means on the ball);
* ``multiscale``: ``log_0`` of the embedding smoothed with sigma 1 and with sigma 4,
  concatenated, Euclidean k-means (clustering on two scales at once);
* ``foreground``: the level-1 cluster that holds most of the volume's border voxels
  is kept as background and k-means splits the rest into k - 1 clusters, for the
  learned embedding and for local statistics alike.

Use a validation split: the test split is for the final numbers. Needs the
``[bench]`` extra (scikit-learn).
"""
from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression

import _record
from hyperseg.comparison.baselines import kmeans_local_stats, local_mean_std
from hyperseg.config import Config
from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import highpass, normalize_for
from hyperseg.embed import embed_volume
from hyperseg.metrics import mean_dice
from hyperseg.segment import cluster_levels, cluster_points
from hyperseg.smooth import smooth_embedding
from hyperseg.checkpoint import load_model

LEVELS = {1: 2, 2: 4, 3: 6}
ARTANH_GUARD = 1e-9  # keeps |x| < 1 in artanh for points the float64 maths put on the boundary


def log0(x: np.ndarray, c: float) -> np.ndarray:
    """Logarithmic map at the origin of the Poincare ball: ``artanh(sqrt(c)|x|) x / (sqrt(c)|x|)``, ``(N, d)``."""
    sc = np.sqrt(c) * np.linalg.norm(x, axis=-1, keepdims=True)
    sc = np.clip(sc, 1e-12, 1 - ARTANH_GUARD)
    return np.arctanh(sc) * x / sc


def foreground_refined(level1: np.ndarray, shape: tuple[int, ...], split) -> dict[int, np.ndarray]:
    """Level-1 background (most border voxels) kept; ``split(mask, k - 1)`` labels the rest."""
    border = np.zeros(shape, bool)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    b = border.ravel()
    background = int(np.argmax([np.mean(level1[b] == c) for c in (0, 1)]))
    fg = level1 != background
    out = {}
    for lvl in (2, 3):
        lab = np.zeros(level1.shape, np.int64)
        lab[fg] = 1 + split(fg, LEVELS[lvl] - 1)
        out[lvl] = lab
    return out


def kmeans(X: np.ndarray, k: int, sample: int = 50000) -> np.ndarray:
    idx = np.random.default_rng(0).choice(len(X), min(sample, len(X)), replace=False)
    return KMeans(n_clusters=k, n_init=4, random_state=0).fit(X[idx]).predict(X)


def main() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--data", type=Path, required=True, help="split folder with caseNNN.nii.gz and labels/")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--out", default=str(_record.RESULTS / "features.json"), help="results file (JSON)")
    args = ap.parse_args()
    files = sorted(args.data.glob("case*.nii.gz"))[: args.cases]
    if not files:
        raise SystemExit(f"no caseNNN.nii.gz in {args.data}")
    models = [load_model(r) for r in args.runs]
    sigma_hp = models[0].cfg.highpass_sigma
    scores: dict[tuple[str, int], list[float]] = {}
    r2: list[list[float]] = []

    def add(name: str, lvl: int, pred: np.ndarray, truth: np.ndarray) -> None:
        scores.setdefault((name, lvl), []).append(mean_dice(pred.reshape(truth.shape), truth))

    for f in files:
        case = f.name[: -len(".nii.gz")]
        truth = {lvl: read_labels(args.data / "labels" / f"{case}_level{lvl}.nii.gz") for lvl in LEVELS}
        image = read_volume(f).array
        seen = highpass(image, sigma_hp, mask="auto") if sigma_hp > 0 else image
        L = local_mean_std(seen)[:2].reshape(2, -1).T  # first channel's (mean, std) per voxel, (N, 2)
        Lz = (L - L.mean(0)) / L.std(0)
        for lvl, k in LEVELS.items():
            add("k-means on local mean + std", lvl, kmeans_local_stats(seen, k, seed=0), truth[lvl])
        ref = foreground_refined(kmeans(Lz, 2), truth[1].shape, lambda m, k: kmeans(Lz[m], k))
        for lvl in (2, 3):
            add("local mean + std, foreground refined", lvl, ref[lvl], truth[lvl])
        for model in models:
            cfg = model.cfg
            with torch.no_grad():
                x = torch.from_numpy(normalize_for(cfg, image, None))
                emb = embed_volume(model, x, patch_edge=cfg.embed_patch_edge).numpy().astype(np.float64)
            d = emb.shape[-1]
            pts = smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c).reshape(-1, d)
            maps = cluster_levels(pts, list(LEVELS.values()), cfg, seed=cfg.seed)
            for lvl, k in LEVELS.items():
                add("embedding, default clustering", lvl, maps[k], truth[lvl])
            tangent = log0(pts, cfg.c) if cfg.latent == "hyperbolic" else pts
            r2.append([LinearRegression().fit(tangent, L[:, j]).score(tangent, L[:, j]) for j in range(2)])
            scales = [smooth_embedding(emb, s, latent=cfg.latent, c=cfg.c).reshape(-1, d) for s in (1.0, 4.0)]
            X = np.concatenate([log0(p, cfg.c) if cfg.latent == "hyperbolic" else p for p in scales], 1)
            for lvl in (2, 3):
                add("embedding, sigma 1 and 4 concatenated", lvl, kmeans(X, LEVELS[lvl]), truth[lvl])
            level1 = maps[2]
            ref = foreground_refined(level1, truth[1].shape,
                                     lambda m, k: cluster_points(pts[m], k, cfg.replace(level_clustering={}),
                                                                 seed=cfg.seed))
            for lvl in (2, 3):
                add("embedding, foreground refined", lvl, ref[lvl], truth[lvl])
        print(case, "done", flush=True)

    print(f"\n{len(files)} volumes of {args.data}, runs: {', '.join(str(r) for r in args.runs)}; "
          f"{platform.machine()} {datetime.date.today()}\n")
    print("| variant | Dice L1 | Dice L2 | Dice L3 |\n|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in scores):
        cells = [f"{np.mean(scores[(name, lvl)]):.3f}" if (name, lvl) in scores else "-" for lvl in LEVELS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    r = np.mean(r2, 0)
    print(f"\nR^2 of a linear map from the embedding to local mean / std: {r[0]:.3f} / {r[1]:.3f}")
    return args


if __name__ == "__main__":
    with _record.tee() as kept:
        used = main()
    _record.write(used.out, __file__, kept.getvalue(), rows=[])
