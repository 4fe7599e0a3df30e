"""k-means in the Poincare ball (the paper's segmentation step) and in R^d (ablation).

Both follow the scikit-learn API (``fit``, ``predict``, ``fit_predict``,
``get_params``; fitted ``cluster_centers_``, ``labels_``, ``inertia_``,
``n_iter_``) and run the Lloyd loop of :mod:`hyperseg.cluster.lloyd` over a
point set of :mod:`hyperseg.cluster.points`: :class:`BallPoints` (Poincare
distance, Frechet means by the Lou et al. iteration) or :class:`FlatPoints`
(Euclidean distance, arithmetic means).

Points at or beyond the ball's radius ``1/sqrt(c)`` are refused; points
within the projection shell (closer than ``BALL_EPS[float64] = 1e-5``
relative to the rim) are first projected onto it, so that every distance is
finite. Other curvatures ``c`` are handled by scaling points by ``sqrt(c)``.
"""
from __future__ import annotations

import numpy as np

from ._validation import Integer, as_points, to_unit_ball
from .lloyd import InBall, LloydKMeans
from .points import BallPoints, FlatPoints, centres_of

__all__ = ["HyperbolicKMeans", "EuclideanKMeans", "frechet_mean"]


def frechet_mean(X, labels=None, n_clusters: int | None = None, c: float = 1.0, init=None,
                 max_iter: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """Frechet (Karcher) mean(s) ``argmin_m sum_i d(x_i, m)^2`` in the Poincare ball of curvature ``-c``.

    ``X`` ``(N, d)``; without ``labels`` returns the mean of all points
    ``(d,)``, otherwise the mean of each cluster ``(n_clusters, d)``, all
    clusters at once (an empty cluster gets its ``init`` row, or NaN).
    Iterates the Lou et al. update (:mod:`hyperseg.cluster.points`) from
    ``init`` ``(K, d)`` (default: the first point of each cluster) until no
    mean moves by ``tol`` (Poincare distance) or ``max_iter`` steps have been
    taken.
    """
    return centres_of(BallPoints, X, labels, n_clusters, c, init, max_iter, tol, "frechet_mean")


class HyperbolicKMeans(InBall, LloydKMeans):
    """k-means in the Poincare ball of curvature ``-c`` (Hsu et al. 2021, paper.md 1.7).

    Poincare distance for assignment, Frechet mean for centroids.

    Parameters
    ----------
    n_clusters : number of clusters K (>= 1).
    n_init : seeded runs; the one with the lowest inertia is kept.
    max_iter : maximum Lloyd iterations per run.
    tol : a run stops once no centroid moved by ``tol`` or more (Poincare
        distance) in one Lloyd iteration.
    c : curvature magnitude (> 0); points must have norm < ``1/sqrt(c)``
        (those within ``1e-5`` relative of the rim are projected inside).
    seed : seed of the ``torch.Generator`` behind all sampling.
    frechet_iters : Lou et al. steps per Lloyd iteration, warm-started at
        the previous centroid; convergence of the means is then enforced by
        ``tol`` through the Lloyd stopping rule.
    init : ``"k-means++"`` (D^2 sampling with squared Poincare distances) or
        ``"random"`` (K distinct data points, as the reference code).
    sample_size : fit on a random subset of at most this many points, then
        label all points (``None``: fit on all points).
    n_threads : torch intra-op threads during ``fit``/``predict`` (restored
        afterwards; ``None``: leave torch's setting). Default 1: each step is
        a few passes over N points, too little work per parallel region;
        on the 2-core development machine (shared with other processes) 2
        OpenMP threads made the fit 1.3x to ~40x *slower*, depending on the
        other load (``benchmarks/bench_kmeans.py``).

    Fitted attributes: ``cluster_centers_`` ``(K, d)`` float64 numpy, in the
    input's coordinates; ``labels_`` ``(N,)`` int64; ``inertia_`` (sum of
    squared Poincare distances to the assigned centroid); ``n_iter_`` (Lloyd
    iterations of the kept run); ``n_features_in_``.
    """

    _RULES = {**LloydKMeans._RULES, **InBall._BALL_RULES, "frechet_iters": Integer(1)}

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
                 c: float = 1.0, seed: int = 0, frechet_iters: int = 1, init: str = "k-means++",
                 sample_size: int | None = None, n_threads: int | None = 1):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.c = c
        self.seed = seed
        self.frechet_iters = frechet_iters
        self.init = init
        self.sample_size = sample_size
        self.n_threads = n_threads
        self._check_params()

    @property
    def _steps(self) -> int:
        return self.frechet_iters

    def _points(self, X, name="X"):
        return BallPoints(to_unit_ball(X, self.c, type(self).__name__, name))


class EuclideanKMeans(LloydKMeans):
    """k-means in R^d (the Euclidean-latent ablation), same API as :class:`HyperbolicKMeans`.

    Euclidean distance, arithmetic-mean centroids, k-means++ seeding with
    squared Euclidean distances; ``tol`` bounds the Euclidean centroid shift
    and ``inertia_`` is the sum of squared Euclidean distances. Parameters as
    :class:`HyperbolicKMeans` without ``c`` and ``frechet_iters``.
    """

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
                 seed: int = 0, init: str = "k-means++", sample_size: int | None = None,
                 n_threads: int | None = 1):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.init = init
        self.sample_size = sample_size
        self.n_threads = n_threads
        self._check_params()

    def _points(self, X, name="X"):
        return FlatPoints(as_points(X, type(self).__name__, name))

    def _export(self, C):
        return C.numpy().copy()
