"""From voxel embeddings to label maps, one per requested number of clusters.

Each volume is clustered on its own (the paper's protocol): hyperbolic
k-means (k-medians at 2 clusters) on the ball embeddings (Euclidean k-means for the Euclidean latent),
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

The default hierarchy, ``"foreground"`` (:func:`refined_levels`), first
splits the volume in two and takes the cluster holding most of the border
voxels as background (label 0); every finer level ``K`` is ``K - 1``
clusters of the foreground voxels only, as Atropos and FAST cluster tissue
inside a brain mask, instead of spending clusters on the background and its
noise. ``"independent"`` (the paper) clusters every level over the whole
volume.

Which foreground (``Config.foreground``): ``"split"``, the 2-cluster level;
``"threshold"``, the automatic intensity mask (:func:`hyperseg.data.masks.auto_mask`,
the steps of ANTs' ``get_mask``); ``"auto"`` (default), the mask where it
agrees with the split (Dice at least ``Config.foreground_agreement``, counted away
from the mask's surface: :func:`~hyperseg.foreground.mask_agreement`), and
then the finer levels are refined with ``Config.masked_stage`` on top
(FSL FAST's recipe, :meth:`Config.masked_config`), else the split. Where the
two agree, the volume holds an object brighter than its background (a brain
in a T1 scan): tissue classes there follow intensity, and the mask, unlike
the split, leaves out the partial-volume rim at the object's edge. Where the
background is not the darkest class (the synthetic cells: agreement at most
0.334 on their validation volumes, against 0.965-1.000 on Colin27) the mask is
something else, and the split is used. The mask is also taken when it lies
inside the split as a brain lies inside its head (:func:`~hyperseg.foreground.mask_inside_split`):
on a T1 scan that keeps skull and scalp the split is the head, the mask the
brain, and the two agree only to 0.548 (Colin27's ``ch2`` at 2 mm). Two masks
are tried, ``ants.get_mask``'s opening and a wider one that cuts a scalp the
first leaves attached (:func:`~hyperseg.foreground.choose_mask`).

With ``Config.intensity_weight`` or ``Config.potts_beta`` above 0 (the
default: 6 and 4), each level's clustering is then refined
(:func:`regularise_level`, :mod:`hyperseg.regularize`): the clustering's
per-cluster log-likelihoods plus the weighted log-likelihood of each voxel's
own normalised intensities under a Gaussian per cluster, then a Potts prior
over the 6-neighbours (mean field or ICM), inside the foreground for its
levels. ``Config.refine = "hmrf_em"`` replaces that one pass by hidden-MRF EM
on the embedding and the intensities (the ``mri`` preset).

With the one pass, each finer level of the foreground hierarchy is clustered and refined into
``Config.overcluster`` times its clusters (default 2), then the pairs of clusters that interleave most are
merged back (:mod:`hyperseg.interleave`): k-means cuts a large class that varies inside (the cells'
cytoplasm) into pieces while smaller classes share a cluster, and those pieces meet along far more
surface than distinct structures do. Their intensity term also reads one more channel there, the structure-tensor
coherence of the intensities (:func:`coherence_channel`, :mod:`hyperseg.texture`; ``Config.coherence_sigma``): an
oriented texture apart from an isotropic one of the same brightness, which the embedding of a 5^3 patch mixes.

With ``Config.hierarchy`` set to ``"divisive"`` or ``"agglomerative"`` the
levels are cut from one k-means tree instead (:mod:`hyperseg.cluster.hierarchy`): every cluster of a
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
from .config import TREE_HIERARCHIES, Config
from .data.masks import auto_mask
from .foreground import choose_mask
from .data.preprocess import normalize_for
from .embed import embed_volume
from .interleave import merge_interleaved
from .model import HyperVAE
from .regularize import class_loglik, foreground_of, hmrf_em, intensity_kmeans, intensity_loglik, potts_labels
from .smooth import smooth_embedding
from .texture import coherence
from .utils import release_memory

#: A Gaussian's full width at half maximum over its standard deviation, ``2 sqrt(2 ln 2)``.
FWHM_PER_SIGMA = 2.0 * float(np.sqrt(2.0 * np.log(2.0)))


@dataclass
class Segmentation:
    """Label maps ``{K: (D, H, W) uint8}`` and the embedding ``(D, H, W, d)`` they came from.

    ``embedding`` holds the points that were clustered: the encoder means after
    smoothing with ``Config.smooth_sigma`` (levels with their own sigma in
    ``Config.level_smooth_sigma`` were clustered on another field), float32.
    """

    labels: dict[int, np.ndarray]
    embedding: np.ndarray
    #: where the foreground of ``hierarchy: foreground`` came from: ``"split"`` (the 2-cluster level) or
    #: ``"mask"`` (the automatic intensity mask); ``None`` for the other hierarchies
    foreground: str | None = None
    #: ``foreground: auto``: the Dice between the intensity mask and the 2-cluster split that chose it
    agreement: float | None = None
    #: ``foreground: auto``: the mask was taken for lying inside the split although the two disagree
    #: (:func:`~hyperseg.foreground.choose_mask`)
    inside_split: bool = False


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


def bias_sigma_voxels(cfg: Config, voxel_size: float) -> float:
    """``cfg.bias_fwhm`` (mm) as a Gaussian standard deviation in voxels of edge ``voxel_size`` mm:
    ``sigma = FWHM / (2 sqrt(2 ln 2)) / voxel_size``."""
    return cfg.bias_fwhm / FWHM_PER_SIGMA / voxel_size


def hmrf_embedding_weight(cfg: Config, voxel_size: float) -> float:
    """The embedding's weight in hidden-MRF EM on a grid of ``voxel_size`` mm voxels:
    ``w = embedding_weight x min(1, voxel_size / embedding_weight_mm)``, or ``embedding_weight`` when
    ``embedding_weight_mm`` is 0. A voxel straddling a boundary mixes the classes' intensities (partial volume),
    and the patch's context is what tells it apart; the share of such voxels grows with the voxel edge, so on a
    finer grid the voxel's own intensity leads more."""
    if cfg.embedding_weight_mm <= 0:
        return cfg.embedding_weight
    return cfg.embedding_weight * min(1.0, voxel_size / cfg.embedding_weight_mm)


#: The most :func:`hmrf_proportions` raises the mixing proportions' weight to on a fine grid: 0.5 held at 1 mm on
#: every setting, also through 16 EM iterations, while 1 lost a class once the EM ran longer (MNI152 1 mm, 30
#: iterations: tissue classes 0.723; benchmarks/results/masked_stage_proportions_1mm.json,
#: masked_stage_em_iterations.json). It also bounds the weight on grids far finer than a brain's (microscopy in um).
MAX_GRID_PROPORTIONS = 0.5


def hmrf_proportions(cfg: Config, voxel_size: float) -> float:
    """The mixing proportions' weight in hidden-MRF EM on a grid of ``voxel_size`` mm voxels:
    ``tau = min(MAX_GRID_PROPORTIONS, mixture_proportions x mixture_proportions_mm / voxel_size)`` below
    ``mixture_proportions_mm``, never less than ``mixture_proportions``; ``mixture_proportions`` itself at and above
    that edge or when ``mixture_proportions_mm`` is 0 (``Config.mixture_proportions_mm``). On a coarse grid a thin
    class is mostly partial-volume voxels and a large weight starves it; on a finer grid the classes are purer and
    the weight grows toward a Gaussian mixture's, up to :data:`MAX_GRID_PROPORTIONS`."""
    tau = cfg.mixture_proportions
    if cfg.mixture_proportions_mm <= 0 or tau <= 0 or voxel_size >= cfg.mixture_proportions_mm:
        return tau
    return max(tau, min(MAX_GRID_PROPORTIONS, tau * cfg.mixture_proportions_mm / voxel_size))


def regularise_level(points: np.ndarray, fit: LevelFit, cfg: Config, shape: tuple[int, int, int],
                     intensities: np.ndarray | None = None, mask: np.ndarray | None = None,
                     voxel_size: float = 1.0) -> np.ndarray:
    """A level's labels ``(M,)`` after the intensity term and the Potts prior of ``cfg`` (:mod:`hyperseg.regularize`).

    ``points`` ``(M, d)`` and ``intensities`` ``(M, C)`` (the normalised channels) are the voxels of the grid
    ``shape``: all of them, or those of ``mask`` (``(D * H * W,)`` bool), the only voxels the prior then
    couples. ``cfg.refine == "once"``:
    ``L = class_loglik(points) + cfg.intensity_weight * intensity_loglik(intensities)`` ``(M, K)``, then
    :func:`~hyperseg.regularize.potts_labels` with ``cfg.potts_beta``, or ``argmax_k L`` when ``potts_beta``
    is 0; both off: ``fit.labels`` unchanged. ``cfg.refine_passes`` passes, each with the per-cluster terms of
    ``L`` fitted on the previous pass's labels (the first on ``fit.labels``). ``cfg.refine == "hmrf_em"``:
    :func:`~hyperseg.regularize.hmrf_em` from ``fit.labels`` (``cfg.refine_init == "clusters"``) or from
    :func:`~hyperseg.regularize.intensity_kmeans` of the intensities (``"intensity"``), with the bias field of
    ``cfg.bias_fwhm`` mm and the embedding weight of :func:`hmrf_embedding_weight` on a grid of ``voxel_size`` mm
    voxels.
    """
    K = len(fit.centres)
    if cfg.refine == "hmrf_em":
        if cfg.refine_init == "intensity":
            return _hmrf_from_intensity(points, intensities, K, cfg, shape, mask, voxel_size)
        return _hmrf(points, intensities, fit.labels, K, cfg, shape, mask, voxel_size)
    if cfg.potts_beta == 0 and cfg.intensity_weight == 0:
        return fit.labels
    if cfg.intensity_weight > 0 and intensities is None:
        raise ValueError("segment: intensity_weight > 0 needs the voxels' intensities; pass intensities=")
    labels = fit.labels
    for _ in range(cfg.refine_passes):  # each pass refits the per-cluster terms on the last pass's labels
        L = class_loglik(points, labels, fit.centres, fit.method, latent=cfg.latent, c=cfg.c,
                         estimator=fit.estimator, order=fit.order)
        if cfg.intensity_weight > 0:
            L = L + cfg.intensity_weight * intensity_loglik(intensities, labels, K)
        if cfg.potts_beta == 0:
            new = L.argmax(1).astype(np.int64)
        else:
            new = potts_labels(L, labels, shape, cfg.potts_beta, method=cfg.potts_method, n_iter=cfg.potts_iter,
                               mask=mask)
        del L
        # a pass that moved no voxel is a fixed point: every later pass would fit and return the same labels
        done = np.array_equal(new, labels)
        labels = new
        if done:
            break
    return labels


def _hmrf_from_intensity(points: np.ndarray, intensities: np.ndarray | None, n_clusters: int, cfg: Config,
                         shape: tuple[int, int, int], mask: np.ndarray | None, voxel_size: float = 1.0) -> np.ndarray:
    """Hidden-MRF EM started from :func:`~hyperseg.regularize.intensity_kmeans` (``refine_init: intensity``)."""
    if intensities is None:
        raise ValueError("segment: refine_init 'intensity' needs the voxels' intensities; pass intensities=")
    return _hmrf(points, intensities, intensity_kmeans(intensities, n_clusters), n_clusters, cfg, shape, mask,
                 voxel_size)


def _hmrf(points: np.ndarray, intensities: np.ndarray, start: np.ndarray, n_clusters: int, cfg: Config,
          shape: tuple[int, int, int], mask: np.ndarray | None, voxel_size: float, return_field: bool = False):
    """:func:`~hyperseg.regularize.hmrf_em` with ``cfg``'s prior, weights, iterations and bias field."""
    return hmrf_em(points, intensities, start, n_clusters, shape, cfg.potts_beta,
                   embedding_weight=hmrf_embedding_weight(cfg, voxel_size), intensity_weight=cfg.intensity_weight,
                   n_iter=cfg.refine_iter, latent=cfg.latent, c=cfg.c, mask=mask,
                   bias_sigma=bias_sigma_voxels(cfg, voxel_size), return_field=return_field,
                   proportions=hmrf_proportions(cfg, voxel_size))


def tissue_bias_field(points: np.ndarray, intensities: np.ndarray, cfg: Config, shape: tuple[int, int, int],
                      mask: np.ndarray, voxel_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The bias field of ``cfg.bias_classes`` classes (``Config.bias_classes``): ``(labels (M,), field (M, C))``.

    Hidden-MRF EM with ``cfg.bias_classes`` classes on the ``M`` voxels of ``mask`` (``(D * H * W,)`` bool),
    started as :func:`level_labels` starts it (k-means on intensity with ``refine_init: intensity``), estimating
    the field of ``cfg.bias_fwhm`` mm in every M step (:func:`~hyperseg.regularize.hmrf_em`). ``points``
    ``(M, d)``, ``intensities`` ``(M, C)``: the mask's voxels. FSL FAST fits its field with its tissue classes
    (``-n 3``) the same way.
    """
    K = cfg.bias_classes
    if len(points) < K:
        raise ValueError(f"segment: the foreground holds {len(points)} voxel(s), fewer than bias_classes {K}")
    start = (intensity_kmeans(intensities, K) if cfg.refine_init == "intensity"
             else fit_level(points, K, cfg).labels)
    return _hmrf(points, intensities, start, K, cfg, shape, mask, voxel_size, return_field=True)


def level_labels(points: np.ndarray, n_clusters: int, cfg: Config, shape: tuple[int, int, int],
                 intensities: np.ndarray | None, mask: np.ndarray | None = None, seed: int = 0,
                 voxel_size: float = 1.0) -> np.ndarray:
    """One level's labels ``(M,)``: :func:`fit_level` then :func:`regularise_level`; hidden-MRF EM started from the
    intensities (``refine: hmrf_em``, ``refine_init: intensity``) does not use the embedding's clustering, so
    none is fitted. Arguments as :func:`regularise_level`."""
    if cfg.refine == "hmrf_em" and cfg.refine_init == "intensity":
        if n_clusters > len(points):
            raise ValueError(f"cannot form {n_clusters} clusters from {len(points)} voxels")
        return _hmrf_from_intensity(points, intensities, n_clusters, cfg, shape, mask, voxel_size)
    return regularise_level(points, fit_level(points, n_clusters, cfg, seed=seed), cfg, shape, intensities, mask=mask,
                            voxel_size=voxel_size)


def split_foreground(fields: dict[int, np.ndarray], values: np.ndarray, cfg: Config, shape: tuple[int, int, int],
                     seed: int = 0, voxel_size: float = 1.0) -> np.ndarray:
    """Foreground ``(N,)`` bool of the refined 2-cluster level (:func:`~hyperseg.regularize.foreground_of`), clustered
    on ``fields[2]`` if given, else on the smallest level's field (``fields``, ``values`` as :func:`refined_levels`)."""
    base = fields[2] if 2 in fields else fields[min(fields)]
    return foreground_of(level_labels(base, 2, cfg, shape, values, seed=seed, voxel_size=voxel_size), shape)


def coherence_channel(values: np.ndarray, shape: tuple[int, int, int], foreground: np.ndarray,
                      sigma: float) -> np.ndarray:
    """The structure-tensor coherence of the channels (:func:`hyperseg.texture.coherence`, integration scale
    ``sigma`` voxels) at the foreground's voxels, standardised over them: ``(M, 1)`` float64.

    ``values`` ``(N, C)``: the normalised channels of the grid ``shape`` (``N = D * H * W``); ``foreground``
    ``(N,)`` bool with ``M`` voxels set. The finer levels' intensity term reads it as one more channel
    (``Config.coherence_sigma``).
    """
    grid = np.asarray(values, dtype=np.float32).T.reshape((-1,) + tuple(shape))
    c = coherence(grid, sigma).reshape(-1)[foreground].astype(np.float64)
    return ((c - c.mean()) / max(float(c.std()), 1e-12))[:, None]


def refined_levels(fields: dict[int, np.ndarray], values: np.ndarray, cfg: Config,
                   shape: tuple[int, int, int], seed: int = 0,
                   foreground: np.ndarray | None = None, voxel_size: float = 1.0) -> dict[int, np.ndarray]:
    """Labels ``{K: (N,)}`` (int64; uint8 with ``hierarchy: foreground``): each level clustered on its own field
    and refined (:func:`regularise_level`).

    ``fields`` ``{K: (N, d)}``: the points each level is clustered on (its smoothing); ``values`` ``(N, C)`` the
    normalised intensities; ``N = D * H * W`` of ``shape``. With ``cfg.hierarchy == "independent"`` every level
    is clustered and refined over the whole grid. With ``"foreground"`` the 2-cluster level is (computed on
    ``fields[2]`` if given, else on the smallest level's field) and its background is the cluster
    :func:`~hyperseg.regularize.foreground_of` leaves (the border cluster where it touches the border),
    labelled 0, the foreground 1; a level ``K > 2`` is
    ``K - 1`` clusters of the foreground voxels, labelled ``1..K-1`` (0 outside), refined with the prior
    inside the foreground only (with ``cfg.overcluster > 1`` and ``refine: once``: ``overcluster x (K - 1)``
    clusters refined, then merged to ``K - 1`` by :func:`~hyperseg.interleave.merge_interleaved`); ``K = 1`` is
    all 0. ``foreground`` ``(N,)`` bool, when given, is the
    foreground instead of the 2-cluster level's (``Config.foreground = "threshold"``). ``voxel_size``: the grid's
    voxel edge in mm (the bias field's width, ``Config.bias_fwhm``). With ``refine: hmrf_em``, ``bias_fwhm > 0``
    and ``bias_classes > 0`` the field is fitted once (:func:`tissue_bias_field`, on the finest level's field),
    subtracted from the foreground's intensities and held fixed by every level's EM; the level of
    ``bias_classes + 1`` labels takes that EM's labels. With ``refine: once``, ``intensity_weight > 0`` and
    ``cfg.coherence_sigma > 0`` the finer levels' intensities gain one column, :func:`coherence_channel`.
    """
    ks = list(fields)
    N = int(np.prod(shape))
    if cfg.hierarchy != "foreground":
        return {k: level_labels(fields[k], k, cfg, shape, values, seed=seed, voxel_size=voxel_size) for k in ks}
    if foreground is None:
        fg = split_foreground(fields, values, cfg, shape, seed=seed, voxel_size=voxel_size)
    else:
        fg = np.asarray(foreground, dtype=bool).reshape(-1)
    out: dict[int, np.ndarray] = {}
    inner_values, level_cfg, fixed = values[fg], cfg, {}
    if (cfg.coherence_sigma > 0 and cfg.refine == "once" and cfg.intensity_weight > 0 and any(k > 2 for k in ks)
            and fg.any()):
        inner_values = np.concatenate([inner_values, coherence_channel(values, shape, fg, cfg.coherence_sigma)], 1)
    if cfg.refine == "hmrf_em" and cfg.bias_fwhm > 0 and cfg.bias_classes > 0 and any(k > 2 for k in ks):
        # one bias field, of the tissue classes (Config.bias_classes), held fixed by every level's EM
        finest = max(ks)
        tissue, field = tissue_bias_field(fields[finest][fg], inner_values, cfg, shape, fg, voxel_size)
        inner_values = inner_values - field
        level_cfg = cfg.replace(bias_fwhm=0.0)
        fixed = {cfg.bias_classes + 1: tissue}
        del field
    for k in ks:
        lab = np.zeros(N, dtype=np.uint8)  # labels < MAX_CLUSTERS = 256: one byte per voxel while later levels run
        if k == 2:
            lab[fg] = 1
        elif k in fixed:  # the level of the field's classes: the labels of the EM that fitted it
            lab[fg] = fixed[k] + 1
        elif k > 2:
            if int(fg.sum()) < k - 1:
                raise ValueError(f"segment: the foreground holds {int(fg.sum())} voxel(s), fewer than the {k - 1} "
                                 "clusters asked for inside it; ask for fewer clusters or use hierarchy 'independent'")
            pts = fields[k][fg]
            n_fit = k - 1
            if cfg.overcluster > 1 and cfg.refine == "once":
                n_fit = min(cfg.overcluster * (k - 1), int(fg.sum()))
            inner = level_labels(pts, n_fit, level_cfg, shape, inner_values, mask=fg, seed=seed,
                                 voxel_size=voxel_size) + 1
            if n_fit > k - 1:  # merge the most interleaved clusters back to K - 1 (interleave.py)
                grid = np.zeros(N, dtype=np.int64)
                grid[fg] = inner
                inner = merge_interleaved(grid.reshape(shape), k - 1).reshape(-1)[fg]
                del grid
            lab[fg] = inner
            del pts, inner
            release_memory()
        out[k] = lab
    return out


def cluster_levels(points: np.ndarray, levels, cfg: Config, seed: int = 0) -> dict[int, np.ndarray]:
    """Labels ``{K: (N,) int64}`` of points ``(N, d)`` for each number of clusters in ``levels``.

    ``cfg.hierarchy`` chooses independent levels (the paper; each by
    :func:`cluster_points`, with its own method from ``cfg.level_clustering``; ``"foreground"``, which needs
    the grid, is :func:`refined_levels`) or nested levels (:class:`hyperseg.cluster.NestedClustering`), which are
    k-means at every level and so override ``cfg.level_clustering``
    (``Config.validate`` refuses a non-default setting that is not k-means).
    A single distinct level is always clustered independently.
    """
    ks = [int(k) for k in levels]
    if cfg.hierarchy not in TREE_HIERARCHIES or len(set(ks)) < 2:
        return {k: cluster_points(points, k, cfg, seed=seed) for k in ks}
    nested = NestedClustering(ks, method=cfg.hierarchy, latent=cfg.latent, c=cfg.c, n_init=cfg.kmeans_n_init,
                              max_iter=cfg.kmeans_max_iter, sample_size=cfg.kmeans_sample or None, seed=seed)
    return nested.fit_predict(points)


def segment_embedding(
    cfg: Config,
    emb: np.ndarray | torch.Tensor,
    x: np.ndarray,
    levels: list[int] | tuple[int, ...],
    seed: int = 0,
    array: np.ndarray | None = None,
    voxel_size: float = 1.0,
) -> Segmentation:
    """Label maps of one volume from its encoder means: the segmentation stage of ``cfg`` after the encoder.

    ``emb`` ``(D, H, W, d)``: the encoder means of every voxel; ``x`` ``(C, D, H, W)``: the normalised
    intensities the encoder saw; ``array`` ``(C, D, H, W)``: the raw intensities, read only by
    ``Config.foreground = "threshold"`` (default: ``x``); ``voxel_size``: the isotropic grid's voxel edge in mm
    (read by ``Config.bias_fwhm``). One embedding can so be segmented with several configurations
    (``benchmarks/bench_default.py``).
    """
    points = smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c)  # (D, H, W, d) float64
    flat = points.reshape(-1, points.shape[-1])
    ks = list(dict.fromkeys(int(k) for k in levels))
    source: str | None = None
    agreement: float | None = None
    inside = False
    if cfg.hierarchy in TREE_HIERARCHIES:
        maps = cluster_levels(flat, ks, cfg, seed=seed)
    else:
        # each level on its own field (level_smooth_sigma), then refined (regularise_level)
        by_sigma = {cfg.smooth_sigma: flat}
        split = cfg.hierarchy == "foreground" and cfg.foreground in ("split", "auto")
        wanted = set(ks) | ({2} if split else set())
        for sigma in {cfg.level_smooth_sigma.get(k, cfg.smooth_sigma) for k in wanted} - set(by_sigma):
            by_sigma[sigma] = smooth_embedding(emb, sigma, latent=cfg.latent, c=cfg.c).reshape(flat.shape)
        del emb  # the smoothed fields are all that is read from here: a caller that keeps no reference frees it
        release_memory()
        fields = {k: by_sigma[cfg.level_smooth_sigma.get(k, cfg.smooth_sigma)] for k in sorted(wanted)}
        values = x.reshape(x.shape[0], -1).T  # (N, C) normalised intensities
        shape = points.shape[:-1]
        fg = None
        if cfg.hierarchy == "foreground":
            source = "split"
            if cfg.foreground in ("threshold", "auto"):
                raw = np.asarray(x if array is None else array, dtype=np.float64).mean(0)
                if cfg.foreground == "threshold":
                    fg, source = auto_mask(raw).reshape(-1), "mask"
                else:  # the mask where it agrees with or lies inside the split, with the masked stage; else the split
                    fg = split_foreground(fields, values, cfg, shape, seed=seed, voxel_size=voxel_size)
                    choice = choose_mask(raw, fg, cfg)
                    agreement, inside = choice.agreement, choice.inside_split
                    if choice.mask is not None:
                        fg, source, cfg = choice.mask, "mask", cfg.masked_config()
        maps = refined_levels(fields, values, cfg, shape, seed=seed, foreground=fg, voxel_size=voxel_size)
        maps = {k: maps[k] for k in ks}
    labels = {k: lab.reshape(points.shape[:-1]).astype(np.uint8) for k, lab in maps.items()}
    return Segmentation(labels=labels, embedding=points.astype(np.float32), foreground=source, agreement=agreement,
                        inside_split=inside)


def segment_array(
    model: HyperVAE,
    array: np.ndarray,
    levels: list[int] | tuple[int, ...],
    seed: int = 0,
    progress: bool = False,
    mask: np.ndarray | None = None,
    voxel_size: float = 1.0,
) -> Segmentation:
    """Segment one volume ``(C, D, H, W)`` (raw intensities) at each number of clusters: normalise, embed
    every voxel (:func:`hyperseg.embed.embed_volume`), then :func:`segment_embedding` (``voxel_size``: the
    isotropic voxel edge in mm)."""
    x = normalize_for(model.cfg, array, mask)  # mask: optional boolean (D, H, W) foreground
    # the embedding is passed without a name here, so segment_embedding can free it once smoothed
    return segment_embedding(model.cfg, embed_volume(model, torch.from_numpy(x), progress=progress), x, levels,
                             seed=seed, array=array, voxel_size=voxel_size)
