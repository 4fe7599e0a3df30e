"""Fit time and quality of hyperbolic and Euclidean k-means and k-medians on one volume's worth of points.

    python benchmarks/bench_kmeans.py [--n 125000] [--k 8] [--dim 4] [--sigmas 0.5 1.0] [--repeats 3]
                                      [--sweep] [--out benchmarks/results/kmeans.json]

Points: a seeded mixture of ``k`` wrapped normal blobs in the ``--dim``-D
Poincare ball (default: the configuration's ``latent_dim``; centres at
hyperbolic distance ``--radius`` from the origin, evenly spread in angle in
the first two coordinates; tangent noise ``N(0, sigma^2 I)`` at the origin,
moved to the centre by parallel transport and the exponential map).
``--n 125000`` is one 50^3 volume, the per-volume clustering job.

Times ``fit`` (best and median of ``--repeats``) with default parameters for
:class:`HyperbolicKMeans` (also with torch's default thread count),
:class:`EuclideanKMeans` and :class:`HyperbolicKMedians` (the default
pipeline's method at 2 clusters), and reports the Poincare inertia and the
Hungarian-matched mean Dice against the blob labels. For
reference, a naive pure-Python hyperbolic k-means (per-point loops,
``math.acosh``, per-cluster Karcher iteration; the shape of the reference
code) is timed for a few Lloyd iterations on ``--naive-subset`` points and
**extrapolated** linearly in points and iterations to the full problem
(``n_init`` runs of as many Lloyd iterations as the vectorised fit's kept
run). ``--sweep`` also times a grid of ``n_init`` x
``frechet_iters`` (used to choose the defaults). The tables, the command,
the machine and the date are written to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import math
import random
import time

import numpy as np
import torch

import _record
from hyperseg.cluster import EuclideanKMeans, HyperbolicKMeans, HyperbolicKMedians
from hyperseg.config import Config
from hyperseg.geometry.poincare import expmap, expmap0, pairwise_dist, transp0
from hyperseg.metrics import mean_dice


def wrapped_blobs(n: int, k: int, radius: float, sigma: float, seed: int,
                  dim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` points of a ``k``-blob wrapped-normal mixture in the unit ball, and their ``(n,)`` blob ids.

    Centre ``j`` is ``exp_0(radius / 2 * (cos a_j, sin a_j, 0, ..., 0))`` with ``a_j = 2 pi j / k``,
    so ``d(0, mu_j) = radius``; each point is ``exp_mu(P_{0 -> mu}(v / 2))`` with ``v ~ N(0, sigma^2 I_dim)``.
    """
    if dim < 2:
        raise ValueError(f"bench_kmeans.py: --dim must be >= 2, got {dim}; the blob centres use two axes")
    g = torch.Generator().manual_seed(seed)
    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    u = torch.zeros(k, dim, dtype=torch.float64)
    u[:, 0], u[:, 1] = ang.cos(), ang.sin()
    mu = expmap0(radius / 2 * u)  # d(0, exp_0(u)) = 2|u| = radius
    y = torch.randint(k, (n,), generator=g)
    v = sigma * torch.randn(n, dim, generator=g, dtype=torch.float64)
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
    """Best and median wall time of ``repeats`` fits, the best CPU time (all threads), and the last estimator."""
    times, cpus, km = [], [], None
    for _ in range(repeats):
        km = make()
        t, c = time.perf_counter(), time.process_time()
        km.fit(X)
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(times), float(np.median(times)), min(cpus), km


def poincare_inertia(X: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> float:
    d = pairwise_dist(torch.from_numpy(X), torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float64)), 1.0)
    return float((d.gather(1, torch.from_numpy(labels)[:, None]) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=125_000, help="number of points (125,000 = one 50^3 volume)")
    ap.add_argument("--k", type=int, default=8, help="clusters (= blobs)")
    ap.add_argument("--dim", type=int, default=Config().latent_dim,
                    help="ball dimension (default: the configuration's latent_dim)")
    ap.add_argument("--radius", type=float, default=2.5, help="hyperbolic distance of blob centres from 0")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0],
                    help="blob spreads (tangent std) to run: 0.5 = separated, 1.0 = overlapping")
    ap.add_argument("--repeats", type=int, default=3, help="fits timed per row (best and median reported)")
    ap.add_argument("--naive-subset", type=int, default=1000, help="points for the naive loop (extrapolated)")
    ap.add_argument("--naive-iters", type=int, default=3, help="Lloyd iterations timed for the naive loop")
    ap.add_argument("--sweep", action="store_true", help="also time n_init x frechet_iters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(_record.RESULTS / "kmeans.json"), help="results file (JSON)")
    args = ap.parse_args()

    out: list[str] = []
    rows: list[dict] = []

    def emit(line: str = "") -> None:
        print(line)
        out.append(line)

    emit(f"Command: `{_record.command(__file__)}`")
    emit()
    emit(f"Machine: {_record.machine()}; date {datetime.date.today()}")
    emit()
    emit(f"Data: {args.n} points, {args.k} wrapped blobs in the {args.dim}-D ball, centres at distance "
         f"{args.radius} from 0, seed {args.seed}; time = best / median of {args.repeats} fits")
    emit()
    blobs = functools.partial(wrapped_blobs, k=args.k, radius=args.radius, seed=args.seed, dim=args.dim)
    HyperbolicKMeans(n_clusters=args.k).fit(blobs(2000, sigma=args.sigmas[0])[0])  # warm-up

    emit("| sigma | estimator | fit best (s) | fit median (s) | fit CPU best (s) | n_iter_ (kept run) "
         "| inertia (Poincare) | mean Dice vs blobs |")
    emit("|---|---|---|---|---|---|---|---|")
    makers = [
        ("HyperbolicKMeans, defaults", lambda: HyperbolicKMeans(n_clusters=args.k, seed=args.seed)),
        (f"HyperbolicKMeans, n_threads=None ({torch.get_num_threads()})",
         lambda: HyperbolicKMeans(n_clusters=args.k, seed=args.seed, n_threads=None)),
        ("EuclideanKMeans, defaults", lambda: EuclideanKMeans(n_clusters=args.k, seed=args.seed)),
        ("HyperbolicKMedians, defaults", lambda: HyperbolicKMedians(n_clusters=args.k, seed=args.seed)),
    ]
    for sigma in args.sigmas:
        X, y = blobs(args.n, sigma=sigma)
        for name, make in makers:
            best, med, cpu, km = time_fit(make, X, args.repeats)
            inertia, dice = poincare_inertia(X, km.cluster_centers_, km.labels_), mean_dice(km.labels_, y)
            rows.append({"table": "fit", "sigma": sigma, "estimator": name, "fit_best_s": best,
                         "fit_median_s": med, "fit_cpu_best_s": cpu, "n_iter": int(km.n_iter_),
                         "inertia": inertia, "mean_dice": dice})
            emit(f"| {sigma} | {name} | {best:.3f} | {med:.3f} | {cpu:.3f} | {km.n_iter_} | {inertia:.1f} "
                 f"| {dice:.4f} |")
            if name == "HyperbolicKMeans, defaults" and sigma == args.sigmas[0]:
                t_h, hk = best, km

    X, _ = blobs(args.n, sigma=args.sigmas[0])
    sub = X[: args.naive_subset].tolist()
    t = time.perf_counter()
    naive_hyperbolic_kmeans(sub, args.k, args.naive_iters, args.seed)
    t_naive = time.perf_counter() - t
    per_point_iter = t_naive / (args.naive_subset * args.naive_iters)
    extrap = per_point_iter * args.n * hk.n_iter_ * hk.n_init
    rows.append({"table": "naive", "points": args.naive_subset, "iterations": args.naive_iters,
                 "seconds": t_naive, "extrapolated_s": extrap, "ratio_to_vectorised": extrap / t_h})
    emit()
    emit(f"Naive pure-Python loop: {args.naive_subset} points x {args.naive_iters} Lloyd iterations took "
         f"{t_naive:.2f} s = {per_point_iter * 1e6:.1f} us per point per iteration; **extrapolated** to "
         f"{args.n} points x {hk.n_iter_} iterations x {hk.n_init} inits (sigma {args.sigmas[0]}): "
         f"~{extrap:.0f} s, i.e. ~{extrap / t_h:.0f}x the vectorised fit")

    if args.sweep:
        X, y = blobs(args.n, sigma=args.sigmas[-1])
        emit()
        emit(f"Sweep (sigma {args.sigmas[-1]}, {args.repeats} fits each)")
        emit()
        emit("| n_init | frechet_iters | fit best (s) | fit median (s) | n_iter_ | inertia | mean Dice |")
        emit("|---|---|---|---|---|---|---|")
        for n_init in (1, 2, 4):
            for fi in (1, 2, 3):
                best, med, _, km = time_fit(lambda: HyperbolicKMeans(n_clusters=args.k, n_init=n_init,
                                                                  frechet_iters=fi, seed=args.seed),
                                         X, args.repeats)
                dice = mean_dice(km.labels_, y)
                rows.append({"table": "sweep", "n_init": n_init, "frechet_iters": fi, "fit_best_s": best,
                             "fit_median_s": med, "n_iter": int(km.n_iter_), "inertia": float(km.inertia_),
                             "mean_dice": dice})
                emit(f"| {n_init} | {fi} | {best:.3f} | {med:.3f} | {km.n_iter_} | {km.inertia_:.1f} | {dice:.4f} |")
    _record.write(args.out, __file__, "\n".join(out), rows)

if __name__ == "__main__":
    main()
