"""Automatic foreground masks from intensity.

:func:`auto_mask` follows the steps of ANTs' ``get_mask`` (the brain mask
Atropos is run inside): voxels at or above the image mean, an erosion, the
largest connected component, the same dilation, holes filled. It is the
foreground of ``Config.foreground = "threshold"`` (the ``mri`` preset) and of
the mask-based peers (:mod:`hyperseg.comparison.peers`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["auto_mask"]


def _ball(radius: int) -> np.ndarray:
    """ITK's ball of ``radius`` voxels: offsets with ``|o|^2 <= (radius + 1/2)^2`` (81 voxels for 2)."""
    r = np.arange(-radius, radius + 1)
    d, h, w = np.meshgrid(r, r, r, indexing="ij")
    return d * d + h * h + w * w <= (radius + 0.5) ** 2


def auto_mask(image: np.ndarray, cleanup: int = 2) -> np.ndarray:
    """Automatic foreground ``(D, H, W)`` bool, the steps of ``ants.get_mask`` in scipy.

    Voxels ``>= mean(image)``; then, with ``cleanup = r > 0``: erosion by ITK's ball of
    radius ``r`` voxels (:func:`_ball`), the largest 6-connected component, dilation by the
    same ball, holes filled. An empty result retries with ``r - 1``, as ANTs
    does. Outside the volume counts as foreground for the erosion (ITK's
    ``BinaryErodeImageFilter`` default, ``BoundaryToForeground`` on), so a region
    that fills the volume to its faces keeps them; scipy's default would erode
    ``r`` voxels from every face.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"auto_mask: expected a (D, H, W) image, got shape {x.shape}; give one scalar volume")
    raw = x >= x.mean()
    for r in range(int(cleanup), 0, -1):
        m = ndi.binary_erosion(raw, _ball(r), border_value=1)
        lab, n = ndi.label(m)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        m = lab == (int(np.argmax(sizes)) + 1)
        m = ndi.binary_fill_holes(ndi.binary_dilation(m, _ball(r)))
        if m.any() and not m.all():
            return m
    return raw
