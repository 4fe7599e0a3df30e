"""Out-of-core segmentation on Dask: a volume larger than memory, chunk by chunk.

:func:`segment_chunked` runs the segmentation stage on a :mod:`dask.array`
``(C, D, H, W)`` (a Zarr / OME-Zarr store, :mod:`hyperseg.data.zarr_io`) and
writes each level's labels into a Zarr array as its chunks are done. Dask
schedules everything: threads or processes on one machine, or an existing
``dask.distributed`` cluster (a ``Client``, or ``scheduler="tcp://HOST:8786"``).

Every pass is one independent task per processing chunk that reads its
*region* (the chunk plus the overlap the pass needs) straight from a Zarr
array, computes, and writes its own chunk of the next Zarr array
(:func:`_run_pass`): the input is first copied to a scratch array, and the
encoder's output and the smoothed field go to scratch arrays too (``(d + C) * 8``
bytes per voxel each, beside the output, removed at the end). So memory is one
region per running task, whatever the volume's size. (A ``map_overlap`` graph,
tried first, keeps the neighbours of the chunks in flight alive, a slab of
chunks that grows with the volume: its peak memory grew with the volume in
``benchmarks/bench_zarr.py``.) Freed buffers are handed back to the system after
each task (``malloc_trim``), else heap fragmentation made memory creep up with
the number of chunks.

Steps, and which are exact
--------------------------
1. **Normalisation statistics** (:class:`NormFit`) from a strided sample of
   the raw volume (every voxel when the volume has at most
   ``norm_sample`` voxels: then they are :func:`hyperseg.data.preprocess.normalize_for`'s).
2. **Embedding, then smoothing**, chunk by chunk: the encoder with an overlap of
   its receptive field in native voxels (:func:`embed_radius`: the window
   geometry of :mod:`hyperseg.embed`, trilinear neighbours included), then the
   Gaussian smoothing with an overlap of its radius ``int(4 sigma + 0.5)``
   (scipy's truncation). At the volume's faces a region has no overlap, so the
   encoder's ``pad_mode`` and scipy's ``"nearest"`` see the true border.
3. **Clustering** (:class:`LevelParams`) fitted on a sample of the smoothed points drawn across
   chunks (each chunk's share in proportion to its voxels, seeded by the
   chunk's index): :func:`hyperseg.segment.fit_level`'s centroids, and from the
   same sample the spread of the class log-likelihoods and each cluster's
   intensity Gaussian (:mod:`hyperseg.regularize` fits both on the whole volume).
4. **Labels**, chunk by chunk with an overlap of ``2 potts_iter`` voxels: class
   log-likelihood plus the weighted intensity term, Potts mean field with the
   checkerboard colours of the *volume's* grid (a chunk whose first voxel has odd
   ``d + h + w`` starts with the other colour), ``argmax``. A full sweep (even
   colour, then odd) moves information two voxels, so the labels of the chunk's
   own voxels are those of the whole grid.
5. ``hierarchy: foreground``: the refined 2-cluster labels are written to
   scratch; the background is the cluster holding most voxels of the six faces
   (:func:`hyperseg.regularize.border_cluster`, read from the faces only), and
   only where it is connected to the faces: its holes are filled across chunks
   (:func:`filled_foreground`: components per chunk, joined through the faces
   they share), as :func:`hyperseg.regularize.foreground_of` fills them. The
   finer levels are fitted on a sample of the foreground and refined inside it
   (step 4 with the mask).

Given the same fitted parameters (:class:`ChunkedFit`, returned and accepted
by :func:`segment_chunked`), the chunked labels equal those of
:func:`segment_in_memory`, which runs the same stage on the whole volume with
:func:`hyperseg.embed.embed_volume`, :func:`hyperseg.smooth.smooth_embedding` and
:func:`hyperseg.potts.mean_field` (up to float rounding in the encoder's
convolutions over blocks of other sizes, which the tests have not seen flip a label).

What the chunked stage does not do (it refuses, or says what it does instead):
it clusters each finer level into its own number of clusters (``overcluster: 1``): merging interleaved
clusters (:mod:`hyperseg.interleave`) reads the interface areas of the whole level; its intensity term reads the
intensities alone (``coherence_sigma: 0``, :mod:`hyperseg.texture` is not run chunk by chunk), in one pass
(``refine_passes: 1``);
``foreground: auto`` (the default) uses the 2-cluster split, i.e. ``split``: the
intensity mask of ``auto`` and ``threshold`` (:func:`hyperseg.data.masks.auto_mask`)
and FAST's masked stage it leads to are not run chunk by chunk, and ``threshold`` is
refused; ``refine: hmrf_em``, ``potts_method: icm``, the ``mixture`` clustering, nested
hierarchies, ``level_smooth_sigma``, ``highpass_sigma``, a normalisation mask and
anisotropic voxels are refused; the encoder's ``patch_edge`` must be a multiple of
``embed_patch_edge``. The model runs on the device it is on (the CPU for worker processes).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import Config
from .data.preprocess import MIN_BACKGROUND, MIN_FOREGROUND, MIN_STD, Z_MAX
from .embed import embed_volume, padding_for, window_starts
from .geometry.poincare import pairwise_dist
from .potts import neighbour_counts
from .regularize import MIN_INTENSITY_VARIANCE, MIN_SPREAD, border_cluster
from .smooth import smooth_embedding
from .utils import release_memory

if TYPE_CHECKING:
    from .data.zarr_io import LabelsWriter
    from .model import HyperVAE

#: scipy.ndimage.gaussian_filter's default ``truncate``: the kernel's radius is ``int(truncate * sigma + 0.5)``.
GAUSSIAN_TRUNCATE = 4.0
#: At most this many voxels of the raw volume are read for the normalisation statistics.
NORM_SAMPLE = 2 ** 22
#: Default processing chunk edge when the store's chunks are smaller than the overlap needs.
MIN_CHUNK = 32
#: Output edge of the encoder's tiles inside a chunk (``Config.embed_tile`` at most). The activations of a tile
#: are the largest transient of a task (an eighth of the positions at 32 than at 64, for about the same time per
#: voxel once the tile's own border is counted); with several tasks at once, large tiles made the peak depend on
#: whether the tasks' largest layers coincide, so on how many chunks there are (benchmarks/bench_zarr.py).
CHUNK_EMBED_TILE = 32


# ----------------------------------------------------------------------------- parameters
@dataclass
class NormFit:
    """Normalisation statistics (:func:`hyperseg.data.preprocess.normalize` with fixed values).

    ``lo``, ``hi``: ``(C,)`` clip bounds (``None``: no clipping); ``mean``, ``std``: ``(C,)``; ``floor``: voxels
    whose channel mean is above it form the mask ``M`` (``None``: every voxel); ``enabled``: ``cfg.normalize``.
    """

    mean: np.ndarray
    std: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    floor: float | None = None
    enabled: bool = True


@dataclass
class LevelParams:
    """One clustering applied voxel by voxel: ``centres`` ``(n, d)`` ranked by norm, ``method``
    (``"kmeans"``/``"kmedians"``), ``spread`` (``s^2`` or ``b`` of :func:`hyperseg.regularize.class_loglik`),
    ``int_mean``/``int_var`` ``(n, C)`` each cluster's intensity Gaussian; ``inside``: fitted on the
    foreground (labels ``1..n`` there, 0 outside)."""

    centres: np.ndarray
    method: str
    spread: float
    int_mean: np.ndarray
    int_var: np.ndarray
    inside: bool = False


@dataclass
class ChunkedFit:
    """Everything the chunked stage fits globally; with it, chunked and in-memory labels are equal.

    ``levels`` ``{K: LevelParams}``; ``background``: the 2-cluster label that is background
    (``hierarchy: foreground``), else ``None``.
    """

    norm: NormFit
    levels: dict[int, LevelParams] = field(default_factory=dict)
    background: int | None = None


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def fit_to_dict(fit: ChunkedFit) -> dict:
    """``fit`` as JSON-able data (stored in the output's ``hyperseg`` attributes); :func:`fit_from_dict` reads it."""
    norm = {k: _jsonable(v) for k, v in vars(fit.norm).items()}
    levels = {str(k): {f: _jsonable(v) for f, v in vars(lp).items()} for k, lp in fit.levels.items()}
    return {"norm": norm, "levels": levels, "background": fit.background}


def fit_from_dict(data: dict) -> ChunkedFit:
    """The :class:`ChunkedFit` of :func:`fit_to_dict`'s data."""
    def arr(v):
        return None if v is None else np.asarray(v, dtype=np.float64)

    n = data["norm"]
    norm = NormFit(mean=arr(n["mean"]), std=arr(n["std"]), lo=arr(n["lo"]), hi=arr(n["hi"]), floor=n["floor"],
                   enabled=bool(n["enabled"]))
    levels = {int(k): LevelParams(centres=arr(v["centres"]), method=v["method"], spread=float(v["spread"]),
                                  int_mean=arr(v["int_mean"]), int_var=arr(v["int_var"]), inside=bool(v["inside"]))
              for k, v in data["levels"].items()}
    return ChunkedFit(norm, levels, data["background"])


@dataclass(frozen=True)
class Halo:
    """Overlaps in voxels: ``embed`` (receptive field), ``smooth`` (Gaussian radius), ``potts`` (mean field)."""

    embed: int
    smooth: int
    potts: int


@dataclass
class ChunkedResult:
    """What :func:`segment_chunked` did: the ``fit``, the ``root`` written, its ``chunks`` and timings (s)."""

    fit: ChunkedFit
    root: Any
    chunks: tuple
    foreground: str | None
    seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- configuration
def check_config(cfg: Config) -> Config:
    """``cfg`` as the chunked stage runs it (``foreground: auto`` -> ``split``), or :class:`ValueError` naming
    what it cannot do."""
    bad = []
    if cfg.hierarchy not in ("foreground", "independent"):
        bad.append(f"hierarchy {cfg.hierarchy!r} (use foreground or independent)")
    if cfg.hierarchy == "foreground" and cfg.foreground == "threshold":
        bad.append("foreground 'threshold' (the intensity mask needs its largest component: use split)")
    if cfg.refine != "once":
        bad.append(f"refine {cfg.refine!r} (use once)")
    if cfg.potts_beta > 0 and cfg.potts_method != "mean_field":
        bad.append(f"potts_method {cfg.potts_method!r} (use mean_field)")
    methods = {cfg.clustering, *cfg.level_clustering.values()}
    if "mixture" in methods:
        bad.append("clustering 'mixture' (use kmeans or kmedians)")
    if cfg.level_smooth_sigma:
        bad.append("level_smooth_sigma (one smoothing for every level)")
    if cfg.highpass_sigma > 0:
        bad.append("highpass_sigma > 0")
    if cfg.patch_edge % cfg.embed_patch_edge:
        bad.append(f"embed_patch_edge {cfg.embed_patch_edge} (must divide the model's patch_edge {cfg.patch_edge})")
    if bad:
        raise ValueError("chunked segmentation cannot run " + "; ".join(bad) + "; change these settings, or "
                         "segment in memory (--in-memory) if the volume fits")
    # merging needs the whole level's interface areas; the coherence channel is not computed chunk by chunk
    cfg = cfg.replace(overcluster=1, coherence_sigma=0.0, refine_passes=1)
    return cfg.replace(foreground="split") if cfg.foreground == "auto" else cfg


def embed_radius(patch_edge: int, model_edge: int) -> int:
    """Native voxels on either side of ``v`` that voxel ``v``'s embedding reads (:mod:`hyperseg.embed`'s window,
    ``s = model_edge / patch_edge`` an integer, the trilinear resampling's two neighbours included)."""
    s = model_edge // patch_edge
    pad = padding_for(patch_edge)
    j0 = int(window_starts(1, patch_edge, float(s), pad)[0])
    first, last = j0, j0 + model_edge - 1  # resampled indices of the window
    if s == 1:
        lo, hi = first, last
    else:  # align_corners=False: resampled j samples native (j + 0.5) / s - 0.5
        lo, hi = math.floor((first + 0.5) / s - 0.5), math.ceil((last + 0.5) / s - 0.5)
    return max(pad - lo, hi - pad, 0)


def halos(cfg: Config) -> Halo:
    """The overlaps the chunked stage needs for ``cfg`` (module docstring)."""
    smooth = int(GAUSSIAN_TRUNCATE * cfg.smooth_sigma + 0.5) if cfg.smooth_sigma > 0 else 0
    potts = 2 * cfg.potts_iter if cfg.potts_beta > 0 else 0
    return Halo(embed_radius(cfg.embed_patch_edge, cfg.patch_edge), smooth, potts)


def processing_chunks(shape: Sequence[int], chunk: Sequence[int], least: int) -> tuple[tuple[int, ...], ...]:
    """Regular chunks of edge ``chunk`` per axis; a last chunk shorter than ``least`` joins the one before."""
    out = []
    for n, c in zip(shape, chunk):
        c = max(1, min(int(c), int(n)))
        sizes = [c] * (n // c) + ([n % c] if n % c else [])
        if len(sizes) > 1 and sizes[-1] < least:
            last = sizes.pop()
            sizes[-1] += last
        out.append(tuple(sizes))
    return tuple(out)


# ----------------------------------------------------------------------------- per-voxel maths
def fit_normalisation(sample: np.ndarray, cfg: Config) -> NormFit:
    """Statistics of :func:`hyperseg.data.preprocess.normalize` from ``sample`` ``(C, ...)`` raw voxels (all of
    them, in C order, give ``normalize_for``'s own)."""
    x = np.asarray(sample)
    C = x.shape[0]
    if not cfg.normalize:
        return NormFit(mean=np.zeros(C), std=np.ones(C), enabled=False)
    flat = x.reshape(C, -1)
    floor = None
    m = None
    if cfg.normalize_mask == "auto":
        mean = np.asarray(flat, dtype=np.float32).mean(axis=0, dtype=np.float64)
        cand = float(mean.min())
        mask = mean > cand
        kept = int(mask.sum())
        if not (kept < MIN_FOREGROUND * mask.size or mask.size - kept < MIN_BACKGROUND * mask.size):
            floor, m = cand, mask
    lo, hi, mu, sd = [], [], [], []
    for c in range(C):
        vals = flat[c].astype(np.float64)
        vals = vals[m] if m is not None else vals
        if cfg.clip_percentiles is not None:
            a, b = np.percentile(vals, [float(cfg.clip_percentiles[0]), float(cfg.clip_percentiles[1])])
            vals = np.clip(vals, a, b)
            lo.append(a)
            hi.append(b)
        mu.append(vals.mean())
        sd.append(vals.std())
    clip = cfg.clip_percentiles is not None
    return NormFit(mean=np.array(mu), std=np.array(sd), lo=np.array(lo) if clip else None,
                   hi=np.array(hi) if clip else None, floor=floor)


def normalise_block(raw: np.ndarray, norm: NormFit) -> np.ndarray:
    """Raw ``(C, ...)`` voxels normalised with fixed statistics, float32, the same arithmetic as ``normalize``."""
    x = np.asarray(raw)
    if not norm.enabled:
        return np.array(x, dtype=np.float32)
    m = None
    if norm.floor is not None:
        m = np.asarray(x, dtype=np.float32).mean(axis=0, dtype=np.float64) > norm.floor
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(x.shape[0]):
        ch = x[c].astype(np.float64)
        if norm.lo is not None:
            if m is None:
                ch = np.clip(ch, norm.lo[c], norm.hi[c])
            else:
                ch[m] = np.clip(ch[m], norm.lo[c], norm.hi[c])
        ch -= norm.mean[c]
        if norm.std[c] >= MIN_STD:
            ch /= norm.std[c]
        np.clip(ch, -Z_MAX, Z_MAX, out=ch)
        out[c] = ch
    return out


def _distances(points: np.ndarray, centres: np.ndarray, cfg: Config) -> np.ndarray:
    """``(N, K)`` distances in the latent's geometry (those of :func:`hyperseg.regularize.class_loglik`)."""
    if cfg.latent == "hyperbolic":
        return pairwise_dist(torch.from_numpy(points), torch.from_numpy(centres), c=cfg.c).numpy()
    sq = (points ** 2).sum(1)[:, None] - 2.0 * points @ centres.T + (centres ** 2).sum(1)[None]
    return np.sqrt(np.maximum(sq, 0.0))


def fit_level_params(points: np.ndarray, values: np.ndarray, n_clusters: int, cfg: Config, seed: int = 0,
                     inside: bool = False) -> LevelParams:
    """Fit one level on sampled points ``(N, d)`` and their normalised intensities ``(N, C)``."""
    from .segment import fit_level

    fit = fit_level(points, n_clusters, cfg, seed=seed)
    lab = fit.labels
    r = _distances(points, fit.centres, cfg)
    own = r[np.arange(len(points)), lab]
    dim = points.shape[1]
    spread = float(own.mean()) / dim if fit.method == "kmedians" else float((own ** 2).mean()) / dim
    mu = np.empty((n_clusters, values.shape[1]))
    var = np.empty_like(mu)
    for k in range(n_clusters):
        member = values[lab == k]
        if len(member) < 2:
            member = values
        mu[k] = member.mean(0)
        var[k] = np.maximum(member.var(0), MIN_INTENSITY_VARIANCE)
    return LevelParams(centres=np.asarray(fit.centres, dtype=np.float64), method=fit.method,
                       spread=max(spread, MIN_SPREAD), int_mean=mu, int_var=var, inside=inside)


def level_loglik(points: np.ndarray, values: np.ndarray, lp: LevelParams, cfg: Config) -> np.ndarray:
    """``(N, n)`` class log-likelihoods of points ``(N, d)`` plus ``cfg.intensity_weight`` times the intensity
    term of values ``(N, C)``, with the fitted spread and Gaussians."""
    r = _distances(np.asarray(points, dtype=np.float64), lp.centres, cfg)
    L = -r / lp.spread if lp.method == "kmedians" else -(r ** 2) / (2.0 * lp.spread)
    if cfg.intensity_weight > 0:
        v = np.asarray(values, dtype=np.float64)
        for k in range(len(lp.centres)):
            mu, var = lp.int_mean[k], lp.int_var[k]
            L[:, k] += cfg.intensity_weight * (-0.5 * (np.log(2 * np.pi * var) + (v - mu) ** 2 / var)).sum(1)
    return L


def _softmax0(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def mean_field_block(loglik: np.ndarray, beta: float, n_iter: int, mask: np.ndarray | None = None,
                     parity: int = 0) -> np.ndarray:
    """:func:`hyperseg.potts.mean_field` on a block ``(K, D, H, W)`` of a larger grid whose first voxel has
    ``d + h + w = parity`` (mod 2) there: the colours are the grid's, not the block's."""
    L = np.asarray(loglik, dtype=np.float64)
    m = np.ones(L.shape[1:], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    q = _softmax0(L)
    d, h, w = np.indices(L.shape[1:], sparse=True)
    colour = (d + h + w + parity) % 2
    colours = [m & (colour == c) for c in (0, 1)]
    for _ in range(n_iter):
        for col in colours:
            new = _softmax0(L + beta * neighbour_counts(q * m[None]))
            q = np.where(col[None], new, q)
    return q


def labels_of(points: np.ndarray, values: np.ndarray, lp: LevelParams, cfg: Config,
              mask: np.ndarray | None = None, parity: int = 0) -> np.ndarray:
    """Labels ``(D, H, W)`` uint8 of one level on a grid (or block) of points ``(D, H, W, d)`` and normalised
    values ``(C, D, H, W)``: argmax of the Potts mean field (``cfg.potts_beta > 0``) or of the log-likelihoods;
    with ``mask`` (``lp.inside``) ``1 + label`` inside, 0 outside."""
    shape = points.shape[:-1]
    L = level_loglik(points.reshape(-1, points.shape[-1]), values.reshape(values.shape[0], -1).T, lp, cfg)
    L = L.T.reshape((L.shape[1],) + tuple(shape))
    if cfg.potts_beta > 0:
        lab = mean_field_block(L, cfg.potts_beta, cfg.potts_iter, mask=mask, parity=parity).argmax(0)
    else:
        lab = L.argmax(0)
    if mask is not None:
        lab = np.where(mask, lab + 1, 0)
    return lab.astype(np.uint8)


# ----------------------------------------------------------------------------- the in-memory reference
def segment_in_memory(model: HyperVAE, array: np.ndarray, fit: ChunkedFit, levels: Sequence[int],
                      cfg: Config | None = None) -> dict[int, np.ndarray]:
    """The chunked stage on a whole volume ``(C, D, H, W)`` (raw) with the fitted parameters ``fit``:
    ``{K: (D, H, W) uint8}``, built from the whole-grid functions (embed_volume, smooth_embedding,
    potts.mean_field, regularize.border_cluster)."""
    from scipy import ndimage as ndi

    from .potts import mean_field

    cfg = check_config(cfg or model.cfg)
    x = normalise_block(array, fit.norm)
    emb = embed_volume(model, torch.from_numpy(x), patch_edge=cfg.embed_patch_edge,
                       tile=min(cfg.embed_tile, CHUNK_EMBED_TILE), pad_mode=cfg.pad_mode)
    pts = smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c)
    shape = pts.shape[:-1]
    flat, values = pts.reshape(-1, pts.shape[-1]), x.reshape(x.shape[0], -1).T

    def refine(lp: LevelParams, mask: np.ndarray | None) -> np.ndarray:
        L = level_loglik(flat, values, lp, cfg).T.reshape((len(lp.centres),) + shape)
        lab = mean_field(L, cfg.potts_beta, mask=mask, n_iter=cfg.potts_iter).argmax(0) if cfg.potts_beta > 0 \
            else L.argmax(0)
        return (lab if mask is None else np.where(mask, lab + 1, 0)).astype(np.uint8)

    ks = [int(k) for k in levels]
    if cfg.hierarchy != "foreground":
        return {k: refine(fit.levels[k], None) for k in ks}
    two = refine(fit.levels[2], None)
    bg = border_cluster(two, shape) if fit.background is None else fit.background
    fg = ndi.binary_fill_holes(two != bg)  # regularize.foreground_of with this background
    out = {}
    for k in ks:
        out[k] = fg.astype(np.uint8) if k == 2 else (np.zeros(shape, np.uint8) if k < 2 else refine(fit.levels[k], fg))
    return out


# ----------------------------------------------------------------------------- dask plumbing
def _compute(collection, client=None, scheduler: str | None = None, progress: bool = False, desc: str = ""):
    """Compute a dask collection on ``client`` (dask.distributed) or the local ``scheduler`` (threads by default),
    with a progress bar when asked."""
    import dask

    if client is not None:
        futures = client.compute(collection)  # one future, or a list of them for a list
        if progress:
            from distributed import progress as show

            print(desc, flush=True)
            show(futures)
            print(flush=True)
        return client.gather(futures)
    with dask.config.set(scheduler=scheduler or "threads"):
        if progress:
            from dask.diagnostics import ProgressBar

            print(desc, flush=True)
            with ProgressBar(minimum=1.0, dt=1.0):
                return dask.compute(collection)[0]
        return dask.compute(collection)[0]


def _memory_array(data: np.ndarray | None, shape=None, chunks=None, dtype=None):
    """An in-memory Zarr array (for running the passes on a volume that fits in memory, as the tests do)."""
    import zarr

    shape = data.shape if data is not None else shape
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks or shape,
                          dtype=data.dtype if data is not None else dtype)
    if data is not None:
        z[...] = data
    return z


def embedding_field(model: HyperVAE, raw: np.ndarray, norm: NormFit, cfg: Config, chunks: Sequence[int],
                    halo: Halo | None = None) -> np.ndarray:
    """The smoothed embedding ``(d, D, H, W)`` float64 of raw ``(C, D, H, W)`` by the passes of
    :func:`segment_chunked` (encoder, then smoothing, each chunk of ``chunks`` read with its overlap from a Zarr
    array, here in memory), with the overlaps of ``halo`` (default :func:`halos`)."""
    halo = halo or halos(cfg)
    raw = np.asarray(raw)
    d, C, shape = int(cfg.latent_dim), raw.shape[0], raw.shape[1:]
    grid = processing_chunks(shape, chunks, _least(halo, cfg))
    field = _memory_array(None, (d + C, *shape), dtype=np.float64)
    _run_pass(partial(_embed_values, model=model, norm=norm, cfg=cfg), _memory_array(raw), field, grid,
              halo.embed, None, "synchronous", False, "")
    if cfg.smooth_sigma > 0:
        smooth = _memory_array(None, (d + C, *shape), dtype=np.float64)
        _run_pass(partial(_smooth_values, cfg=cfg, d=d), field, smooth, grid, halo.smooth, None, "synchronous",
                  False, "")
        field = smooth
    return np.asarray(field[:d])


def _mean_field_region(L: np.ndarray, mask, start, beta: float, n_iter: int) -> np.ndarray:
    return mean_field_block(L, beta, n_iter, mask=mask, parity=sum(start) % 2)


def chunked_mean_field(loglik: np.ndarray, beta: float, n_iter: int, chunks: Sequence[int],
                       depth: int | None = None) -> np.ndarray:
    """:func:`hyperseg.potts.mean_field` (no mask) of ``(K, D, H, W)`` log-likelihoods by the label pass of
    :func:`segment_chunked`: each chunk of ``chunks`` read with an overlap of ``depth`` voxels (default
    ``2 n_iter``, what it needs). Returns the posteriors ``(K, D, H, W)``."""
    L = np.asarray(loglik, dtype=np.float64)
    depth = 2 * n_iter if depth is None else depth
    grid = processing_chunks(L.shape[1:], chunks, 1)
    out = _memory_array(None, L.shape, dtype=np.float64)
    _run_pass(partial(_mean_field_region, beta=beta, n_iter=n_iter), _memory_array(L), out, grid, depth, None,
              "synchronous", False, "")
    return np.asarray(out[...])


def _least(halo: Halo, cfg: Config) -> int:
    """The shortest last chunk along an axis: shorter ones join the chunk before."""
    return max(halo.embed, halo.smooth, halo.potts, padding_for(cfg.embed_patch_edge) + 1, 1)


def _region(grid: tuple[tuple[int, ...], ...], index: Sequence[int], depth: int, shape: Sequence[int]):
    """Chunk ``index`` of ``grid``: its own ``[lo, hi)`` and its overlapped ``[elo, ehi)`` (clipped at the faces)."""
    lo = tuple(int(sum(g[:i])) for g, i in zip(grid, index))
    hi = tuple(a + int(g[i]) for a, g, i in zip(lo, grid, index))
    elo = tuple(max(0, a - depth) for a in lo)
    ehi = tuple(min(int(n), b + depth) for b, n in zip(hi, shape))
    return lo, hi, elo, ehi


def _pass_task(func: Callable, src, dst, index: tuple[int, ...], grid, depth: int, mask=None) -> int:
    """One chunk of a pass: read its overlapped region of ``src`` ``(C, D, H, W)`` (and of ``mask`` ``(D, H, W)``)
    straight from the Zarr arrays, ``func(block, mask_block, start)``, write the chunk's own part into ``dst``."""
    lo, hi, elo, ehi = _region(grid, index, depth, src.shape[-3:])
    ext = tuple(slice(a, b) for a, b in zip(elo, ehi))
    block = np.asarray(src[(slice(None), *ext)])
    m = None if mask is None else np.asarray(mask[ext]) > 0
    out = func(block, m, elo)
    inner = tuple(slice(a - e, b - e) for a, b, e in zip(lo, hi, elo))
    own = tuple(slice(a, b) for a, b in zip(lo, hi))
    if out.ndim == 4:
        dst[(slice(None), *own)] = out[(slice(None), *inner)]
    else:
        dst[own] = out[inner]
    del block, out, m
    release_memory()
    return 0


def _run_pass(func: Callable, src, dst, grid, depth: int, client, scheduler, progress: bool, desc: str,
              mask=None) -> None:
    """``func`` over every chunk of ``grid``, each an independent task that reads its region (chunk plus ``depth``
    voxels) from the Zarr array ``src`` and writes its chunk of ``dst``: nothing but one region per running task
    is held, whatever the volume's size (a ``map_overlap`` graph keeps neighbouring chunks alive)."""
    import dask

    shared = dask.delayed(func, pure=True)  # one copy of the function (and the model it holds) for all tasks
    tasks = [dask.delayed(_pass_task, pure=False)(shared, src, dst, i, grid, depth, mask)
             for i in np.ndindex(*(len(g) for g in grid))]
    _compute(tasks, client, scheduler, progress, desc)


def _embed_values(raw: np.ndarray, mask, start, model: HyperVAE, norm: NormFit, cfg: Config) -> np.ndarray:
    """Raw region ``(C, a, b, c)`` -> ``(d + C, a, b, c)`` float64: its encoder means and normalised values."""
    x = normalise_block(raw, norm)
    emb = embed_volume(model, torch.from_numpy(np.ascontiguousarray(x)), patch_edge=cfg.embed_patch_edge,
                       tile=min(cfg.embed_tile, CHUNK_EMBED_TILE), pad_mode=cfg.pad_mode)
    return np.concatenate([np.moveaxis(emb.numpy(), -1, 0), x.astype(np.float64)])


def _smooth_values(block: np.ndarray, mask, start, cfg: Config, d: int) -> np.ndarray:
    """``(d + C, a, b, c)`` -> the same array, its ``d`` embedding channels smoothed in place (the block is the
    task's own copy, read from the store: no second region-sized array is made for the result)."""
    block[:d] = np.moveaxis(smooth_embedding(np.moveaxis(block[:d], 0, -1), cfg.smooth_sigma, latent=cfg.latent,
                                             c=cfg.c), -1, 0)
    return block


def _labels_region(block: np.ndarray, mask, start, lp: LevelParams, cfg: Config, d: int) -> np.ndarray:
    """``(d + C, a, b, c)`` smoothed points and values of a region starting at voxel ``start`` -> labels
    ``(a, b, c)`` uint8, the Potts colours of the volume's grid."""
    pts = np.moveaxis(block[:d], 0, -1)
    return labels_of(pts, block[d:], lp, cfg, mask=mask, parity=sum(start) % 2)


def _sample_block(field: np.ndarray, mask: np.ndarray | None, fraction: float, seed: int,
                  key: tuple[int, ...]) -> np.ndarray:
    """``(n, d + C)`` rows (points, normalised values) of a random ``fraction`` of a block's voxels (of ``mask``)."""
    rng = np.random.default_rng([seed, *key])
    where = np.flatnonzero(mask.reshape(-1)) if mask is not None else np.arange(field[0].size)
    n = min(len(where), int(round(fraction * len(where))))
    pick = np.sort(rng.choice(where, size=n, replace=False)) if n < len(where) else where
    return field.reshape(field.shape[0], -1)[:, pick].T


def _sample_task(field, mask, index: tuple[int, ...], grid, fraction: float, seed: int) -> np.ndarray:
    """:func:`_sample_block` of chunk ``index`` of ``grid``, read straight from the Zarr arrays ``field``
    ``(d + C, D, H, W)`` and ``mask`` ``(D, H, W)`` (or ``None``)."""
    lo, hi, _, _ = _region(grid, index, 0, field.shape[-3:])
    own = tuple(slice(a, b) for a, b in zip(lo, hi))
    m = None if mask is None else np.asarray(mask[own]) > 0
    if m is not None and not m.any():
        return np.zeros((0, field.shape[0]), dtype=field.dtype)
    rows = _sample_block(np.asarray(field[(slice(None), *own)]), m, fraction, seed, index)
    release_memory()
    return rows


def _sample(field, mask, grid, total: int, size: int, seed: int, client, scheduler) -> np.ndarray:
    """A sample of about ``size`` voxels (of ``mask``, which holds ``total``) of the Zarr array ``field``
    ``(d + C, D, H, W)``, drawn across all chunks of ``grid``, each chunk's share in proportion to its voxels
    (seeded by the chunk's index).

    Each task reads its own chunk from the store, so at most one chunk per running task is in memory (a graph
    over ``dask.array.from_zarr`` lets the scheduler load chunks ahead of the tasks that consume them)."""
    import dask

    fraction = min(1.0, size / max(total, 1))
    parts = [dask.delayed(_sample_task, pure=False)(field, mask, i, grid, fraction, seed)
             for i in np.ndindex(*(len(g) for g in grid))]
    return np.concatenate(_compute(parts, client, scheduler), axis=0)


def _norm_sample(raw, limit: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Every voxel, or a strided grid of at most ``limit`` voxels, of raw ``(C, D, H, W)`` (dask)."""
    shape = raw.shape[1:]
    step = 1
    while math.prod(math.ceil(n / step) for n in shape) > limit:
        step += 1
    return raw[:, ::step, ::step, ::step], (step,) * 3


def segment_chunked(model: HyperVAE, raw, levels: Sequence[int], writer: LabelsWriter, *,
                    chunks: Sequence[int] | None = None, client=None, scheduler: str | None = None, seed: int = 0,
                    fit: ChunkedFit | None = None, halo: Halo | None = None, sample_size: int | None = None,
                    progress: bool = False, cfg: Config | None = None,
                    log: Callable[[str], None] | None = None) -> ChunkedResult:
    """Segment raw ``(C, D, H, W)`` (a dask array, or anything ``dask.array.asarray`` takes) chunk by chunk and
    write each level ``K`` into ``writer`` (``labels/k{K}``); returns the :class:`ChunkedResult`.

    ``chunks``: the processing chunk ``(D, H, W)`` (default: the array's own, at least :data:`MIN_CHUNK`);
    ``client``: a ``dask.distributed.Client``, else the local ``scheduler`` (``"threads"``, ``"processes"``,
    ``"synchronous"``); ``fit``: parameters to use instead of fitting them; ``halo``: overlaps instead of
    :func:`halos` (for tests); ``sample_size``: voxels the clustering is fitted on (default
    ``cfg.kmeans_sample``). ``writer.finish()`` is left to the caller.
    """
    import dask.array as da

    cfg = check_config(cfg or model.cfg)
    halo = halo or halos(cfg)
    raw = da.asarray(raw)
    if raw.ndim != 4 or raw.shape[0] != cfg.in_channels:
        raise ValueError(f"expected a volume of shape ({cfg.in_channels}, D, H, W), got {tuple(raw.shape)}")
    shape = tuple(int(n) for n in raw.shape[1:])
    ks = list(dict.fromkeys(int(k) for k in levels))
    if math.prod(shape) < max(ks):
        raise ValueError(f"the volume has {math.prod(shape)} voxels, fewer than the {max(ks)} clusters asked for")
    want = chunks or tuple(max(c, MIN_CHUNK) for c in (x[0] for x in raw.chunks[1:]))
    pchunks = processing_chunks(shape, want, _least(halo, cfg))
    raw = raw.rechunk(((raw.shape[0],), *pchunks))
    say = log or (lambda s: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model.eval()
    if fit is None:
        sample, _ = _norm_sample(raw, NORM_SAMPLE)
        norm = fit_normalisation(_compute(sample, client, scheduler), cfg)
    else:
        norm = fit.norm
    seconds["normalisation"] = time.perf_counter() - t0

    # every pass reads its chunk's region (chunk plus overlap) from a scratch Zarr array and writes its chunk
    t0 = time.perf_counter()
    d, C = int(cfg.latent_dim), int(raw.shape[0])
    import zarr

    scratch = zarr.open_group(store=str(writer.scratch), mode="w", zarr_format=2)
    zc = want_chunks(pchunks)

    def scratch_array(name: str, channels: int, dtype):
        return scratch.create_array(name, shape=(channels, *shape), chunks=(channels, *zc), dtype=dtype,
                                    compressors=None)

    def run(func, src, dst, depth: int, desc: str, mask=None) -> None:
        _run_pass(func, src, dst, pchunks, depth, client, scheduler, progress, desc, mask=mask)

    source = scratch_array("raw", C, raw.dtype)
    _compute(da.store(raw, source, lock=False, compute=False), client, scheduler)
    # the encoder (the costly step) with its receptive field as overlap, then the smoothing with its radius
    field = scratch_array("encoder", d + C, np.float64)
    run(partial(_embed_values, model=model, norm=norm, cfg=cfg), source, field, halo.embed, "embed")
    if cfg.smooth_sigma > 0:
        smooth = scratch_array("smoothed", d + C, np.float64)
        run(partial(_smooth_values, cfg=cfg, d=d), field, smooth, halo.smooth, "smooth")
        field = smooth
    seconds["embed"] = time.perf_counter() - t0

    total = math.prod(shape)
    n_sample = sample_size or cfg.kmeans_sample or 200_000
    fitted = dict(fit.levels) if fit is not None else {}
    background = fit.background if fit is not None else None

    def level_pass(lp: LevelParams, dst, mask=None, desc: str = "") -> None:
        run(partial(_labels_region, lp=lp, cfg=cfg, d=d), field, dst, halo.potts, desc, mask=mask)

    def fit_on(mask, count: int, n_clusters: int, inside: bool) -> LevelParams:
        rows = _sample(field, mask, pchunks, count, n_sample, seed, client, scheduler)
        if len(rows) < n_clusters:
            raise ValueError(f"the sample holds {len(rows)} voxel(s), fewer than the {n_clusters} clusters asked for")
        return fit_level_params(rows[:, :d], rows[:, d:], n_clusters, cfg, seed=seed, inside=inside)

    t0 = time.perf_counter()
    foreground = None
    if cfg.hierarchy == "foreground":
        foreground = "split"
        if 2 not in fitted:
            fitted[2] = fit_on(None, total, 2, False)
        two = scratch.create_array("two", shape=shape, chunks=zc, dtype="uint8")
        level_pass(fitted[2], two, desc="level 2")
        two_d = da.from_zarr(two).rechunk(pchunks)
        if background is None:
            faces = [two_d[0], two_d[-1], two_d[:, 0], two_d[:, -1], two_d[:, :, 0], two_d[:, :, -1]]
            counts = _compute([da.bincount(f.ravel(), minlength=2) for f in faces], client, scheduler)
            background = int(np.sum(counts, axis=0).argmax())
        fg_store = writer.create(2, zc)
        _compute(da.store(filled_foreground(two_d, background, client, scheduler), fg_store, lock=False,
                          compute=False), client, scheduler)
        count = int(_compute((da.from_zarr(fg_store).rechunk(pchunks) > 0).sum(), client, scheduler))
        say(f"level 2: foreground {count} of {total} voxels")
        for k in ks:
            if k == 2:
                continue
            arr = writer.create(k, zc)
            if k < 2:
                continue
            if count < k - 1:
                raise ValueError(f"the foreground holds {count} voxel(s), fewer than the {k - 1} clusters asked for "
                                 "inside it; ask for fewer clusters or use hierarchy 'independent'")
            if k not in fitted:
                fitted[k] = fit_on(fg_store, count, k - 1, True)
            level_pass(fitted[k], arr, mask=fg_store, desc=f"level {k}")
    else:
        for k in ks:
            if k not in fitted:
                fitted[k] = fit_on(None, total, k, False)
            level_pass(fitted[k], writer.create(k, zc), desc=f"level {k}")
    seconds["levels"] = time.perf_counter() - t0
    writer.group.attrs["hyperseg"] = {**writer.group.attrs.get("hyperseg", {}), "stage": "chunked",
                                      "foreground": foreground, "fit": fit_to_dict(ChunkedFit(norm, fitted, background))}
    return ChunkedResult(ChunkedFit(norm, fitted, background), writer.root, pchunks, foreground, seconds)


def _client_for(scheduler: str | None):
    """A ``dask.distributed.Client`` for a scheduler address (``tcp://``, ``tls://``, ``inproc://``...), else ``None``."""
    if scheduler is None or "://" not in scheduler:
        if scheduler not in (None, "threads", "processes", "synchronous", "sync", "single-threaded"):
            raise ValueError(f"--scheduler must be threads, processes, synchronous or a scheduler address such as "
                             f"tcp://HOST:8786, got {scheduler!r}")
        return None
    from distributed import Client

    try:
        return Client(scheduler, timeout="30s")
    except OSError as err:
        raise ValueError(f"{scheduler}: no Dask scheduler answers there ({err}); start one (`dask scheduler`) "
                         "or give another --scheduler") from None


def segment_zarr_case(model: HyperVAE, case, options, levels: Sequence[int],
                      mask: np.ndarray | None = None) -> list:
    """Segment a Zarr case (:class:`hyperseg.data.io.Case` with ``zarr=True``) chunk by chunk into
    ``{output}/{case}.ome.zarr/labels/k{K}`` (:func:`hyperseg.pipeline.segment_case` calls this); returns the
    label images written."""
    import dask.array as da

    from .data.resample import isotropic_shape
    from .data.zarr_io import LabelsWriter, open_zarr
    from .pipeline import zarr_output

    path = case.files[0]
    img = open_zarr(path, options.zarr_level)
    where = f"{path}" if img.level is None else f"{path} (level {img.level})"
    if options.save_embeddings or options.report or options.report_html:
        raise ValueError(f"{where}: --save-embeddings and --report need the whole volume in memory; add "
                         "--in-memory (if it fits) or leave them out")
    if mask is not None:
        raise ValueError(f"{where}: --mask is not supported chunk by chunk; leave it out or add --in-memory")
    shape = img.spatial_shape
    if isotropic_shape(shape, img.spacing) != shape:
        raise ValueError(f"{where}: anisotropic voxels {img.spacing} are not resampled chunk by chunk; resample "
                         "the store to cubic voxels, or add --in-memory if it fits")
    if img.array.shape[0] != model.cfg.in_channels:
        raise ValueError(f"{where}: has {img.array.shape[0]} channels but the model was trained on "
                         f"{model.cfg.in_channels}; give volumes with the training data's channels")
    client = options.client or _client_for(options.scheduler)
    scheduler = None if client is not None else options.scheduler
    try:
        bad = _compute((~da.isfinite(img.array)).sum(), client, scheduler) \
            if np.dtype(img.array.dtype).kind == "f" else 0
        if bad:
            raise ValueError(f"{where}: has {int(bad)} NaN or Inf voxels; fix them (chunk by chunk, they cannot be "
                             "filled), or add --in-memory --nan-policy fill")
        with LabelsWriter(zarr_output(case, options), shape, img.spacing, img.origin, img.unit, like=img,
                          source=str(path)) as writer:
            segment_chunked(model, img.array, levels, writer, chunks=options.chunks, client=client,
                            scheduler=scheduler, seed=options.seed, progress=options.progress,
                            log=(lambda m: print(m, flush=True)) if options.progress else None)
            root = writer.finish()
    finally:
        if client is not None and options.client is None:
            client.close()
    return [root / "labels" / f"k{int(k)}" for k in levels]


# ----------------------------------------------------------------------------- holes, across chunks
def _face_planes(lab: np.ndarray) -> list[np.ndarray]:
    """The six faces of a block ``(a, b, c)``: low and high along D, then H, then W."""
    return [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]


def _background_components(two: np.ndarray, background: int) -> tuple[int, list[np.ndarray]]:
    """Components (6-neighbours) of the background cluster in one chunk: their count and the local labels
    on the chunk's six faces."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(two == background)
    return int(n), [np.ascontiguousarray(f) for f in _face_planes(lab)]


def _foreground_block(two: np.ndarray, background: int, keep: np.ndarray) -> np.ndarray:
    """Foreground ``(a, b, c)`` uint8 of a chunk: every voxel but the background components listed in ``keep``
    (local labels connected to the volume's border)."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(two == background)
    return (~np.isin(lab, keep)).astype(np.uint8)


def filled_foreground(two, background: int, client=None, scheduler: str | None = None):
    """``ndi.binary_fill_holes(two != background)`` of a dask label map ``(D, H, W)``, chunk by chunk: a dask array
    uint8 (1 = foreground).

    The background is the background cluster's voxels 6-connected to the volume's faces. Each chunk's
    components are labelled on their own; those that touch a chunk face are joined across faces
    (``scipy.sparse.csgraph.connected_components`` on the pairs facing each other, plus one node for the
    volume's border); a component that reaches no chunk face is a hole. Memory on the caller's side: the
    chunks' face planes.
    """
    import dask
    import dask.array as da
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    grid = two.chunks
    nb = tuple(len(c) for c in grid)
    blocks = two.to_delayed()
    found = _compute([dask.delayed(_background_components)(blocks[i], background) for i in np.ndindex(*nb)],
                     client, scheduler)
    index = {i: j for j, i in enumerate(np.ndindex(*nb))}
    counts = np.array([n for n, _ in found], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    border = counts.sum() + 1  # node id of the volume's border (global ids are 1..sum)
    src, dst = [], []

    def glob(j: int, plane: np.ndarray) -> np.ndarray:
        return np.where(plane > 0, plane.astype(np.int64) + offsets[j], 0)

    for i in np.ndindex(*nb):
        j = index[i]
        faces = found[j][1]
        for axis in range(3):
            lo, hi = faces[2 * axis], faces[2 * axis + 1]
            if i[axis] == 0:  # on the volume's face: joined to the border node
                ids = np.unique(glob(j, lo))
                src.append(ids[ids > 0]), dst.append(np.full((ids > 0).sum(), border))
            if i[axis] == nb[axis] - 1:
                ids = np.unique(glob(j, hi))
                src.append(ids[ids > 0]), dst.append(np.full((ids > 0).sum(), border))
            else:  # facing the next chunk's low face
                nxt = list(i)
                nxt[axis] += 1
                k = index[tuple(nxt)]
                a, b = glob(j, hi).ravel(), glob(k, found[k][1][2 * axis]).ravel()
                both = (a > 0) & (b > 0)
                pairs = np.unique(np.stack([a[both], b[both]], 1), axis=0) if both.any() else np.zeros((0, 2), int)
                src.append(pairs[:, 0]), dst.append(pairs[:, 1])
    src_a = np.concatenate(src).astype(np.int64) if src else np.zeros(0, np.int64)
    dst_a = np.concatenate(dst).astype(np.int64) if dst else np.zeros(0, np.int64)
    nodes, inverse = np.unique(np.concatenate([src_a, dst_a, [border]]), return_inverse=True)
    e = inverse[:-1].reshape(2, -1)
    graph = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(graph, directed=False)
    outside = nodes[comp == comp[-1]]  # every component joined to the border node (nodes are sorted: border last)
    outside = outside[outside != border]
    keep = {}
    for i in np.ndindex(*nb):
        j = index[i]
        mine = outside[(outside > offsets[j]) & (outside <= offsets[j] + counts[j])] - offsets[j]
        keep[i] = mine
    parts = np.empty(nb, dtype=object)
    for i in np.ndindex(*nb):
        shape = tuple(grid[a][i[a]] for a in range(3))
        parts[i] = da.from_delayed(dask.delayed(_foreground_block)(blocks[i], background, keep[i]), shape,
                                   dtype=np.uint8)
    return da.block(parts.tolist())


def want_chunks(pchunks: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """The regular chunk edge of processing chunks (their first chunk per axis), for the Zarr arrays."""
    return tuple(int(c[0]) for c in pchunks)


__all__ = ["ChunkedFit", "ChunkedResult", "Halo", "LevelParams", "NormFit", "check_config", "chunked_mean_field",
           "embed_radius", "embedding_field", "filled_foreground", "fit_from_dict", "fit_level_params",
           "fit_normalisation", "fit_to_dict", "halos", "labels_of", "level_loglik", "mean_field_block",
           "normalise_block", "processing_chunks", "segment_chunked", "segment_in_memory", "segment_zarr_case"]
