"""Classical unsupervised segmenters, the peers a user would try before a learned model.

Each function takes a volume ``(C, D, H, W)`` (raw intensities) and a number of
clusters ``k`` and returns labels ``(D, H, W)`` int64 in ``0..k-1``. They need the
optional extra ``pip install hyperseg[bench]`` (scikit-learn, scikit-image).

* :func:`kmeans_intensity`: k-means on the voxel intensities (all channels);
* :func:`gmm_intensity`: a Gaussian mixture (full covariances) on the same features;
* :func:`multi_otsu`: ``k - 1`` thresholds maximising the between-class variance
  of the first channel (Liao et al. 2001's multi-level Otsu);
* :func:`kmeans_local_stats`: k-means on each voxel's Gaussian-weighted local mean
  and standard deviation (sigma 2 voxels, the same neighbourhood as hyperseg's
  embedding smoothing): the classical answer to "texture, not intensity";
* :func:`slic_kmeans`: 3D SLIC supervoxels (Achanta et al. 2012), then k-means on
  each supervoxel's mean intensity, weighted by its size.

Fitting uses at most ``sample`` voxels drawn at random (seeded), then every voxel
is labelled, as hyperseg's own k-means does.
"""
from __future__ import annotations

import numpy as np

__all__ = ["BASELINES", "kmeans_intensity", "gmm_intensity", "kmeans_local_stats", "local_mean_std", "multi_otsu",
           "slic_kmeans"]


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(f"the classical baselines need scikit-learn and scikit-image: "
                          f"pip install 'hyperseg[bench]' ({err})") from err


def _features(volume: np.ndarray) -> np.ndarray:
    """``(C, D, H, W)`` -> ``(D*H*W, C)`` float64, each channel z-scored."""
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim == 3:
        v = v[None]
    X = v.reshape(v.shape[0], -1).T
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)


def _sample(X: np.ndarray, sample: int, seed: int) -> np.ndarray:
    if len(X) <= sample:
        return X
    return X[np.random.default_rng(seed).choice(len(X), sample, replace=False)]


def kmeans_intensity(volume: np.ndarray, k: int, seed: int = 0, sample: int = 50000) -> np.ndarray:
    """k-means (scikit-learn, k-means++, 4 inits) on per-voxel intensities."""
    cluster = _need("sklearn.cluster")
    X = _features(volume)
    km = cluster.KMeans(n_clusters=k, n_init=4, random_state=seed).fit(_sample(X, sample, seed))
    return km.predict(X).reshape(np.shape(volume)[-3:]).astype(np.int64)


def gmm_intensity(volume: np.ndarray, k: int, seed: int = 0, sample: int = 50000) -> np.ndarray:
    """Gaussian mixture (full covariances, k-means initialised) on per-voxel intensities."""
    mixture = _need("sklearn.mixture")
    X = _features(volume)
    gmm = mixture.GaussianMixture(n_components=k, covariance_type="full", random_state=seed, reg_covar=1e-4)
    gmm.fit(_sample(X, sample, seed))
    return gmm.predict(X).reshape(np.shape(volume)[-3:]).astype(np.int64)


def kmeans_local_stats(volume: np.ndarray, k: int, seed: int = 0, sigma: float = 2.0,
                       sample: int = 50000) -> np.ndarray:
    """k-means on the local mean and local standard deviation of every channel.

    Local statistics with Gaussian weights of ``sigma`` voxels:
    ``m = G * x`` and ``s = sqrt(max(G * x^2 - m^2, 0))`` per z-scored channel, each
    feature z-scored again before k-means (k-means++, 4 inits).
    """
    cluster = _need("sklearn.cluster")
    X = _features(local_mean_std(volume, sigma))
    km = cluster.KMeans(n_clusters=k, n_init=4, random_state=seed).fit(_sample(X, sample, seed))
    return km.predict(X).reshape(np.shape(volume)[-3:]).astype(np.int64)


def local_mean_std(volume: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Local mean and standard deviation of every z-scored channel: ``(2C, D, H, W)`` float64.

    ``m = G * z`` and ``s = sqrt(max(G * z^2 - m^2, 0))`` with a Gaussian ``G`` of
    ``sigma`` voxels (the ``max`` guards against rounding below zero in flat regions);
    channels in the order ``m_0, s_0, m_1, s_1, ...``.
    """
    from scipy import ndimage as ndi

    v = np.asarray(volume, dtype=np.float64)
    v = v[None] if v.ndim == 3 else v
    z = _features(v).T.reshape(v.shape)
    feats = []
    for ch in z:
        m = ndi.gaussian_filter(ch, sigma, mode="nearest")
        s2 = ndi.gaussian_filter(ch * ch, sigma, mode="nearest") - m * m
        feats += [m, np.sqrt(np.maximum(s2, 0.0))]
    return np.stack(feats)


def multi_otsu(volume: np.ndarray, k: int, seed: int = 0, bins: int | None = None) -> np.ndarray:
    """``k`` classes from ``k - 1`` multi-Otsu thresholds on the first channel (``seed`` unused).

    The exhaustive search costs ``bins^(k-1)``: by default 256 bins up to 4
    classes, 64 up to 6 and 32 beyond (6 classes with 256 bins would take hours).
    """
    filters = _need("skimage.filters")
    img = np.asarray(volume, dtype=np.float64)
    img = img[0] if img.ndim == 4 else img
    if k == 1:
        return np.zeros(img.shape, dtype=np.int64)
    if bins is None:
        bins = 256 if k <= 4 else 64 if k <= 6 else 32
    thresholds = filters.threshold_multiotsu(img, classes=k, nbins=bins)
    return np.digitize(img, thresholds).astype(np.int64)


def slic_kmeans(volume: np.ndarray, k: int, seed: int = 0, n_segments: int = 2000,
                compactness: float = 0.1) -> np.ndarray:
    """3D SLIC supervoxels, clustered into ``k`` groups by their mean intensities.

    ``compactness`` is in the units of the z-scored intensities (scikit-image's
    ``compactness`` with ``channel_axis=None``): 0.1 lets supervoxels follow
    intensity edges closely; ``n_segments`` ~2000 gives supervoxels of ~60
    voxels in a 50^3 volume, smaller than the smallest level-3 objects.
    """
    segmentation = _need("skimage.segmentation")
    cluster = _need("sklearn.cluster")
    v = np.asarray(volume, dtype=np.float64)
    v = v[None] if v.ndim == 3 else v
    z = _features(v).T.reshape(v.shape)  # z-scored channels
    image = np.moveaxis(z, 0, -1)  # (D, H, W, C)
    sv = segmentation.slic(image, n_segments=n_segments, compactness=compactness, channel_axis=-1,
                           start_label=0, enforce_connectivity=True)
    n = int(sv.max()) + 1
    size = np.bincount(sv.ravel(), minlength=n).astype(np.float64)
    means = np.stack([np.bincount(sv.ravel(), weights=c.ravel(), minlength=n) for c in z], 1)
    keep = size > 0
    means[keep] /= size[keep, None]
    k_eff = min(k, int(keep.sum()))
    km = cluster.KMeans(n_clusters=k_eff, n_init=4, random_state=seed)
    km.fit(means[keep], sample_weight=size[keep])
    lab = np.zeros(n, dtype=np.int64)
    lab[keep] = km.labels_
    return lab[sv]


def _peer(name: str):
    """The peer ``name`` of :mod:`hyperseg.comparison.peers` on the first channel, with unit spacing."""
    def run(volume: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
        from .peers import PEERS

        v = np.asarray(volume, dtype=np.float64)
        return PEERS[name](v[0] if v.ndim == 4 else v, k, (1.0, 1.0, 1.0), seed=seed)

    run.__name__ = run.__qualname__ = f"peer:{name}"
    return run


#: table name -> function
BASELINES = {
    "k-means on intensity": kmeans_intensity,
    "Gaussian mixture": gmm_intensity,
    "k-means on local mean + std": kmeans_local_stats,
    "multi-Otsu": multi_otsu,
    "SLIC + k-means": slic_kmeans,
    "k-means on local mean + std + Potts": _peer("k-means on local mean + std + Potts"),
    "FAST-like (mixture + Potts in mask)": _peer("FAST-like (mixture + Potts in mask)"),
    "ANTs Atropos": _peer("ANTs Atropos"),
}
