"""Clustering with a scale per cluster: a hard-assignment mixture of isotropic wrapped normals.

k-means gives every cluster the same spread: its boundary between two
centroids is the bisector, wherever the points actually are. Voxel
embeddings are not like that: the background of a volume is one compact blob,
the cell around it a wide cloud, and k-means with two clusters then cuts the
wide cloud in half instead of separating it from the compact blob. This
estimator lets each cluster have its own scale.

Model
-----
Cluster ``j`` is an isotropic wrapped normal on the Poincare ball of curvature
``-c`` (Nagano et al. 2019; Mathieu et al. 2019): mean ``m_j``, scale
``s_j``, mixing weight ``pi_j``. Its log-density at a point at geodesic distance
``r`` from ``m_j``, in ``d`` dimensions, is

    ``log p_j(x) = -d/2 log(2 pi s_j^2) - r^2 / (2 s_j^2) + (d - 1) log(sqrt(c) r / sinh(sqrt(c) r))``,

the last term being the volume change of the exponential map (it does not
depend on ``s_j``; it is 0 at ``r = 0``). In R^d the same model without that
term is an isotropic Gaussian mixture.

Fitting: classification EM (Celeux & Govaert 1992)
--------------------------------------------------
Start from k-means (:class:`hyperseg.cluster.HyperbolicKMeans`), then repeat:

1. assign each point to ``argmax_j log pi_j + log p_j(x)``;
2. for each cluster: ``pi_j`` = its share of points, ``m_j`` = the Frechet mean
   of its points (warm-started, Lou et al.), ``s_j^2 = mean(r^2) / d`` (the
   maximum-likelihood scale given ``m_j``);

until at most a fraction ``tol`` of the assignments changes, or ``max_iter``
iterations (hard EM can swap a few boundary points back and forth for ever). The Frechet mean is the
maximum-likelihood mean of the Gaussian part only (the volume term is ignored
there, as is usual for wrapped normals). Each step cannot increase the
classification likelihood's negative, so the loop terminates.

Numerical guards: ``MIN_VAR`` keeps a cluster of identical points from having
zero variance (infinite density); an emptied cluster is re-seeded at the point
the current mixture explains worst.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .cluster import EuclideanKMeans, HyperbolicKMeans, NotFittedError, frechet_mean
from .geometry.poincare import pairwise_dist

__all__ = ["HyperbolicMixture", "EuclideanMixture"]

#: Smallest per-cluster variance (squared distance units); below it a cluster is a point.
MIN_VAR = 1e-8


class _HardMixture:
    """Classification-EM loop shared by the hyperbolic and Euclidean mixtures."""

    hyperbolic = True

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 30, c: float = 1.0,
                 sample_size: int | None = None, seed: int = 0, frechet_iters: int = 3, tol: float = 1e-3):
        if int(n_clusters) != n_clusters or n_clusters < 1:
            raise ValueError(f"n_clusters must be an integer >= 1, got {n_clusters!r}")
        if int(n_init) != n_init or n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {n_init!r}")
        if int(max_iter) != max_iter or max_iter < 0:
            raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise ValueError(f"curvature magnitude c must be a finite number > 0, got {c!r}")
        self.n_clusters, self.n_init, self.max_iter, self.c = int(n_clusters), n_init, int(max_iter), float(c)
        if not (0 <= tol < 1):
            raise ValueError(f"tol must be in [0, 1), got {tol!r}")
        self.sample_size, self.seed, self.frechet_iters, self.tol = sample_size, seed, frechet_iters, tol

    # -- geometry hooks ---------------------------------------------------------
    def _kmeans(self):
        kw = dict(n_clusters=self.n_clusters, n_init=self.n_init, seed=self.seed, sample_size=None)
        return HyperbolicKMeans(c=self.c, **kw) if self.hyperbolic else EuclideanKMeans(**kw)

    def _dist(self, X: np.ndarray, M: np.ndarray) -> np.ndarray:
        """Distances ``(N, K)`` from points ``(N, d)`` to means ``(K, d)``."""
        if self.hyperbolic:
            return pairwise_dist(torch.from_numpy(X), torch.from_numpy(M), c=self.c).numpy()
        return np.sqrt(np.maximum(((X ** 2).sum(1)[:, None] - 2 * X @ M.T + (M ** 2).sum(1)[None]), 0.0))

    def _means(self, X: np.ndarray, labels: np.ndarray, init: np.ndarray) -> np.ndarray:
        if self.hyperbolic:
            return frechet_mean(X, labels, self.n_clusters, c=self.c, init=init, max_iter=self.frechet_iters)
        n = np.bincount(labels, minlength=self.n_clusters)[:, None]
        sums = np.stack([np.bincount(labels, weights=X[:, i], minlength=self.n_clusters)
                         for i in range(X.shape[1])], 1)
        return np.where(n > 0, sums / np.maximum(n, 1), init)

    def _log_volume(self, r: np.ndarray, d: int) -> np.ndarray:
        """``(d - 1) log(sqrt(c) r / sinh(sqrt(c) r))``, 0 at ``r = 0`` (and in flat space)."""
        if not self.hyperbolic or d == 1:
            return np.zeros_like(r)
        u = math.sqrt(self.c) * r
        safe = np.maximum(u, 1e-12)
        # log(u / sinh u) = log(2u) - u - log1p(-exp(-2u)), stable for large u
        val = np.log(2 * safe) - safe - np.log1p(-np.exp(-2 * safe))
        return (d - 1) * np.where(u < 1e-6, -u * u / 6, val)

    # -- fitting ------------------------------------------------------------------
    def log_prob(self, X) -> np.ndarray:
        """``log pi_j + log p_j(x)`` for every point and cluster, ``(N, K)``."""
        self._check_fitted()
        X = self._as_points(X)
        return self._joint(X, self.cluster_centers_, self.variances_, self.weights_)

    def _joint(self, X, M, var, w) -> np.ndarray:
        d = X.shape[1]
        r = self._dist(X, M)
        with np.errstate(divide="ignore"):
            logw = np.log(w)
        return (logw[None] - 0.5 * d * np.log(2 * np.pi * var)[None] - r ** 2 / (2 * var[None])
                + self._log_volume(r, d))

    def _as_points(self, X) -> np.ndarray:
        X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected points of shape (N, d), got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("points must be finite")
        return X

    def fit(self, X, y=None) -> "_HardMixture":
        X = self._as_points(X)
        if len(X) < self.n_clusters:
            raise ValueError(f"n_samples={len(X)} should be >= n_clusters={self.n_clusters}")
        rng = np.random.default_rng(self.seed)
        S = X[rng.choice(len(X), self.sample_size, replace=False)] if (
            self.sample_size and len(X) > self.sample_size) else X
        K, d = self.n_clusters, X.shape[1]
        km = self._kmeans().fit(S)
        M, labels = km.cluster_centers_, km.labels_
        self.n_iter_ = 0
        for it in range(self.max_iter + 1):
            n = np.bincount(labels, minlength=K)
            r = self._dist(S, M)
            var = np.array([max((r[labels == j, j] ** 2).mean() / d, MIN_VAR) if n[j] else MIN_VAR
                            for j in range(K)])
            w = n / n.sum()
            if it == self.max_iter:
                break
            joint = self._joint(S, M, var, w)
            new = joint.argmax(1)
            counts = np.bincount(new, minlength=K)
            for j in np.flatnonzero(counts == 0):  # re-seed an emptied cluster at the worst-explained point
                worst = int(np.argmin(joint.max(1)))
                new[worst] = j
                M = M.copy()
                M[j] = S[worst]
                joint[worst] = np.inf
            self.n_iter_ = it + 1
            if np.mean(new != labels) <= self.tol:
                break
            labels = new
            M = self._means(S, labels, M)
        self.cluster_centers_, self.variances_, self.weights_ = M, var, w
        self.labels_ = self.predict(X)
        return self

    def predict(self, X) -> np.ndarray:
        """The most likely cluster of each point ``(N,)`` int64."""
        return self.log_prob(X).argmax(1).astype(np.int64)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")


class HyperbolicMixture(_HardMixture):
    """Hard-assignment mixture of isotropic wrapped normals on the Poincare ball (module docstring).

    Parameters: ``n_clusters``; ``n_init`` (k-means initialisations); ``max_iter``
    (classification-EM iterations); ``c`` (curvature magnitude); ``sample_size``
    (fit on at most this many random points, then label all); ``seed``;
    ``frechet_iters`` (Lou et al. steps per mean update, warm-started); ``tol``
    (stop once at most this fraction of the points changes cluster).

    Fitted: ``cluster_centers_`` ``(K, d)`` (ball points), ``variances_`` ``(K,)``
    (``s_j^2``, squared geodesic units), ``weights_`` ``(K,)``, ``labels_``,
    ``n_iter_``.
    """

    hyperbolic = True


class EuclideanMixture(_HardMixture):
    """The same in R^d (isotropic Gaussians), for the Euclidean-latent ablation."""

    hyperbolic = False
