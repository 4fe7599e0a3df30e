"""One volume in, label maps on its own grid out: the segmentation pipeline.

:func:`segment_volume` is what ``hyperseg segment`` and the Python API run
on every case:

1. an anisotropic volume (voxel size not equal along ``D, H, W``) is
   resampled trilinearly to cubic voxels of its finest spacing
   (:mod:`hyperseg.data.resample`), and a given foreground mask with it
   (nearest neighbour);
2. :func:`hyperseg.segment.segment_array` normalises each channel
   (:func:`hyperseg.data.preprocess.normalize_for`, the function training
   uses, robust and inside the mask), embeds every voxel and clusters the
   embeddings at each level;
3. label maps and embeddings are brought back to the input grid by nearest
   neighbour.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data.io import Volume, VolumeError
from .data.preprocess import normalize_for
from .data.resample import isotropic_shape, resample_image, resample_nearest
from .embed import embed_volume
from .model import HyperVAE
from .segment import Segmentation, segment_array


def _model_grid(model: HyperVAE, volume: Volume, mask: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int]]:
    """Check ``volume`` against the model; return its array and mask on the isotropic grid, and that grid."""
    name = str(volume.path) if volume.path is not None else volume.case
    array = volume.array
    if array.ndim != 4:
        raise VolumeError(f"{name}: expected a (C, D, H, W) volume, got shape {tuple(array.shape)}; "
                          "add a channel axis")
    if array.shape[0] != model.cfg.in_channels:
        raise VolumeError(f"{name}: has {array.shape[0]} channels but the model was trained on "
                          f"{model.cfg.in_channels}; give volumes with the training data's channels")
    shape = volume.spatial_shape
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != shape:
            raise VolumeError(f"{name}: foreground mask shape {mask.shape} differs from the volume's {shape}; "
                              "give a mask on the volume's grid")
    iso = isotropic_shape(shape, volume.spacing)  # type: ignore[arg-type]
    x = resample_image(array, iso)
    m = resample_nearest(mask, iso) if mask is not None else None
    return x, m, iso


def segment_volume(
    model: HyperVAE,
    volume: Volume,
    levels: Sequence[int],
    seed: int = 0,
    progress: bool = False,
    mask: np.ndarray | None = None,
) -> Segmentation:
    """Segment ``volume`` (raw intensities, ``(C, D, H, W)``) at each number of clusters in ``levels``.

    ``mask``: optional boolean ``(D, H, W)`` foreground for the normalisation
    statistics. Returns label maps ``{K: (D, H, W) uint8}`` and the embedding
    ``(D, H, W, d)``, both on the input grid.
    """
    shape = volume.spatial_shape
    x, m, _ = _model_grid(model, volume, mask)
    seg = segment_array(model, x, [int(k) for k in levels], seed=seed, progress=progress, mask=m)
    labels = {k: resample_nearest(v, shape) for k, v in seg.labels.items()}
    return Segmentation(labels=labels, embedding=resample_nearest(seg.embedding, shape))


def embed_volume_on_grid(model: HyperVAE, volume: Volume, mask: np.ndarray | None = None,
                         progress: bool = False) -> np.ndarray:
    """Voxel embeddings of ``volume`` ``(C, D, H, W)`` on its own grid: ``(D, H, W, d)``.

    The same steps as :func:`segment_volume` without the clustering.
    """
    x, m, _ = _model_grid(model, volume, mask)
    x = normalize_for(model.cfg, x, m)
    emb = embed_volume(model, torch.from_numpy(x), progress=progress).numpy()
    return resample_nearest(emb, volume.spatial_shape)
