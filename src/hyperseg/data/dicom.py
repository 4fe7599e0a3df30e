"""DICOM series (a folder of single-slice ``.dcm`` files) read as one volume with its patient geometry.

Which files are DICOM
---------------------
A file is DICOM when its name ends in ``.dcm`` (any case) or, whatever its
name, when it carries the ``DICM`` marker at byte 128 (scanners often write
``IM0001`` or bare numbers). :func:`find_series` groups the DICOM files of a
folder by ``SeriesInstanceUID``; it looks in the folder itself and in its
immediate subfolders (the usual export, one folder per series). Only headers
are read to group them.

Axes and geometry
-----------------
A series is read as ``(C, D, H, W) = (1, rows, columns, slices)``: voxel
``(i, j, k)`` is row ``i`` and column ``j`` of the ``k``-th slice, slices sorted
by their position along ``n = c x r`` (``r``, ``c``: the row and column
direction cosines of ``ImageOrientationPatient``; moving down a row follows
``c``, moving right a column follows ``r``, so ``(c, r, n)`` is right-handed).
This is the array order and slice normal of ``nibabel.nicom``. In DICOM
patient coordinates (LPS, mm)::

    x_LPS = P_0 + i * c * dr + j * r * dc + k * s

with ``P_0`` the ``ImagePositionPatient`` of the first slice, ``(dr, dc)`` the
``PixelSpacing`` (row spacing, then column spacing) and ``s`` the step from
one slice's position to the next (``n`` times the slice spacing; it keeps a
gantry tilt, if any, instead of dropping it). The :class:`Volume`'s affine is
that map in RAS+ (NIfTI's world space, the convention of dcm2niix):
``diag(-1, -1, 1, 1)`` times the LPS affine, so a label map written as NIfTI
lies on the series' grid in any viewer. Intensities are
``stored * RescaleSlope + RescaleIntercept``.

What is refused
---------------
A series whose slices differ in orientation, size or pixel spacing; one with
two slices at one position (several echoes, phases or acquisitions in one
series); one with slices missing (a gap of about a whole multiple of the
spacing) or unevenly spaced; one with a single slice; enhanced multi-frame
files. Each raises :class:`~hyperseg.data.io.VolumeError` with one line,
``"{folder}: series {number} ({description}): {problem}; {what to do}"``.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ``.dcm`` files, and files of any name with the DICOM marker at byte 128.
DICOM_SUFFIX = ".dcm"
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
#: Direction cosines that differ by more than this make two orientations (DICOM stores about 6 digits).
ORIENTATION_TOL = 1e-4
#: Slice gaps may differ from their median by this fraction (plus :data:`SPACING_TOL_MM`) and still be even:
#: scanners round positions to a few micrometres.
SPACING_TOL_REL = 0.01
SPACING_TOL_MM = 0.01
#: Tags read to group files into series and sort them (pixels are read only for the series asked for).
_HEADER_TAGS = ["SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ImageOrientationPatient",
                "ImagePositionPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames", "Modality"]
#: LPS (DICOM) to RAS (NIfTI): x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume_error(message: str) -> Exception:
    from .io import VolumeError

    return VolumeError(message)


def _need_pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - the test extra installs it
        raise _volume_error("pydicom is not installed: DICOM series cannot be read; "
                            "pip install 'hyperseg[dicom]'") from None
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a (non-hidden) DICOM file: ``.dcm`` suffix, or the ``DICM`` marker at byte 128."""
    path = Path(path)
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(_MAGIC_OFFSET)
            return fh.read(4) == _MAGIC
    except OSError:
        return False


@dataclass
class Series:
    """One DICOM series found on disk: its folder, UID, number, description and slice files (unsorted)."""

    folder: Path
    uid: str
    number: str = ""
    description: str = ""
    files: list[Path] = field(default_factory=list)

    def label(self) -> str:
        """``"series 3 (T1 MPRAGE)"``: how messages name the series."""
        number = f"series {self.number}" if self.number else f"series {self.uid}"
        return f"{number} ({self.description})" if self.description else number


def _read_header(path: Path):
    pydicom = _need_pydicom()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd but readable values
        return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)


def _series_in(folder: Path) -> list[Series]:
    """The series of the DICOM files directly inside ``folder``, by SeriesInstanceUID."""
    found: dict[str, Series] = {}
    for f in sorted(p for p in folder.iterdir() if is_dicom_file(p)):
        try:
            ds = _read_header(f)
        except Exception as err:  # noqa: BLE001 - any parse failure is the same user problem
            msg = " ".join(str(err).split())[:200] or type(err).__name__
            raise _volume_error(f"{f}: cannot be read as DICOM ({msg}); remove it or export the series again")
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        series = found.setdefault(uid, Series(folder, uid, str(ds.get("SeriesNumber", "") or ""),
                                              str(ds.get("SeriesDescription", "") or "").strip()))
        series.files.append(f)
    return list(found.values())


def find_series(path: str | Path) -> list[tuple[str, Series]]:
    """``(case name, series)`` of every DICOM series in ``path`` (a folder) and its immediate
    subfolders, or of the series a DICOM file belongs to (named as its folder would name it).

    A series is named after its folder, with ``_s{SeriesNumber}`` added where one folder holds
    several series (:func:`series_case_names`). Returns ``[]`` when there is no DICOM file.
    """
    path = Path(path)
    if path.is_file():
        if not is_dicom_file(path):
            return []
        uid = str(_read_header(path).get("SeriesInstanceUID", "") or "")
        found = _series_in(path.parent)
        return [(n, s) for n, s in zip(series_case_names(found), found) if s.uid == uid]
    if not path.is_dir():
        return []
    found = _series_in(path)
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += _series_in(sub)
    return list(zip(series_case_names(found), found))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def series_case_names(series: list[Series]) -> list[str]:
    """A case name per series: its folder's name, with
    ``_s{number}`` added where one folder holds several series (``_{n}`` if that still clashes)."""
    per_folder: dict[Path, int] = {}
    for s in series:
        per_folder[s.folder] = per_folder.get(s.folder, 0) + 1
    names: list[str] = []
    for s in series:
        name = _safe(s.folder.name) or "dicom"
        if per_folder[s.folder] > 1:
            name += f"_s{_safe(s.number) or _safe(s.uid)[-8:]}"
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------- geometry
@dataclass
class SeriesGeometry:
    """Where the slices of a series lie: ``order`` sorts the files; ``affine`` is the RAS+ map of
    voxel ``(row, column, slice)`` to mm; ``spacing`` is ``(dr, dc, slice spacing)``."""

    order: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.isfinite(out).all() else None


def series_geometry(headers: list, where: str) -> SeriesGeometry:
    """Check that ``headers`` (one per slice file) form one evenly spaced stack and return its geometry.

    ``where``: the start of every error message (``"{folder}: series N"``).
    """
    n = len(headers)
    if n < 2:
        raise _volume_error(f"{where}: has {n} slice; a volume needs at least 2 slices; export the whole series")
    iops, ipps, sizes, spacings = [], [], set(), []
    for ds in headers:
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        ps = _floats(ds.get("PixelSpacing"), 2)
        if iop is None or ipp is None or ps is None:
            missing = [t for t, v in (("ImageOrientationPatient", iop), ("ImagePositionPatient", ipp),
                                      ("PixelSpacing", ps)) if v is None]
            raise _volume_error(f"{where}: slice {Path(ds.filename).name} has no valid {', '.join(missing)}; "
                                "hyperseg needs the patient geometry: export the series again from the scanner "
                                "or PACS (not as secondary captures)")
        iops.append(iop)
        ipps.append(ipp)
        spacings.append(ps)
        sizes.add((int(ds.get("Rows", 0)), int(ds.get("Columns", 0))))
    iops_a = np.array(iops)
    if np.abs(iops_a - iops_a[0]).max() > ORIENTATION_TOL:
        kinds = len({tuple(np.round(o, 3)) for o in iops})
        raise _volume_error(f"{where}: mixes {kinds} slice orientations (ImageOrientationPatient); "
                            "a volume has one: split the series (e.g. a localiser's three planes) or export "
                            "each orientation as its own series")
    if len(sizes) > 1:
        raise _volume_error(f"{where}: slices of different sizes {sorted(sizes)} (rows, columns); "
                            "export one matrix size per series")
    spacings_a = np.array(spacings)
    if np.abs(spacings_a - spacings_a[0]).max() > SPACING_TOL_MM:
        raise _volume_error(f"{where}: slices with different pixel spacings; resample the series to one")
    row_cos, col_cos = iops_a[0, :3], iops_a[0, 3:]
    normal = np.cross(col_cos, row_cos)  # nibabel.nicom's slice normal: (c, r, n) is right-handed
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise _volume_error(f"{where}: ImageOrientationPatient is not two orthogonal unit vectors; "
                            "fix the header or export the series again")
    positions = np.array(ipps)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    name = lambda i: Path(headers[order[i]].filename).name  # noqa: E731
    if (gaps < SPACING_TOL_MM).any():
        i = int(np.argmax(gaps < SPACING_TOL_MM))
        raise _volume_error(f"{where}: two slices at one position ({along[order[i]]:.3f} mm along the normal: "
                            f"{name(i)} and {name(i + 1)}); the series holds several volumes (echoes, phases, "
                            "repeats): split it into one series per volume")
    step = float(np.median(gaps))
    tol = SPACING_TOL_MM + SPACING_TOL_REL * step
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if bad.size:
        i = int(bad[0])
        multiple = gaps[i] / step
        if round(multiple) >= 2 and abs(multiple - round(multiple)) * step <= tol:
            raise _volume_error(f"{where}: {round(multiple) - 1} slice(s) missing between {name(i)} and "
                                f"{name(i + 1)} (a gap of {gaps[i]:.3f} mm where the spacing is {step:.3f} mm); "
                                "copy the whole series from the scanner or PACS")
        raise _volume_error(f"{where}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm along the "
                            f"normal, first between {name(i)} and {name(i + 1)}); resample the series onto an "
                            "even grid (e.g. dcm2niix, then hyperseg on the NIfTI)")
    sorted_pos = positions[order]
    slice_step = (sorted_pos[-1] - sorted_pos[0]) / (n - 1)
    off = np.abs(sorted_pos - (sorted_pos[0] + np.arange(n)[:, None] * slice_step)).max()
    if off > tol:
        raise _volume_error(f"{where}: slice positions do not lie on a straight line (off by {off:.3f} mm); "
                            "export the series again")
    dr, dc = (float(v) for v in spacings_a[0])
    lps = np.eye(4)
    lps[:3, 0] = col_cos * dr  # moving down one row follows the column direction
    lps[:3, 1] = row_cos * dc  # moving right one column follows the row direction
    lps[:3, 2] = slice_step
    lps[:3, 3] = sorted_pos[0]
    return SeriesGeometry(order=order, affine=LPS_TO_RAS @ lps, spacing=(dr, dc, float(np.linalg.norm(slice_step))))


# ----------------------------------------------------------------------------- reading
def describe(folder: Path, headers: list) -> str:
    """``"{folder}: series N (description)"`` from the first header."""
    ds = headers[0]
    s = Series(folder, str(ds.get("SeriesInstanceUID", "") or ""), str(ds.get("SeriesNumber", "") or ""),
               str(ds.get("SeriesDescription", "") or "").strip())
    return f"{folder}: {s.label()}"


def _pixels(ds, where: str) -> np.ndarray:
    """The stored slice ``(rows, columns)`` times ``RescaleSlope`` plus ``RescaleIntercept``, float32."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - missing decoders, truncated files: one user problem
        msg = " ".join(str(err).split())[:200] or type(err).__name__
        raise _volume_error(f"{where}: cannot decode the pixels of {Path(ds.filename).name} ({msg}); "
                            "install the decoder pydicom names (e.g. pylibjpeg) or export the series "
                            "uncompressed") from None
    if data.ndim != 2:
        raise _volume_error(f"{where}: {Path(ds.filename).name} holds {data.shape} pixels, not one grey slice "
                            "(enhanced multi-frame or colour DICOM); convert it with dcm2niix and segment the NIfTI")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return data.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_series(files: list[Path]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], Any]:
    """Read the slice files of one series: data float32 ``(1, rows, columns, slices)``, the RAS+ affine
    ``(4, 4)``, the voxel size in mm and the first sorted slice's header (without pixels)."""
    pydicom = _need_pydicom()
    files = [Path(f) for f in files]
    folder = files[0].parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True, force=True) for f in files]
    where = describe(folder, headers)
    for ds in headers:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise _volume_error(f"{where}: {Path(ds.filename).name} is a multi-frame file ({frames} frames); "
                                "convert it with dcm2niix and segment the NIfTI")
    geom = series_geometry(headers, where)
    slices = []
    for i in geom.order:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(files[i]), force=True)
        slices.append(_pixels(ds, where))
    data = np.stack(slices, axis=-1)[None]
    return data, geom.affine, geom.spacing, headers[int(geom.order[0])]


def nifti_header(affine: np.ndarray):
    """A NIfTI-1 header for label maps of a series: qform and sform both the affine, code 1 (scanner
    anatomical, as dcm2niix writes them), units mm."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units(xyz="mm")
    return header


__all__ = ["DICOM_SUFFIX", "LPS_TO_RAS", "Series", "SeriesGeometry", "find_series", "is_dicom_file",
           "nifti_header", "read_series", "series_case_names", "series_geometry"]
