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

the last term being the volume change of the exponential map,
``-(d - 1) log_sinhc(sqrt(c) r)`` with
:func:`hyperseg.geometry.wrapped_normal.log_sinhc` (it does not depend on
``s_j``; it is 0 at ``r = 0``). In R^d the same model without that
term is an isotropic Gaussian mixture.

Fitting: classification EM (Celeux & Govaert 1992)
--------------------------------------------------
Start from k-means of the same latent (built by
:func:`hyperseg.cluster.make_clusterer`, fitted on the subsample), then repeat:

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

from ..geometry.poincare import pairwise_dist
from ..geometry.wrapped_normal import log_sinhc
from . import dispatch
from ._base import Estimator
from ._validation import CURVATURE, Integer, Real, as_points, subsample
from .kmeans import frechet_mean

__all__ = ["HyperbolicMixture", "EuclideanMixture"]

#: Smallest per-cluster variance (squared distance units); below it a cluster is a point.
MIN_VAR = 1e-8


class _HardMixture(Estimator):
    """Classification-EM loop shared by the hyperbolic and Euclidean mixtures.

    A subclass gives the latent (``_latent``, for the k-means initialisation)
    and the geometry: ``_dist`` (point-to-mean distances), ``_means`` (cluster
    centres) and ``_log_volume`` (the exponential map's volume term).
    """

    _latent = ""
    _RULES = {"n_clusters": Integer(1), "n_init": Integer(1), "max_iter": Integer(0),
              "sample_size": Integer(1, optional=True), "seed": Integer(0), "tol": Real(0.0, below=1.0)}
    _AT_LEAST = (("sample_size", "n_clusters"),)

    # -- geometry hooks ---------------------------------------------------------
    def _geometry(self) -> dict:
        """Keyword arguments of :func:`make_clusterer` that describe the geometry (the curvature)."""
        return {}

    def _dist(self, X: np.ndarray, M: np.ndarray) -> np.ndarray:
        """Distances ``(N, K)`` from points ``(N, d)`` to means ``(K, d)``."""
        raise NotImplementedError

    def _means(self, X: np.ndarray, labels: np.ndarray, init: np.ndarray) -> np.ndarray:
        """Centre ``(K, d)`` of each cluster of ``X`` ``(N, d)``; an empty cluster keeps its ``init`` row."""
        raise NotImplementedError

    def _log_volume(self, r: np.ndarray, d: int) -> np.ndarray:
        """Log volume change of the exponential map at distance ``r`` ``(N, K)``, in ``d`` dimensions."""
        return np.zeros_like(r)

    # -- fitting ------------------------------------------------------------------
    def log_prob(self, X) -> np.ndarray:
        """``log pi_j + log p_j(x)`` for every point and cluster, ``(N, K)``."""
        self._check_fitted("cluster_centers_")
        X = as_points(X, type(self).__name__).numpy()
        return self._joint(X, self.cluster_centers_, self.variances_, self.weights_)

    def _joint(self, X, M, var, w) -> np.ndarray:
        d = X.shape[1]
        r = self._dist(X, M)
        with np.errstate(divide="ignore"):
            logw = np.log(w)
        return (logw[None] - 0.5 * d * np.log(2 * np.pi * var)[None] - r ** 2 / (2 * var[None])
                + self._log_volume(r, d))

    def fit(self, X, y=None) -> "_HardMixture":
        """Fit on ``X`` ``(N, d)`` (numpy or torch, any real dtype); returns ``self``.

        With ``sample_size`` the mixture is fitted on a random subset of at
        most that many points (:func:`hyperseg.cluster._validation.subsample`,
        drawn with ``seed``); ``labels_`` covers all points.
        """
        self._check_params()
        X = as_points(X, type(self).__name__).numpy()
        if len(X) < self.n_clusters:
            raise ValueError(f"{type(self).__name__}: n_samples={len(X)} should be >= "
                             f"n_clusters={self.n_clusters}; ask for fewer clusters or give more points")
        idx = subsample(len(X), self.sample_size, torch.Generator().manual_seed(int(self.seed)))
        S = X if idx is None else X[idx.numpy()]
        K, d = self.n_clusters, X.shape[1]
        km = dispatch.make_clusterer("kmeans", self._latent, K, n_init=self.n_init, seed=self.seed,
                                     sample_size=None, **self._geometry()).fit(S)
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

    _latent = "hyperbolic"
    _RULES = {**_HardMixture._RULES, "c": CURVATURE, "frechet_iters": Integer(1)}

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 30, c: float = 1.0,
                 sample_size: int | None = None, seed: int = 0, frechet_iters: int = 3, tol: float = 1e-3):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.c = c
        self.sample_size = sample_size
        self.seed = seed
        self.frechet_iters = frechet_iters
        self.tol = tol
        self._check_params()

    def _geometry(self) -> dict:
        return {"c": self.c}

    def _dist(self, X, M):
        return pairwise_dist(torch.from_numpy(X), torch.from_numpy(M), c=self.c).numpy()

    def _means(self, X, labels, init):
        return frechet_mean(X, labels, self.n_clusters, c=self.c, init=init, max_iter=self.frechet_iters)

    def _log_volume(self, r, d):
        """``(d - 1) log(sqrt(c) r / sinh(sqrt(c) r)) = -(d - 1) log_sinhc(sqrt(c) r)``, 0 at ``r = 0``."""
        if d == 1:
            return np.zeros_like(r)
        return -(d - 1) * log_sinhc(torch.from_numpy(math.sqrt(self.c) * r)).numpy()


class EuclideanMixture(_HardMixture):
    """The same in R^d (isotropic Gaussians), for the Euclidean-latent ablation.

    Parameters as :class:`HyperbolicMixture` without ``c`` and ``frechet_iters``
    (the means are arithmetic); no volume term.
    """

    _latent = "euclidean"

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 30, sample_size: int | None = None,
                 seed: int = 0, tol: float = 1e-3):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.sample_size = sample_size
        self.seed = seed
        self.tol = tol
        self._check_params()

    def _dist(self, X, M):
        return np.sqrt(np.maximum(((X ** 2).sum(1)[:, None] - 2 * X @ M.T + (M ** 2).sum(1)[None]), 0.0))

    def _means(self, X, labels, init):
        n = np.bincount(labels, minlength=self.n_clusters)[:, None]
        sums = np.stack([np.bincount(labels, weights=X[:, i], minlength=self.n_clusters)
                         for i in range(X.shape[1])], 1)
        return np.where(n > 0, sums / np.maximum(n, 1), init)
