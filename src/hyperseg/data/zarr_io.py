"""Zarr and OME-Zarr (NGFF) volumes in, OME-Zarr label images out.

Reading (:func:`open_zarr`) is lazy: it returns a :class:`ZarrImage` whose
``array`` is a :mod:`dask.array` ``(C, D, H, W)`` over the store's chunks, so a
volume larger than memory is never loaded whole (:mod:`hyperseg.chunked`
segments it chunk by chunk; :func:`hyperseg.data.io.read_case` loads a small
one into memory).

* **OME-Zarr** (a group whose attributes hold NGFF ``multiscales``: version
  0.4 at the top level, zarr format 2; version 0.5 under ``"ome"``, zarr
  format 3): the level ``level`` of ``datasets`` (0 = full resolution) is read.
  Its ``axes`` name the spatial axes (type ``"space"``, 3 of them, read in
  stored order as ``D, H, W``), an optional ``"channel"`` axis (the channels)
  and an optional ``"time"`` axis, which must have one point. The voxel size
  is the product of the dataset's and the multiscale's ``scale`` transforms
  for the spatial axes, the unit the axes' ``unit``; a ``translation`` is
  kept as the affine's offset.
* **Plain Zarr array** (``.zarray`` or ``zarr.json`` of an array): 3D
  ``(D, H, W)`` or 4D channels-first ``(C, D, H, W)``, voxel size 1.

Writing (:func:`write_ome_zarr_labels`): the NGFF ``labels`` group of version
0.4 (zarr format 2, readable by napari-ome-zarr, Fiji/MoBIE, ome-zarr-py and
neuroglancer): ``{root}/labels/.zattrs = {"labels": ["k2", "k3"]}``, and each
``{root}/labels/k{K}`` a single-scale uint8 image (dataset ``"0"``) with the
input's spatial axes (names, types, units), its voxel size and offset as
``coordinateTransformations``, and ``image-label`` metadata (one colour per
label). The whole ``root`` is written into a hidden temporary sibling and
renamed into place when every level is done, so a reader never sees half a
result.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import VolumeError

#: Folder suffixes of Zarr stores, longest first.
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
#: The NGFF version the label images are written in.
NGFF_VERSION = "0.4"
#: NGFF unit names -> the OME symbols :class:`hyperseg.data.io.Volume` uses.
NGFF_UNITS = {"angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm",
              "meter": "m", "picometer": "pm"}
#: OME symbols -> NGFF unit names (for writing).
SYMBOL_UNITS = {v: k for k, v in NGFF_UNITS.items()}
#: Label colours (RGBA) of ``image-label``: tab10, label 0 transparent.
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class ZarrError(VolumeError):
    """A bad Zarr input; the message is one line: ``"{store}: {problem}; {what to do}"``."""


@dataclass
class ZarrImage:
    """One image level of a Zarr store, not read.

    ``array``: dask ``(C, D, H, W)`` in the stored dtype, chunked like the store; ``spacing``: voxel size
    along ``D, H, W``; ``origin``: physical position of voxel 0 (NGFF ``translation``); ``unit``: the
    length unit as an OME symbol (``""`` when not given); ``axes``: the NGFF ``axes`` of ``D, H, W`` (name,
    type and unit dicts, kept for the label images); ``path``: the store; ``level``: the multiscale level
    read (``None`` for a plain array); ``ngff``: whether the store had NGFF metadata.
    """

    array: Any
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    unit: str
    axes: list[dict]
    path: Path
    level: int | None = None
    ngff: bool = False
    attrs: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel index ``(d, h, w)`` to physical position: ``diag(spacing)`` plus ``origin``."""
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a


def zarr_suffix(path: str | Path) -> str:
    """``".ome.zarr"`` or ``".zarr"`` when ``path``'s name ends so (any case), else ``""``."""
    name = Path(path).name.lower()
    return next((s for s in ZARR_SUFFIXES if name.endswith(s)), "")


def is_zarr_store(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a Zarr group or array (format 2 or 3)."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in ("zarr.json", ".zgroup", ".zarray"))


def zarr_case_name(path: str | Path) -> str:
    """``scan.ome.zarr -> scan``; a store without a Zarr suffix keeps its folder name."""
    name = Path(path).name
    suffix = zarr_suffix(name)
    return name[: -len(suffix)] if suffix else name


def _multiscales(attrs: Mapping) -> list | None:
    """NGFF ``multiscales`` of a group's attributes: 0.4 at the top, 0.5 under ``"ome"``."""
    if "multiscales" in attrs:
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return ome["multiscales"]
    return None


def _scale_translation(transforms: list | None, n: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``scale`` and ``translation`` (``(n,)`` each) of an NGFF ``coordinateTransformations`` list."""
    scale, shift = np.ones(n), np.zeros(n)
    for t in transforms or []:
        kind = t.get("type")
        if kind == "identity":
            continue
        if kind not in ("scale", "translation"):
            raise ZarrError(f"{where}: coordinate transformation {kind!r} is not supported; store scale and "
                            "translation transformations only")
        if "path" in t:
            raise ZarrError(f"{where}: coordinate transformations stored in a separate array are not supported; "
                            "give them inline")
        values = np.asarray(t[kind], dtype=np.float64)
        if values.shape != (n,):
            raise ZarrError(f"{where}: a {kind} of {len(values)} values for {n} axes; fix the metadata")
        if kind == "scale":
            scale = scale * values
        else:
            shift = shift + values
    return scale, shift


def _open_group_or_array(path: Path):
    import zarr

    try:
        return zarr.open(store=str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - a broken store is a user problem, named in one line
        msg = " ".join(str(err).split())[:200] or type(err).__name__
        raise ZarrError(f"{path}: cannot be opened as Zarr ({msg}); is it a complete Zarr store?") from err


def open_zarr(path: str | Path, level: int = 0) -> ZarrImage:
    """Open a Zarr array or OME-Zarr image without reading its voxels (module docstring).

    ``level``: the multiscale level of an OME-Zarr image (0 = full resolution); a plain array has only 0.
    Raises :class:`ZarrError` (one line naming the store) for anything that cannot be segmented.
    """
    import dask.array as da
    import zarr

    path = Path(path)
    if not is_zarr_store(path):
        raise ZarrError(f"{path}: not a Zarr store (no zarr.json, .zgroup or .zarray in it); give a Zarr "
                        "array or an OME-Zarr image folder")
    if level < 0:
        raise ZarrError(f"{path}: --zarr-level must be >= 0, got {level}")
    node = _open_group_or_array(path)
    if isinstance(node, zarr.Array):
        if level != 0:
            raise ZarrError(f"{path}: a plain Zarr array has one level (0), not {level}; leave out --zarr-level")
        arr = da.from_zarr(node)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ZarrError(f"{path}: expected a 3D (D, H, W) or 4D (C, D, H, W) array, got shape "
                            f"{tuple(node.shape)}; store one volume per array")
        axes = [{"name": n, "type": "space"} for n in "zyx"]
        return _checked(ZarrImage(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "", axes, path, None, False))
    attrs = dict(node.attrs)
    scales = _multiscales(attrs)
    if not scales:
        arrays = sorted(node.array_keys())
        hint = f" (it holds arrays {', '.join(arrays[:5])}: give one of them, e.g. {path / arrays[0]})" if arrays else ""
        raise ZarrError(f"{path}: a Zarr group without OME-Zarr 'multiscales' metadata{hint}; give an OME-Zarr "
                        "image or a Zarr array")
    ms = scales[0]
    datasets = ms.get("datasets") or []
    if level >= len(datasets):
        raise ZarrError(f"{path}: has {len(datasets)} multiscale level(s) (0..{len(datasets) - 1}), not {level}; "
                        "choose another --zarr-level")
    axes = ms.get("axes")
    where = f"{path}"
    ds = datasets[level]
    try:
        node_arr = node[ds["path"]]
    except Exception as err:  # noqa: BLE001
        raise ZarrError(f"{path}: level {level}'s array {ds.get('path')!r} is missing; is the store complete?") from err
    ndim = len(node_arr.shape)
    if axes is None:  # NGFF 0.1-0.3: axes were always t, c, z, y, x
        axes = [{"name": n, "type": t} for n, t in zip("tczyx", ("time", "channel", "space", "space", "space"))]
        axes = axes[-ndim:]
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]
    for a in axes:
        a.setdefault("type", {"t": "time", "c": "channel"}.get(a["name"], "space"))
    if len(axes) != ndim:
        raise ZarrError(f"{where}: {len(axes)} axes in the metadata for a {ndim}D array; fix the metadata")
    scale, shift = _scale_translation(ds.get("coordinateTransformations"), ndim, where)
    s2, t2 = _scale_translation(ms.get("coordinateTransformations"), ndim, where)
    scale, shift = scale * s2, shift * s2 + t2
    space = [i for i, a in enumerate(axes) if a["type"] == "space"]
    chan = [i for i, a in enumerate(axes) if a["type"] == "channel"]
    other = [i for i in range(ndim) if i not in space and i not in chan]
    if len(space) != 3:
        raise ZarrError(f"{where}: has {len(space)} spatial axes ({', '.join(axes[i]['name'] for i in space)}); "
                        "hyperseg segments 3D volumes: store three spatial axes")
    if len(chan) > 1:
        raise ZarrError(f"{where}: has {len(chan)} channel axes; store one")
    arr = da.from_zarr(node_arr)
    for i in other:
        if node_arr.shape[i] != 1:
            raise ZarrError(f"{where}: axis {axes[i]['name']!r} ({axes[i]['type']}) has {node_arr.shape[i]} "
                            "points; hyperseg segments one 3D volume: store one time point per image")
    index = tuple(0 if i in other else slice(None) for i in range(ndim))
    arr = arr[index]
    kept = [i for i in range(ndim) if i not in other]
    order = [kept.index(i) for i in chan] + [kept.index(i) for i in space]
    arr = arr.transpose(order)
    if not chan:
        arr = arr[None]
    units = {NGFF_UNITS.get(str(axes[i].get("unit", "")).lower(), "") for i in space}
    unit = units.pop() if len(units) == 1 else ""
    spacing = tuple(float(v) if np.isfinite(v) and v > 0 else 1.0 for v in scale[space])
    origin = tuple(float(v) for v in shift[space])
    return _checked(ZarrImage(arr, spacing, origin, unit, [axes[i] for i in space], path,  # type: ignore[arg-type]
                              level, True, attrs))


def _checked(img: ZarrImage) -> ZarrImage:
    kind = np.dtype(img.array.dtype).kind
    if kind not in "biuf":
        raise ZarrError(f"{img.path}: unsupported voxel type {img.array.dtype}; store numbers (ints or floats)")
    if img.array.size == 0:
        raise ZarrError(f"{img.path}: is empty (shape {tuple(img.array.shape)}); give a volume with voxels")
    return img


# ----------------------------------------------------------------------------- writing
def label_image_attrs(k: int, like: ZarrImage | None, spacing: tuple[float, float, float],
                      origin: tuple[float, float, float], unit: str, source: str | None = None) -> dict:
    """NGFF 0.4 attributes of the label image ``k{k}``: ``multiscales`` (one dataset ``"0"``, the input's
    spatial axes, voxel size and offset) and ``image-label`` (colours of labels ``0..k-1``)."""
    if like is not None and like.axes:
        axes = [dict(a) for a in like.axes]
    else:
        axes = [{"name": n, "type": "space"} for n in "zyx"]
        if unit in SYMBOL_UNITS:
            for a in axes:
                a["unit"] = SYMBOL_UNITS[unit]
    transforms: list[dict] = [{"type": "scale", "scale": [float(s) for s in spacing]}]
    if any(origin):
        transforms.append({"type": "translation", "translation": [float(o) for o in origin]})
    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    colours += [{"label-value": j, "rgba": [*_COLOURS[(j - 1) % len(_COLOURS)], 255]} for j in range(1, k)]
    label: dict[str, Any] = {"version": NGFF_VERSION, "colors": colours}
    if source:
        label["source"] = {"image": source}
    return {"multiscales": [{"version": NGFF_VERSION, "name": f"k{k}", "axes": axes,
                             "datasets": [{"path": "0", "coordinateTransformations": transforms}]}],
            "image-label": label}


def _temporary_sibling(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))


def _replace_folder(tmp: Path, root: Path) -> None:
    """Move the finished folder ``tmp`` to ``root``, replacing an older ``root`` only once ``tmp`` is complete."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class LabelsWriter:
    """Write the NGFF ``labels`` group of ``root`` atomically: levels are added into a temporary sibling
    (:meth:`add`: an array, or :meth:`create` then fill), and :meth:`finish` renames it into place.

    ``spacing``, ``origin``, ``unit`` and ``like`` (the input image, for its axes) describe the grid;
    ``chunks`` ``(D, H, W)`` the label arrays' chunks. Used as a context manager, an exception removes the
    temporary folder and leaves ``root`` as it was.
    """

    def __init__(self, root: str | Path, shape: tuple[int, int, int], spacing, origin=(0.0, 0.0, 0.0), unit: str = "",
                 like: ZarrImage | None = None, chunks: tuple[int, int, int] | None = None,
                 source: str | None = None) -> None:
        import zarr

        self.root = Path(root)
        self.tmp = _temporary_sibling(self.root)
        self.shape = tuple(int(n) for n in shape)
        self.chunks = tuple(int(c) for c in (chunks or tuple(min(n, 128) for n in self.shape)))
        self.meta = dict(spacing=tuple(float(s) for s in spacing), origin=tuple(float(o) for o in origin), unit=unit)
        self.like, self.source = like, source
        self.group = zarr.open_group(store=str(self.tmp), mode="w", zarr_format=2)
        self.group.attrs["hyperseg"] = {"note": "label images of hyperseg in labels/; the image is not copied",
                                        **({"source": source} if source else {})}
        self.labels = self.group.create_group("labels")
        self.names: list[str] = []

    @property
    def scratch(self) -> Path:
        """A folder inside the temporary store for intermediate arrays (removed by :meth:`finish`)."""
        p = self.tmp / "_scratch"
        p.mkdir(exist_ok=True)
        return p

    def create(self, k: int, chunks: tuple[int, int, int] | None = None):
        """An empty uint8 label array for level ``k`` (a zarr array ``(D, H, W)``, chunked by ``chunks`` or the
        writer's), with its metadata."""
        name = f"k{int(k)}"
        img = self.labels.create_group(name)
        img.attrs.update(label_image_attrs(int(k), self.like, self.meta["spacing"], self.meta["origin"],
                                           self.meta["unit"], self.source))
        # NGFF 0.4 asks for "/" between chunk indices
        arr = img.create_array("0", shape=self.shape, chunks=tuple(chunks or self.chunks), dtype="uint8",
                               fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
        self.names.append(name)
        self.labels.attrs["labels"] = list(self.names)
        return arr

    def add(self, k: int, labels: np.ndarray) -> None:
        """Write level ``k``'s labels ``(D, H, W)`` (ints in ``0..255``) in one go."""
        lab = np.asarray(labels)
        if lab.shape != self.shape:
            raise ValueError(f"{self.root}: label map shape {lab.shape} does not match the input {self.shape}")
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise ValueError(f"{self.root}: labels must lie in 0..255 to be stored as uint8")
        self.create(k)[...] = lab.astype(np.uint8)

    def finish(self) -> Path:
        shutil.rmtree(self.tmp / "_scratch", ignore_errors=True)
        _replace_folder(self.tmp, self.root)
        return self.root

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LabelsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_ome_zarr_labels(root: str | Path, labels: Mapping[int, np.ndarray], spacing, origin=(0.0, 0.0, 0.0),
                          unit: str = "", like: ZarrImage | None = None, source: str | None = None) -> Path:
    """Write in-memory label maps ``{K: (D, H, W)}`` as the NGFF ``labels`` group of ``root``, atomically."""
    shape = next(iter(labels.values())).shape
    with LabelsWriter(root, shape, spacing, origin, unit, like=like, source=source) as w:
        for k, lab in labels.items():
            w.add(k, lab)
        return w.finish()


def write_ome_zarr_image(path: str | Path, data, spacing=(1.0, 1.0, 1.0), unit: str = "",
                         chunks: tuple[int, ...] | None = None, n_levels: int = 1, channel_axis: bool = False) -> Path:
    """Write an image ``(D, H, W)`` (or ``(C, D, H, W)`` with ``channel_axis``) as NGFF 0.4 OME-Zarr, atomically.

    ``data``: a numpy or dask array (a dask array is stored chunk by chunk, never whole); ``n_levels``:
    multiscale levels, level ``j`` every ``2^j``-th voxel of level 0 (voxel size ``2^j`` times larger);
    ``unit``: an OME symbol (``"nm"``, ``"µm"``...). For tests, benchmarks and converting volumes.
    """
    import dask.array as da
    import zarr

    root = Path(path)
    arr = da.asarray(data)
    names = (["c"] if channel_axis else []) + ["z", "y", "x"]
    if arr.ndim != len(names):
        raise ValueError(f"{root}: expected {len(names)} axes ({', '.join(names)}), got shape {tuple(arr.shape)}")
    axes = [{"name": "c", "type": "channel"}] if channel_axis else []
    axes += [{"name": n, "type": "space", **({"unit": SYMBOL_UNITS[unit]} if unit in SYMBOL_UNITS else {})}
             for n in "zyx"]
    lead = [1.0] if channel_axis else []
    tmp = _temporary_sibling(root)
    try:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=2)
        datasets = []
        for j in range(n_levels):
            step = 2 ** j
            level = arr[(Ellipsis, slice(None, None, step), slice(None, None, step), slice(None, None, step))]
            ch = tuple(chunks) if chunks else tuple(min(n, 128) for n in level.shape)
            ch = tuple(min(c, n) for c, n in zip(ch, level.shape))
            z = group.create_array(str(j), shape=level.shape, chunks=ch, dtype=level.dtype,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
            da.store(level.rechunk(ch), z, lock=False, scheduler="threads")
            datasets.append({"path": str(j), "coordinateTransformations": [
                {"type": "scale", "scale": lead + [float(v) * step for v in spacing]}]})
        group.attrs["multiscales"] = [{"version": NGFF_VERSION, "name": root.name, "axes": axes,
                                       "datasets": datasets}]
        _replace_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def read_label_image(root: str | Path, k: int) -> tuple[np.ndarray, dict]:
    """Level ``k``'s label map ``(D, H, W)`` uint8 and its attributes, from ``{root}/labels/k{k}``."""
    import zarr

    img = zarr.open_group(store=str(Path(root) / "labels" / f"k{int(k)}"), mode="r")
    return np.asarray(img["0"][...]), dict(img.attrs)


__all__ = ["LabelsWriter", "NGFF_VERSION", "ZARR_SUFFIXES", "ZarrError", "ZarrImage", "is_zarr_store", "label_image_attrs",
           "open_zarr", "read_label_image", "write_ome_zarr_image", "write_ome_zarr_labels", "zarr_case_name", "zarr_suffix"]
