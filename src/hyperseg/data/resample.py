"""Resampling between a volume's own grid and an isotropic grid for the model.

The model sees patches of voxels, so an anisotropic volume (say 1 x 1 x 3 mm)
would show it flattened structures. :func:`isotropic_shape` gives the grid of
the same field of view with cubic voxels of the *finest* spacing (no detail
is thrown away); :func:`resample_image` moves intensities onto it
(trilinear), and :func:`resample_nearest` moves labels or embeddings back
(nearest neighbour), so outputs lie on the input's grid.

Both use the half-voxel convention of ``F.interpolate(align_corners=False)``:
voxel ``i`` of an axis of ``n`` voxels covers ``[i, i + 1) * L / n`` of the
field of view ``L``, so output voxel ``j`` of ``n'`` samples source position
``(j + 0.5) n / n' - 0.5``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

#: Spacings whose ratio (largest / smallest) is below ``1 + ISOTROPIC_RTOL`` count as isotropic.
ISOTROPIC_RTOL = 1e-3


def is_isotropic(spacing: Sequence[float]) -> bool:
    """Whether the voxel size ``(sd, sh, sw)`` is the same along every axis (to ``ISOTROPIC_RTOL``)."""
    s = [float(v) for v in spacing]
    return max(s) <= min(s) * (1 + ISOTROPIC_RTOL)


def isotropic_shape(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
    """Grid of cubic voxels of edge ``min(spacing)`` over the same field of view: ``(D', H', W')``.

    ``n'_a = max(1, round(n_a * spacing_a / min(spacing)))``; the shape itself
    when the spacing is isotropic.
    """
    if is_isotropic(spacing):
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    target = min(float(v) for v in spacing)
    return tuple(max(1, round(n * float(s) / target)) for n, s in zip(shape, spacing))  # type: ignore


def resample_image(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of ``(C, D, H, W)`` to ``(C, *shape)``, float32 (a copy-free no-op at equal shape)."""
    x = np.asarray(array, dtype=np.float32)
    shape = tuple(int(n) for n in shape)
    if x.shape[1:] == shape:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0].numpy()


def nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of ``n_out`` voxels resampled from ``n_in``: ``floor((j + 0.5) n_in / n_out)``."""
    j = np.arange(n_out, dtype=np.float64)
    return np.minimum(np.floor((j + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resample_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the first three axes of ``(D, H, W, ...)`` to ``shape``.

    For label maps ``(D, H, W)`` and embeddings ``(D, H, W, d)``; keeps the
    dtype; returns the input itself when the shape already matches.
    """
    a = np.asarray(array)
    shape = tuple(int(n) for n in shape)
    if a.shape[:3] == shape:
        return a
    idx = [nearest_indices(n_out, n_in) for n_out, n_in in zip(shape, a.shape[:3])]
    return a[np.ix_(*idx)]  # trailing axes (the embedding's d) are kept
