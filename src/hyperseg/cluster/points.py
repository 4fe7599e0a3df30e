"""Point sets: the geometry behind the Lloyd loop, as a strategy (flat / ball x mean / median).

A point set holds the points ``(N, d)`` feature-major and offers the few
operations :class:`hyperseg.cluster.lloyd.LloydKMeans` needs: a key increasing
in the distance for all centroids at once (``pairwise_key``, ``(K, N)``), the
nearest centroid (``nearest`` / ``assign``), each point's distance to its own
centroid (``rowdist``), the centroid update (``update``) and how far a
centroid moved (``shift``).

- :class:`FlatPoints`: Euclidean distance, arithmetic means;
- :class:`BallPoints`: Poincare distance, Frechet means (Lou et al. 2020);
- :class:`FlatMedianPoints`: Euclidean distance, geometric medians (Weiszfeld 1937);
- :class:`BallMedianPoints`: Poincare distance, geometric medians (Fletcher et al. 2009).

Ball points live in the *unit* ball (curvature -1); an estimator of
curvature ``-c`` scales its input by ``sqrt(c)`` first
(:func:`hyperseg.cluster._validation.to_unit_ball`). The distance formulas
are those of :mod:`hyperseg.geometry.poincare` (``cosh_dist_minus_1``,
``arccosh1p``, ``logmap``, ``expmap``, ``project``), evaluated here
feature-major.

Frechet mean in the Poincare ball
---------------------------------
The Frechet (Karcher) mean ``argmin_m sum_i d(x_i, m)^2`` is computed with
the fixed-point iteration of Lou et al., "Differentiating through the
Frechet Mean" (ICML 2020; its Poincare-ball algorithm), the algorithm the
paper cites. Setting the gradient to zero gives, for curvature -1 and
``A_i = 1 - |x_i|^2``,

    ``alpha_i = d_i / sinh(d_i)`` (``d_i = d(x_i, m)``, 1 at ``d_i = 0``),
    ``p = sum_i alpha_i (1 + |x_i|^2) / A_i``,  ``b = sum_i alpha_i x_i / A_i``,
    ``m <- 2 b / (p + sqrt(p^2 - 4 |b|^2))``,

where the ``alpha_i`` are evaluated at the current ``m`` (the smaller root of
``|b|^2 s^2 - p s + 1 = 0``, written without cancellation; ``p >= 2|b|`` so it
stays in the ball). Its fixed points are exactly the stationary points of
the Frechet objective, which is strictly convex on the ball (a Hadamard
manifold), and Lou et al. prove that the iteration converges to it; in the
flat limit (points near the origin) one step gives the arithmetic mean.

All clusters are updated at once: the weights are computed against each
point's own centroid and summed per cluster with ``bincount``. Inside
k-means each Lloyd iteration runs ``frechet_iters`` steps warm-started at the
previous centroid; since the Lloyd loop stops only when no centroid moves by
``tol`` or more, on convergence the centroids are fixed points of this
update to within ``tol`` (Poincare distance), i.e. Frechet means of their
clusters. :func:`hyperseg.cluster.frechet_mean` runs the same iteration to
its own tolerance.

Assignment uses a monotone surrogate of the Poincare distance: for a fixed
point ``x``, ``d(x, m) = arccosh(1 + 2|x-m|^2 / ((1-|x|^2)(1-|m|^2)))`` is
increasing in ``|x - m|^2 / (1 - |m|^2)``, so the argmin needs only one matrix
product and no ``arccosh``. Distances themselves (inertia, empty clusters,
centroid shifts) use the cancellation-free ``log1p`` form of ``arccosh``
(:func:`hyperseg.geometry.poincare.arccosh1p`).

Performance
-----------
With the defaults (``n_init=4``, ``frechet_iters=1``, one thread) a fit on
125,000 points of the 2-D ball (one 50^3 volume, 8 clusters) took 0.36 s
(separated blobs) to 0.71 s (overlapping blobs) on a 2-core CPU, against
~200 s extrapolated for a pure-Python loop; ``python
benchmarks/bench_kmeans.py`` measures it. What makes it fast: per-point data
kept feature-major, ``(K, d+1) @ (d+1, N)`` products for all distances, the
assignment's distances reused for the next Frechet step, transcendental
functions only on ``(N,)`` vectors (k-means++ weights in float32), and a
single thread, since each step is only a few passes over N points and OpenMP
threads cost more than they give, dramatically so on a machine whose cores
are busy with other work.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..geometry.poincare import MIN_NORM, arccosh1p, cosh_dist_minus_1, expmap, lambda_x, logmap, project
from ._validation import CURVATURE, Integer, Real, check_params, to_unit_ball

__all__ = ["argmin0", "FlatPoints", "BallPoints", "FlatMedianPoints", "BallMedianPoints", "centres_of", "COINCIDE"]

COINCIDE = 1e-12  # points this close to the centroid carry no direction (hyperseg.cluster.kmedians)


def argmin0(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, argmin)`` over axis 0 of ``S`` ``(K, N)``; ties go to the lowest index.

    ``amin`` plus K equality passes: on the CPU several times faster than
    ``S.min(0)`` / ``S.argmin(0)``, which reduce slowly over a short axis.
    """
    best = S.amin(0)
    labels = torch.zeros(S.shape[1], dtype=torch.int64)
    for k in range(S.shape[0] - 1, 0, -1):  # over the K clusters
        labels.masked_fill_(S[k] == best, k)
    labels.masked_fill_(S[0] == best, 0)
    return best, labels


class _PointSet:
    """Points ``(N, d)`` kept feature-major, plus what every Lloyd iteration reuses.

    Feature-major rows ``(d, N)`` make the per-point work 1-D passes and
    ``(K, d) @ (d, N)`` products, which on the CPU are several times faster
    than ``(N, d)`` layouts (short-axis reductions, skinny BLAS calls).
    Subclasses define the geometry: ``pairwise_key`` (``(K, N)``, increasing
    in the distance), ``key_to_sq``, ``nearest``, ``rowdist``, ``update``,
    ``shift``.
    """

    def __init__(self, z: torch.Tensor):
        self.z = z
        self.zt = z.T.contiguous()  # (d, N)
        self.z2 = (self.zt * self.zt).sum(0)  # (N,)

    def subset(self, idx: torch.Tensor):
        return type(self)(self.z[idx])

    def assign(self, m: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centroid, ``(N,)`` int64."""
        return self.nearest(m)[0]

    def _row_sq(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` ``|z_i - m_{l_i}|^2`` from exact differences (no cancellation)."""
        mt = m.T.contiguous()
        sq = torch.zeros_like(self.z2)
        for j in range(mt.shape[0]):  # over the d coordinates
            sq.add_((self.zt[j] - mt[j][labels]).square_())
        return sq

    def _cluster_sums(self, labels: torch.Tensor, rows: torch.Tensor, weights, K: int) -> torch.Tensor:
        """``(K, R)``: ``sum_{i in cluster k} weights_i rows[r, i]`` (``weights=None``: 1)."""
        return torch.stack([torch.bincount(labels, weights=r if weights is None else r * weights,
                                           minlength=K) for r in rows], 1)


class FlatPoints(_PointSet):
    """Points of R^d: Euclidean distance, arithmetic means."""

    def _scores(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` ``|m_k|^2 - 2 <z, m_k>`` = squared distance minus ``|z|^2``."""
        return torch.addmm((m * m).sum(-1)[:, None], m, self.zt, alpha=-2.0)

    def pairwise_key(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` squared distances (the key is the squared distance itself)."""
        return self._scores(m).add_(self.z2).clamp_min_(0.0)

    @staticmethod
    def key_to_sq(key: torch.Tensor) -> torch.Tensor:
        return key

    def nearest(self, m: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Nearest-centroid labels, and nothing for :meth:`update`."""
        return argmin0(self._scores(m))[1], None

    def rowdist(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distance of each point to its own centroid ``m[labels]``."""
        return self._row_sq(m, labels).sqrt_()

    def update(self, labels: torch.Tensor, m: torch.Tensor, n_steps: int = 1, tol: float = 0.0, delta=None):
        """Cluster means (an empty cluster keeps its centroid); returns ``(means, 1)``."""
        K = m.shape[0]
        sums = self._cluster_sums(labels, self.zt, None, K)
        counts = torch.bincount(labels, minlength=K).to(m.dtype)[:, None]
        return torch.where(counts > 0, sums / counts.clamp_min(1.0), m), 1

    @staticmethod
    def shift(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
        return (m0 - m1).norm(dim=-1)


class BallPoints(_PointSet):
    """Points of the unit Poincare ball (curvature -1): Poincare distance, Frechet means."""

    def __init__(self, z: torch.Tensor):
        super().__init__(z)
        self.inv_a = 1.0 / (1.0 - self.z2).clamp_min(MIN_NORM)  # 1 / (1 - |z|^2)
        # rows [z_1 .. z_d, |z|^2]: one product gives |z - m_k|^2 / (1 - |m_k|^2) for every centroid
        self.zaug = torch.cat([self.zt, self.z2[None]], 0)
        # rows [1 + |z|^2, z_1 .. z_d] / (1 - |z|^2): the Frechet-step sums, before the weights
        self.terms = torch.cat([(1.0 + self.z2)[None], self.zt], 0) * self.inv_a

    def _scaled_sq(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` ``|z - m_k|^2 / (1 - |m_k|^2)``, increasing in ``d(z, m_k)`` for each ``z``."""
        m2 = (m * m).sum(-1)
        inv_b = (1.0 / (1.0 - m2).clamp_min(MIN_NORM))[:, None]
        lhs = torch.cat([-2.0 * m, torch.ones_like(m2)[:, None]], 1) * inv_b
        return torch.addmm(m2[:, None] * inv_b, lhs, self.zaug).clamp_min_(0.0)

    def pairwise_key(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` ``cosh d(z, m_k) - 1`` (:func:`~hyperseg.geometry.poincare.cosh_dist_minus_1`, one product)."""
        return self._scaled_sq(m).mul_(2.0 * self.inv_a)

    @staticmethod
    def key_to_sq(key: torch.Tensor) -> torch.Tensor:
        """Squared Poincare distance from ``cosh d - 1``, in float32 (returned as float64).

        Only used for the k-means++ sampling weights and trial potentials,
        where a relative error of 1e-7 is immaterial and float32
        ``sqrt``/``log1p`` are 2-4x faster on the CPU.
        """
        return arccosh1p(key.float())[0].square_().double()

    def nearest(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centroid through the monotone surrogate (no arccosh needed).

        Also returns ``cosh d - 1`` to that centroid, from the same matrix
        product (accurate to ~1e-16 absolute: enough for the Frechet weights
        of the next :meth:`update`, not for reporting distances).
        """
        best, labels = argmin0(self._scaled_sq(m))
        return labels, best.mul_(2.0 * self.inv_a)

    def _row_delta(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` ``cosh d(z_i, m_{l_i}) - 1``, from the exact differences (no cancellation).

        The formula of :func:`hyperseg.geometry.poincare.cosh_dist_minus_1`
        (``c = 1``), feature-major, with the ``1 / (1 - |z|^2)`` factors reused.
        """
        inv_b = 1.0 / (1.0 - (m * m).sum(-1)).clamp_min(MIN_NORM)
        return self._row_sq(m, labels).mul_(self.inv_a).mul_(2.0 * inv_b[labels])

    def rowdist(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distance of each point to its own centroid ``m[labels]``."""
        return arccosh1p(self._row_delta(m, labels))[0]

    def update(self, labels: torch.Tensor, m: torch.Tensor, n_steps: int = 1, tol: float = 0.0,
               delta: torch.Tensor | None = None):
        """Up to ``n_steps`` Lou et al. steps for all clusters at once, warm-started at ``m``.

        A cluster without points keeps its centroid. Stops early once no
        centroid moves by ``tol`` or more. ``delta``: ``cosh d - 1`` of each
        point to ``m[labels]`` if already known (from :meth:`nearest`), which
        saves the first distance pass. Returns ``(centroids, steps)``.
        """
        K = m.shape[0]
        occupied = (torch.bincount(labels, minlength=K) > 0)[:, None]
        steps = 0
        for steps in range(1, n_steps + 1):
            if delta is None or steps > 1:
                delta = self._row_delta(m, labels)
            d, sh = arccosh1p(delta)
            alpha = torch.where(sh > 1e-8, d.div_(sh.clamp_min(1e-300)), 1.0)  # d / sinh d, -> 1 at 0
            sums = self._cluster_sums(labels, self.terms, alpha, K)
            p, b = sums[:, 0], sums[:, 1:]
            disc = (p * p - 4.0 * (b * b).sum(-1)).clamp_min(0.0)  # >= 0 in exact arithmetic
            s = 2.0 / (p + torch.sqrt(disc)).clamp_min(MIN_NORM)
            new = project(torch.where(occupied, s[:, None] * b, m), 1.0)
            moved = self.shift(m, new).max().item() if tol > 0 else math.inf
            m = new
            if moved < tol:
                break
        return m, steps

    @staticmethod
    def shift(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
        """Row-wise Poincare distance ``(K, d), (K, d) -> (K,)``: ``arccosh1p(cosh_dist_minus_1(m0, m1))``."""
        return arccosh1p(cosh_dist_minus_1(m0, m1))[0]


class BallMedianPoints(BallPoints):
    """Points of the unit ball whose cluster centres are geometric medians (:mod:`hyperseg.cluster.kmedians`)."""

    def update(self, labels: torch.Tensor, m: torch.Tensor, n_steps: int = 1, tol: float = 0.0,
               delta: torch.Tensor | None = None):
        """Up to ``n_steps`` Weiszfeld steps for all clusters at once, warm-started at ``m`` ``(K, d)``.

        A cluster without points (or whose points all sit on its centroid)
        keeps its centroid. Stops early once no centroid moves by ``tol`` or
        more. ``delta`` is accepted for the k-means interface and not needed.
        Returns ``(centroids, steps)``.
        """
        K = m.shape[0]
        steps = 0
        for steps in range(1, n_steps + 1):
            own = m[labels]  # (N, d)
            v = logmap(own, self.z)  # (N, d), Riemannian norm d_i
            d = v.norm(dim=-1) * lambda_x(own)  # (N,) d_i, read back from v (logmap already computed it)
            w = torch.where(d > COINCIDE, 1.0 / d.clamp_min(COINCIDE), 0.0)
            wsum = torch.bincount(labels, weights=w, minlength=K)  # (K,)
            vsum = self._cluster_sums(labels, v.T, w, K)  # (K, d)
            step = vsum / wsum.clamp_min(1e-300)[:, None]
            new = project(torch.where((wsum > 0)[:, None], expmap(m, step), m), 1.0)
            moved = self.shift(m, new).max().item() if tol > 0 else math.inf
            m = new
            if moved < tol:
                break
        return m, steps


class FlatMedianPoints(FlatPoints):
    """Points of R^d whose cluster centres are geometric medians (Weiszfeld 1937)."""

    def update(self, labels: torch.Tensor, m: torch.Tensor, n_steps: int = 1, tol: float = 0.0, delta=None):
        """Up to ``n_steps`` Weiszfeld steps ``m <- sum_i w_i x_i / sum_i w_i``, ``w_i = 1/|x_i - m|``.

        The flat case of :meth:`BallMedianPoints.update` (same guard, same
        return value ``(centroids, steps)``).
        """
        K = m.shape[0]
        steps = 0
        for steps in range(1, n_steps + 1):
            d = self._row_sq(m, labels).sqrt_()
            w = torch.where(d > COINCIDE, 1.0 / d.clamp_min(COINCIDE), 0.0)
            wsum = torch.bincount(labels, weights=w, minlength=K)
            new = self._cluster_sums(labels, self.zt, w, K) / wsum.clamp_min(1e-300)[:, None]
            new = torch.where((wsum > 0)[:, None], new, m)
            moved = self.shift(m, new).max().item() if tol > 0 else math.inf
            m = new
            if moved < tol:
                break
        return m, steps


def centres_of(point_set: type, X, labels, n_clusters: int | None, c: float, init,
               max_iter: int, tol: float, owner: str) -> np.ndarray:
    """Centre(s) of ball points by ``point_set.update`` run to convergence (Frechet mean, geometric median).

    Shared argument handling of :func:`frechet_mean` and
    :func:`hyperseg.cluster.kmedians.geometric_median`: ``(d,)`` without ``labels``,
    else ``(K, d)``; an empty cluster gets its ``init`` row, or NaN.
    """
    check_params(owner, {"c": c, "max_iter": max_iter, "tol": tol},
                 {"c": CURVATURE, "max_iter": Integer(1), "tol": Real(0.0)})
    pts = point_set(to_unit_ball(X, c, owner))
    n = pts.z.shape[0]
    if labels is None:
        lab, K = torch.zeros(n, dtype=torch.int64), 1
    else:
        lab = torch.as_tensor(np.asarray(labels)).reshape(-1).to(torch.int64)
        if lab.shape[0] != n:
            raise ValueError(f"{owner}: labels has {lab.shape[0]} entries but X has {n} points; "
                             "pass one label per point")
        K = int(lab.max()) + 1 if n_clusters is None else int(n_clusters)
        if int(lab.min()) < 0 or int(lab.max()) >= K:
            raise ValueError(f"{owner}: labels must lie in [0, {K}); renumber them 0 .. n_clusters - 1")
    if init is None:
        first = torch.full((K,), n, dtype=torch.int64).scatter_reduce(0, lab, torch.arange(n), reduce="amin")
        empty = first == n
        m0 = pts.z[first.clamp_max(n - 1)]
    else:
        m0 = to_unit_ball(torch.as_tensor(np.asarray(init)).reshape(K, -1), c, owner, "init")
        empty = torch.zeros(K, dtype=torch.bool)
    m, _ = pts.update(lab, m0, max_iter, tol * math.sqrt(c))
    m = torch.where(empty[:, None], math.nan, m / math.sqrt(c)).numpy()
    return m[0] if labels is None else m


