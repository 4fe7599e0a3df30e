"""Spatial regularisation of a level's cluster assignment: a Potts prior on the clustering's posteriors.

A clustering of the voxel embeddings labels each voxel on its own. Read as a
mixture, each fitted estimator also gives every voxel ``i`` a log-likelihood
for every cluster ``k`` (:func:`class_loglik`), ``(N, K)``:

* k-means (one shared isotropic Gaussian per centre ``m_k``, the model whose
  hard EM k-means is): ``L[i, k] = -d(x_i, m_k)^2 / (2 s^2)`` with the
  maximum-likelihood shared variance ``s^2 = mean_i d(x_i, m_{l_i})^2 / dim``;
* k-medians (the same with unsquared distances, an isotropic Laplace-like
  density): ``L[i, k] = -d(x_i, m_k) / b`` with ``b = mean_i d(x_i, m_{l_i}) / dim``;
* the mixture (:mod:`hyperseg.cluster.mixture`): its own
  ``log pi_k + log p_k(x_i)`` (``log_prob``).

``d`` is the Poincare distance for the hyperbolic latent (curvature ``-c``) and
the Euclidean one otherwise; ``l_i`` is the clustering's label. Those
log-likelihoods, laid on the voxel grid ``(K, D, H, W)``, are the data term of
the Potts energy of :mod:`hyperseg.potts`,

    ``E(l) = -sum_i L[i, l_i] + beta * sum_{i~j} [l_i != l_j]``  (6-neighbours),

minimised by ICM from the clustering's labels or approximated by mean field
(labels ``argmax_k q_i(k)``) in :func:`potts_labels`. ``beta = 0`` returns the
clustering's labels unchanged. The scale of ``L`` is fixed by the fitted
spread (``s^2`` or ``b``), so ``beta`` is in nats per disagreeing neighbour
whatever the latent's units.

:func:`intensity_loglik` adds the voxel's own normalised intensities: a
Gaussian per cluster and channel fitted on the clustering's labels, whose
log-likelihood, times a weight ``w``, is added to ``L`` before the Potts step
(or the ``argmax``). A 5^3 patch and the smoothing blur a one- or two-voxel
structure into its neighbours' cluster; its own intensity can take it back.
Validation Dice of each setting: ``benchmarks/results/segment_options_simple_val.json``.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import POTTS_METHODS
from .geometry.poincare import pairwise_dist
from .potts import icm, mean_field

__all__ = ["POTTS_METHODS", "class_loglik", "intensity_loglik", "potts_labels"]

#: Smallest fitted spread (``s^2`` or ``b``), in squared / plain distance units: a level whose
#: points all sit on their centres keeps finite log-likelihoods.
MIN_SPREAD = 1e-12

#: Smallest per-cluster intensity variance (normalised units, the volume's sd is 1): a cluster of
#: one value keeps a finite density. The prototype sweep used the same floor.
MIN_INTENSITY_VARIANCE = 1e-4


def _distances(points: np.ndarray, centres: np.ndarray, latent: str, c: float) -> np.ndarray:
    """``(N, K)`` distances from points ``(N, dim)`` to centres ``(K, dim)`` in the latent's geometry."""
    if latent == "hyperbolic":
        return pairwise_dist(torch.from_numpy(points), torch.from_numpy(centres), c=c).numpy()
    sq = (points ** 2).sum(1)[:, None] - 2.0 * points @ centres.T + (centres ** 2).sum(1)[None]
    return np.sqrt(np.maximum(sq, 0.0))


def class_loglik(points: np.ndarray, labels: np.ndarray, centres: np.ndarray, method: str,
                 latent: str = "hyperbolic", c: float = 1.0, estimator=None,
                 order: np.ndarray | None = None) -> np.ndarray:
    """Per-cluster log-likelihoods ``(N, K)`` float64 of points ``(N, dim)`` (module docstring).

    ``labels`` ``(N,)`` in ``0..K-1`` and ``centres`` ``(K, dim)`` are the
    clustering's, in the same cluster order; ``method`` is ``"kmeans"``,
    ``"kmedians"`` or ``"mixture"``. For the mixture, ``estimator`` is the
    fitted :class:`~hyperseg.cluster.HyperbolicMixture` (or Euclidean) and
    ``order[j]`` the estimator's cluster that is cluster ``j`` here (default:
    the estimator's own order); ``centres`` are then not read.
    """
    X = np.asarray(points, dtype=np.float64)
    M = np.asarray(centres, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    if X.ndim != 2 or M.ndim != 2 or M.shape[1] != X.shape[1] or lab.shape != (len(X),):
        raise ValueError(f"regularize: expected points (N, dim), labels (N,) and centres (K, dim), got "
                         f"{X.shape}, {lab.shape} and {M.shape}; give one label per point")
    if method == "mixture":
        if estimator is None:
            raise ValueError("regularize: the mixture's log-likelihoods need its fitted estimator; pass estimator=")
        L = np.asarray(estimator.log_prob(X), dtype=np.float64)
        return L if order is None else L[:, np.asarray(order, dtype=np.int64)]
    if method not in ("kmeans", "kmedians"):
        raise ValueError(f"regularize: unknown clustering method {method!r}; use kmeans, kmedians or mixture")
    r = _distances(X, M, latent, c)
    own = r[np.arange(len(X)), lab]
    dim = X.shape[1]
    if method == "kmedians":
        b = max(float(own.mean()) / dim, MIN_SPREAD)
        return -r / b
    s2 = max(float((own ** 2).mean()) / dim, MIN_SPREAD)
    return -(r ** 2) / (2.0 * s2)


def potts_labels(loglik: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int], beta: float,
                 method: str = "mean_field", n_iter: int = 5) -> np.ndarray:
    """Labels ``(N,)`` int64 of the Potts energy on the grid ``shape`` (``N = D * H * W``, C order).

    ``loglik`` ``(N, K)`` (:func:`class_loglik`); ``labels`` ``(N,)`` the
    clustering's, the start of ICM. ``method``: ``"icm"``
    (:func:`hyperseg.potts.icm`, ``n_iter`` sweeps at most) or
    ``"mean_field"`` (:func:`hyperseg.potts.mean_field` from the posteriors
    without the prior, ``n_iter`` sweeps, then ``argmax``). ``beta = 0``
    returns ``labels`` unchanged.
    """
    if method not in POTTS_METHODS:
        raise ValueError(f"regularize: method must be one of {POTTS_METHODS}, got {method!r}")
    if beta < 0:
        raise ValueError(f"regularize: beta must be >= 0 (0 = off), got {beta}")
    lab = np.asarray(labels, dtype=np.int64)
    L = np.asarray(loglik, dtype=np.float64)
    n = int(np.prod(shape))
    if L.ndim != 2 or L.shape[0] != n or lab.shape != (n,):
        raise ValueError(f"regularize: loglik (N, K) and labels (N,) must have N = {n} voxels for grid {shape}, "
                         f"got {L.shape} and {lab.shape}")
    if beta == 0:
        return lab
    grid = L.T.reshape((L.shape[1],) + tuple(shape))
    if method == "icm":
        out = icm(grid, beta, labels=lab.reshape(shape), n_iter=n_iter)
    else:
        out = mean_field(grid, beta, n_iter=n_iter).argmax(0)
    return out.reshape(-1).astype(np.int64)


def intensity_loglik(values: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Log-likelihoods ``(N, K)`` of each voxel's own intensities under a Gaussian per cluster.

    ``values`` ``(N, C)`` (or ``(N,)``): the normalised channels of every voxel;
    ``labels`` ``(N,)`` the clustering's. Cluster ``k`` gets, per channel ``ch``,
    the mean ``mu_k`` and variance ``v_k`` of its voxels (at least
    :data:`MIN_INTENSITY_VARIANCE`; a cluster of fewer than two voxels takes
    the whole volume's), and
    ``L[i, k] = sum_ch -(log(2 pi v_k) + (x_i - mu_k)^2 / v_k) / 2``. The
    variances put the intensity term in nats, as the embedding's, whatever the
    contrast of the volume: this is the product-space likelihood (ball x R^C,
    the two independent given the cluster).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    lab = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or lab.shape != (len(x),):
        raise ValueError(f"regularize: expected values (N, C) and labels (N,), got {x.shape} and {lab.shape}")
    out = np.empty((len(x), n_clusters), dtype=np.float64)
    for k in range(n_clusters):
        member = x[lab == k]
        if len(member) < 2:
            member = x
        mu = member.mean(0)
        var = np.maximum(member.var(0), MIN_INTENSITY_VARIANCE)
        out[:, k] = (-0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)).sum(1)
    return out
