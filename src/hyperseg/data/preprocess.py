"""Intensity normalisation applied identically at training and segmentation time."""
from __future__ import annotations

import numpy as np

#: Channels whose standard deviation is below this are only centred, not scaled.
MIN_STD = 1e-8


def zscore(array: np.ndarray) -> np.ndarray:
    """Z-score each channel of ``(C, D, H, W)``: ``(x - mean_c) / std_c``, float32."""
    x = np.asarray(array, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    std = np.where(std < MIN_STD, 1.0, std)
    return ((x - mean) / std).astype(np.float32)
