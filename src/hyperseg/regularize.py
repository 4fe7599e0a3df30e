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

:func:`hmrf_em` is the other refinement (``Config.refine = "hmrf_em"``): from
the clustering's labels (``Config.refine_init = "clusters"``) or from k-means
on the intensities (``"intensity"``, :func:`intensity_kmeans`, FAST's start),
hidden-MRF EM (Zhang, Brady & Smith 2001, as FSL FAST runs it on intensity) of
one diagonal Gaussian per cluster on two blocks of features, the standardised tangent coordinates ``u_i = log_0(x_i)`` of the
embedding and the voxel's normalised intensities ``v_i``:

    ``L[i, k] = w_e * log N(u_i; mu_k, diag s_k) + w_v * log N(v_i; nu_k, diag t_k)``,

E step the Potts mean field on ``L``, M step the responsibility-weighted means
and variances. Unlike the one-pass refinement the intensity model is
re-fitted, so a clustering of the embedding that does not follow a tissue
boundary can move to it; ``w_e`` says how far the embedding holds it back.
With ``bias_sigma > 0`` the EM also estimates a smooth bias field ``b`` on the
intensities, as FAST does (Wells et al. 1996; Zhang, Brady & Smith 2001): the
intensity term reads ``v_i - b_i`` and each M step re-estimates ``b`` from the
posterior-weighted residuals (:func:`bias_field_step`). The field is additive
in the normalised intensities: a multiplicative scanner field ``x (1 + e)``
read to first order in ``e`` (the tissue classes of a brain lie within a factor
of about 2 of each other). With ``proportions = tau > 0`` each E step also adds
``tau * log pi_k``, ``pi`` a Gaussian mixture's weights estimated from the
previous E step's posteriors without the Potts prior (:func:`mixing_proportions`):
with every class equally likely a priori, the class with the widest Gaussian
(CSF in a brain) takes the tail of its neighbour.

:func:`foreground_of` reads the foreground of a two-cluster level for
``Config.hierarchy = "foreground"``: background is the cluster holding most of
the voxels on the volume's six faces (:func:`border_cluster`), and only where
it is connected to the border (holes of the foreground, such as the
ventricles of a brain, are filled).
"""
from __future__ import annotations

import numpy as np
import torch

from .config import POTTS_METHODS
from .geometry.poincare import pairwise_dist
from .potts import _softmax0, icm, mean_field
from .utils import release_memory

__all__ = ["POTTS_METHODS", "bias_field_step", "normalised_low_pass", "border_cluster", "foreground_of", "class_loglik", "diagonal_gaussian_loglik", "hmrf_em",
           "intensity_kmeans", "intensity_loglik", "potts_labels", "tangent_features"]

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


def _on_grid(values: np.ndarray, mask: np.ndarray | None, n: int) -> np.ndarray:
    """``(M, K)`` rows of the voxels of ``mask`` (``(N,)`` bool, M true) -> ``(K, N)``, zero outside."""
    if mask is None:
        return values.T
    full = np.zeros((values.shape[1], n), dtype=np.float64)
    full[:, mask] = values.T
    return full


def _crop_to_mask(shape: tuple[int, int, int], mask: np.ndarray | None
                  ) -> tuple[tuple[int, int, int], np.ndarray | None]:
    """The grid and ``(N,)`` mask cut to the mask's bounding box (unchanged without a mask or when empty).

    The mask's voxels keep their raster order, so rows ``(M, ...)`` indexed by them stay valid."""
    if mask is None or not mask.any():
        return shape, mask
    m3 = mask.reshape(shape)
    box = []
    for ax in range(3):
        hit = np.flatnonzero(m3.any(axis=tuple(a for a in range(3) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    cut = m3[tuple(box)]
    return tuple(int(v) for v in cut.shape), cut.reshape(-1)  # type: ignore[return-value]


def _grid_mask(mask: np.ndarray | None, shape: tuple[int, int, int], m: int) -> np.ndarray | None:
    if mask is None:
        return None
    mk = np.asarray(mask, dtype=bool).reshape(-1)
    if mk.size != int(np.prod(shape)) or int(mk.sum()) != m:
        raise ValueError(f"regularize: mask must be (N,) bool on the grid {shape} with one true voxel per row "
                         f"({m}), got {mk.size} voxels with {int(mk.sum())} true")
    return mk


def potts_labels(loglik: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int], beta: float,
                 method: str = "mean_field", n_iter: int = 5, mask: np.ndarray | None = None) -> np.ndarray:
    """Labels ``(M,)`` int64 of the Potts energy on the grid ``shape`` (C order).

    ``loglik`` ``(M, K)`` (:func:`class_loglik`); ``labels`` ``(M,)`` the
    clustering's, the start of ICM. ``M = D * H * W``, or with ``mask``
    (``(D * H * W,)`` bool) the voxels of the mask: the prior then couples
    only neighbours that are both inside (:mod:`hyperseg.potts`). ``method``:
    ``"icm"`` (:func:`hyperseg.potts.icm`, ``n_iter`` sweeps at most) or
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
    mk = _grid_mask(mask, shape, len(L))
    m = n if mk is None else int(mk.sum())
    if L.ndim != 2 or L.shape[0] != m or lab.shape != (m,):
        raise ValueError(f"regularize: loglik (M, K) and labels (M,) must have M = {m} voxels for grid {shape}, "
                         f"got {L.shape} and {lab.shape}")
    if beta == 0:
        return lab
    grid = _on_grid(L, mk, n).reshape((L.shape[1],) + tuple(shape))
    m3 = None if mk is None else mk.reshape(shape)
    if method == "icm":
        start = lab if mk is None else _on_grid(lab[:, None].astype(np.float64), mk, n)[0].astype(np.int64)
        out = icm(grid, beta, labels=start.reshape(shape), mask=m3, n_iter=n_iter)
    else:
        out = mean_field(grid, beta, mask=m3, n_iter=n_iter).argmax(0)
    out = out.reshape(-1).astype(np.int64)
    return out if mk is None else out[mk]


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


def border_cluster(labels: np.ndarray, shape: tuple[int, int, int]) -> int:
    """The label holding most voxels of the volume's six faces (ties: the lower label).

    ``labels`` ``(D * H * W,)`` (or ``(D, H, W)``) ints >= 0. Background, in a
    brain or a cell, surrounds the object and touches the border; the
    foreground of a volume filled edge to edge has no border cluster to
    find and gets this one arbitrarily.
    """
    lab = np.asarray(labels, dtype=np.int64).reshape(shape)
    faces = np.concatenate([f.ravel() for f in (lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0],
                                                 lab[:, :, -1])])
    return int(np.bincount(faces).argmax())


def foreground_of(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Foreground ``(D * H * W,)`` bool of a two-cluster level ``labels`` ``(D * H * W,)``: every voxel but those of
    :func:`border_cluster` connected (6-neighbours) to the volume's border; holes are filled."""
    from scipy import ndimage as ndi

    lab = np.asarray(labels, dtype=np.int64).reshape(shape)
    fg = ndi.binary_fill_holes(lab != border_cluster(lab, shape))
    return fg.reshape(-1)


def tangent_features(points: np.ndarray, latent: str = "hyperbolic", c: float = 1.0) -> np.ndarray:
    """Standardised features ``(N, dim)`` of points ``(N, dim)``: ``log_0(x)`` for the ball (the point itself
    for the Euclidean latent), then each coordinate to mean 0 and standard deviation 1 (a constant coordinate
    is only centred)."""
    from .geometry.poincare import logmap0

    X = np.asarray(points, dtype=np.float64)
    U = logmap0(torch.from_numpy(X), c=c).numpy() if latent == "hyperbolic" else X
    sd = U.std(0)
    return (U - U.mean(0)) / np.where(sd > 0, sd, 1.0)


def diagonal_gaussian_loglik(features: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """``(N, K)`` log-densities of features ``(N, P)`` under the diagonal Gaussian of each cluster, fitted by
    the responsibilities ``resp`` ``(K, N)`` (weighted means and variances, each variance at least
    :data:`MIN_INTENSITY_VARIANCE`; a cluster with no weight takes every voxel's).

    ``log N(x; mu_k, diag s_k) = -1/2 sum_j [log(2 pi s_kj) + x_j^2 / s_kj - 2 x_j mu_kj / s_kj + mu_kj^2 / s_kj]``,
    computed as two ``(N, P) @ (P, K)`` products (the features are standardised, so the expansion loses
    nothing measurable in float64: ``tests/test_regularize.py`` holds it to the direct formula).
    """
    F = np.asarray(features, dtype=np.float64)
    q = np.asarray(resp, dtype=np.float64)
    tot = q.sum(1, keepdims=True)
    q = np.where(tot > 1e-12, q, 1.0)
    w = q / q.sum(1, keepdims=True)
    mu = w @ F  # (K, P)
    var = np.maximum(w @ (F ** 2) - mu ** 2, MIN_INTENSITY_VARIANCE)
    const = -0.5 * (np.log(2 * np.pi * var) + mu ** 2 / var).sum(1)  # (K,)
    return (F ** 2) @ (-0.5 / var).T + F @ (mu / var).T + const[None]


def intensity_kmeans(values: np.ndarray, n_clusters: int, seed: int = 0, sample_size: int | None = 50_000
                     ) -> np.ndarray:
    """Labels ``(M,)`` int64 in ``0..n_clusters-1`` of k-means on the voxels' intensities ``values`` ``(M, C)``
    (or ``(M,)``): the start of FSL FAST's EM. One channel: :func:`hyperseg.potts.kmeans_1d` (deterministic,
    started at the quantiles), labels by nearest centre in increasing order; several: Euclidean k-means
    (:class:`hyperseg.cluster.EuclideanKMeans`, ``seed``) fitted on at most ``sample_size`` voxels (all with
    ``None``), then every voxel to its nearest centre."""
    from .potts import kmeans_1d

    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    if v.ndim != 2 or len(v) < n_clusters:
        raise ValueError(f"regularize: need values (M, C) with M >= {n_clusters} voxels, got {v.shape}")
    if v.shape[1] == 1:
        centres = kmeans_1d(v[:, 0], n_clusters)
        return np.searchsorted((centres[1:] + centres[:-1]) / 2, v[:, 0]).astype(np.int64)
    from .cluster import make_clusterer

    km = make_clusterer("kmeans", "euclidean", n_clusters, seed=seed, sample_size=sample_size)
    return np.asarray(km.fit(v).labels_, dtype=np.int64)


#: :func:`normalised_low_pass` works on a grid coarser by ``f = floor(sigma / LOW_PASS_VOXELS_PER_BLOCK)`` (>= 1).
LOW_PASS_VOXELS_PER_BLOCK = 2.0

#: A smoothed weight below this is "no voxel within reach": the normalised low-pass gives 0 there.
MIN_SMOOTHED_WEIGHT = 1e-12


def normalised_low_pass(num: np.ndarray, den: np.ndarray, index: np.ndarray, shape: tuple[int, int, int],
                        sigma: float) -> np.ndarray:
    """``(G * num) / (G * den)`` at the voxels ``index``, per channel: a normalised convolution with a Gaussian
    ``G`` of ``sigma`` voxels of data that are zero off those voxels and past the grid.

    ``num``, ``den`` ``(M, C)``: the values at the ``M`` voxels ``index`` (flat C-order indices into the grid
    ``shape``); returns ``(M, C)``, 0 where ``G * den`` is below :data:`MIN_SMOOTHED_WEIGHT`.

    Computed on a grid coarser by ``f = floor(sigma / 2)``: each channel is averaged over ``f^3`` blocks (a
    ``bincount`` of the voxels into their block: no full-resolution grid is made), smoothed with ``sigma / f``
    (scipy, zero past the grid), divided, and the ratio read back at the voxels by trilinear interpolation.
    The block mean is a box filter that adds ``f^2 / 12`` to the variance per axis (at most 1/48 of
    ``sigma^2``) and the interpolation's error is second order in ``f / sigma``: the result stays within 0.011
    of the full-resolution ratio, ten times below the bias estimate's own error (``tests/test_bias_field.py``).
    ``f = 1`` is scipy's filter itself on the full grid. Memory: one channel at a time.
    """
    from scipy.ndimage import gaussian_filter

    num = np.asarray(num, dtype=np.float64).reshape(len(index), -1)
    den = np.asarray(den, dtype=np.float64).reshape(len(index), -1)
    index = np.asarray(index, dtype=np.int64)
    shape = tuple(int(v) for v in shape)
    n = int(np.prod(shape))
    f = max(1, int(sigma // LOW_PASS_VOXELS_PER_BLOCK))
    out = np.zeros(num.shape)
    if f == 1:
        for j in range(num.shape[1]):
            grids = []
            for a in (num[:, j], den[:, j]):
                g = np.zeros(n)
                g[index] = a
                grids.append(gaussian_filter(g.reshape(shape), sigma, mode="constant").reshape(-1)[index])
            out[:, j] = np.where(grids[1] > MIN_SMOOTHED_WEIGHT, grids[0] / np.maximum(grids[1], MIN_SMOOTHED_WEIGHT), 0)
        return out
    coarse = tuple(-(-v // f) for v in shape)  # ceil: the last block holds what is left
    d, h, w = np.unravel_index(index, shape)
    block = np.ravel_multi_index((d // f, h // f, w // f), coarse)
    # each voxel's position on the coarse grid, for grid_sample (align_corners=False: cell centres at
    # (j + 1/2) f - 1/2 in voxels): normalised to [-1, 1] over the coarse grid, axes in (x, y, z) = (w, h, d)
    grid = torch.empty(len(index), 3, dtype=torch.float64)
    for col, (a, m) in enumerate(zip((w, h, d), coarse[::-1])):
        grid[:, col] = torch.from_numpy((a + 0.5) / (f * m) * 2 - 1)
    grid = grid.view(1, 1, 1, -1, 3)
    del d, h, w
    for j in range(num.shape[1]):
        gn, gd = (gaussian_filter(np.bincount(block, weights=a, minlength=int(np.prod(coarse))).reshape(coarse)
                                  / f ** 3, sigma / f, mode="constant") for a in (num[:, j], den[:, j]))
        ratio = np.where(gd > MIN_SMOOTHED_WEIGHT, gn / np.maximum(gd, MIN_SMOOTHED_WEIGHT), 0.0)
        out[:, j] = torch.nn.functional.grid_sample(torch.from_numpy(ratio)[None, None], grid, mode="bilinear",
                                                    padding_mode="border", align_corners=False).reshape(-1).numpy()
    return out


def bias_field_step(values: np.ndarray, resp: np.ndarray, shape: tuple[int, int, int], sigma: float,
                    mask: np.ndarray | None = None, field: np.ndarray | None = None) -> np.ndarray:
    """One M step of the bias field ``(M, C)`` from the voxels' intensities ``(M, C)`` and responsibilities ``(K, M)``.

    For each channel, with the class means ``mu_k`` and variances ``s_k^2`` of the corrected intensities
    ``y_i = v_i - b_i`` (responsibility-weighted, ``b = field``, zero when ``None``):

        ``w_i = sum_k q_ik / s_k^2``,  ``r_i = (1 / w_i) sum_k q_ik (v_i - mu_k) / s_k^2``,
        ``b = G_sigma * (w r) / G_sigma * w``,

    the inverse-variance-weighted mean residual of every voxel, low-passed by a Gaussian of ``sigma`` voxels
    over the voxels of ``mask`` (``(D * H * W,)`` bool; ``None``: the whole grid) and normalised by the
    smoothed weights, so the field outside tissue is interpolated from tissue nearby (Wells et al. 1996). The
    field is then centred (weighted mean 0): the class means, not the field, hold the overall level.
    Guards: variances at least :data:`MIN_INTENSITY_VARIANCE`; a smoothed weight below ``1e-12`` (no voxel
    within reach) gives a field of 0 there.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    q = np.asarray(resp)
    q = q if q.dtype == np.float32 else q.astype(np.float64, copy=False)  # float32 posteriors (the mean field) stay so
    M = len(v)
    n = int(np.prod(shape))
    idx = np.arange(n) if mask is None else np.flatnonzero(mask)
    if len(idx) != M:
        raise ValueError(f"regularize: {M} voxels for a mask of {len(idx)}")
    b = np.zeros_like(v) if field is None else np.asarray(field, dtype=np.float64)
    tot = q.sum(1, keepdims=True, dtype=np.float64)
    wq = (q / np.maximum(tot, 1e-12)).astype(q.dtype)
    C = v.shape[1]
    num, den = np.empty((M, C)), np.empty((M, C))
    for j in range(C):
        y = v[:, j] - b[:, j]
        mu = (wq @ y).astype(np.float64)
        var = np.maximum((wq @ (y ** 2)).astype(np.float64) - mu ** 2, MIN_INTENSITY_VARIANCE)
        den[:, j] = (1.0 / var).astype(q.dtype) @ q  # w_i = sum_k q_ik / s_k^2
        num[:, j] = v[:, j] * den[:, j] - (mu / var).astype(q.dtype) @ q  # w_i r_i = sum_k q_ik (v_i - mu_k) / s_k^2
    field = normalised_low_pass(num, den, idx, shape, sigma)  # (M, C)
    del num
    field -= np.stack([np.average(field[:, j], weights=den[:, j]) for j in range(C)])[None]
    return field


def mixing_proportions(post: np.ndarray) -> np.ndarray:
    """Log mixing proportions ``(K,)`` of posteriors ``post`` ``(K, M)`` (each column sums to 1).

    ``log pi_k = log( sum_i p_i(k) / M )``: the M step of a Gaussian mixture's weights. :func:`hmrf_em` gives it
    the posteriors of the data term (and of the previous proportions) without the Potts prior, the mean field's
    start: the prior makes a large class larger, and its proportion then makes it larger again; with the mean
    field's posteriors (weight 1) the CSF class of the MNI152 template at 2 mm was gone (Dice 0.00-0.10, a
    prototype in BENCHMARKS.md). A class holding less than one voxel's worth of posterior counts as one voxel
    (``log`` of 0 guarded). Summed in float64 whatever ``post``'s type.
    """
    p = np.asarray(post)
    return np.log(np.maximum(p.sum(1, dtype=np.float64), 1.0) / p.shape[1])


def hmrf_em(points: np.ndarray, values: np.ndarray | None, labels: np.ndarray, n_clusters: int,
            shape: tuple[int, int, int], beta: float, embedding_weight: float = 1.0,
            intensity_weight: float = 1.0, n_iter: int = 8, mf_iter: int = 2, latent: str = "hyperbolic",
            c: float = 1.0, mask: np.ndarray | None = None, bias_sigma: float = 0.0,
            return_field: bool = False, proportions: float = 0.0
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Hidden-MRF EM on embedding and intensities from ``labels`` (module docstring); labels ``(M,)`` int64.

    ``points`` ``(M, dim)``, ``values`` ``(M, C)`` the normalised intensities (or ``None`` with
    ``intensity_weight = 0``), ``labels`` ``(M,)`` in ``0..n_clusters-1`` the start; ``M`` voxels of the grid
    ``shape``, all of them or those of ``mask`` (``(D * H * W,)`` bool). ``n_iter`` EM iterations, each with
    ``mf_iter`` mean-field sweeps of the Potts prior ``beta`` from the posteriors without it; the labels are
    the last posteriors' ``argmax``. Cluster numbers keep the start's meaning (a cluster is never renumbered).
    ``bias_sigma > 0`` (voxels): a bias field on the intensities is estimated in each M step
    (:func:`bias_field_step`) and subtracted in the next E step. ``return_field``: also return the last field
    ``(M, C)`` (``None`` without one), ``(labels, field)``. ``proportions`` ``tau > 0``: each E step adds
    ``tau * log pi_k`` to every voxel's ``L[i, k]``, ``pi`` the mixing proportions of the previous E step
    (:func:`mixing_proportions`; none in the first).
    """
    lab = np.asarray(labels, dtype=np.int64)
    M, K = len(lab), int(n_clusters)
    n = int(np.prod(shape))
    mk = _grid_mask(mask, shape, M)
    if mk is None and M != n:
        raise ValueError(f"regularize: {M} labels for grid {shape} ({n} voxels); give a mask or one per voxel")
    if beta < 0 or embedding_weight < 0 or intensity_weight < 0 or bias_sigma < 0 or proportions < 0:
        raise ValueError("regularize: beta, the weights, bias_sigma and proportions must be >= 0")
    emb = tangent_features(points, latent, c) if embedding_weight > 0 else None
    v = None
    if intensity_weight > 0:
        if values is None:
            raise ValueError("regularize: intensity_weight > 0 needs the intensities; pass values=")
        v = np.asarray(values, dtype=np.float64)
        v = v[:, None] if v.ndim == 1 else v
    if emb is None and v is None:
        raise ValueError("regularize: hmrf_em needs embedding_weight or intensity_weight above 0")
    # the mask's bounding box: voxels outside the mask take no part in the prior or the bias field (its
    # normalised convolution is zero there, and zero past the grid), so the crop changes nothing but the work
    shape, mk = _crop_to_mask(shape, mk)
    n = int(np.prod(shape))
    m3 = None if mk is None else mk.reshape(shape)
    q = np.eye(K)[lab].T  # (K, M) responsibilities of the start
    field = None  # the bias field (M, C) of bias_sigma, none before the first M step
    log_pi = None  # log mixing proportions (K,) of the previous E step, with proportions > 0
    for _ in range(n_iter):
        L = np.zeros((M, K))
        if emb is not None:
            L += embedding_weight * diagonal_gaussian_loglik(emb, q)
        if v is not None:
            L += intensity_weight * diagonal_gaussian_loglik(v if field is None else v - field, q)
        if log_pi is not None:
            L += proportions * log_pi[None]
        # float32 mean field: posteriors need no more, and the sweeps are memory-bound
        grid = _on_grid(L, mk, n).reshape((K,) + tuple(shape)).astype(np.float32)
        # each E step starts from the posteriors without the prior: started from the previous (one-hot at
        # first) posteriors, the prior holds the start's partition and the EM cannot leave it
        start = _softmax0(grid)
        if proportions > 0:  # the next E step's weights, from these posteriors (without the prior)
            log_pi = mixing_proportions(start.reshape(K, -1) if mk is None else start.reshape(K, -1)[:, mk])
        qg = mean_field(grid, beta, q=start, mask=m3, n_iter=mf_iter).reshape(K, -1)
        q = qg if mk is None else qg[:, mk]
        del grid, start, qg  # (K, n) each: not held through the M step
        if v is not None and bias_sigma > 0:
            field = bias_field_step(v, q, shape, bias_sigma, mask=mk, field=field)
        release_memory()  # the step's (K, n) and (M, C) temporaries, out of the heaps
    if return_field:
        return q.argmax(0).astype(np.int64), field
    return q.argmax(0).astype(np.int64)
