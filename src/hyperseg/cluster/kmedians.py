"""k-medians in the Poincare ball: centroids are geometric medians, not Frechet means.

k-means minimises ``sum_i d(x_i, m_{l_i})^2``; k-medians minimises
``sum_i d(x_i, m_{l_i})``. Squaring lets a small group of points far from the
rest dominate the objective, so 2-means may spend one of its two centroids on
them. On the synthetic benchmark this is the level-1 failure of BENCHMARKS.md:
on a volume whose cell is about as bright as the background, "cytoplasm and
background against the few, distinct organelles" has a *lower* k-means
objective than "cell against background". With unsquared distances the two
large regions win (validation volumes, BENCHMARKS.md).

Geometric median in the ball (Weiszfeld's algorithm on a manifold)
------------------------------------------------------------------
The geometric median ``argmin_m sum_i d(x_i, m)`` is found with the
Riemannian Weiszfeld iteration of Fletcher, Venkatasubramanian and Joshi,
"The geometric median on Riemannian manifolds with application to robust
atlas estimation" (NeuroImage 2009):

    ``m <- exp_m( sum_i w_i log_m(x_i) / sum_i w_i )``,  ``w_i = 1 / d(x_i, m)``.

The objective is convex on a Hadamard manifold such as the ball, and Fletcher
et al. prove convergence for this unit step on manifolds of non-positive
curvature. Since ``log_m(x_i)`` has Riemannian norm ``d(x_i, m)``, each term
``w_i log_m(x_i)`` is the unit direction from ``m`` towards ``x_i`` (a
Euclidean vector of length ``1 / lambda_m``), and the step is their mean
weighted by ``w_i / sum w``. **Guard:** a point closer to ``m`` than
``COINCIDE = 1e-12`` (Poincare distance) has no direction and an infinite
weight; it is left out of both sums (otherwise a centroid seeded on a data
point could never move), as in the usual modified Weiszfeld iteration.

:class:`HyperbolicKMedians` runs the Lloyd loop of :mod:`hyperseg.cluster.lloyd`
(k-means++-style seeding with ``d^1`` instead of ``d^2`` sampling, nearest
centroid assignment, ``n_init`` restarts keeping the lowest objective), with
``median_iters`` Weiszfeld steps per iteration warm-started at the previous
centroid (the point sets :class:`~hyperseg.cluster.points.BallMedianPoints`
and :class:`~hyperseg.cluster.points.FlatMedianPoints`). All clusters are
updated at once, with no Python loop over points.
"""
from __future__ import annotations

import numpy as np

from ._validation import Integer, as_points, to_unit_ball
from .lloyd import InBall, LloydKMeans
from .points import BallMedianPoints, FlatMedianPoints, centres_of

__all__ = ["HyperbolicKMedians", "EuclideanKMedians", "geometric_median"]


def geometric_median(X, labels=None, n_clusters: int | None = None, c: float = 1.0, init=None,
                     max_iter: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """Geometric median(s) ``argmin_m sum_i d(x_i, m)`` in the Poincare ball of curvature ``-c``.

    ``X`` ``(N, d)``; without ``labels`` returns the median of all points
    ``(d,)``, otherwise the median of each cluster ``(n_clusters, d)``. Runs
    the Weiszfeld iteration (module docstring) from ``init`` ``(K, d)``
    (default: each cluster's first point) until no median moves by ``tol``
    (Poincare distance) or ``max_iter`` steps. A cluster without points gets
    its ``init`` row, or NaN.
    """
    return centres_of(BallMedianPoints, X, labels, n_clusters, c, init, max_iter, tol, "geometric_median")


class HyperbolicKMedians(InBall, LloydKMeans):
    """k-medians in the Poincare ball of curvature ``-c``: the robust sibling of :class:`HyperbolicKMeans`.

    Same API, parameters and fitted attributes as :class:`HyperbolicKMeans`
    except: centroids are geometric medians (module docstring);
    ``median_iters`` Weiszfeld steps per Lloyd iteration replace
    ``frechet_iters``; k-means++ seeding samples with probability
    proportional to the distance (not its square); ``inertia_`` is the sum
    of (unsquared) Poincare distances to the assigned centroid, and the
    ``n_init`` run with the lowest such sum is kept. Weiszfeld converges
    linearly, so ``max_iter`` defaults to 300.
    """

    _power = 1
    _RULES = {**LloydKMeans._RULES, **InBall._BALL_RULES, "median_iters": Integer(1)}

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 300, tol: float = 1e-6,
                 c: float = 1.0, seed: int = 0, median_iters: int = 1, init: str = "k-means++",
                 sample_size: int | None = None, n_threads: int | None = 1):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.c = c
        self.seed = seed
        self.median_iters = median_iters
        self.init = init
        self.sample_size = sample_size
        self.n_threads = n_threads
        self._check_params()

    @property
    def _steps(self) -> int:
        return self.median_iters

    def _points(self, X, name="X"):
        return BallMedianPoints(to_unit_ball(X, self.c, type(self).__name__, name))


class EuclideanKMedians(LloydKMeans):
    """k-medians in R^d (for the Euclidean-latent ablation), same API as :class:`HyperbolicKMedians` without ``c``."""

    _power = 1
    _RULES = {**LloydKMeans._RULES, "median_iters": Integer(1)}

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 300, tol: float = 1e-6,
                 seed: int = 0, median_iters: int = 1, init: str = "k-means++", sample_size: int | None = None,
                 n_threads: int | None = 1):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.median_iters = median_iters
        self.init = init
        self.sample_size = sample_size
        self.n_threads = n_threads
        self._check_params()

    @property
    def _steps(self) -> int:
        return self.median_iters

    def _points(self, X, name="X"):
        return FlatMedianPoints(as_points(X, type(self).__name__, name))

    def _export(self, C):
        return C.numpy().copy()
