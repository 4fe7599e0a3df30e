"""Readers and writers: every format keeps its geometry, every bad input gives a VolumeError."""
import gzip
import re

import mrcfile
import nibabel as nib
import numpy as np
import pytest
import tifffile

from hyperseg.data.io import (
    Case,
    Volume,
    VolumeError,
    case_name,
    find_cases,
    find_volumes,
    output_suffix,
    read_case,
    read_labels,
    read_volume,
    write_label_map,
)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def save_nii(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_nifti_label_map_keeps_geometry(tmp_path):
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10, -3, 4]
    save_nii(tmp_path / "a.nii.gz", rand(6, 5, 4), affine)
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.array.shape == (1, 6, 5, 4) and vol.case == "a" and vol.fmt == ".nii.gz"
    assert vol.spacing == pytest.approx((0.5, 0.7, 2.0))
    labels = np.arange(120).reshape(6, 5, 4) % 3
    out = write_label_map(tmp_path / "a_k3.nii.gz", labels, vol)
    img = nib.load(str(out))
    assert np.allclose(img.affine, affine) and img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj), labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_4d_nifti_has_channels_on_its_last_axis(tmp_path):
    data = rand(6, 5, 4, 3)
    save_nii(tmp_path / "m.nii", data)
    vol = read_volume(tmp_path / "m.nii")
    assert vol.array.shape == (3, 6, 5, 4)
    assert np.array_equal(vol.array[2], data[..., 2])
    out = write_label_map(tmp_path / "m_k2.nii", np.zeros((6, 5, 4), int), vol)
    assert nib.load(str(out)).shape == (6, 5, 4)


def test_npy_round_trip_and_listing(tmp_path):
    np.save(tmp_path / "b.npy", rand(4, 4, 4))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_volumes(tmp_path)] == ["b.npy"]
    vol = read_volume(tmp_path / "b.npy")
    assert vol.spacing == (1.0, 1.0, 1.0)
    write_label_map(tmp_path / "b_k2.npy", np.zeros((4, 4, 4), int), vol)
    assert np.load(tmp_path / "b_k2.npy").dtype == np.uint8


def test_tiff_is_zyx_with_imagej_voxel_size(tmp_path):
    data = rand(5, 4, 3)  # Z, Y, X
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=True, photometric="minisblack", resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    vol = read_volume(tmp_path / "t.tif")
    assert vol.array.shape == (1, 5, 4, 3) and np.array_equal(vol.array[0], data)
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.25)) and vol.fmt == ".tif"
    labels = (np.arange(60).reshape(5, 4, 3) % 4).astype(np.uint8)
    write_label_map(tmp_path / "t_k4.tif", labels, vol)
    back = read_volume(tmp_path / "t_k4.tif")
    assert np.array_equal(back.array[0], labels) and back.spacing == pytest.approx(vol.spacing)


def test_ome_tiff_voxel_size_and_channel_axis(tmp_path):
    tifffile.imwrite(tmp_path / "o.ome.tif", rand(5, 4, 3), ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.2})
    vol = read_volume(tmp_path / "o.ome.tif")
    assert vol.spacing == pytest.approx((1.2, 0.4, 0.3)) and vol.case == "o.ome"
    data = rand(5, 2, 4, 3)  # ImageJ hyperstack Z, C, Y, X
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    vol = read_volume(tmp_path / "h.tif")
    assert vol.array.shape == (2, 5, 4, 3) and np.array_equal(vol.array[1], data[:, 1])
    tifffile.imwrite(tmp_path / "rgb.tif", (rand(6, 5, 3) * 255).astype(np.uint8), photometric="rgb")
    with pytest.raises(VolumeError, match="rgb.tif: is a 2D image with 3 colour channels"):
        read_volume(tmp_path / "rgb.tif")


def test_mrc_keeps_voxel_size_and_origin(tmp_path):
    data = rand(5, 4, 3)  # MRC stores Z, Y, X
    with mrcfile.new(str(tmp_path / "e.rec")) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (1.0, 2.0, 3.0)  # x, y, z
        mrc.header.origin = (7.0, 8.0, 9.0)
    vol = read_volume(tmp_path / "e.rec")
    assert vol.array.shape == (1, 5, 4, 3) and vol.spacing == pytest.approx((3.0, 2.0, 1.0))
    assert output_suffix(vol) == ".rec"
    labels = np.arange(60).reshape(5, 4, 3) % 2
    write_label_map(tmp_path / "e_k2.rec", labels, vol)
    with mrcfile.open(str(tmp_path / "e_k2.rec")) as mrc:
        assert np.array_equal(mrc.data, labels)
        assert tuple(mrc.voxel_size.item()) == pytest.approx((1.0, 2.0, 3.0))
        assert tuple(mrc.header.origin.item()) == pytest.approx((7.0, 8.0, 9.0))


def test_output_format_override_carries_the_voxel_size(tmp_path):
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    save_nii(tmp_path / "a.nii.gz", rand(6, 5, 4), affine)
    vol = read_volume(tmp_path / "a.nii.gz")
    assert output_suffix(vol) == ".nii.gz"
    assert output_suffix(vol, "tif") == output_suffix(vol, ".tif") == ".tif"
    with pytest.raises(ValueError, match="unknown output format"):
        output_suffix(vol, "png")
    write_label_map(tmp_path / "a_k2.mrc", np.zeros((6, 5, 4), int), vol)
    assert read_volume_spacing(tmp_path / "a_k2.mrc") == pytest.approx((0.5, 0.7, 2.0))
    plain = Volume(array=rand(1, 6, 5, 4), spacing=(3.0, 1.0, 1.0))
    out = write_label_map(tmp_path / "p.nii.gz", np.zeros((6, 5, 4), int), plain)
    assert np.allclose(nib.load(str(out)).affine, np.diag([3.0, 1.0, 1.0, 1.0]))


def read_volume_spacing(path):
    with mrcfile.open(str(path)) as mrc:
        vs = mrc.voxel_size
        return (float(vs.z), float(vs.y), float(vs.x))


def test_nnunet_channels_are_grouped_by_case(tmp_path):
    for case in ("b", "a"):
        for c in range(3):
            save_nii(tmp_path / f"{case}_{c:04d}.nii.gz", rand(6, 5, 4, seed=c) + c)
    save_nii(tmp_path / "single.nii.gz", rand(6, 5, 4))
    (tmp_path / "labels").mkdir()
    save_nii(tmp_path / "labels" / "a.nii.gz", np.zeros((6, 5, 4), np.uint8))
    save_nii(tmp_path / ".hidden.nii.gz", rand(6, 5, 4))
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["a", "b", "single"]
    assert [f.name for f in cases[0].files] == ["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"]
    vol = read_case(cases[0])
    assert vol.array.shape == (3, 6, 5, 4) and vol.case == "a"
    assert np.allclose(vol.array[2], rand(6, 5, 4, seed=2) + 2)
    assert find_cases(tmp_path / "single.nii.gz") == [Case("single", [tmp_path / "single.nii.gz"])]


def test_missing_channel_and_mismatched_shapes_name_the_file(tmp_path):
    save_nii(tmp_path / "a_0000.nii.gz", rand(6, 5, 4))
    save_nii(tmp_path / "a_0002.nii.gz", rand(6, 5, 4))
    save_nii(tmp_path / "b_0000.nii.gz", rand(6, 5, 4))
    save_nii(tmp_path / "b_0001.nii.gz", rand(6, 5, 5))
    a, b = find_cases(tmp_path)  # a folder with bad cases still lists them: each fails on its own
    with pytest.raises(VolumeError, match=r"a_0001\.nii\.gz: channel 1 of case a is missing"):
        read_case(a)
    with pytest.raises(VolumeError, match=r"b_0001\.nii\.gz: channel shape \(6, 5, 5\) differs"):
        read_case(b)


def test_clear_errors(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(VolumeError, match="unknown volume format"):
        find_volumes(tmp_path / "x.txt")
    with pytest.raises(VolumeError, match=r"x\.txt: unknown volume format"):
        read_volume(tmp_path / "x.txt")
    np.save(tmp_path / "flat.npy", rand(4, 4))
    with pytest.raises(VolumeError, match="flat.npy: expected a 3D volume"):
        read_volume(tmp_path / "flat.npy")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(VolumeError, match="broken.nii.gz: cannot be read"):
        read_volume(tmp_path / "broken.nii.gz")
    assert case_name("dir/case007.nii.gz") == "case007"
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_cases(tmp_path / "nowhere")


def test_truncated_files_of_every_format(tmp_path):
    data = rand(8, 8, 8)
    save_nii(tmp_path / "a.nii.gz", data)
    save_nii(tmp_path / "a.nii", data)
    np.save(tmp_path / "a.npy", data)
    tifffile.imwrite(tmp_path / "a.tif", data)
    with mrcfile.new(str(tmp_path / "a.mrc")) as mrc:
        mrc.set_data(data)
    for f in sorted(tmp_path.iterdir()):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        # an uncompressed file whose header survived is measured against it: its voxel data are cut short
        problem = "is truncated: the header promises 8 x 8 x 8 voxels of float32 (512 voxels, 2,048 bytes)" \
            if f.suffix in (".nii", ".npy", ".mrc") else "cannot be read"
        with pytest.raises(VolumeError, match=re.escape(f"{f.name}: {problem}")):
            read_volume(f)


def test_bad_values(tmp_path):
    data = rand(5, 5, 5)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    np.save(tmp_path / "nan.npy", data)
    with pytest.raises(VolumeError, match=r"nan\.npy: has 2 NaN or Inf voxels"):
        read_volume(tmp_path / "nan.npy")
    filled = read_volume(tmp_path / "nan.npy", nan_policy="fill").array
    finite = data[np.isfinite(data)]
    assert np.isfinite(filled).all() and filled[0, 1, 2, 3] == pytest.approx(np.median(finite))
    np.save(tmp_path / "const.npy", np.full((4, 4, 4), 3.0))
    with pytest.raises(VolumeError, match="const.npy: is constant.*nothing to segment"):
        read_volume(tmp_path / "const.npy")
    np.save(tmp_path / "cplx.npy", rand(4, 4, 4).astype(np.complex64))
    with pytest.raises(VolumeError, match="complex"):
        read_volume(tmp_path / "cplx.npy")
    np.save(tmp_path / "huge.npy", np.full((4, 4, 4), 1e300) * rand(4, 4, 4))
    with pytest.raises(VolumeError, match="too large for float32"):
        read_volume(tmp_path / "huge.npy")
    with pytest.raises(ValueError, match="nan_policy"):
        read_volume(tmp_path / "nan.npy", nan_policy="ignore")


def test_constant_label_maps_are_still_readable(tmp_path):
    save_nii(tmp_path / "lab.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert read_labels(tmp_path / "lab.nii.gz").sum() == 0


def test_gzip_member_of_garbage_is_an_error(tmp_path):
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(VolumeError, match="g.nii.gz"):
        read_volume(tmp_path / "g.nii.gz")


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from hyperseg.utils import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
