"""Reading volumes and writing label maps with their geometry.

Formats and axis conventions
----------------------------
Every reader returns a :class:`Volume` whose ``array`` is float32
``(C, D, H, W)``: channels first, then the three spatial axes *as stored in
the file*. Nothing is transposed or reoriented, so a label map written back
with :func:`write_label_map` lies voxel for voxel on the input's grid.

* **NIfTI** (``.nii``, ``.nii.gz``, nibabel): ``D, H, W`` are nibabel's
  voxel axes ``i, j, k`` (often, but not always, x, y, z); the affine and
  header are kept. A 4D NIfTI holds channels on its **last** axis (nnU-Net
  and FSL convention); singleton axes beyond the fourth are dropped.
  ``spacing`` is ``header.get_zooms()[:3]``, its unit the header's
  ``xyzt_units``.
* **TIFF** (``.tif``, ``.tiff``, tifffile): stacks are stored ``Z, Y, X``,
  so ``D, H, W = Z, Y, X``. A 4D stack's non-spatial axis (ImageJ ``C``,
  or the first axis when the file does not say) holds the channels. The
  voxel size comes from OME ``PhysicalSizeZ/Y/X`` (and their units, µm by
  default), or from ImageJ metadata (``spacing`` for Z,
  ``YResolution``/``XResolution`` pixels per unit for Y, X, and ``unit``);
  it is 1 where the file gives none. Label maps are written as OME-TIFF.
* **MRC** (``.mrc``, ``.rec``, ``.map``, mrcfile): read as ``D, H, W = Z,
  Y, X`` whatever the stored axis order: the header's ``mapc, mapr, maps``
  name the physical axis (1 = X, 2 = Y, 3 = Z) of the columns, rows and
  sections, and the stored ``(sections, rows, columns)`` array is
  transposed to ``(Z, Y, X)``. ``spacing`` is the header's voxel size
  (z, y, x) in Å, 1 where unset. Voxel 0 lies at the header ``origin``, or
  at ``nstart * voxel size`` when the origin is 0 (``nxstart, nystart,
  nzstart`` are given for columns, rows, sections). A volume stack is read
  as channels.
* **NumPy** (``.npy``): 3D ``(D, H, W)`` or 4D channels-first
  ``(C, D, H, W)``; voxel size 1. Arrays of Python objects are refused
  without unpickling them.
* **Zarr / OME-Zarr** (a folder ``*.zarr`` / ``*.ome.zarr``, :mod:`hyperseg.data.zarr_io`):
  a multiscale OME-Zarr image (level ``zarr_level`` of :func:`read_case`, 0 by
  default) or a plain Zarr array, ``D, H, W`` its three spatial axes as stored;
  voxel size and offset from the NGFF ``coordinateTransformations``. Label
  maps go to ``{case}.ome.zarr/labels/k{K}`` (NGFF labels) in the output
  folder; a volume larger than memory is segmented by :mod:`hyperseg.chunked`.
* **DICOM series** (pydicom, :mod:`hyperseg.data.dicom`): a folder of
  single-slice files (``.dcm``, or any name with the DICOM marker), or a
  folder of such folders, one case per series. ``D, H, W`` = rows, columns,
  slices (sorted along the slice normal); the affine is the series' RAS+
  patient geometry in mm, and label maps are written as NIfTI on that grid.

For TIFF and NumPy the ``affine`` is ``diag(spacing, 1)`` (voxel index
``(d, h, w)`` to physical units); for MRC it adds the origin as its
translation, so every volume carries both an affine and a voxel size
whatever its format. ``Volume.unit`` names the unit of the voxel size.

Every reader reads the header first and refuses, before any voxel is
allocated, a file whose header promises more bytes than memory (or, for an
uncompressed file, the file itself) holds; the message gives the voxel
count and the bytes.

Cases and channels
------------------
A *case* (:class:`Case`) is one input to segment: a single file (3D, or 4D
with channels), or the channel files of the nnU-Net layout,
``{case}_0000.ext, {case}_0001.ext, ...``, which :func:`find_cases` groups by
case. Every problem with an input file raises :class:`VolumeError` with the
one-line message ``"{file}: {problem}; {what to do}"``.
"""
from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..utils import atomic_write

#: Recognised suffixes, longest first so that ``.nii.gz`` wins over ``.gz``.
SUFFIXES = (".nii.gz", ".nii", ".tiff", ".tif", ".mrc", ".rec", ".map", ".npy")
#: Suffixes that label maps can be written with (``--output-format``).
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".mrc", ".rec", ".map", ".npy")
NAN_POLICIES = ("error", "fill")
#: ``{case}_{XXXX}``: an nnU-Net channel file, ``XXXX`` the 4-digit channel index.
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class VolumeError(ValueError):
    """A bad input volume; the message is one line: ``"{file}: {problem}; {what to do}"``."""


@dataclass
class Case:
    """One input case: a single file, nnU-Net channel files sorted by channel index,
    (``dicom=True``) the slice files of one DICOM series, or (``zarr=True``) one Zarr store."""

    name: str
    files: list[Path]
    dicom: bool = False
    zarr: bool = False


@dataclass
class Volume:
    """A volume and its geometry.

    ``array``: float32 ``(C, D, H, W)``; ``affine``: ``(4, 4)`` voxel-to-world
    (``diag(spacing, 1)`` when not given);
    ``header``: the source header (NIfTI, MRC) or ``None``; ``path``: the
    (first) file it came from; ``spacing``: voxel size along ``D, H, W``
    (from the affine's columns when not given); ``fmt``: the source suffix
    (``".nii.gz"``, ``".tif"``, ...; ``".npy"`` for arrays); ``case``: the
    case name (from ``path`` when not given); ``unit``: the length unit of
    ``spacing`` as an OME symbol (``"mm"``, ``"µm"``, ``"Å"``, ...), ``""``
    when the file does not say.
    """

    array: np.ndarray
    affine: np.ndarray | None = None
    header: Any = None
    path: Path | None = None
    spacing: tuple[float, float, float] | None = None
    fmt: str = ""
    case: str = ""
    unit: str = ""

    def __post_init__(self) -> None:
        if self.spacing is None:
            affine = np.eye(4) if self.affine is None else np.asarray(self.affine, dtype=np.float64)
            self.spacing = _clean_spacing(np.linalg.norm(affine[:3, :3], axis=0))
        else:
            self.spacing = _clean_spacing(self.spacing)
        if self.affine is None:
            self.affine = _diag_affine(self.spacing)
        if not self.fmt:
            self.fmt = volume_suffix(self.path) if self.path is not None else ".npy"
        if not self.case:
            self.case = case_name(self.path) if self.path is not None else "volume"
        self.unit = unit_symbol(self.unit)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------

def volume_suffix(path: str | Path) -> str:
    """The recognised suffix of ``path`` in lower case (``".nii.gz"``, ``".tif"``, ...), or ``""``."""
    name = Path(path).name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def case_name(path: str | Path) -> str:
    """File name without its volume suffix: ``case001.nii.gz -> case001``."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def is_volume_file(path: Path) -> bool:
    return path.is_file() and bool(volume_suffix(path)) and not path.name.startswith(".")


def _unknown_format(path: Path) -> VolumeError:
    return VolumeError(f"{path}: unknown volume format; use one of {', '.join(SUFFIXES)}")


def find_volumes(path: str | Path) -> list[Path]:
    """A volume file, or the volume files directly inside a folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        if not is_volume_file(path):
            raise _unknown_format(path)
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if is_volume_file(p))
        if not files:
            raise FileNotFoundError(f"{path}: no volumes ({', '.join(SUFFIXES)}) in this folder")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


def _dicom_cases(path: Path) -> list[Case]:
    """One case per DICOM series in ``path`` and its subfolders (or of the DICOM file ``path``)."""
    from .dicom import find_series

    return [Case(name, sorted(s.files), dicom=True) for name, s in find_series(path)]


def find_cases(path: str | Path) -> list[Case]:
    """The cases of a file or folder; a folder's are sorted by name.

    A file is one case. In a folder, nnU-Net channel files ``{case}_XXXX.ext``
    are grouped into one case per ``{case}``, sorted by channel; every other
    volume file is a case of its own. Hidden files and subfolders (such as
    ``labels/``) are ignored, except that every DICOM series in the folder
    or in a subfolder is a case (named after its folder,
    :func:`hyperseg.data.dicom.series_case_names`); a DICOM file stands for
    its series, and every Zarr store (a folder ``*.zarr``, ``*.ome.zarr`` or any folder holding a
    Zarr group or array) in the folder, or the folder itself, is a case (``zarr=True``, named
    without the suffix). Missing channels are reported by :func:`read_case`, so that
    one bad case does not stop a folder.
    """
    from .zarr_io import is_zarr_store, zarr_case_name

    path = Path(path)
    if is_zarr_store(path):
        return [Case(zarr_case_name(path), [path], zarr=True)]
    zarrs = [Case(zarr_case_name(p), [p], zarr=True) for p in sorted(path.iterdir())
             if not p.name.startswith(".") and is_zarr_store(p)] if path.is_dir() else []
    if not zarrs:
        return _find_file_cases(path)
    try:
        others = _find_file_cases(path)
    except FileNotFoundError:
        others = []
    taken = {c.name: c for c in others}
    for c in zarrs:
        if c.name in taken:
            raise VolumeError(f"{c.files[0]}: Zarr case {c.name} clashes with {taken[c.name].files[0]}; rename one")
    return sorted(others + zarrs, key=lambda c: c.name)


def _find_file_cases(path: Path) -> list[Case]:
    """:func:`find_cases` for volume files and DICOM series (no Zarr stores)."""
    path = Path(path)
    if path.is_file() and not volume_suffix(path):
        dicom = _dicom_cases(path)
        if dicom:
            return dicom
    dicom = _dicom_cases(path) if path.is_dir() else []
    try:
        files = find_volumes(path)
    except FileNotFoundError:
        if dicom:
            return sorted(dicom, key=lambda c: c.name)
        if path.is_dir():
            raise FileNotFoundError(f"{path}: no volumes ({', '.join(SUFFIXES)}) and no DICOM series in this "
                                    "folder or its subfolders") from None
        raise
    if path.is_file():
        return [Case(case_name(path), [path])]
    cases: dict[str, dict[int, Path]] = {}
    singles: dict[str, Path] = {}
    for f in files:
        stem = case_name(f)
        m = CHANNEL_RE.match(stem)
        if m:
            channels = cases.setdefault(m["case"], {})
            ch = int(m["channel"])
            if ch in channels:
                raise VolumeError(f"{f}: channel {ch} of case {m['case']} is also in {channels[ch].name}; "
                                  "keep one file per channel")
            channels[ch] = f
        else:
            if stem in singles:
                raise VolumeError(f"{f}: case {stem} is also in {singles[stem].name}; keep one file per case")
            singles[stem] = f
    clash = sorted(set(cases) & set(singles))
    if clash:
        raise VolumeError(f"{singles[clash[0]]}: case {clash[0]} also has channel files {clash[0]}_XXXX; "
                          "use either one file or the nnU-Net channel files")
    out = [Case(name, [f]) for name, f in singles.items()]
    out += [Case(name, [chs[c] for c in sorted(chs)]) for name, chs in cases.items()]
    taken = {c.name for c in out}
    for c in dicom:
        if c.name in taken:
            raise VolumeError(f"{c.files[0].parent}: DICOM series case {c.name} clashes with the volume file "
                              f"{c.name}.*; rename the folder or the file")
    return sorted(out + dicom, key=lambda c: c.name)


def output_suffix(like: Volume, override: str | None = None) -> str:
    """Suffix for label maps of ``like``: its own format, or ``override`` ("nii.gz", "tif", ...)."""
    if override is None:
        return like.fmt if like.fmt in OUTPUT_SUFFIXES else ".nii.gz"
    suffix = "." + override.lower().lstrip(".")
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"unknown output format {override!r}; use one of "
                         f"{', '.join(s.lstrip('.') for s in OUTPUT_SUFFIXES)}")
    return suffix


# ---------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------

#: Metres per unit, for the length units a voxel size can carry (OME ``UnitsLength`` symbols).
METRES_PER_UNIT = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "µm": 1e-6, "nm": 1e-9, "Å": 1e-10, "pm": 1e-12}
#: Other spellings of those units in NIfTI, ImageJ and OME headers (``"pixel"``: no physical unit).
_UNIT_SPELLINGS = {"micron": "µm", "microns": "µm", "um": "µm", "\u03bcm": "µm", "\\u00b5m": "µm",
                   "angstrom": "Å", "a": "Å", "\u212b": "Å", "meter": "m", "metre": "m",
                   "millimeter": "mm", "millimetre": "mm", "nanometer": "nm", "nanometre": "nm",
                   "pixel": "", "unknown": ""}


def unit_symbol(name: str | None) -> str:
    """The OME symbol of a length unit (``"micron" -> "µm"``), or ``""`` when it is unknown or ``"pixel"``."""
    if not name:
        return ""
    name = str(name).strip()
    if name in METRES_PER_UNIT:
        return name
    return _UNIT_SPELLINGS.get(name.lower(), "")


def in_unit(spacing: tuple[float, float, float], unit: str, target: str) -> tuple[float, float, float]:
    """``spacing`` given in ``unit``, expressed in ``target``; unchanged when ``unit`` is unknown (``""``)."""
    if unit not in METRES_PER_UNIT:
        return spacing
    factor = METRES_PER_UNIT[unit] / METRES_PER_UNIT[target]
    return tuple(v * factor for v in spacing)  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

@dataclass
class _Raw:
    """What a format reader returns: data ``(C, D, H, W)`` (any real dtype) and geometry."""

    data: np.ndarray
    affine: np.ndarray
    header: Any
    spacing: tuple[float, float, float]
    unit: str = ""


@dataclass(frozen=True)
class _Promise:
    """What a header says the file holds, read before any voxel is.

    ``shape``: the stored array's shape; ``dtype``: the voxel type once read
    (after NIfTI intensity scaling); ``stored``: bytes of voxel data the file
    holds, when it is not compressed (``None`` otherwise); ``disk_itemsize``:
    bytes per voxel in the file (0: ``dtype``'s).
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    stored: int | None = None
    disk_itemsize: int = 0

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=object))

    @property
    def nbytes(self) -> int:
        """Bytes of the array as read: ``voxels * itemsize``."""
        return self.voxels * self.dtype.itemsize

    @property
    def disk_bytes(self) -> int:
        """Bytes of voxel data the file must hold: ``voxels * disk_itemsize``."""
        return self.voxels * (self.disk_itemsize or self.dtype.itemsize)

    @property
    def needed(self) -> int:
        """Bytes to read it as float32: the array as read, plus its float32 copy unless it is float32."""
        return self.nbytes + (0 if self.dtype == np.float32 else self.voxels * 4)

    def describe(self) -> str:
        dims = " x ".join(str(n) for n in self.shape)
        return f"{dims} voxels of {self.dtype} ({self.voxels:,} voxels, {self.nbytes:,} bytes)"


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def available_memory() -> int | None:
    """Bytes this process can still allocate, or ``None`` when the system does not say.

    The least of the kernel's ``MemAvailable``, the room left under the
    cgroup's memory limit (containers) and the room left under the address
    space limit (``ulimit -v``).
    """
    room: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max":
                room.append(int(limit) - int(Path(usage_file).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
            room.append(soft - used)
    except (ImportError, OSError, ValueError):
        pass
    return max(min(room), 0) if room else None


def _check_promise(promise: _Promise) -> None:
    """Refuse, before anything is allocated, a header that promises more than memory or the file holds."""
    path = promise.path
    free = available_memory()
    if free is not None and promise.needed > free:
        raise VolumeError(f"{path}: too large to read into memory: the header promises {promise.describe()}, "
                          f"which need {promise.needed:,} bytes ({_gib(promise.needed)}) to read as float32, "
                          f"and {_gib(free)} are available; crop it to the region you need or downsample it "
                          "(2x per axis needs 8x less memory) before giving it to hyperseg")
    if promise.stored is not None and promise.stored < promise.disk_bytes:
        raise VolumeError(f"{path}: is truncated: the header promises {promise.describe()}, but the file holds "
                          f"{max(promise.stored, 0):,} of their {promise.disk_bytes:,} bytes; copy the complete "
                          "file again, or fix its header")


def _read_promised(promise: _Promise, read):
    """``read()`` after :func:`_check_promise`; a failure names what the header promised."""
    _check_promise(promise)
    try:
        return read()
    except MemoryError as err:
        raise VolumeError(f"{promise.path}: too large to read into memory: the header promises "
                          f"{promise.describe()}, which need {promise.needed:,} bytes ({_gib(promise.needed)}) "
                          "to read as float32; crop it to the region you need or downsample it") from err
    except VolumeError:
        raise
    except Exception as err:
        msg = " ".join(str(err).split())[:200] or type(err).__name__
        raise VolumeError(f"{promise.path}: cannot be read as {volume_suffix(promise.path)} ({msg}; the header "
                          f"promises {promise.describe()}); is the file complete and of this format?") from err


def _clean_spacing(values) -> tuple[float, float, float]:
    """Three positive finite voxel sizes; missing or invalid ones (0, NaN, negative) become 1."""
    vals = [float(v) for v in list(values)[:3]]
    vals += [1.0] * (3 - len(vals))
    return tuple(v if np.isfinite(v) and v > 0 else 1.0 for v in vals)  # type: ignore[return-value]


def _diag_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def _channels_first(data: np.ndarray, path: Path, channel_axis: int) -> np.ndarray:
    """3D as ``(1, D, H, W)``; 4D with channels moved from ``channel_axis`` to the front."""
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, channel_axis, 0)
    raise VolumeError(f"{path}: expected a 3D volume (or 4D with channels), got shape {tuple(data.shape)}; "
                      "save one volume per file")


def _npy_promise(path: Path) -> _Promise:
    """The shape and dtype in a ``.npy`` header; an array of Python objects is refused unread."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise VolumeError(f"{path}: holds Python objects (dtype {dtype}), which hyperseg never loads because "
                          "unpickling them can run code; save the volume as a numeric array")
    return _Promise(path, tuple(int(n) for n in shape), dtype, path.stat().st_size - offset)


def _read_npy(path: Path) -> _Raw:
    promise = _npy_promise(path)
    data = _read_promised(promise, lambda: np.load(path, allow_pickle=False))
    spacing = (1.0, 1.0, 1.0)
    return _Raw(_channels_first(data, path, 0), _diag_affine(spacing), None, spacing)


def _read_nifti(path: Path) -> _Raw:
    img = nib.load(str(path))  # the header only; voxels are read below
    header = img.header
    disk = header.get_data_dtype()
    slope, inter = header.get_slope_inter()
    scaled = (slope is not None and slope != 1) or (inter is not None and inter != 0)
    dtype = np.result_type(disk, np.float64) if scaled else disk
    stored = None if volume_suffix(path) == ".nii.gz" else path.stat().st_size - int(header["vox_offset"])
    promise = _Promise(path, tuple(int(n) for n in img.shape), np.dtype(dtype), stored, disk.itemsize)
    data = _read_promised(promise, lambda: np.asanyarray(img.dataobj))
    if data.ndim > 4:  # e.g. (X, Y, Z, 1, C) vector images: drop singleton axes past the third
        extra = [a for a in range(3, data.ndim) if data.shape[a] == 1]
        data = np.squeeze(data, axis=tuple(extra[: data.ndim - 4]))
    zooms = header.get_zooms()
    return _Raw(_channels_first(data, path, -1), np.asarray(img.affine, np.float64), header,
                _clean_spacing(zooms[:3]), unit_symbol(header.get_xyzt_units()[0]))


def _ome_spacing(xml: str) -> tuple[tuple[float, float, float], str] | None:
    """Voxel size (z, y, x) and its unit from OME-XML ``Pixels``; ``None`` without a ``Pixels`` element.

    OME's default unit is µm. Axes in different known units are converted
    to the unit of X; with an unknown unit among them the unit is ``""``.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            sizes = _clean_spacing([el.get(f"PhysicalSize{a}", "nan") for a in "ZYX"])
            units = [unit_symbol(el.get(f"PhysicalSize{a}Unit", "µm")) for a in "ZYX"]
            unit = units[2]
            if len(set(units)) > 1:
                if not all(units):
                    return sizes, ""
                sizes = tuple(s * METRES_PER_UNIT[u] / METRES_PER_UNIT[unit] for s, u in zip(sizes, units))
            return sizes, unit  # type: ignore[return-value]
    return None


def _tiff_spacing(tif) -> tuple[tuple[float, float, float], str]:
    """Voxel size (z, y, x) and its unit from OME or ImageJ metadata; 1 and ``""`` where absent."""
    if tif.is_ome and tif.ome_metadata:
        found = _ome_spacing(tif.ome_metadata)
        if found is not None:
            return found
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        page = tif.pages[0]

        def size(tag: str) -> float:
            t = page.tags.get(tag)
            try:
                num, den = t.value
                return den / num
            except (AttributeError, TypeError, ValueError, ZeroDivisionError):
                return 1.0

        spacing = _clean_spacing([meta.get("spacing", 1.0), size("YResolution"), size("XResolution")])
        return spacing, unit_symbol(meta.get("unit"))
    return (1.0, 1.0, 1.0), ""


def _read_tiff(path: Path) -> _Raw:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        promise = _Promise(path, tuple(int(n) for n in series.shape), np.dtype(series.dtype))
        data = _read_promised(promise, series.asarray)
        spacing, unit = _tiff_spacing(tif)
    if data.ndim == 3 and len(axes) == 3 and axes[-1] in "SC":
        raise VolumeError(f"{path}: is a 2D image with {data.shape[-1]} colour channels (axes {axes}), not a "
                          "volume; save a Z, Y, X stack")
    channel_axis = 0
    if data.ndim == 4 and len(axes) == 4:
        other = [i for i, a in enumerate(axes) if a not in "ZYX"]
        channel_axis = other[0] if other else 0
    return _Raw(_channels_first(data, path, channel_axis), _diag_affine(spacing), None, spacing, unit)


def _mrc_axis_order(header, path: Path) -> tuple[int, int, int]:
    """``(mapc, mapr, maps)``: the physical axis (1 = X, 2 = Y, 3 = Z) of the columns, rows and sections.

    Columns vary fastest, so the stored array is ``(sections, rows,
    columns)``; the standard order is ``(1, 2, 3)``, read as ``(Z, Y, X)``.
    All zero (left unset by some writers) means the standard order.
    """
    order = (int(header.mapc), int(header.mapr), int(header.maps))
    if order == (0, 0, 0):
        return (1, 2, 3)
    if sorted(order) != [1, 2, 3]:
        raise VolumeError(f"{path}: the header's axis order (mapc, mapr, maps) = {order} is not a permutation of "
                          "1, 2, 3; fix the header (1, 2, 3 for X, Y, Z)")
    return order  # type: ignore[return-value]


def _mrc_start_xyz(header, order: tuple[int, int, int]) -> tuple[int, int, int]:
    """``(nxstart, nystart, nzstart)`` (given for columns, rows, sections) along X, Y, Z."""
    start = [0, 0, 0]
    for axis, value in zip(order, (header.nxstart, header.nystart, header.nzstart)):
        start[axis - 1] = int(value)
    return tuple(start)  # type: ignore[return-value]


def _mrc_translation_zyx(header, order, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """Position (z, y, x) of voxel 0: the header origin, or ``nstart * voxel size`` when the origin is 0."""
    origin = [float(header.origin.x), float(header.origin.y), float(header.origin.z)]
    if not all(np.isfinite(origin)):
        origin = [0.0, 0.0, 0.0]
    if not any(origin):
        start = _mrc_start_xyz(header, order)
        origin = [start[0] * spacing[2], start[1] * spacing[1], start[2] * spacing[0]]
    return origin[2], origin[1], origin[0]


def _read_mrc(path: Path) -> _Raw:
    """An MRC map as ``(Z, Y, X)`` whatever its stored axis order, with its voxel size and origin (Å)."""
    import mrcfile
    from mrcfile.utils import data_dtype_from_header

    with mrcfile.open(str(path), mode="r", permissive=False, header_only=True) as mrc:
        header = mrc.header.copy()
    order = _mrc_axis_order(header, path)
    stored = path.stat().st_size - header.nbytes - int(header.nsymbt)
    promise = _Promise(path, (int(header.nz), int(header.ny), int(header.nx)),
                       np.dtype(data_dtype_from_header(header)), stored)

    def read():
        with mrcfile.open(str(path), mode="r", permissive=False) as mrc:
            return np.array(mrc.data), mrc.voxel_size.copy()

    data, vs = _read_promised(promise, read)
    # stored axes (sections, rows, columns) hold physical axes (maps, mapr, mapc); put Z, Y, X in that order
    stored_axes = (order[2], order[1], order[0])
    perm = [stored_axes.index(axis) for axis in (3, 2, 1)]
    lead = data.ndim - 3
    data = np.ascontiguousarray(np.transpose(data, [*range(lead), *(lead + p for p in perm)]))
    spacing = _clean_spacing([vs.z, vs.y, vs.x])
    affine = _diag_affine(spacing)
    affine[:3, 3] = _mrc_translation_zyx(header, order, spacing)
    return _Raw(_channels_first(data, path, 0), affine, header, spacing, "Å")


_READERS = {".npy": _read_npy, ".nii": _read_nifti, ".nii.gz": _read_nifti, ".tif": _read_tiff,
            ".tiff": _read_tiff, ".mrc": _read_mrc, ".rec": _read_mrc, ".map": _read_mrc}


def _load(path: Path) -> _Raw:
    """Read one file as it is stored (no value checks); every failure becomes a VolumeError.

    Every format is read as data: no reader unpickles (``np.load`` with
    ``allow_pickle=False``, after the header is checked for Python objects),
    and a header that promises more voxels than memory (or the file) holds
    is refused before they are allocated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = volume_suffix(path)
    if not suffix:
        raise _unknown_format(path)
    try:
        with warnings.catch_warnings():
            # readers warn about odd but readable headers; the checks below decide what is usable
            warnings.simplefilter("ignore")
            raw = _READERS[suffix](path)
    except VolumeError:
        raise
    except MemoryError as err:
        raise VolumeError(f"{path}: too large to read into memory; crop or downsample it") from err
    except Exception as err:
        msg = " ".join(str(err).split())[:200] or type(err).__name__
        raise VolumeError(f"{path}: cannot be read as {suffix} ({msg}); is the file complete and of this "
                          "format?") from err
    if raw.data.dtype.kind == "c":
        raise VolumeError(f"{path}: has complex voxels ({raw.data.dtype}); save the magnitude or the real part")
    if raw.data.dtype.kind not in "biuf":
        raise VolumeError(f"{path}: unsupported voxel type {raw.data.dtype}; save numbers (ints or floats)")
    if raw.data.size == 0:
        raise VolumeError(f"{path}: is empty (shape {tuple(raw.data.shape)}); give a volume with voxels")
    return raw


def _to_float32(data: np.ndarray) -> np.ndarray:
    """Cast to float32; values beyond float32's range become +-inf (caught by the finiteness check)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(data, dtype=np.float32)


def _median(values: np.ndarray) -> float:
    """The median of float32 ``values``; where float32 overflows averaging the two middle ones
    (both near ``3.4e38``), it is taken in float64, whose result float32 holds."""
    with np.errstate(over="ignore"):
        med = np.median(values)
    if not np.isfinite(med):
        med = np.median(values.astype(np.float64))
    return float(med)


def check_array(array: np.ndarray, name: str, nan_policy: str = "error") -> np.ndarray:
    """Check a ``(C, D, H, W)`` volume's values; return it as float32 (NaN/Inf filled if asked).

    Raises :class:`VolumeError` (message starting with ``name``) for NaN/Inf
    voxels under ``nan_policy="error"``, a channel with no finite voxel, and a
    constant volume. ``"fill"`` replaces NaN/Inf by the median of the
    channel's finite voxels.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    x = _to_float32(array)
    if x.ndim != 4 or x.size == 0:
        raise VolumeError(f"{name}: expected a non-empty (C, D, H, W) volume, got shape {tuple(x.shape)}")
    finite = np.isfinite(x)
    if not finite.all():
        if nan_policy == "error":
            raise VolumeError(f"{name}: has {int((~finite).sum())} NaN or Inf voxels (or values too large "
                              "for float32); fix them or use nan policy 'fill' to replace them")
        x = x.copy() if x is array else x
        for c in range(x.shape[0]):
            ok = finite[c]
            if not ok.any():
                raise VolumeError(f"{name}: channel {c} has no finite voxel; remove or fix that channel")
            x[c][~ok] = _median(x[c][ok])
    if float(x.max()) == float(x.min()):
        raise VolumeError(f"{name}: is constant (every voxel is {float(x.flat[0]):g}): nothing to segment; "
                          "check that this is the right file")
    return x


def _channel_index(path: Path, case: str) -> int | None:
    m = CHANNEL_RE.match(case_name(path))
    return int(m["channel"]) if m and m["case"] == case else None


def read_case(case: Case, nan_policy: str = "error", zarr_level: int = 0) -> Volume:
    """Read a case as a float32 ``(C, D, H, W)`` :class:`Volume` with the first file's geometry.

    nnU-Net channel files must be channels ``0..C-1`` without gaps, 3D, and of
    one spatial shape. ``nan_policy``: ``"error"`` (NaN/Inf voxels raise
    :class:`VolumeError`) or ``"fill"`` (replaced by the channel's median).
    ``zarr_level``: the multiscale level of an OME-Zarr case (0 = full resolution).
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if not case.files:
        raise VolumeError(f"{case.name}: the case has no files; give at least one volume file")
    if case.dicom:
        return _read_dicom_case(case, nan_policy)
    if case.zarr:
        return _read_zarr_case(case, nan_policy, zarr_level)
    files = [Path(f) for f in case.files]
    first = files[0]
    found = [_channel_index(f, case.name) for f in files]
    indices = [i for i in found if i is not None]
    if len(indices) == len(files) and (len(files) > 1 or case.name != case_name(first)):
        missing = sorted(set(range(max(indices) + 1)) - set(indices))
        if missing:
            gone = first.with_name(f"{case.name}_{missing[0]:04d}{volume_suffix(first)}")
            raise VolumeError(f"{gone}: channel {missing[0]} of case {case.name} is missing (found channels "
                              f"{sorted(indices)}); add it or remove the case's other channel files")
    raws = [_load(f) for f in files]
    if len(raws) == 1:
        data = raws[0].data
    else:
        shape = raws[0].data.shape[1:]
        for f, r in zip(files, raws):
            if r.data.shape[0] != 1:
                raise VolumeError(f"{f}: a channel file must hold one 3D volume, got {r.data.shape[0]} "
                                  "channels; split it into one file per channel")
            if r.data.shape[1:] != shape:
                raise VolumeError(f"{f}: channel shape {tuple(r.data.shape[1:])} differs from "
                                  f"{first.name}'s {tuple(shape)}; resample the channels onto one grid")
        data = np.concatenate([_to_float32(r.data) for r in raws])
    array = check_array(data, str(first) if len(files) == 1 else f"{first} (case {case.name})", nan_policy)
    raw = raws[0]
    return Volume(array=array, affine=raw.affine, header=raw.header, path=first, spacing=raw.spacing,
                  fmt=volume_suffix(first), case=case.name, unit=raw.unit)


def _read_dicom_case(case: Case, nan_policy: str) -> Volume:
    """A DICOM series as a float32 ``(1, rows, columns, slices)`` :class:`Volume` in RAS+ mm, with a NIfTI
    header (``fmt`` ``".dcm"``: its label maps are written as NIfTI)."""
    from .dicom import nifti_header, read_series

    folder = Path(case.files[0]).parent
    try:
        data, affine, spacing, _ = read_series(case.files)
    except VolumeError:
        raise
    except MemoryError as err:
        raise VolumeError(f"{folder}: DICOM series {case.name} is too large to read into memory; "
                          "crop or downsample it") from err
    except Exception as err:  # noqa: BLE001 - a broken file is a user problem, named in one line
        msg = " ".join(str(err).split())[:200] or type(err).__name__
        raise VolumeError(f"{folder}: DICOM series {case.name} cannot be read ({msg}); export the series "
                          "again") from err
    array = check_array(data, f"{folder} (DICOM series {case.name})", nan_policy)
    return Volume(array=array, affine=affine, header=nifti_header(affine), path=folder, spacing=spacing,
                  fmt=".dcm", case=case.name, unit="mm")


def _read_zarr_case(case: Case, nan_policy: str, level: int) -> Volume:
    """A Zarr / OME-Zarr store read whole into memory (:mod:`hyperseg.data.zarr_io`); ``fmt`` ``".ome.zarr"``,
    ``header`` the :class:`~hyperseg.data.zarr_io.ZarrImage` (axes and metadata for the label images)."""
    from .zarr_io import open_zarr

    path = Path(case.files[0])
    img = open_zarr(path, level)
    promise = _Promise(path, tuple(int(n) for n in img.array.shape), np.dtype(img.array.dtype))
    _check_promise(promise)
    data = np.asarray(img.array.compute(scheduler="synchronous"))
    where = f"{path}" if img.level is None else f"{path} (level {img.level})"
    array = check_array(data, where, nan_policy)
    return Volume(array=array, affine=img.affine, header=img, path=path, spacing=img.spacing, fmt=".ome.zarr",
                  case=case.name, unit=img.unit)


def read_volume(path: str | Path, nan_policy: str = "error") -> Volume:
    """Read one file (3D, or 4D with channels) as a float32 ``(C, D, H, W)`` :class:`Volume`."""
    path = Path(path)
    return read_case(Case(case_name(path), [path]), nan_policy=nan_policy)


def read_labels(path: str | Path) -> np.ndarray:
    """Read an integer label map as int64 ``(D, H, W)`` (a constant map is allowed)."""
    raw = _load(Path(path))
    if raw.data.shape[0] != 1:
        raise VolumeError(f"{path}: a label map must be 3D, got {raw.data.shape[0]} channels; give one map")
    data = _to_float32(raw.data[0])
    if not np.isfinite(data).all():
        raise VolumeError(f"{path}: label map has NaN or Inf voxels; labels must be integers")
    return np.rint(data).astype(np.int64)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

def _is_mrc_header(header: Any) -> bool:
    names = getattr(getattr(header, "dtype", None), "names", None) or ()
    return all(f in names for f in ("mapc", "mapr", "maps", "origin", "nxstart"))


def write_label_map(path: str | Path, labels: np.ndarray, like: Volume) -> Path:
    """Write an integer label map ``(D, H, W)`` on ``like``'s grid as uint8, atomically.

    The format follows ``path``'s suffix:

    * NIfTI keeps ``like``'s affine and header (data type uint8, no
      intensity scaling); from another format it records ``like.unit`` when
      NIfTI has it (mm, µm, m).
    * TIFF is OME-TIFF, axes ``ZYX``, with ``PhysicalSizeX/Y/Z`` =
      ``like.spacing`` (x, y, z) and their unit ``like.unit`` (``"pixel"``
      when unknown).
    * MRC is written in the standard axis order (1, 2, 3) with the voxel
      size in Å (converted from ``like.unit``; as given when the unit is
      unknown); from an MRC input it keeps the header origin and the start
      indices ``nxstart/nystart/nzstart`` (re-ordered to X, Y, Z).
    * ``.npy`` holds the array only.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: cannot write label maps in this format; use one of {', '.join(OUTPUT_SUFFIXES)}")
    labels = np.asarray(labels)
    if labels.shape != like.spatial_shape:
        raise ValueError(f"{path}: label map shape {labels.shape} does not match the input {like.spatial_shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{path}: labels must lie in 0..255 to be stored as uint8")
    labels = labels.astype(np.uint8)
    sd, sh, sw = like.spacing  # type: ignore[misc]

    def write(tmp: Path) -> None:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, labels)
        elif suffix in (".nii", ".nii.gz"):
            header = like.header if isinstance(like.header, nib.Nifti1Header) else None
            cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
            img = cls(labels, like.affine, header=header.copy() if header is not None else None)
            img.set_data_dtype(np.uint8)
            img.header.set_slope_inter(1, 0)
            nifti_units = {"mm": "mm", "µm": "micron", "m": "meter"}
            if header is None and like.unit in nifti_units:
                img.header.set_xyzt_units(xyz=nifti_units[like.unit])
            nib.save(img, str(tmp))
        elif suffix in (".tif", ".tiff"):
            import tifffile

            unit = like.unit or "pixel"
            meta = {"axes": "ZYX"}
            for axis, size in zip("XYZ", (sw, sh, sd)):
                meta[f"PhysicalSize{axis}"] = size
                meta[f"PhysicalSize{axis}Unit"] = unit
            tifffile.imwrite(tmp, labels, ome=True, photometric="minisblack", metadata=meta)
        else:
            import mrcfile

            az, ay, ax = in_unit((sd, sh, sw), like.unit, "Å")
            with mrcfile.new(str(tmp), overwrite=True) as mrc:
                mrc.set_data(labels)
                mrc.voxel_size = (ax, ay, az)  # mrcfile's order is (x, y, z)
                if _is_mrc_header(like.header):
                    mrc.header.origin = like.header.origin
                    order = _mrc_axis_order(like.header, like.path or path)
                    mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = _mrc_start_xyz(like.header, order)

    atomic_write(path, write)
    return path
