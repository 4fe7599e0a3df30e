"""Intensity normalisation, applied identically at training and segmentation time.

:func:`normalize_for` is *the* function both :func:`hyperseg.train.prepare_volumes`
and :func:`hyperseg.segment.segment_array` call. With ``cfg.normalize`` on
(the default) it normalises each channel ``c`` of a ``(C, D, H, W)`` volume
robustly, with statistics taken inside a foreground mask ``M``:

1. ``lo_c, hi_c`` = the ``clip_percentiles`` (default 0.5 and 99.5) of
   channel ``c`` over ``M``; voxels in ``M`` are clipped to ``[lo_c, hi_c]``
   (outliers inside the object no longer set the scale). Voxels outside
   ``M`` are not clipped, so a background stays distinct from the object.
2. ``x_c <- (x_c - mean_c) / std_c`` with the mean and standard deviation of
   the clipped voxels in ``M``; a channel with ``std_c < MIN_STD`` is only
   centred. The result is clipped to ``[-Z_MAX, Z_MAX]`` so that far
   outliers outside ``M`` stay finite in float32.

With ``cfg.highpass_sigma = s > 0`` a smooth bias field is removed first
(:func:`highpass`): each channel loses its Gaussian-smoothed copy (sigma
``s`` voxels), the slowly varying component that bias fields and uneven
illumination add, so that the same tissue has the same value across the
volume. Inside a foreground mask the smoothing is a *normalised
convolution* (only foreground voxels are averaged), so the floor around a
skull-stripped or masked object does not brighten the object's rim.

The mask ``M`` (shared by all channels) is given as a boolean ``(D, H, W)``
array, or computed (``normalize_mask: auto``): the voxels whose channel
mean is above its minimum, i.e. everything but the flat floor that
skull-stripped, masked or zero-padded scans have around the object. When
that floor covers less than :data:`MIN_BACKGROUND` of the voxels (noisy data
have no floor) or leaves less than :data:`MIN_FOREGROUND` of them, all
voxels are used; ``normalize_mask: none`` always uses all voxels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from ..config import Config

#: Channels whose standard deviation is below this are only centred, not scaled.
MIN_STD = 1e-8
#: Smallest fraction of voxels a computed foreground mask may keep before all voxels are used.
MIN_FOREGROUND = 0.01
#: Smallest fraction of voxels at the minimum that counts as a flat background floor.
MIN_BACKGROUND = 0.01
#: Normalised values are clipped to +-Z_MAX: far outliers outside the mask stay finite in float32.
Z_MAX = 1e4
MASK_MODES = ("auto", "none")
#: Normalised convolution: voxels whose smoothed mask weight is below this get no bias estimate.
MIN_MASK_WEIGHT = 1e-3


def zscore(array: np.ndarray) -> np.ndarray:
    """Z-score each channel of ``(C, D, H, W)``: ``(x - mean_c) / std_c``, float32."""
    x = np.asarray(array, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    std = np.where(std < MIN_STD, 1.0, std)
    return ((x - mean) / std).astype(np.float32)


def foreground_mask(array: np.ndarray) -> np.ndarray | None:
    """Computed foreground of ``(C, D, H, W)``: boolean ``(D, H, W)``, or ``None`` for "all voxels".

    The voxels whose channel mean lies above its minimum (see the module
    docstring); ``None`` when that keeps less than :data:`MIN_FOREGROUND` of
    the voxels or drops less than :data:`MIN_BACKGROUND` of them.
    """
    mean = np.asarray(array, dtype=np.float32).mean(axis=0, dtype=np.float64)
    mask = mean > mean.min()
    kept = int(mask.sum())
    if kept < MIN_FOREGROUND * mask.size or mask.size - kept < MIN_BACKGROUND * mask.size:
        return None
    return mask


def _resolve_mask(x: np.ndarray, mask: np.ndarray | str | None) -> np.ndarray | None:
    """Boolean ``(D, H, W)`` foreground of ``x`` ``(C, D, H, W)``, or ``None`` for all voxels."""
    if isinstance(mask, str):
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be a boolean array or one of {MASK_MODES}, got {mask!r}")
        return foreground_mask(x) if mask == "auto" else None
    if mask is None:
        return None
    m = np.asarray(mask).astype(bool)
    if m.shape != x.shape[1:]:
        raise ValueError(f"foreground mask shape {m.shape} does not match the volume {x.shape[1:]}")
    return None if (not m.any() or m.all()) else m


def normalize(
    array: np.ndarray,
    clip_percentiles: Sequence[float] | None = (0.5, 99.5),
    mask: np.ndarray | str | None = "auto",
) -> np.ndarray:
    """Robust per-channel normalisation of ``(C, D, H, W)``; returns float32 ``(C, D, H, W)``.

    ``clip_percentiles``: ``(lo, hi)`` in percent, or ``None`` for no clipping.
    ``mask``: boolean ``(D, H, W)`` foreground, ``"auto"`` (computed with
    :func:`foreground_mask`), or ``"none"``/``None`` (all voxels). An empty
    given mask falls back to all voxels. The input must be finite.
    """
    x = np.asarray(array)
    if x.ndim != 4:
        raise ValueError(f"expected a (C, D, H, W) volume, got shape {x.shape}")
    m = _resolve_mask(x, mask)
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(x.shape[0]):
        ch = x[c].astype(np.float64)
        vals = ch[m] if m is not None else ch.reshape(-1)
        if clip_percentiles is not None:
            lo, hi = np.percentile(vals, [float(clip_percentiles[0]), float(clip_percentiles[1])])
            vals = np.clip(vals, lo, hi)
            if m is None:
                ch = vals.reshape(ch.shape)
            else:
                ch[m] = vals
        mean = vals.mean()
        std = vals.std()
        ch -= mean
        if std >= MIN_STD:
            ch /= std
        np.clip(ch, -Z_MAX, Z_MAX, out=ch)
        out[c] = ch
    return out


def highpass(array: np.ndarray, sigma: float, mask: np.ndarray | str | None = "auto") -> np.ndarray:
    """Remove the smooth component of each channel of ``(C, D, H, W)``; float32, same shape.

    Without a mask: ``x - G_sigma * x`` (Gaussian filter, edges replicated).
    With a foreground mask ``M`` the bias is the normalised convolution
    ``b = G * (x M) / G * M`` (a Gaussian average over foreground voxels
    only) and ``x - b`` is taken inside ``M``; voxels outside ``M`` are set to
    the smallest value inside it, so they stay a flat floor below the object
    (and :func:`foreground_mask` finds the same mask again). Foreground voxels
    with ``G * M`` below :data:`MIN_MASK_WEIGHT` (far from any other
    foreground) keep their own value as the bias, i.e. become 0.

    ``sigma`` in voxels; it should exceed the structures to keep (a bias
    field varies over tens of voxels, organelles over a few). ``mask`` as in
    :func:`normalize`.
    """
    x = np.asarray(array)
    if x.ndim != 4:
        raise ValueError(f"expected a (C, D, H, W) volume, got shape {x.shape}")
    if not sigma > 0:
        raise ValueError(f"highpass sigma must be > 0 voxels, got {sigma}")
    m = _resolve_mask(x, mask)
    out = np.empty(x.shape, dtype=np.float32)
    if m is not None:  # the mask's own smoothing and where it is reliable: shared by all channels
        weight = ndi.gaussian_filter(m.astype(np.float64), sigma, mode="constant")
        ok = weight >= MIN_MASK_WEIGHT
        safe_weight = np.where(ok, weight, 1.0)
    for c in range(x.shape[0]):
        ch = x[c].astype(np.float64)
        if m is None:
            out[c] = ch - ndi.gaussian_filter(ch, sigma, mode="nearest")
            continue
        num = ndi.gaussian_filter(np.where(m, ch, 0.0), sigma, mode="constant")
        bias = np.where(ok, num / safe_weight, ch)
        hp = ch - bias
        out[c] = np.where(m, hp, hp[m].min())
    return out


def normalize_for(cfg: Config, array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """What a model configured by ``cfg`` sees of ``array`` ``(C, D, H, W)``: float32, same shape.

    The one normalisation of training and segmentation: :func:`highpass`
    when ``cfg.highpass_sigma > 0``, then :func:`normalize` with
    ``cfg.clip_percentiles``. Both take ``mask`` (a boolean ``(D, H, W)``
    foreground) or else ``cfg.normalize_mask``. With ``cfg.normalize`` off,
    the (high-passed) volume is returned as a float32 copy.
    """
    m = mask if mask is not None else cfg.normalize_mask
    x = np.asarray(array)
    if cfg.highpass_sigma > 0:
        x = highpass(x, cfg.highpass_sigma, mask=m)
    if not cfg.normalize:
        return np.array(x, dtype=np.float32)
    return normalize(x, clip_percentiles=cfg.clip_percentiles, mask=m)
