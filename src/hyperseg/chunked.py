"""Out-of-core segmentation on Dask: a volume larger than memory, chunk by chunk.

:func:`segment_chunked` runs the segmentation stage on a :mod:`dask.array`
``(C, D, H, W)`` (a Zarr / OME-Zarr store, :mod:`hyperseg.data.zarr_io`) and
writes each level's labels into a Zarr array as its chunks are done. Memory is
bounded by the processing chunk (and its overlap) times the number of tasks
running at once, not by the volume. Dask schedules everything: threads or
processes on one machine, or an existing ``dask.distributed`` cluster (a
``Client``, or ``scheduler="tcp://HOST:8786"``).

Steps, and which are exact
--------------------------
1. **Normalisation statistics** (:class:`NormFit`) from a strided sample of
   the raw volume (every voxel when the volume has at most
   ``norm_sample`` voxels: then they are :func:`hyperseg.data.preprocess.normalize_for`'s).
2. **Embedding, then smoothing**, chunk by chunk (``dask.array.map_overlap``'s
   overlap and trim), each pass stored to a scratch Zarr array beside the output
   (``8 d`` bytes per voxel each, removed at the end): the encoder with an overlap
   of its receptive field in native voxels (:func:`embed_radius`: the window
   geometry of :mod:`hyperseg.embed`, trilinear neighbours included), then the
   Gaussian smoothing with an overlap of its radius ``int(4 sigma + 0.5)``
   (scipy's truncation). At the volume's faces Dask adds no overlap, so the
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

if TYPE_CHECKING:
    from .data.zarr_io import LabelsWriter
    from .model import HyperVAE

#: scipy.ndimage.gaussian_filter's default ``truncate``: the kernel's radius is ``int(truncate * sigma + 0.5)``.
GAUSSIAN_TRUNCATE = 4.0
#: At most this many voxels of the raw volume are read for the normalisation statistics.
NORM_SAMPLE = 2 ** 22
#: Default processing chunk edge when the store's chunks are smaller than the overlap needs.
MIN_CHUNK = 32


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

    @property
    def field(self) -> int:
        return self.embed + self.smooth


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
    emb = embed_volume(model, torch.from_numpy(x), patch_edge=cfg.embed_patch_edge, tile=cfg.embed_tile,
                       pad_mode=cfg.pad_mode)
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
            with ProgressBar(minimum=1.0):
                return dask.compute(collection)[0]
        return dask.compute(collection)[0]


def _block_start(chunks: tuple[tuple[int, ...], ...], index: Sequence[int], depth: int) -> tuple[int, ...]:
    """Volume index of the first voxel of the overlapped block ``index`` (no overlap at the volume's faces)."""
    out = []
    for sizes, i in zip(chunks, index):
        start = int(sum(sizes[:i]))
        out.append(start - depth if i > 0 else start)
    return tuple(out)


def _rechunked(x, least: int):
    """``x`` ``(C, D, H, W)`` with one chunk along C and its spatial chunks' short last ones merged
    (:func:`processing_chunks`), so that every chunk holds the overlap ``least``."""
    spatial = processing_chunks(x.shape[1:], [c[0] for c in x.chunks[1:]], least)
    return x.rechunk(((x.shape[0],), *spatial))


def _overlapped(func: Callable, x, depth: int, channels: int, dtype):
    """``func`` over the blocks of ``x`` ``(C, D, H, W)`` overlapped by ``depth`` voxels on the spatial axes
    (none at the volume's faces), its ``(channels, ...)`` outputs trimmed back to the chunks: what
    ``dask.array.map_overlap`` does, with another channel count out than in."""
    import dask.array as da

    dep = {0: 0, 1: depth, 2: depth, 3: depth}
    if any(len(c) > 1 and min(c) < depth for c in x.chunks[1:]):  # dask would rechunk: block offsets would move
        raise ValueError(f"chunks {x.chunks[1:]} are shorter than the overlap of {depth} voxels; rechunk with "
                         "processing_chunks()")
    g = da.overlap.overlap(x, depth=dep, boundary="none") if depth else x
    out = g.map_blocks(func, dtype=dtype, chunks=((channels,), *g.chunks[1:]), meta=np.empty((0,) * 4, dtype))
    return da.overlap.trim_internal(out, dep, boundary="none") if depth else out


def _mean_field_block(L: np.ndarray, beta: float, n_iter: int, grid, depth: int, block_info=None) -> np.ndarray:
    index = block_info[0]["chunk-location"][1:]
    return mean_field_block(L, beta, n_iter, parity=sum(_block_start(grid, index, depth)) % 2)


def chunked_mean_field(loglik, beta: float, n_iter: int, depth: int | None = None):
    """:func:`hyperseg.potts.mean_field` (no mask) of a dask ``(K, D, H, W)`` log-likelihood field, chunk by chunk
    with an overlap of ``depth`` voxels (default ``2 n_iter``, what it needs): a dask array of the posteriors."""
    import dask.array as da

    depth = 2 * n_iter if depth is None else depth
    L = _rechunked(da.asarray(loglik), depth)
    func = partial(_mean_field_block, beta=beta, n_iter=n_iter, grid=L.chunks[1:], depth=depth)
    return _overlapped(func, L, depth, L.shape[0], np.float64)


def raw_embedding(model: HyperVAE, raw, norm: NormFit, cfg: Config, depth: int | None = None):
    """The encoder means of raw ``(C, D, H, W)`` (dask, chunked as it is) as a dask array ``(d, D, H, W)`` in the
    latent dtype, each chunk embedded with an overlap of ``depth`` voxels (default :func:`halos`'s ``embed``)."""
    import dask.array as da

    depth = halos(cfg).embed if depth is None else depth
    least = max(depth, padding_for(cfg.embed_patch_edge) + 1)
    return _overlapped(partial(_embed_block, model=model, norm=norm, cfg=cfg), _rechunked(da.asarray(raw), least),
                       depth,
                       int(cfg.latent_dim), np.float64)


def smoothed_field(field, cfg: Config, depth: int | None = None):
    """:func:`hyperseg.smooth.smooth_embedding` of a dask field ``(d, D, H, W)`` chunk by chunk, with an overlap of
    ``depth`` voxels (default :func:`halos`'s ``smooth``, the Gaussian's radius): a dask array, float64."""
    import dask.array as da

    depth = halos(cfg).smooth if depth is None else depth
    if cfg.smooth_sigma == 0:
        return da.asarray(field).astype(np.float64)
    return _overlapped(partial(_smooth_block, cfg=cfg), _rechunked(da.asarray(field), depth), depth,
                       int(field.shape[0]), np.float64)


def embedding_field(model: HyperVAE, raw, norm: NormFit, cfg: Config, halo: Halo | None = None):
    """The smoothed embedding of raw ``(C, D, H, W)`` (dask) as a dask array ``(d, D, H, W)`` float64:
    :func:`raw_embedding` then :func:`smoothed_field` with the overlaps of ``halo`` (default :func:`halos`)."""
    halo = halo or halos(cfg)
    return smoothed_field(raw_embedding(model, raw, norm, cfg, halo.embed), cfg, halo.smooth)


def _embed_block(raw: np.ndarray, model: HyperVAE, norm: NormFit, cfg: Config) -> np.ndarray:
    """Overlapped raw block ``(C, a, b, c)`` -> encoder means ``(d, a, b, c)`` (its rim is trimmed)."""
    x = normalise_block(raw, norm)
    emb = embed_volume(model, torch.from_numpy(np.ascontiguousarray(x)), patch_edge=cfg.embed_patch_edge,
                       tile=cfg.embed_tile, pad_mode=cfg.pad_mode)
    return np.ascontiguousarray(np.moveaxis(emb.numpy(), -1, 0))


def _smooth_block(field: np.ndarray, cfg: Config) -> np.ndarray:
    """Overlapped embedding block ``(d, a, b, c)`` -> smoothed ``(d, a, b, c)`` float64 (its rim is trimmed)."""
    pts = smooth_embedding(np.moveaxis(field, 0, -1), cfg.smooth_sigma, latent=cfg.latent, c=cfg.c)
    return np.ascontiguousarray(np.moveaxis(pts, -1, 0))


def _labels_block(stack: np.ndarray, lp: LevelParams, cfg: Config, d: int, masked: bool,
                  grid: tuple[tuple[int, ...], ...], depth: int, block_info=None) -> np.ndarray:
    """Overlapped block of ``[points (d), values (C), mask (1)]`` ``(d + C + 1, a, b, c)`` -> labels
    ``(1, a, b, c)`` uint8 (its rim is trimmed)."""
    index = block_info[0]["chunk-location"][1:]
    parity = sum(_block_start(grid, index, depth)) % 2
    pts = np.moveaxis(stack[:d], 0, -1)
    values = stack[d:-1]
    mask = stack[-1] > 0.5 if masked else None
    return labels_of(pts, values, lp, cfg, mask=mask, parity=parity)[None]


def _sample_block(emb: np.ndarray, raw: np.ndarray, mask: np.ndarray | None, fraction: float, norm: NormFit,
                  seed: int, key: tuple[int, ...]) -> np.ndarray:
    """``(n, d + C)`` points and normalised values of a random ``fraction`` of a block's voxels (of ``mask``)."""
    rng = np.random.default_rng([seed, *key])
    where = np.flatnonzero(mask.reshape(-1)) if mask is not None else np.arange(emb[0].size)
    n = min(len(where), int(round(fraction * len(where))))
    pick = np.sort(rng.choice(where, size=n, replace=False)) if n < len(where) else where
    values = normalise_block(raw, norm).reshape(raw.shape[0], -1)[:, pick]
    return np.concatenate([emb.reshape(emb.shape[0], -1)[:, pick], values.astype(np.float64)], axis=0).T


def _sample(emb, raw, mask, total: int, size: int, norm: NormFit, seed: int, client, scheduler) -> np.ndarray:
    """A sample of about ``size`` voxels (of ``mask``, which holds ``total``), drawn across all chunks."""
    import dask

    fraction = min(1.0, size / max(total, 1))
    eb, rb = emb.to_delayed(), raw.to_delayed()
    mb = mask.to_delayed() if mask is not None else None
    parts = []
    for idx in np.ndindex(*eb.shape[1:]):
        m = mb[idx] if mb is not None else None
        parts.append(dask.delayed(_sample_block)(eb[(0, *idx)], rb[(0, *idx)], m, fraction, norm, seed, idx))
    rows = _compute(parts, client, scheduler)
    return np.concatenate(rows, axis=0)


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
    least = max(halo.embed, halo.smooth, halo.potts, padding_for(cfg.embed_patch_edge) + 1, 1)
    want = chunks or tuple(max(c, MIN_CHUNK) for c in (x[0] for x in raw.chunks[1:]))
    pchunks = processing_chunks(shape, want, least)
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

    # embedding + smoothing, overlapped by the receptive field and the kernel, stored to scratch
    t0 = time.perf_counter()
    d = int(cfg.latent_dim)
    import zarr

    scratch = zarr.open_group(store=str(writer.scratch), mode="w", zarr_format=2)

    def to_scratch(name: str, x, desc: str):
        z = scratch.create_array(name, shape=(d, *shape), chunks=(d, *want_chunks(pchunks)), dtype="float64",
                                 compressors=None)
        _compute(da.store(x, z, lock=False, compute=False), client, scheduler, progress, desc)
        return da.from_zarr(z).rechunk(((d,), *pchunks))

    # two passes, each stored: the encoder (the costly step) then needs only its receptive field as overlap
    emb = to_scratch("encoder", raw_embedding(model, raw, norm, cfg, halo.embed), "embed")
    if cfg.smooth_sigma > 0:
        emb = to_scratch("smoothed", smoothed_field(emb, cfg, halo.smooth), "smooth")
    seconds["embed"] = time.perf_counter() - t0

    values = raw.map_blocks(normalise_block, norm, dtype=np.float32)
    total = math.prod(shape)
    n_sample = sample_size or cfg.kmeans_sample or 200_000
    fitted = dict(fit.levels) if fit is not None else {}
    background = fit.background if fit is not None else None

    def level_pass(lp: LevelParams, mask) -> Any:
        m = mask.astype(np.float64)[None] if mask is not None else da.zeros((1, *shape), chunks=((1,), *pchunks))
        stack = da.concatenate([emb, values.astype(np.float64), m], axis=0).rechunk(((d + cfg.in_channels + 1,),
                                                                                      *pchunks))
        func = partial(_labels_block, lp=lp, cfg=cfg, d=d, masked=mask is not None, grid=pchunks,
                       depth=halo.potts)
        out = _overlapped(func, stack, halo.potts, 1, np.uint8)
        return out[0]

    def fit_on(mask, count: int, n_clusters: int, inside: bool) -> LevelParams:
        rows = _sample(emb, raw, mask, count, n_sample, norm, seed, client, scheduler)
        if len(rows) < n_clusters:
            raise ValueError(f"the sample holds {len(rows)} voxel(s), fewer than the {n_clusters} clusters asked for")
        return fit_level_params(rows[:, :d], rows[:, d:], n_clusters, cfg, seed=seed, inside=inside)

    t0 = time.perf_counter()
    foreground = None
    if cfg.hierarchy == "foreground":
        foreground = "split"
        if 2 not in fitted:
            fitted[2] = fit_on(None, total, 2, False)
        two = scratch.create_array("two", shape=shape, chunks=want_chunks(pchunks), dtype="uint8")
        _compute(da.store(level_pass(fitted[2], None), two, lock=False, compute=False), client, scheduler,
                 progress, "level 2")
        two_d = da.from_zarr(two).rechunk(pchunks)
        if background is None:
            faces = [two_d[0], two_d[-1], two_d[:, 0], two_d[:, -1], two_d[:, :, 0], two_d[:, :, -1]]
            counts = _compute([da.bincount(f.ravel(), minlength=2) for f in faces], client, scheduler)
            background = int(np.sum(counts, axis=0).argmax())
        arr = writer.create(2, want_chunks(pchunks))
        _compute(da.store(filled_foreground(two_d, background, client, scheduler), arr, lock=False, compute=False),
                 client, scheduler)
        fg = da.from_zarr(arr).rechunk(pchunks) > 0
        count = int(_compute(fg.sum(), client, scheduler))
        say(f"level 2: foreground {count} of {total} voxels")
        for k in ks:
            if k == 2:
                continue
            arr = writer.create(k, want_chunks(pchunks))
            if k < 2:
                continue
            if count < k - 1:
                raise ValueError(f"the foreground holds {count} voxel(s), fewer than the {k - 1} clusters asked for "
                                 "inside it; ask for fewer clusters or use hierarchy 'independent'")
            if k not in fitted:
                fitted[k] = fit_on(fg, count, k - 1, True)
            _compute(da.store(level_pass(fitted[k], fg), arr, lock=False, compute=False), client, scheduler,
                     progress, f"level {k}")
    else:
        for k in ks:
            if k not in fitted:
                fitted[k] = fit_on(None, total, k, False)
            arr = writer.create(k, want_chunks(pchunks))
            _compute(da.store(level_pass(fitted[k], None), arr, lock=False, compute=False), client, scheduler,
                     progress, f"level {k}")
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
                            scheduler=scheduler, seed=options.seed, progress=options.progress)
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


__all__ = ["ChunkedFit", "ChunkedResult", "Halo", "LevelParams", "NormFit", "check_config", "embed_radius",
           "fit_from_dict", "fit_level_params", "fit_normalisation", "fit_to_dict", "halos", "labels_of", "level_loglik", "mean_field_block",
           "normalise_block", "processing_chunks", "chunked_mean_field", "embedding_field", "filled_foreground", "raw_embedding",
           "segment_zarr_case", "smoothed_field", "segment_chunked", "segment_in_memory"]
