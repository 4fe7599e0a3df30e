"""What the napari widget does, without Qt: names, geometry, training and segmenting an image layer's data.

Everything here takes and returns numpy arrays and plain values, so it runs in
a napari thread worker (off the GUI thread) and is tested without a display.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.io import Volume, VolumeError, check_array


def labels_name(image_name: str, k: int) -> str:
    """The Labels layer of the ``k``-cluster level of layer ``image_name``: ``"{image_name}_k{k}"``."""
    return f"{image_name}_k{int(k)}"


def parse_levels(text: str) -> list[int]:
    """``"2 3, 4"`` -> ``[2, 3, 4]`` (duplicates dropped, order kept); a ValueError that says what to type."""
    try:
        levels = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"levels: {text!r} is not a list of whole numbers; type e.g. 2 3 4") from None
    if not levels or min(levels) < 2:
        raise ValueError(f"levels: {text!r}; give numbers of clusters of at least 2, e.g. 2 3 4")
    return list(dict.fromkeys(levels))


def image_volume(data, scale: Sequence[float], name: str) -> Volume:
    """An image layer's data ``(D, H, W)`` (numpy or dask) and its ``scale`` as a checked :class:`Volume`.

    The layer's scale is the voxel size along ``D, H, W``, so anisotropic
    stacks are resampled for the model as on the command line.
    """
    array = np.asarray(data)
    if array.ndim != 3:
        raise VolumeError(f"{name}: the layer has {array.ndim} dimensions {tuple(array.shape)}; hyperseg segments "
                          "3D volumes: open a (Z, Y, X) stack, or split channels / time points into layers")
    if array.dtype.kind not in "biuf":
        raise VolumeError(f"{name}: unsupported voxel type {array.dtype}; give a grey-value image")
    spacing = tuple(float(s) for s in scale[-3:])
    return Volume(array=check_array(array[None], name), spacing=spacing, case=name)  # type: ignore[arg-type]


@dataclass
class Progress:
    """How far training is: ``fraction`` in ``[0, 1]`` (steps or time, whichever is further) and a text."""

    step: int
    fraction: float
    text: str


def train_on_volume(volume: Volume, cfg: Config, run_dir: str | Path | None, minutes: float | None,
                    steps: int | None, report: Callable[[Progress], None] | None = None,
                    cancelled: Callable[[], bool] | None = None):
    """Train a model on one volume for ``minutes`` (and/or ``steps``); returns ``(model, run folder)``.

    ``run_dir``: where the run is written (a new folder); a fresh temporary
    folder when ``None``. ``report`` gets a :class:`Progress` after every step;
    ``cancelled()`` returning ``True`` stops training after the current step
    (the model of that step is kept and saved).
    """
    from ..train import UNLIMITED_STEPS, train

    run = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="hyperseg-napari-")) / "run"
    if run.exists() and any(run.iterdir()):
        raise FileExistsError(f"{run}: the run folder exists and is not empty; choose a new folder, or load this "
                              "run instead of training")
    total_steps = steps if steps else (UNLIMITED_STEPS if minutes else None)
    t0 = time.monotonic()

    def on_step(step: int, total: int) -> bool:
        fractions = [step / total] if total < UNLIMITED_STEPS else []
        if minutes:
            fractions.append((time.monotonic() - t0) / (60.0 * minutes))
        fraction = min(max(fractions or [0.0]), 1.0)
        if report is not None:
            report(Progress(step, fraction, f"step {step}" + (f" of {total}" if total < UNLIMITED_STEPS else "")))
        return bool(cancelled is not None and cancelled())

    cfg = cfg.replace(in_channels=volume.array.shape[0])
    model = train(cfg, [volume.array], run, steps=total_steps, minutes=minutes, progress=False, on_step=on_step)
    return model.eval(), run


def segment_layer(model, volume: Volume, levels: Sequence[int], seed: int = 0):
    """Label maps ``{K: (D, H, W) uint8}`` and the clustered embedding ``(D, H, W, d)`` of ``volume``,
    through :func:`hyperseg.pipeline.segment_volume` (what ``hyperseg segment`` runs)."""
    from ..pipeline import segment_volume

    model.cfg = model.cfg.replace(levels=list(levels))
    return segment_volume(model, volume, list(levels), seed=seed)


def level_tree(labels: dict[int, np.ndarray]) -> dict[int, dict[int, list[int]]]:
    """For consecutive levels ``K_a < K_b``: ``{K_a: {coarse label: [fine labels of K_b inside it]}}``.

    A fine label belongs to the coarse label holding most of its voxels, so
    with nested levels (``--hierarchy foreground`` or a tree) every fine
    label lies in exactly one coarse label; with independent levels it is
    the best such assignment. Labels no voxel carries are left out.
    """
    ks = sorted(labels)
    tree: dict[int, dict[int, list[int]]] = {}
    for coarse_k, fine_k in zip(ks, ks[1:]):
        coarse = np.asarray(labels[coarse_k]).reshape(-1).astype(np.int64)
        fine = np.asarray(labels[fine_k]).reshape(-1).astype(np.int64)
        n_c, n_f = int(coarse.max()) + 1, int(fine.max()) + 1
        counts = np.bincount(fine * n_c + coarse, minlength=n_f * n_c).reshape(n_f, n_c)
        children: dict[int, list[int]] = {int(c): [] for c in np.flatnonzero(np.bincount(coarse) > 0)}
        for f in np.flatnonzero(counts.sum(1) > 0):
            children.setdefault(int(np.argmax(counts[f])), []).append(int(f))
        tree[coarse_k] = children
    return tree


__all__ = ["Progress", "image_volume", "labels_name", "level_tree", "parse_levels", "segment_layer",
           "train_on_volume"]
