"""From voxel embeddings to label maps, one per requested number of clusters.

Each volume is clustered on its own (the paper's protocol): hyperbolic
k-means on the ball embeddings (Euclidean k-means for the Euclidean latent),
fitted on at most ``kmeans_sample`` voxels drawn at random and then applied
to every voxel. Labels are renumbered so that cluster 0 has the centroid
nearest the origin and so on outward, which makes label maps of different
volumes and levels easier to compare by eye; the numbers carry no meaning
beyond that.

Before clustering, the embedding field is smoothed with a Gaussian of
``Config.smooth_sigma`` voxels (the weighted gyromidpoint of each voxel's
neighbourhood, :mod:`hyperseg.smooth`; 0 turns it off, as in the paper).
``Config.level_smooth_sigma`` gives some levels (by number of clusters) their
own sigma.

With ``Config.intensity_weight`` or ``Config.potts_beta`` above 0, each
level's clustering is then refined (:func:`regularise_level`,
:mod:`hyperseg.regularize`): the clustering's per-cluster log-likelihoods plus
the weighted log-likelihood of each voxel's own normalised intensities under a
Gaussian per cluster, then a Potts prior over the 6-neighbours (mean field or
ICM). Both are 0 by default (independent levels only).

With ``Config.hierarchy`` set to ``"divisive"`` or ``"agglomerative"`` the
levels are nested instead (:mod:`hyperseg.cluster.hierarchy`): every cluster of a
finer level lies inside one cluster of each coarser level. Nested levels are
all cut from k-means, so they override ``Config.level_clustering``: its default
(k-medians at 2 clusters) is not applied to them, and ``Config.validate``
refuses any other method together with a nested hierarchy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cluster import NestedClustering, make_clusterer
from .config import Config
from .data.preprocess import normalize_for
from .embed import embed_volume
from .model import HyperVAE
from .regularize import class_loglik, intensity_loglik, potts_labels
from .smooth import smooth_embedding


@dataclass
class Segmentation:
    """Label maps ``{K: (D, H, W) uint8}`` and the embedding ``(D, H, W, d)`` they came from.

    ``embedding`` holds the points that were clustered: the encoder means after
    smoothing with ``Config.smooth_sigma`` (levels with their own sigma in
    ``Config.level_smooth_sigma`` were clustered on another field), float32.
    """

    labels: dict[int, np.ndarray]
    embedding: np.ndarray


@dataclass
class LevelFit:
    """One level's clustering: ``labels`` ``(N,)`` int64 ranked by centre norm, ``centres`` ``(K, d)`` in that
    order, the ``method`` that made them, the fitted ``estimator`` and ``order`` (``order[j]`` is the
    estimator's cluster that became label ``j``)."""

    labels: np.ndarray
    centres: np.ndarray
    method: str
    estimator: object
    order: np.ndarray


def fit_level(points: np.ndarray, n_clusters: int, cfg: Config, seed: int = 0) -> LevelFit:
    """Cluster latent points ``(N, d)`` into ``n_clusters`` and keep the fit (:func:`cluster_points`)."""
    if n_clusters > len(points):
        raise ValueError(f"cannot form {n_clusters} clusters from {len(points)} voxels")
    method = cfg.level_clustering.get(n_clusters, cfg.clustering)
    params = dict(n_init=cfg.kmeans_n_init, seed=seed, sample_size=cfg.kmeans_sample or None)
    if method == "kmeans":
        params["max_iter"] = cfg.kmeans_max_iter
    km = make_clusterer(method, cfg.latent, n_clusters, c=cfg.c, **params)
    labels = km.fit(points).labels_
    centres = np.asarray(km.cluster_centers_)
    order = np.argsort(np.linalg.norm(centres, axis=1), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return LevelFit(labels=rank[labels], centres=centres[order], method=method, estimator=km, order=order)


def cluster_points(points: np.ndarray, n_clusters: int, cfg: Config, seed: int = 0) -> np.ndarray:
    """Cluster latent points ``(N, d)`` into ``n_clusters``; returns labels ``(N,)`` int64.

    The method is ``cfg.level_clustering.get(n_clusters, cfg.clustering)``:
    k-means (the paper), the mixture with a scale per cluster
    (:mod:`hyperseg.cluster.mixture`) or k-medians
    (:mod:`hyperseg.cluster.kmedians`), for ``cfg.latent``
    (:func:`hyperseg.cluster.make_clusterer`). ``cfg.kmeans_max_iter`` applies
    to k-means only; the others keep their own ``max_iter`` (Weiszfeld
    converges linearly, classification EM needs few iterations).

    Fitted on a random subset of at most ``cfg.kmeans_sample`` points, then
    every point is assigned to its nearest centroid.
    """
    return fit_level(points, n_clusters, cfg, seed=seed).labels


def regularise_level(points: np.ndarray, fit: LevelFit, cfg: Config, shape: tuple[int, int, int],
                     intensities: np.ndarray | None = None) -> np.ndarray:
    """A level's labels ``(N,)`` after the intensity term and the Potts prior of ``cfg`` (:mod:`hyperseg.regularize`).

    ``L = class_loglik(points) + cfg.intensity_weight * intensity_loglik(intensities)`` ``(N, K)``
    (``intensities`` ``(N, C)``, the normalised channels), then
    :func:`~hyperseg.regularize.potts_labels` with ``cfg.potts_beta`` on the grid ``shape``, or
    ``argmax_k L`` when ``potts_beta`` is 0. Both off: ``fit.labels`` unchanged.
    """
    if cfg.potts_beta == 0 and cfg.intensity_weight == 0:
        return fit.labels
    K = len(fit.centres)
    L = class_loglik(points, fit.labels, fit.centres, fit.method, latent=cfg.latent, c=cfg.c,
                     estimator=fit.estimator, order=fit.order)
    if cfg.intensity_weight > 0:
        if intensities is None:
            raise ValueError("segment: intensity_weight > 0 needs the voxels' intensities; pass intensities=")
        L = L + cfg.intensity_weight * intensity_loglik(intensities, fit.labels, K)
    if cfg.potts_beta == 0:
        return L.argmax(1).astype(np.int64)
    return potts_labels(L, fit.labels, shape, cfg.potts_beta, method=cfg.potts_method, n_iter=cfg.potts_iter)


def cluster_levels(points: np.ndarray, levels, cfg: Config, seed: int = 0) -> dict[int, np.ndarray]:
    """Labels ``{K: (N,) int64}`` of points ``(N, d)`` for each number of clusters in ``levels``.

    ``cfg.hierarchy`` chooses independent levels (the paper; each by
    :func:`cluster_points`, with its own method from ``cfg.level_clustering``)
    or nested levels (:class:`hyperseg.cluster.NestedClustering`), which are
    k-means at every level and so override ``cfg.level_clustering``
    (``Config.validate`` refuses a non-default setting that is not k-means).
    A single distinct level is always clustered independently.
    """
    ks = [int(k) for k in levels]
    if cfg.hierarchy == "independent" or len(set(ks)) < 2:
        return {k: cluster_points(points, k, cfg, seed=seed) for k in ks}
    nested = NestedClustering(ks, method=cfg.hierarchy, latent=cfg.latent, c=cfg.c, n_init=cfg.kmeans_n_init,
                              max_iter=cfg.kmeans_max_iter, sample_size=cfg.kmeans_sample or None, seed=seed)
    return nested.fit_predict(points)


def segment_array(
    model: HyperVAE,
    array: np.ndarray,
    levels: list[int] | tuple[int, ...],
    seed: int = 0,
    progress: bool = False,
    mask: np.ndarray | None = None,
) -> Segmentation:
    """Segment one volume ``(C, D, H, W)`` (raw intensities) at each number of clusters."""
    cfg = model.cfg
    x = normalize_for(cfg, array, mask)  # mask: optional boolean (D, H, W) foreground
    emb = embed_volume(model, torch.from_numpy(x), progress=progress)
    points = smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c)  # (D, H, W, d) float64
    flat = points.reshape(-1, points.shape[-1])
    ks = [int(k) for k in levels]
    if cfg.level_smooth_sigma or cfg.potts_beta > 0 or cfg.intensity_weight > 0:
        # only with independent levels (validated): each level on its own field, then regularised
        fields = {cfg.smooth_sigma: flat}
        for sigma in {cfg.level_smooth_sigma.get(k, cfg.smooth_sigma) for k in ks} - set(fields):
            fields[sigma] = smooth_embedding(emb, sigma, latent=cfg.latent, c=cfg.c).reshape(flat.shape)
        values = x.reshape(x.shape[0], -1).T  # (N, C) normalised intensities
        maps = {}
        for k in ks:
            field = fields[cfg.level_smooth_sigma.get(k, cfg.smooth_sigma)]
            maps[k] = regularise_level(field, fit_level(field, k, cfg, seed=seed), cfg, points.shape[:-1], values)
    else:
        maps = cluster_levels(flat, ks, cfg, seed=seed)
    labels = {k: lab.reshape(points.shape[:-1]).astype(np.uint8) for k, lab in maps.items()}
    return Segmentation(labels=labels, embedding=points.astype(np.float32))
