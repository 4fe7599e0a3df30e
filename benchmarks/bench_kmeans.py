"""Fit time and quality of hyperbolic and Euclidean k-means on one volume's worth of points.

    python benchmarks/bench_kmeans.py [--n 125000] [--k 8] [--sigmas 0.5 1.0] [--repeats 3] [--sweep]

Points: a seeded mixture of ``k`` wrapped normal blobs in the 2-D Poincare
ball (centres at hyperbolic distance ``--radius`` from the origin, evenly
spread in angle; tangent noise ``N(0, sigma^2 I)`` at the origin, moved to
the centre by parallel transport and the exponential map). ``--n 125000`` is
one 50^3 volume, the paper's per-volume clustering job.

Times ``fit`` (best and median of ``--repeats``) with default parameters for
:class:`HyperbolicKMeans` (also with torch's default thread count) and
:class:`EuclideanKMeans`, and reports the Poincare inertia and the
Hungarian-matched mean Dice against the blob labels. For
reference, a naive pure-Python hyperbolic k-means (per-point loops,
``math.acosh``, per-cluster Karcher iteration; the shape of the reference
code) is timed for a few Lloyd iterations on ``--naive-subset`` points and
**extrapolated** linearly in points and iterations to the full problem
(``n_init`` runs of as many Lloyd iterations as the vectorised fit's kept
run). ``--sweep`` also times a grid of ``n_init`` x
``frechet_iters`` (used to choose the defaults).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import time

import numpy as np
import torch

from hyperseg.cluster import EuclideanKMeans, HyperbolicKMeans
from hyperseg.geometry.poincare import expmap, expmap0, pairwise_dist, transp0
from hyperseg.metrics import mean_dice


def wrapped_blobs(n: int, k: int, radius: float, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of a ``k``-blob wrapped-normal mixture in the unit 2-D ball, and their blob ids."""
    g = torch.Generator().manual_seed(seed)
    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    mu = expmap0(radius / 2 * torch.stack([ang.cos(), ang.sin()], 1))  # d(0, exp_0(u)) = 2|u| = radius
    y = torch.randint(k, (n,), generator=g)
    v = sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # tangent vector at the origin with the metric's unit scale (lambda_0 = 2) -> transport -> exp
    x = expmap(mu[y], transp0(mu[y], v / 2.0))
    return x.numpy(), y.numpy()


def naive_hyperbolic_kmeans(points: list[list[float]], k: int, n_iter: int, seed: int) -> list[int]:
    """Pure-Python Lloyd with Poincare distance and per-cluster Karcher means (10 steps each)."""
    rnd = random.Random(seed)

    def dist(x, y):
        sq = sum((a - b) ** 2 for a, b in zip(x, y))
        return math.acosh(1 + 2 * sq / ((1 - sum(a * a for a in x)) * (1 - sum(b * b for b in y))))

    def mobius_add(x, y):
        xy = sum(a * b for a, b in zip(x, y))
        x2 = sum(a * a for a in x)
        y2 = sum(b * b for b in y)
        den = 1 + 2 * xy + x2 * y2
        return [((1 + 2 * xy + y2) * a + (1 - x2) * b) / den for a, b in zip(x, y)]

    def logmap(m, x):
        u = mobius_add([-a for a in m], x)
        nu = math.sqrt(sum(a * a for a in u)) or 1e-15
        lam = 2 / (1 - sum(a * a for a in m))
        return [2 / lam * math.atanh(min(nu, 1 - 1e-15)) * a / nu for a in u]

    def expmap_(m, v):
        nv = math.sqrt(sum(a * a for a in v)) or 1e-15
        lam = 2 / (1 - sum(a * a for a in m))
        t = math.tanh(lam * nv / 2)
        return mobius_add(m, [t * a / nv for a in v])

    centres = rnd.sample(points, k)
    labels = [0] * len(points)
    for _ in range(n_iter):
        labels = [min(range(k), key=lambda j: dist(p, centres[j])) for p in points]
        for j in range(k):
            members = [p for p, lab in zip(points, labels) if lab == j]
            if not members:
                continue
            m = centres[j]
            for _ in range(10):
                logs = [logmap(m, p) for p in members]
                mean = [sum(col) / len(logs) for col in zip(*logs)]
                m = expmap_(m, mean)
            centres[j] = m
    return labels


def time_fit(make, X, repeats: int):
    """Best and median wall time of ``repeats`` fits, and the last fitted estimator."""
    times, km = [], None
    for _ in range(repeats):
        km = make()
        t = time.perf_counter()
        km.fit(X)
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times)), km


def poincare_inertia(X: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> float:
    d = pairwise_dist(torch.from_numpy(X), torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float64)), 1.0)
    return float((d.gather(1, torch.from_numpy(labels)[:, None]) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=125_000, help="number of points (125,000 = one 50^3 volume)")
    ap.add_argument("--k", type=int, default=8, help="clusters (= blobs)")
    ap.add_argument("--radius", type=float, default=2.5, help="hyperbolic distance of blob centres from 0")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0],
                    help="blob spreads (tangent std) to run: 0.5 = separated, 1.0 = overlapping")
    ap.add_argument("--repeats", type=int, default=3, help="fits timed per row (best and median reported)")
    ap.add_argument("--naive-subset", type=int, default=1000, help="points for the naive loop (extrapolated)")
    ap.add_argument("--naive-iters", type=int, default=3, help="Lloyd iterations timed for the naive loop")
    ap.add_argument("--sweep", action="store_true", help="also time n_init x frechet_iters")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.platform()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, torch default {torch.get_num_threads()} threads, "
          f"load average {load:.2f} at start; date {datetime.date.today()}")
    print(f"data: {args.n} points, {args.k} wrapped blobs in the 2-D ball, centres at distance {args.radius} "
          f"from 0, seed {args.seed}; time = best / median of {args.repeats} fits\n")
    X0, _ = wrapped_blobs(2000, args.k, args.radius, args.sigmas[0], args.seed)
    HyperbolicKMeans(n_clusters=args.k).fit(X0)  # warm-up

    print("| sigma | estimator | fit best (s) | fit median (s) | n_iter_ (kept run) | inertia (Poincare) "
          "| mean Dice vs blobs |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("HyperbolicKMeans, defaults", lambda: HyperbolicKMeans(n_clusters=args.k, seed=args.seed)),
        (f"HyperbolicKMeans, n_threads=None ({torch.get_num_threads()})",
         lambda: HyperbolicKMeans(n_clusters=args.k, seed=args.seed, n_threads=None)),
        ("EuclideanKMeans, defaults", lambda: EuclideanKMeans(n_clusters=args.k, seed=args.seed)),
    ]
    for sigma in args.sigmas:
        X, y = wrapped_blobs(args.n, args.k, args.radius, sigma, args.seed)
        for name, make in rows:
            best, med, km = time_fit(make, X, args.repeats)
            print(f"| {sigma} | {name} | {best:.3f} | {med:.3f} | {km.n_iter_} "
                  f"| {poincare_inertia(X, km.cluster_centers_, km.labels_):.1f} | {mean_dice(km.labels_, y):.4f} |")
            if name.endswith("defaults") and name.startswith("Hyperbolic") and sigma == args.sigmas[0]:
                t_h, hk = best, km

    X, _ = wrapped_blobs(args.n, args.k, args.radius, args.sigmas[0], args.seed)
    sub = X[: args.naive_subset].tolist()
    t = time.perf_counter()
    naive_hyperbolic_kmeans(sub, args.k, args.naive_iters, args.seed)
    t_naive = time.perf_counter() - t
    per_point_iter = t_naive / (args.naive_subset * args.naive_iters)
    extrap = per_point_iter * args.n * hk.n_iter_ * hk.n_init
    print(f"\nnaive pure-Python loop: {args.naive_subset} points x {args.naive_iters} Lloyd iterations took "
          f"{t_naive:.2f} s = {per_point_iter * 1e6:.1f} us per point per iteration; **extrapolated** to "
          f"{args.n} points x {hk.n_iter_} iterations x {hk.n_init} inits (sigma {args.sigmas[0]}): "
          f"~{extrap:.0f} s, i.e. ~{extrap / t_h:.0f}x the vectorised fit")

    if args.sweep:
        X, y = wrapped_blobs(args.n, args.k, args.radius, args.sigmas[-1], args.seed)
        print(f"\nsweep (sigma {args.sigmas[-1]}, {args.repeats} fits each)\n")
        print("| n_init | frechet_iters | fit best (s) | fit median (s) | n_iter_ | inertia | mean Dice |")
        print("|---|---|---|---|---|---|---|")
        for n_init in (1, 2, 4):
            for fi in (1, 2, 3):
                best, med, km = time_fit(lambda: HyperbolicKMeans(n_clusters=args.k, n_init=n_init,
                                                                  frechet_iters=fi, seed=args.seed),
                                         X, args.repeats)
                print(f"| {n_init} | {fi} | {best:.3f} | {med:.3f} | {km.n_iter_} | {km.inertia_:.1f} "
                      f"| {mean_dice(km.labels_, y):.4f} |")


if __name__ == "__main__":
    main()
