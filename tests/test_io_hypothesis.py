"""Property: whatever a file holds, the readers return a valid volume or raise VolumeError, nothing else."""
import warnings

import nibabel as nib
import numpy as np
import tifffile
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from hyperseg.data.io import Case, VolumeError, read_case, read_volume

DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64,
          np.float16, np.float32, np.float64, np.complex64]
SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def volumes(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=5))
    elements = None
    if dtype.kind == "f":
        info = np.finfo(dtype)
        special = [np.nan, np.inf, -np.inf, float(info.max), -float(info.max), float(info.tiny), 0.0, 1.0]
        elements = st.one_of(st.floats(width=8 * dtype.itemsize), st.sampled_from(special))
    elif dtype.kind == "c":
        elements = st.complex_numbers(allow_nan=True, allow_infinity=True, width=64)
    return draw(arrays(dtype, shape, elements=elements))


def check(read):
    """Run a reader: it must return a valid float32 finite (C, D, H, W) volume or raise VolumeError."""
    try:
        vol = read()
    except VolumeError as err:
        assert "\n" not in str(err) and str(err)
        return None
    a = vol.array
    assert a.dtype == np.float32 and a.ndim == 4 and a.size > 0 and np.isfinite(a).all()
    assert a.max() > a.min()  # constant volumes are refused
    assert len(vol.spacing) == 3 and all(s > 0 for s in vol.spacing) and vol.affine.shape == (4, 4)
    return vol


def write_or_reject(write):
    """Write with the third-party library; inputs it refuses to write are not the reader's business."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write()
    except Exception:  # noqa: BLE001 -- any refusal of the writer
        reject()


@SETTINGS
@given(data=volumes(), policy=st.sampled_from(["error", "fill"]))
def test_npy_files(tmp_path_factory, data, policy):
    path = tmp_path_factory.mktemp("npy") / "v.npy"
    np.save(path, data)
    vol = check(lambda: read_volume(path, nan_policy=policy))
    if vol is not None and data.ndim == 3 and policy == "error":
        assert np.array_equal(vol.array[0], data.astype(np.float32))


@SETTINGS
@given(data=volumes(), gz=st.booleans(), policy=st.sampled_from(["error", "fill"]))
def test_nifti_files(tmp_path_factory, data, gz, policy):
    path = tmp_path_factory.mktemp("nii") / ("v.nii.gz" if gz else "v.nii")
    write_or_reject(lambda: nib.save(nib.Nifti1Image(data, np.eye(4), dtype=data.dtype), str(path)))
    check(lambda: read_volume(path, nan_policy=policy))


@SETTINGS
@given(data=volumes(), imagej=st.booleans())
def test_tiff_files(tmp_path_factory, data, imagej):
    path = tmp_path_factory.mktemp("tif") / "v.tif"
    write_or_reject(lambda: tifffile.imwrite(path, data, imagej=imagej, photometric="minisblack"))
    check(lambda: read_volume(path))


@SETTINGS
@given(channels=st.lists(volumes(), min_size=1, max_size=3), cut=st.floats(0.0, 1.0))
def test_nnunet_cases_and_truncated_files(tmp_path_factory, channels, cut):
    folder = tmp_path_factory.mktemp("case")
    files = [folder / f"c_{i:04d}.npy" for i in range(len(channels))]
    for f, data in zip(files, channels):
        np.save(f, data)
    check(lambda: read_case(Case("c", files)))
    blob = files[0].read_bytes()
    files[0].write_bytes(blob[: int(cut * len(blob))])
    check(lambda: read_case(Case("c", files)))
