"""DICOM series in: slices sorted along their normal, the patient geometry kept, NIfTI out on the same grid.

Every series here is written by pydicom from a known volume ``(rows, columns, slices)`` and a known
geometry; file names are deliberately not in slice order, so only the positions can order the slices.
"""
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_yaml

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402

from hyperseg.cli import main  # noqa: E402
from hyperseg.data.dicom import LPS_TO_RAS, find_series, is_dicom_file  # noqa: E402
from hyperseg.data.io import VolumeError, find_cases, read_case  # noqa: E402

#: An oblique orientation: rows along r, columns along c (unit, orthogonal), turned about two axes.
_A, _B = np.deg2rad(20.0), np.deg2rad(-35.0)
ROW_COS = np.array([np.cos(_A), np.sin(_A), 0.0])
COL_COS = np.array([-np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), np.sin(_B)])
#: The slice normal of nibabel.nicom, ``c x r``: slices are stacked along it.
NORMAL = np.cross(COL_COS, ROW_COS)
PIXEL_SPACING = (0.7, 0.7)  # (row spacing, column spacing) in mm
SLICE_SPACING = 2.5
ORIGIN = np.array([-31.5, 12.25, 40.0])  # ImagePositionPatient of the first slice (LPS, mm)
SLOPE, INTERCEPT = 2.0, -100.0


def known_volume(rows=14, cols=11, slices=7, seed=0):
    """Stored values ``(rows, columns, slices)``: a bright box, noise, and a ramp along the slices,
    so that any reordering or transposition of the axes changes the array."""
    rng = np.random.default_rng(seed)
    v = rng.integers(100, 300, size=(rows, cols, slices)).astype(np.uint16)
    v[rows // 4: 3 * rows // 4, cols // 4: 3 * cols // 4, :] += 900
    v += (np.arange(slices) * 37).astype(np.uint16)[None, None, :]
    return v


def write_series(folder, volume, *, row_cos=ROW_COS, col_cos=COL_COS, origin=ORIGIN,
                 pixel_spacing=PIXEL_SPACING, positions=None, series_uid=None, number=3,
                 description="T1 oblique", names=None, orientations=None):
    """Write ``volume`` ``(rows, columns, slices)`` as one single-slice file per slice.

    ``positions``: slice offsets along ``c x r`` in mm (default ``k * SLICE_SPACING``);
    ``names``: file names per slice (default: reversed numbering, so that name order is not slice order);
    ``orientations``: per-slice ``(row_cos, col_cos)`` to break a series on purpose.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols, n = volume.shape
    positions = np.arange(n) * SLICE_SPACING if positions is None else np.asarray(positions, float)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    normal = np.cross(col_cos, row_cos)
    files = []
    for k in range(n):
        r, c = orientations[k] if orientations is not None else (row_cos, col_cos)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.PatientName, ds.PatientID = "Test^Phantom", "0"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*r, *c)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + positions[k] * normal]
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
        ds.SliceThickness = f"{SLICE_SPACING:g}"
        ds.SpacingBetweenSlices = f"{SLICE_SPACING:g}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{SLOPE:g}", f"{INTERCEPT:g}"
        ds.PixelData = np.ascontiguousarray(volume[:, :, k]).astype("<u2").tobytes()
        name = names[k] if names is not None else f"IM{n - k:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        files.append(folder / name)
    return files


def nibabel_affine(files):
    """The affine nibabel derives (``nibabel.nicom``) for the stack of ``files``, LPS -> RAS: the affine of
    the slice that comes first along nibabel's own slice normal (its voxel sizes from SpacingBetweenSlices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
        from nibabel.nicom import dicomwrappers

        wrappers = [dicomwrappers.wrapper_from_data(pydicom.dcmread(str(f))) for f in files]
        first = min(wrappers, key=lambda w: float(w.image_position @ w.slice_normal))
        return LPS_TO_RAS @ first.affine


@pytest.fixture
def oblique(tmp_path):
    volume = known_volume()
    files = write_series(tmp_path / "patient" / "t1_oblique", volume)
    return tmp_path / "patient" / "t1_oblique", volume, files


# ----------------------------------------------------------------------------- reading
def test_an_oblique_series_reads_as_rows_columns_slices_in_the_order_of_the_positions(oblique):
    folder, volume, files = oblique
    (case,) = find_cases(folder)
    assert case.name == "t1_oblique" and case.dicom
    vol = read_case(case)
    assert vol.array.shape == (1, *volume.shape)
    np.testing.assert_array_equal(vol.array[0], volume.astype(np.float32) * SLOPE + INTERCEPT)
    assert vol.spacing == pytest.approx((0.7, 0.7, 2.5), abs=1e-4)  # positions are stored to 0.1 µm
    assert vol.unit == "mm" and vol.fmt == ".dcm"


def test_the_affine_maps_every_slice_origin_to_its_image_position_in_ras(oblique):
    folder, volume, files = oblique
    vol = read_case(find_cases(folder)[0])
    for f in files:  # independent of nibabel: DICOM's own definition of each slice's first pixel
        ds = pydicom.dcmread(str(f))
        k = int(ds.InstanceNumber) - 1
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ras = vol.affine @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)
    # one row down moves 0.7 mm along the column direction, one column right 0.7 mm along the row direction
    np.testing.assert_allclose(vol.affine[:3, 0], COL_COS * 0.7 * [-1, -1, 1], atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, 1], ROW_COS * 0.7 * [-1, -1, 1], atol=1e-5)


def test_the_affine_equals_the_one_nibabel_derives_for_the_same_geometry(oblique):
    folder, volume, files = oblique
    vol = read_case(find_cases(folder)[0])
    np.testing.assert_allclose(vol.affine, nibabel_affine(files), atol=1e-4)


def test_slices_written_against_the_normal_are_stacked_along_it(tmp_path):
    volume = known_volume(slices=5)
    write_series(tmp_path / "down", volume, positions=-np.arange(5) * SLICE_SPACING)  # slice 0 is the highest
    vol = read_case(find_cases(tmp_path / "down")[0])
    np.testing.assert_array_equal(vol.array[0], volume[:, :, ::-1] * SLOPE + INTERCEPT)
    np.testing.assert_allclose(vol.affine[:3, 3], (ORIGIN - 4 * SLICE_SPACING * NORMAL) * [-1, -1, 1], atol=1e-3)
    assert np.linalg.det(vol.affine[:3, :3]) == pytest.approx(0.7 * 0.7 * 2.5, rel=1e-3)  # right-handed


def test_files_without_the_dcm_suffix_are_found_by_their_dicom_marker(tmp_path):
    volume = known_volume(slices=4)
    files = write_series(tmp_path / "scan", volume, names=[f"{i}" for i in (3, 1, 0, 2)])
    (tmp_path / "scan" / "notes.txt").write_text("not an image")
    assert all(is_dicom_file(f) for f in files) and not is_dicom_file(tmp_path / "scan" / "notes.txt")
    np.testing.assert_array_equal(read_case(find_cases(tmp_path / "scan")[0]).array[0],
                                  volume * SLOPE + INTERCEPT)


def test_a_folder_of_series_gives_one_case_per_series_named_after_its_folder(tmp_path):
    write_series(tmp_path / "study" / "t1", known_volume(seed=1), number=3)
    write_series(tmp_path / "study" / "t2", known_volume(seed=2), number=4)
    mixed = tmp_path / "study" / "mixed"
    write_series(mixed, known_volume(slices=3, seed=3), number=5, names=[f"a{i}.dcm" for i in range(3)])
    write_series(mixed, known_volume(slices=4, seed=4), number=6, names=[f"b{i}.dcm" for i in range(4)])
    cases = find_cases(tmp_path / "study")
    assert [c.name for c in cases] == ["mixed_s5", "mixed_s6", "t1", "t2"]
    assert [len(c.files) for c in cases] == [3, 4, 7, 7]
    # a single file stands for its series
    assert [c.name for c in find_cases(mixed / "b2.dcm")] == ["mixed_s6"]
    assert sorted(name for name, _ in find_series(tmp_path / "study")) == ["mixed_s5", "mixed_s6", "t1", "t2"]


# ----------------------------------------------------------------------------- bad series
def _one_line_error(folder):
    with pytest.raises(VolumeError) as info:
        read_case(find_cases(folder)[0])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{folder}: series 3 (T1 oblique): ")
    assert "; " in message  # the problem, then what to do
    return message


def test_a_series_with_two_orientations_is_refused_naming_the_series(tmp_path):
    other = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    orientations = [(ROW_COS, COL_COS)] * 4 + [other] * 2
    write_series(tmp_path / "loc", known_volume(slices=6), orientations=orientations)
    assert "mixes 2 slice orientations" in _one_line_error(tmp_path / "loc")


def test_a_series_with_a_missing_slice_is_refused(tmp_path):
    volume = known_volume(slices=6)
    positions = np.array([0, 1, 2, 4, 5, 6]) * SLICE_SPACING  # slice 3 never arrived
    write_series(tmp_path / "gap", volume, positions=positions)
    message = _one_line_error(tmp_path / "gap")
    assert "1 slice(s) missing" in message and "2.500 mm" in message


def test_an_unevenly_spaced_series_is_refused(tmp_path):
    positions = np.array([0.0, 2.5, 5.0, 6.5, 9.0, 11.5])
    write_series(tmp_path / "uneven", known_volume(slices=6), positions=positions)
    assert "uneven slice spacing (1.500 to 2.500 mm" in _one_line_error(tmp_path / "uneven")


def test_two_slices_at_one_position_are_refused(tmp_path):
    positions = np.array([0.0, 2.5, 2.5, 5.0])
    write_series(tmp_path / "echoes", known_volume(slices=4), positions=positions)
    assert "two slices at one position" in _one_line_error(tmp_path / "echoes")


def test_rounded_positions_are_still_an_even_series(tmp_path):
    positions = np.arange(6) * SLICE_SPACING + np.array([0, 0.004, -0.003, 0.002, 0, -0.004])
    write_series(tmp_path / "rounded", known_volume(slices=6), positions=positions)
    vol = read_case(find_cases(tmp_path / "rounded")[0])
    assert vol.spacing[2] == pytest.approx(2.5, abs=0.01)


# ----------------------------------------------------------------------------- segment end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("dicom_model")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20, 20)).astype(np.float32)
    a[5:15, 5:15, 5:15] += 4
    (root / "train").mkdir()
    np.save(root / "train" / "t0.npy", a)
    (root / "tiny.yaml").write_text(tiny_yaml(levels="[2, 3]"))
    assert main(["train", "-i", str(root / "train"), "-o", str(root / "run"), "--config", str(root / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    return root / "run"


def test_segment_reads_a_dicom_folder_and_writes_nifti_with_nibabels_affine(tmp_path, tiny_run, oblique):
    folder, volume, files = oblique
    out = tmp_path / "seg"
    assert main(["segment", "-m", str(tiny_run), "-i", str(folder.parent), "-o", str(out), "-q",
                 "--levels", "2", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["t1_oblique_k2.nii.gz", "t1_oblique_k3.nii.gz"]
    expected = nibabel_affine(files)
    for k in (2, 3):
        img = nib.load(out / f"t1_oblique_k{k}.nii.gz")
        assert img.shape == volume.shape  # rows, columns, slices: the series' own grid
        np.testing.assert_allclose(img.affine, expected, atol=1e-4)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        assert set(np.unique(np.asarray(img.dataobj))) <= set(range(k))


def test_segment_reports_a_bad_series_in_one_line_and_does_the_others(tmp_path, tiny_run, capsys):
    write_series(tmp_path / "study" / "good", known_volume())
    write_series(tmp_path / "study" / "gap", known_volume(slices=5), positions=np.array([0, 1, 3, 4, 5]) * 2.5)
    out = tmp_path / "seg"
    assert main(["segment", "-m", str(tiny_run), "-i", str(tmp_path / "study"), "-o", str(out), "-q",
                 "--levels", "2"]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "error" in x]
    assert line == [f"hyperseg: error: {tmp_path / 'study' / 'gap'}: series 3 (T1 oblique): 1 slice(s) missing "
                    f"between IM0004.dcm and IM0003.dcm (a gap of 5.000 mm where the spacing is 2.500 mm); "
                    "copy the whole series from the scanner or PACS"]
    assert sorted(p.name for p in out.iterdir()) == ["good_k2.nii.gz"]
