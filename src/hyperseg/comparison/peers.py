"""The segmenters a neuroimager would run instead of hyperseg, on one scalar volume.

Every peer is ``f(image, n_classes, spacing, seed=0) -> labels``: ``image``
``(D, H, W)`` float (raw intensities), ``n_classes`` the number of labels in
the output *in all*, ``spacing`` the voxel size along ``D, H, W`` in mm;
``labels`` ``(D, H, W)`` int64 in ``0..n_classes-1``.

Mask-based peers (Atropos, FAST-like) label ``0`` outside an automatic
foreground mask and cluster ``n_classes - 1`` tissue classes inside it, as
Atropos and FAST are run on a brain: ``n_classes = 2`` is the mask itself.

* :func:`atropos`: ANTs Atropos through ``antspyx`` (``pip install
  'hyperseg[peers]'``): ``KMeans[K]`` initialisation, Potts MRF
  ``[0.2,1x1x1]``, inside ``ants.get_mask``;
* :func:`atropos_n4`: the same after N4 bias-field correction
  (``ants.n4_bias_field_correction`` inside the mask), the order of ANTs'
  ``antsAtroposN4.sh`` (one round);
* :func:`fast_like`: FSL FAST's recipe in numpy: a Gaussian mixture on
  intensity inside :func:`auto_mask`, fitted by hidden-MRF EM with a Potts prior
  (:func:`hyperseg.potts.hmrf_em`), ICM for the labels;
* :func:`gmm_in_mask`: the same mixture without the prior (``beta = 0``):
  what the mask alone buys;
* :func:`local_stats_potts`: k-means on local mean + std
  (:func:`hyperseg.comparison.baselines.kmeans_local_stats`) followed by the
  same Potts ICM on its k-means distances;
* the plain classical baselines of :mod:`hyperseg.comparison.baselines`
  (k-means and a Gaussian mixture on intensity, k-means on local mean + std),
  wrapped to this signature.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from .. import potts
from ..data.masks import auto_mask
from . import baselines

__all__ = ["PEERS", "auto_mask", "atropos", "atropos_n4", "fast_like", "gmm_in_mask", "local_stats_potts",
           "kmeans_intensity", "gmm_intensity", "kmeans_local_stats", "POTTS_BETA"]

#: Potts coupling of the FAST-like and local-statistics rows, in units of the
#: class log-likelihood per disagreeing 6-neighbour pair.
POTTS_BETA = 0.5

Peer = Callable[..., np.ndarray]


def _image(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"peers: expected a (D, H, W) image, got shape {x.shape}; give one scalar volume")
    return x


def _check_classes(n_classes: int, masked: bool) -> None:
    if n_classes < (2 if masked else 1):
        raise ValueError(f"peers: n_classes must be >= {2 if masked else 1} (background + tissue classes), "
                         f"got {n_classes}")


def _ants():
    try:
        import ants
    except ImportError as err:
        raise ImportError("peers: ANTs Atropos needs antspyx; install it with pip install 'hyperseg[peers]' "
                          f"({err})") from err
    return ants


def atropos(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0,
            mrf: str = "[0.2,1x1x1]", convergence: str = "[5,0]") -> np.ndarray:
    """ANTs Atropos: ``n_classes - 1`` tissue classes inside ``ants.get_mask``, 0 outside.

    ``ants.atropos(a=img, x=mask, i="KMeans[K]", m=mrf, c=convergence)``; Atropos
    orders its classes by increasing mean intensity (labels ``1..K``).
    ``seed`` is unused (k-means initialisation is deterministic in Atropos).
    """
    ants = _ants()
    _check_classes(n_classes, masked=True)
    x = _image(image).astype(np.float32)
    img = ants.from_numpy(x, spacing=tuple(float(s) for s in spacing))
    mask = ants.get_mask(img)
    if n_classes == 2:
        return (mask.numpy() > 0).astype(np.int64)
    seg = ants.atropos(a=img, x=mask, i=f"KMeans[{n_classes - 1}]", m=mrf, c=convergence)
    return np.rint(seg["segmentation"].numpy()).astype(np.int64)


def atropos_n4(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0,
               mrf: str = "[0.2,1x1x1]", convergence: str = "[5,0]") -> np.ndarray:
    """N4 then Atropos: ``ants.n4_bias_field_correction(img, mask=get_mask(img))`` (ANTs' defaults), then
    :func:`atropos` on the corrected image (its own ``get_mask``). ``seed`` is unused.

    N4 fits the field to log intensities, so a mask voxel at or below 0 (z-scored or synthetic data) would give
    infinities: the image is then shifted to a minimum of 1 first, as one does before N4. The mask (voxels above
    the mean) does not move with the shift; an MRI's mask is positive and its image is left as it is."""
    ants = _ants()
    _check_classes(n_classes, masked=True)
    x = _image(image).astype(np.float32)
    img = ants.from_numpy(x, spacing=tuple(float(s) for s in spacing))
    mask = ants.get_mask(img)
    if x[mask.numpy() > 0].min(initial=np.inf) <= 0:
        img = ants.from_numpy(x - x.min() + 1.0, spacing=tuple(float(s) for s in spacing))
    corrected = ants.n4_bias_field_correction(img, mask=mask)
    return atropos(corrected.numpy(), n_classes, spacing, seed=seed, mrf=mrf, convergence=convergence)


def fast_like(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0,
              beta: float = POTTS_BETA) -> np.ndarray:
    """FAST's recipe: ``n_classes - 1`` Gaussian classes inside :func:`auto_mask` with a Potts prior.

    :func:`hyperseg.potts.hmrf_em` (k-means start, hidden-MRF EM with mean-field
    E steps, ICM labels). Labels ``1..K`` by increasing mean inside the mask, 0
    outside. No bias-field estimation (FAST has one). ``spacing``, ``seed``
    unused.
    """
    _check_classes(n_classes, masked=True)
    x = _image(image)
    mask = auto_mask(x)
    if n_classes == 2:
        return mask.astype(np.int64)
    labels, _ = potts.hmrf_em(x, n_classes - 1, beta=beta, mask=mask)
    return np.where(mask, labels + 1, 0).astype(np.int64)


def gmm_in_mask(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                seed: int = 0) -> np.ndarray:
    """:func:`fast_like` without the prior (``beta = 0``): a Gaussian mixture inside the mask."""
    return fast_like(image, n_classes, spacing, seed, beta=0.0)


def local_stats_potts(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      seed: int = 0, beta: float = POTTS_BETA, sigma: float = 2.0) -> np.ndarray:
    """k-means on local mean + std, then Potts ICM on its distances.

    The k-means labels of :func:`~hyperseg.comparison.baselines.kmeans_local_stats`
    define centres ``c_k`` (the mean feature of each cluster) in the z-scored
    features ``f_i`` of :func:`~hyperseg.comparison.baselines.local_mean_std`;
    k-means is the mixture of isotropic Gaussians of one shared variance
    ``s2 = mean_i |f_i - c_{l_i}|^2 / n_features``, so the class log-likelihood
    is ``L[k, i] = -|f_i - c_k|^2 / (2 s2)``; :func:`hyperseg.potts.icm` with
    ``beta`` starts from the k-means labels. No mask (as the plain row).
    """
    _check_classes(n_classes, masked=False)
    x = _image(image)
    start = baselines.kmeans_local_stats(x, n_classes, seed=seed, sigma=sigma).reshape(-1)
    f = baselines._features(baselines.local_mean_std(x, sigma))  # (N, F), as k-means saw them
    counts = np.bincount(start, minlength=n_classes)
    centres = np.stack([np.bincount(start, weights=f[:, j], minlength=n_classes) for j in range(f.shape[1])], 1)
    centres /= np.maximum(counts, 1)[:, None]
    d2 = ((f[None] - centres[:, None]) ** 2).sum(-1)  # (K, N)
    s2 = max(float(d2[start, np.arange(len(start))].mean()) / f.shape[1], potts.MIN_VARIANCE)
    loglik = (-d2 / (2 * s2)).reshape((n_classes,) + x.shape)
    return potts.icm(loglik, beta, labels=start.reshape(x.shape))


def kmeans_intensity(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                     seed: int = 0) -> np.ndarray:
    """:func:`hyperseg.comparison.baselines.kmeans_intensity` on the whole volume."""
    return baselines.kmeans_intensity(_image(image), n_classes, seed=seed)


def gmm_intensity(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  seed: int = 0) -> np.ndarray:
    """:func:`hyperseg.comparison.baselines.gmm_intensity` on the whole volume."""
    return baselines.gmm_intensity(_image(image), n_classes, seed=seed)


def kmeans_local_stats(image: np.ndarray, n_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                       seed: int = 0) -> np.ndarray:
    """:func:`hyperseg.comparison.baselines.kmeans_local_stats` on the whole volume."""
    return baselines.kmeans_local_stats(_image(image), n_classes, seed=seed)


#: table name -> peer
PEERS: dict[str, Peer] = {
    "ANTs Atropos": atropos,
    "ANTs N4 + Atropos": atropos_n4,
    "FAST-like (mixture + Potts in mask)": fast_like,
    "Gaussian mixture in mask": gmm_in_mask,
    "k-means on local mean + std + Potts": local_stats_potts,
    "k-means on local mean + std": kmeans_local_stats,
    "k-means on intensity": kmeans_intensity,
    "Gaussian mixture": gmm_intensity,
}
