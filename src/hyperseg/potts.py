"""Spatial regularisation of a cluster assignment on a 3D grid: the Potts prior.

Given per-voxel class log-likelihoods ``L[k, i] = log p(x_i | l_i = k)``, shape
``(K, D, H, W)`` (or ``(D, H, W, K)`` with ``class_axis=-1``), and a coupling
``beta >= 0`` over the 6-neighbourhood, the labelling ``l`` is scored by

    E(l) = -sum_i log p(x_i | l_i) + beta * sum_{i~j} [l_i != l_j]

(each unordered neighbour pair ``i~j`` counted once). With a boolean ``mask``
``(D, H, W)``, voxels outside it are ignored: they have no data term, they do
not vote for their neighbours, and pairs with one end outside do not count.

* :func:`icm`: iterated conditional modes (Besag 1986), a local minimiser of
  ``E``. Updates are by checkerboard: first every voxel with ``d + h + w`` even,
  then every odd one. Two voxels of one colour are never 6-neighbours, so a
  simultaneous update of one colour is exactly the sequential one in any order,
  and each half-sweep can only lower ``E``.
* :func:`mean_field`: the mean-field approximation of the posterior
  ``p(l | x) ~ exp(-E(l))``: ``q_i(k) ~ exp(L[k, i] + beta * sum_{j~i} q_j(k))``,
  iterated with the same checkerboard schedule (a synchronous Jacobi update can
  oscillate between the two colours).
* :func:`hmrf_em`: the hidden-MRF EM of a Gaussian mixture on intensity (Zhang,
  Brady & Smith 2001, the recipe of FSL FAST): k-means initialisation, then EM
  whose E step is the mean field above, then ICM for the final labels.

Pure numpy / scipy; float64 throughout.
"""
from __future__ import annotations

import numpy as np

__all__ = ["potts_energy", "neighbour_counts", "icm", "mean_field", "hmrf_em", "kmeans_1d",
           "gaussian_loglik"]

#: Smallest variance of a mixture class (in squared intensity units of the
#: standardised image): keeps a class that collapses onto one value finite.
MIN_VARIANCE = 1e-6


def _classes_first(loglik: np.ndarray, class_axis: int) -> np.ndarray:
    """``loglik`` classes-first, float32 kept as float32 (the mean field of hmrf_em), anything else float64."""
    L = np.asarray(loglik)
    L = L if L.dtype == np.float32 else L.astype(np.float64, copy=False)
    if L.ndim != 4:
        raise ValueError(f"potts: log-likelihoods must be (K, D, H, W) or (D, H, W, K), got shape {L.shape}; "
                         "give one value per class and voxel")
    if class_axis not in (0, -1, 3):
        raise ValueError(f"potts: class_axis must be 0 or -1, got {class_axis}")
    return L if class_axis == 0 else np.moveaxis(L, -1, 0)


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask).astype(bool)
    if m.shape != tuple(shape):
        raise ValueError(f"potts: mask shape {m.shape} differs from the grid {tuple(shape)}; "
                         "give a (D, H, W) mask on the same grid")
    return m


def _parity(shape: tuple[int, ...]) -> np.ndarray:
    """``(D, H, W)`` int: ``(d + h + w) % 2``, the checkerboard colour."""
    d, h, w = np.indices(shape, sparse=True)
    return (d + h + w) % 2


def neighbour_counts(onehot: np.ndarray) -> np.ndarray:
    """Sum of ``onehot`` over each voxel's 6 neighbours: ``(K, D, H, W)`` -> same shape.

    ``out[k, i] = sum_{j~i} onehot[k, j]``; voxels beyond the grid contribute 0
    (zero the masked-out voxels of ``onehot`` first so they do not vote).
    """
    a = np.asarray(onehot)
    out = np.zeros(a.shape, dtype=np.float32 if a.dtype in (np.float32, np.bool_) else np.float64)  # counts <= 6
    for ax in (1, 2, 3):
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        out[tuple(lo)] += a[tuple(hi)]
        out[tuple(hi)] += a[tuple(lo)]
    return out


def potts_energy(loglik: np.ndarray, labels: np.ndarray, beta: float, mask: np.ndarray | None = None,
                 class_axis: int = 0) -> float:
    """``E(l) = -sum_{i in mask} L[l_i, i] + beta * sum_{i~j, both in mask} [l_i != l_j]``.

    ``loglik`` ``(K, D, H, W)``, ``labels`` ``(D, H, W)`` ints in ``0..K-1``
    (values outside the mask are not read).
    """
    L = _classes_first(loglik, class_axis)
    lab = np.asarray(labels)
    m = _check_mask(mask, L.shape[1:])
    safe = np.where(m, lab, 0).astype(np.int64)
    data = -np.take_along_axis(L, safe[None], 0)[0][m].sum()
    pairs = 0
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        both = m[tuple(a)] & m[tuple(b)]
        pairs += int(((safe[tuple(a)] != safe[tuple(b)]) & both).sum())
    return float(data + beta * pairs)


def icm(loglik: np.ndarray, beta: float, labels: np.ndarray | None = None, mask: np.ndarray | None = None,
        n_iter: int = 10, class_axis: int = 0) -> np.ndarray:
    """Iterated conditional modes on ``E`` (module docstring); returns labels ``(D, H, W)`` int64.

    Each voxel ``i`` in the mask takes ``argmin_k [-L[k, i] - beta * n_i(k)]``
    where ``n_i(k)`` is the number of its 6-neighbours in the mask labelled
    ``k``; a voxel keeps its label when that label ties for the minimum. One
    iteration updates the even colour (``d + h + w`` even), then the odd one;
    stops after ``n_iter`` iterations or when no label changes. ``labels``: the
    start (default ``argmax_k L``). Outside the mask the output is ``0``.
    """
    if beta < 0:
        raise ValueError(f"potts: beta must be >= 0, got {beta}")
    L = _classes_first(loglik, class_axis)
    K = L.shape[0]
    m = _check_mask(mask, L.shape[1:])
    lab = L.argmax(0) if labels is None else np.asarray(labels).astype(np.int64)
    if lab.shape != L.shape[1:]:
        raise ValueError(f"potts: start labels shape {lab.shape} differs from the grid {L.shape[1:]}")
    lab = np.where(m, lab, 0)
    colours = [m & (_parity(m.shape) == c) for c in (0, 1)]
    classes = np.arange(K).reshape(K, 1, 1, 1)
    for _ in range(n_iter):
        changed = 0
        for colour in colours:
            onehot = (lab[None] == classes) & m[None]
            score = L + beta * neighbour_counts(onehot)
            best = score.argmax(0)
            keep = np.take_along_axis(score, lab[None], 0)[0] >= np.take_along_axis(score, best[None], 0)[0]
            new = np.where(colour & ~keep, best, lab)
            changed += int((new != lab).sum())
            lab = new
        if changed == 0:
            break
    return lab


def _softmax0(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def mean_field(loglik: np.ndarray, beta: float, q: np.ndarray | None = None, mask: np.ndarray | None = None,
               n_iter: int = 5, class_axis: int = 0) -> np.ndarray:
    """Mean-field posteriors of the Potts model: ``(K, D, H, W)``, summing to 1 over ``K``; float32 for a float32
    ``loglik`` (half the memory traffic; :func:`hyperseg.regularize.hmrf_em` uses it), float64 otherwise.

    ``q_i(k) = softmax_k(L[k, i] + beta * sum_{j~i, j in mask} q_j(k))``, the
    even colour then the odd one per iteration. ``q``: the start (default
    ``softmax_k L``, the posteriors without the prior). Outside the mask ``q``
    is the start's value and takes no part in the sums. ``class_axis`` applies to
    ``loglik`` and to ``q``; the output is classes-first.
    """
    if beta < 0:
        raise ValueError(f"potts: beta must be >= 0, got {beta}")
    L = _classes_first(loglik, class_axis)
    m = _check_mask(mask, L.shape[1:])
    q = _softmax0(L) if q is None else _classes_first(q, class_axis).copy()
    colours = [m & (_parity(m.shape) == c) for c in (0, 1)]
    for _ in range(n_iter):
        for colour in colours:
            new = _softmax0(L + beta * neighbour_counts(q * m[None]))
            q = np.where(colour[None], new, q)
    return q


def gaussian_loglik(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``log N(x; mean_k, var_k)`` for every class: ``x`` ``(...)`` -> ``(K, ...)``."""
    x = np.asarray(x, dtype=np.float64)
    mu = np.asarray(mean, dtype=np.float64).reshape((-1,) + (1,) * x.ndim)
    v = np.asarray(var, dtype=np.float64).reshape((-1,) + (1,) * x.ndim)
    return -0.5 * (np.log(2 * np.pi * v) + (x[None] - mu) ** 2 / v)


def kmeans_1d(x: np.ndarray, k: int, n_iter: int = 50) -> np.ndarray:
    """Lloyd's k-means on scalars, started at the quantiles ``(j + 1/2) / k``: sorted centres ``(k,)``.

    Deterministic (no random start): FAST initialises its mixture the same way.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("potts: k-means needs at least one value; the mask is empty")
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(n_iter):
        edges = (c[1:] + c[:-1]) / 2
        lab = np.searchsorted(edges, x)
        sums = np.bincount(lab, weights=x, minlength=k)
        counts = np.bincount(lab, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c):
            break
        c = np.sort(new)
    return c


def hmrf_em(image: np.ndarray, k: int, beta: float = 0.5, mask: np.ndarray | None = None, n_iter: int = 8,
            mf_iter: int = 2, icm_iter: int = 10) -> tuple[np.ndarray, dict]:
    """Hidden-MRF EM of a ``k``-class Gaussian mixture on intensity (Zhang, Brady & Smith 2001).

    On the voxels of ``mask`` (all by default) of ``image`` ``(D, H, W)``:

    1. intensities standardised (mean 0, sd 1 inside the mask), class means from
       :func:`kmeans_1d`, variances from the k-means partition;
    2. ``n_iter`` EM iterations: E step ``q = mean_field(L, beta)`` with
       ``L[k, i] = log N(x_i; mu_k, s2_k)`` (the Potts prior replaces the mixing
       proportions, as in FAST), ``mf_iter`` mean-field sweeps started at the
       previous ``q``; M step ``mu_k = sum_i q_ik x_i / sum_i q_ik``,
       ``s2_k = sum_i q_ik (x_i - mu_k)^2 / sum_i q_ik``;
    3. labels by :func:`icm` from ``argmax q``.

    ``beta = 0`` is the plain Gaussian mixture with equal proportions. Returns
    ``labels`` ``(D, H, W)`` int64 in ``0..k-1`` ordered by increasing mean
    (``0`` outside the mask), and ``{"mean", "var"}`` in image units.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"potts: hmrf_em needs a (D, H, W) image, got shape {x.shape}")
    m = _check_mask(mask, x.shape)
    vals = x[m]
    if vals.size == 0:
        raise ValueError("potts: hmrf_em got an empty mask; give a mask with foreground voxels")
    centre, scale = vals.mean(), vals.std() or 1.0
    z = np.where(m, (x - centre) / scale, 0.0)
    mu = kmeans_1d(z[m], k)
    edges = (mu[1:] + mu[:-1]) / 2
    lab0 = np.searchsorted(edges, z[m])
    var = np.array([max(z[m][lab0 == j].var() if (lab0 == j).sum() > 1 else 1.0, MIN_VARIANCE)
                    for j in range(k)])
    q = None
    for _ in range(n_iter):
        L = gaussian_loglik(z, mu, var)
        q = mean_field(L, beta, q=q, mask=m, n_iter=mf_iter)
        w = q[:, m]
        tot = np.maximum(w.sum(1), 1e-12)
        mu = (w * z[m]).sum(1) / tot
        var = np.maximum((w * (z[m][None] - mu[:, None]) ** 2).sum(1) / tot, MIN_VARIANCE)
    L = gaussian_loglik(z, mu, var)
    start = L.argmax(0) if q is None else q.argmax(0)
    labels = icm(L, beta, labels=start, mask=m, n_iter=icm_iter)
    order = np.argsort(mu)
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    labels = np.where(m, rank[labels], 0)
    return labels, {"mean": mu[order] * scale + centre, "var": var[order] * scale ** 2}
