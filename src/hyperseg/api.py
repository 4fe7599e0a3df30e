"""A scikit-learn style Python API: numpy arrays in, numpy arrays out.

>>> seg = HyperbolicSegmenter(steps=200).fit([vol_a, vol_b])    # (D, H, W) or (C, D, H, W)
>>> maps = seg.predict(vol_c, levels=(2, 4))                     # {2: (D, H, W) uint8, 4: ...}
>>> z = seg.embed(vol_c)                                         # (D, H, W, d) ball points
>>> seg.save("run"); seg = HyperbolicSegmenter.load("run")
>>> seg.predict_zarr("tomo.ome.zarr", "out/tomo.ome.zarr", levels=(2, 3), client=client)  # chunk by chunk, Dask

Training goes through :func:`hyperseg.train.train`, loading through
:func:`hyperseg.checkpoint.load_model` and segmentation through
:func:`hyperseg.pipeline.segment_volume`, exactly what the command line runs;
a ``spacing`` (voxel size along ``D, H, W``) makes anisotropic volumes be
resampled for the model and the outputs come back on the input grid.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import NotFittedError
from .config import Config
from .data.io import Volume, VolumeError, check_array
from .model import HyperVAE

__all__ = ["HyperbolicSegmenter", "NotFittedError"]


def _as_volume(array: np.ndarray, name: str, spacing: Sequence[float] | None = None,
               nan_policy: str = "error") -> Volume:
    """A ``(D, H, W)`` or ``(C, D, H, W)`` array as a checked float32 :class:`Volume`."""
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise VolumeError(f"{name}: expected a (D, H, W) or (C, D, H, W) array, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise VolumeError(f"{name}: unsupported dtype {a.dtype}; give real numbers")
    a = check_array(a, name, nan_policy)
    return Volume(array=a, spacing=tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0),  # type: ignore
                  case=name)


class HyperbolicSegmenter:
    """Unsupervised hierarchical segmentation with a hyperbolic VAE (Hsu et al. 2021).

    Args:
        config: the model and training configuration (defaults: :class:`Config`);
            ``in_channels`` is set from the data at :meth:`fit`.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        steps: optimiser steps (default ``config.steps``).
        minutes: optional wall-time limit for training.
        progress: show progress bars.

    Fitted attributes: ``model_`` (the trained :class:`~hyperseg.model.HyperVAE`)
    and ``config_`` (its configuration).
    """

    def __init__(self, config: Config | None = None, device: str = "cpu", steps: int | None = None,
                 minutes: float | None = None, progress: bool = False) -> None:
        self.config = config
        self.device = device
        self.steps = steps
        self.minutes = minutes
        self.progress = progress

    def __repr__(self) -> str:
        return (f"HyperbolicSegmenter(device={self.device!r}, steps={self.steps}, minutes={self.minutes}, "
                f"fitted={hasattr(self, 'model_')})")

    # ------------------------------------------------------------------
    def _device(self) -> torch.device:
        from .utils import resolve_device

        return resolve_device(self.device)

    def _check_fitted(self) -> HyperVAE:
        if not hasattr(self, "model_"):
            raise NotFittedError("this HyperbolicSegmenter is not fitted yet; call fit(volumes) or load(dir) first")
        return self.model_

    def fit(self, volumes: np.ndarray | Sequence[np.ndarray], run_dir: str | Path | None = None
            ) -> HyperbolicSegmenter:
        """Train on ``volumes``: one array or a list of ``(D, H, W)`` / ``(C, D, H, W)`` arrays.

        All volumes need the same number of channels. ``run_dir``: where the run
        (checkpoint, config, log) is kept; a temporary folder, removed after
        training, when ``None``. Returns ``self``.
        """
        from .train import train

        if isinstance(volumes, np.ndarray) and volumes.ndim in (3, 4):
            volumes = [volumes]
        vols = [_as_volume(v, f"volume {i}") for i, v in enumerate(volumes)]
        if not vols:
            raise ValueError("fit needs at least one volume")
        channels = {v.array.shape[0] for v in vols}
        if len(channels) != 1:
            raise VolumeError(f"volumes have different numbers of channels {sorted(channels)}; "
                              "give every volume the same channels")
        cfg = (self.config or Config()).replace(in_channels=channels.pop())
        arrays = [v.array for v in vols]
        device = self._device()
        if run_dir is None:
            with tempfile.TemporaryDirectory(prefix="hyperseg-") as tmp:
                model = train(cfg, arrays, tmp, steps=self.steps, minutes=self.minutes,
                              progress=self.progress, device=device)
        else:
            model = train(cfg, arrays, run_dir, steps=self.steps, minutes=self.minutes,
                          progress=self.progress, device=device)
        self.model_ = model.eval()
        self.config_ = model.cfg
        return self

    def embed(self, volume: np.ndarray, spacing: Sequence[float] | None = None,
              mask: np.ndarray | None = None) -> np.ndarray:
        """Voxel embeddings of ``volume`` ``(D, H, W)`` or ``(C, D, H, W)``: ``(D, H, W, d)``.

        Ball points for the hyperbolic model: the encoder means, before the
        smoothing that :meth:`predict` applies (``config.smooth_sigma``; see
        :func:`hyperseg.smooth.smooth_embedding`). ``spacing``: voxel size along
        ``D, H, W`` (isotropic when ``None``); ``mask``: optional boolean
        ``(D, H, W)`` foreground for the normalisation.
        """
        from .pipeline import embed_volume_on_grid

        model = self._check_fitted()
        return embed_volume_on_grid(model, _as_volume(volume, "volume", spacing), mask=mask,
                                    progress=self.progress)

    def predict(self, volume: np.ndarray, levels: Sequence[int] = (2, 4), spacing: Sequence[float] | None = None,
                mask: np.ndarray | None = None, seed: int = 0) -> dict[int, np.ndarray]:
        """Label maps ``{K: (D, H, W) uint8}`` of ``volume``, one per number of clusters ``K`` in ``levels``."""
        from .pipeline import segment_volume

        model = self._check_fitted()
        seg = segment_volume(model, _as_volume(volume, "volume", spacing), list(levels), seed=seed,
                             progress=self.progress, mask=mask)
        return seg.labels

    def predict_zarr(self, source: str | Path, output: str | Path, levels: Sequence[int] = (2, 4), zarr_level: int = 0,
                     chunks: Sequence[int] | None = None, client=None, scheduler: str | None = None, seed: int = 0,
                     fit=None):
        """Segment a Zarr / OME-Zarr volume chunk by chunk on Dask (:mod:`hyperseg.chunked`) into the OME-Zarr
        group ``output`` (``output/labels/k{K}``, written atomically); memory is bounded by the chunk.

        ``client``: a ``dask.distributed.Client`` to run on (else the local ``scheduler``: ``"threads"``,
        ``"processes"``, ``"synchronous"``); ``fit``: a :class:`~hyperseg.chunked.ChunkedFit` to use instead of
        fitting one. Returns the :class:`~hyperseg.chunked.ChunkedResult` (its ``fit`` gives the same labels
        through :func:`hyperseg.chunked.segment_in_memory`).
        """
        from .chunked import segment_chunked
        from .data.zarr_io import LabelsWriter, open_zarr

        model = self._check_fitted()
        img = open_zarr(source, zarr_level)
        with LabelsWriter(output, img.spatial_shape, img.spacing, img.origin, img.unit, like=img,
                          source=str(source)) as writer:
            result = segment_chunked(model, img.array, list(levels), writer, chunks=chunks, client=client,
                                     scheduler=scheduler, seed=seed, fit=fit, progress=self.progress)
            writer.finish()
        return result

    def save(self, path: str | Path) -> Path:
        """Write the fitted model into the folder ``path`` (``config.yaml`` and ``model.safetensors``, data only)."""
        from .checkpoint import save_model

        return save_model(path, self._check_fitted())

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> HyperbolicSegmenter:
        """A fitted segmenter from a folder written by :meth:`save` or ``hyperseg train``.

        Reads ``config.yaml`` and ``model.safetensors`` only (no pickle); a folder
        holding only a legacy pickled ``model.pt`` raises
        :class:`~hyperseg.checkpoint.CheckpointError` (a ``ValueError``) that names
        ``hyperseg convert-checkpoint``.
        """
        from .checkpoint import load_model

        self = cls(device=device)
        self.model_ = load_model(path, self._device())
        self.config_ = self.model_.cfg
        self.config = self.config_
        return self
