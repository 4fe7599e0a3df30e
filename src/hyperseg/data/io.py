"""Reading volumes and writing label maps with their geometry.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel and kept in nibabel's
array order (the voxel axes ``i, j, k`` of the affine); the model is
indifferent to axis order, and label maps are written back on the same grid
with the input's affine and header, so they overlay the input in any viewer.
A 4D NIfTI is read as channels on its last axis. ``.npy`` arrays are read
as they are, with an identity affine.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..utils import atomic_write

SUFFIXES = (".nii.gz", ".nii", ".npy")


@dataclass
class Volume:
    """A volume and its geometry.

    ``array``: float32 ``(C, D, H, W)``; ``affine``: ``(4, 4)`` voxel-to-world;
    ``header``: the source header (NIfTI) or ``None``; ``path``: where it came from.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    header: Any = None
    path: Path | None = None

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    @property
    def case(self) -> str:
        return case_name(self.path) if self.path is not None else "volume"


def case_name(path: str | Path) -> str:
    """File name without its volume suffix: ``case001.nii.gz -> case001``."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(SUFFIXES) and not path.name.startswith(".")


def find_volumes(path: str | Path) -> list[Path]:
    """A volume file, or the volume files directly inside a folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        if not is_volume_file(path):
            raise ValueError(f"{path}: unknown volume format; use one of {', '.join(SUFFIXES)}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if is_volume_file(p))
        if not files:
            raise FileNotFoundError(f"{path}: no volumes ({', '.join(SUFFIXES)}) in this folder")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


def read_volume(path: str | Path) -> Volume:
    """Read a 3D volume (or 4D with channels last for NIfTI) as float32 ``(C, D, H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if path.name.endswith(".npy"):
            data = np.load(path, allow_pickle=False)  # 4D arrays are channels-first already
            affine, header = np.eye(4), None
        elif path.name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
            affine, header = img.affine, img.header
            if data.ndim == 4:
                data = np.moveaxis(data, -1, 0)
        else:
            raise ValueError(f"{path}: unknown volume format; use one of {', '.join(SUFFIXES)}")
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        if "unknown volume format" in str(err):
            raise
        raise ValueError(f"{path}: cannot be read ({err}); is the file complete?") from err
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise ValueError(f"{path}: expected a 3D volume (or 4D with channels), got shape {data.shape}")
    data = np.asarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or Inf voxels; replace them before segmenting")
    return Volume(array=data, affine=np.asarray(affine, dtype=np.float64), header=header, path=path)


def write_label_map(path: str | Path, labels: np.ndarray, like: Volume) -> Path:
    """Write a uint8 label map ``(D, H, W)`` on ``like``'s grid, atomically.

    The output format follows ``path``'s suffix (NIfTI or ``.npy``); NIfTI keeps
    ``like``'s affine and header (data type set to uint8, no intensity scaling).
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != like.spatial_shape:
        raise ValueError(f"label map shape {labels.shape} does not match the input {like.spatial_shape}")
    if labels.max(initial=0) > 255:
        raise ValueError("more than 256 labels cannot be stored as uint8")
    labels = labels.astype(np.uint8)

    def write(tmp: Path) -> None:
        if path.name.endswith(".npy"):
            with open(tmp, "wb") as fh:
                np.save(fh, labels)
            return
        header = like.header.copy() if isinstance(like.header, nib.Nifti1Header) else None
        img = nib.Nifti1Image(labels, like.affine, header=header)
        img.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1, 0)
        nib.save(img, str(tmp))

    atomic_write(path, write)
    return path


def read_labels(path: str | Path) -> np.ndarray:
    """Read an integer label map as int64 ``(D, H, W)``."""
    vol = read_volume(path)
    return np.rint(vol.array[0]).astype(np.int64)
