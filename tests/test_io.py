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
    top = np.finfo(np.float32).max  # the median of [0, 0, top, top, top, top] averages top and top
    np.save(tmp_path / "top.npy", np.array([0, 0, top, top, top, top, np.nan, np.nan], np.float32).reshape(2, 2, 2))
    assert read_volume(tmp_path / "top.npy", nan_policy="fill").array[0, 1, 1, 1] == top  # no overflow to inf


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


# ---------------------------------------------------------------------------
# OME-TIFF label maps: physical voxel size with its unit
# ---------------------------------------------------------------------------

def ome_pixels(path):
    """The ``Pixels`` attributes of an OME-TIFF, as tifffile reads them."""
    import xml.etree.ElementTree as ET

    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        pixels = [el for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.endswith("Pixels")]
    return pixels[0].attrib


def source_volume(tmp_path, kind):
    """An input volume of each format with voxel size (z, y, x) = (2.0, 0.5, 0.25) and its unit."""
    data = rand(5, 4, 3)
    if kind == "nifti mm":
        img = nib.Nifti1Image(data, np.diag([2.0, 0.5, 0.25, 1.0]))
        img.header.set_xyzt_units(xyz="mm")
        nib.save(img, str(tmp_path / "s.nii.gz"))
        return read_volume(tmp_path / "s.nii.gz"), "mm"
    if kind == "imagej um":
        tifffile.imwrite(tmp_path / "s.tif", data, imagej=True, photometric="minisblack",
                         resolution=(1 / 0.25, 1 / 0.5), metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
        return read_volume(tmp_path / "s.tif"), "µm"
    if kind == "mrc":
        with mrcfile.new(str(tmp_path / "s.mrc")) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = (0.25, 0.5, 2.0)
        return read_volume(tmp_path / "s.mrc"), "Å"
    np.save(tmp_path / "s.npy", data)
    return Volume(array=read_volume(tmp_path / "s.npy").array, spacing=(2.0, 0.5, 0.25)), ""


@pytest.mark.parametrize("kind", ["nifti mm", "imagej um", "mrc", "npy"])
def test_tiff_label_maps_carry_the_physical_voxel_size_and_its_unit(tmp_path, kind):
    vol, unit = source_volume(tmp_path, kind)
    assert vol.unit == unit
    labels = (np.arange(60).reshape(5, 4, 3) % 3).astype(np.uint8)
    out = write_label_map(tmp_path / "s_k3.tif", labels, vol)
    attrs = ome_pixels(out)
    assert {a: float(attrs[f"PhysicalSize{a}"]) for a in "XYZ"} == {"X": 0.25, "Y": 0.5, "Z": 2.0}
    assert {attrs[f"PhysicalSize{a}Unit"] for a in "XYZ"} == {unit or "pixel"}  # no unit claimed when unknown
    assert np.array_equal(tifffile.imread(out), labels)
    back = read_volume(out)
    assert back.spacing == pytest.approx((2.0, 0.5, 0.25)) and back.unit == unit
    assert np.array_equal(back.array[0], labels)


def test_ome_axes_in_different_units_are_read_in_the_unit_of_x(tmp_path):
    tifffile.imwrite(tmp_path / "o.ome.tif", rand(5, 4, 3), ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})  # Y and Z in OME's default, µm
    vol = read_volume(tmp_path / "o.ome.tif")
    assert vol.unit == "nm" and vol.spacing == pytest.approx((2000.0, 500.0, 500.0))


def test_mrc_label_maps_hold_the_voxel_size_in_angstrom(tmp_path):
    vol, _ = source_volume(tmp_path, "imagej um")
    write_label_map(tmp_path / "s_k2.mrc", np.zeros((5, 4, 3), int), vol)
    assert read_volume_spacing(tmp_path / "s_k2.mrc") == pytest.approx((2e4, 5e3, 2.5e3))  # 1 µm = 1e4 Å


# ---------------------------------------------------------------------------
# MRC axis order (mapc, mapr, maps) and origin
# ---------------------------------------------------------------------------

AXIS_ORDERS = [(1, 2, 3), (1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2), (3, 2, 1)]


def write_permuted_mrc(path, zyx, order, voxel_xyz=(0.5, 2.0, 3.0), start_crs=(0, 0, 0), origin_xyz=(0, 0, 0)):
    """Store the ``(Z, Y, X)`` array ``zyx`` with columns, rows, sections along physical axes ``order``.

    Written by hand: axis ``a`` (1 = X, 2 = Y, 3 = Z) is ``zyx``'s axis
    ``3 - a``, and the stored array is ``(sections, rows, columns)``.
    """
    mapc, mapr, maps = order
    stored = np.transpose(zyx, (3 - maps, 3 - mapr, 3 - mapc))
    size_xyz = (zyx.shape[2], zyx.shape[1], zyx.shape[0])
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(np.ascontiguousarray(stored))
        h = mrc.header
        h.mapc, h.mapr, h.maps = order
        h.mx, h.my, h.mz = size_xyz
        h.cella = tuple(v * n for v, n in zip(voxel_xyz, size_xyz))
        h.nxstart, h.nystart, h.nzstart = start_crs
        h.origin = origin_xyz
    return path


@pytest.mark.parametrize("order", AXIS_ORDERS, ids=lambda o: "".join(map(str, o)))
def test_mrc_is_read_as_zyx_whatever_its_axis_order(tmp_path, order):
    zyx = rand(5, 4, 3)
    start_crs = (10, 20, 30)  # for columns, rows, sections
    path = write_permuted_mrc(tmp_path / "p.mrc", zyx, order, start_crs=start_crs)
    vol = read_volume(path)
    assert vol.array.shape == (1, 5, 4, 3) and np.array_equal(vol.array[0], zyx)
    assert vol.spacing == pytest.approx((3.0, 2.0, 0.5)) and vol.unit == "Å"
    start = {axis: s for axis, s in zip(order, start_crs)}  # physical axis -> start index
    assert vol.affine[:3, 3] == pytest.approx((start[3] * 3.0, start[2] * 2.0, start[1] * 0.5))
    labels = (zyx * 4).astype(int)
    write_label_map(tmp_path / "p_k4.mrc", labels, vol)
    with mrcfile.open(str(tmp_path / "p_k4.mrc")) as mrc:  # written in the standard order, starts along X, Y, Z
        h = mrc.header
        assert (int(h.mapc), int(h.mapr), int(h.maps)) == (1, 2, 3) and np.array_equal(mrc.data, labels)
        assert (int(h.nxstart), int(h.nystart), int(h.nzstart)) == (start[1], start[2], start[3])
    back = read_volume(tmp_path / "p_k4.mrc")
    assert np.allclose(back.affine, vol.affine) and back.spacing == pytest.approx(vol.spacing)


def test_mrc_header_origin_places_voxel_zero_and_is_kept(tmp_path):
    zyx = rand(5, 4, 3)
    path = write_permuted_mrc(tmp_path / "o.mrc", zyx, (3, 1, 2), start_crs=(1, 2, 3), origin_xyz=(7.0, 8.0, 9.0))
    vol = read_volume(path)
    assert np.array_equal(vol.array[0], zyx)
    assert vol.affine[:3, 3] == pytest.approx((9.0, 8.0, 7.0))  # the origin wins over nstart; (z, y, x)
    write_label_map(tmp_path / "o_k2.mrc", np.zeros((5, 4, 3), int), vol)
    with mrcfile.open(str(tmp_path / "o_k2.mrc")) as mrc:
        assert tuple(mrc.header.origin.item()) == pytest.approx((7.0, 8.0, 9.0))
    out = write_label_map(tmp_path / "o_k2.nii.gz", np.zeros((5, 4, 3), int), vol)
    assert np.allclose(nib.load(str(out)).affine, vol.affine)


def test_mrc_axis_order_that_is_no_permutation_is_refused(tmp_path):
    path = write_permuted_mrc(tmp_path / "bad.mrc", rand(5, 4, 3), (1, 2, 3))
    with mrcfile.open(str(path), mode="r+", permissive=True) as mrc:
        mrc.header.mapr = 1
    with pytest.raises(VolumeError, match=re.escape("bad.mrc: the header's axis order (mapc, mapr, maps) = "
                                                    "(1, 1, 3) is not a permutation")):
        read_volume(path)


# ---------------------------------------------------------------------------
# headers that promise more than memory or the file holds
# ---------------------------------------------------------------------------

def promising_file(path, shape, dtype=np.float32):
    """A 1 KB file whose header promises ``shape`` voxels of ``dtype`` (``.nii``, ``.nii.gz``, ``.npy``, ``.mrc``)."""
    dtype = np.dtype(dtype)
    if path.name.endswith((".nii", ".nii.gz")):
        h = nib.Nifti1Header()
        h.set_data_shape(shape)
        h.set_data_dtype(dtype)
        h["vox_offset"] = 352
        head = h.binaryblock + bytes(4)
    elif path.suffix == ".npy":
        import io

        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": tuple(shape)})
        head = buf.getvalue()
    else:
        with mrcfile.new(str(path), overwrite=True) as mrc:
            mrc.set_data(np.zeros((2, 2, 2), dtype))
        head = bytearray(path.read_bytes()[:1024])
        head[0:12] = np.array(shape[::-1], "<i4").tobytes()  # nx, ny, nz
        head = bytes(head)
    raw = head + bytes(1024 - len(head))
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def assert_names_the_size(message, path, voxels, nbytes):
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert f"{voxels:,} voxels" in message and f"{nbytes:,} bytes" in message, message


def test_a_header_promising_2048_cubed_float32_on_1_kb_is_refused_at_once(tmp_path):
    import time

    path = promising_file(tmp_path / "big.nii", (2048, 2048, 2048))
    assert path.stat().st_size == 1024
    start = time.perf_counter()
    with pytest.raises(VolumeError) as err:
        read_volume(path)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert_names_the_size(message, path, 2048 ** 3, 4 * 2048 ** 3)
    # which check speaks first depends on this machine's memory: both say what to do
    assert ("too large to read into memory" in message and "crop" in message and "downsample" in message) \
        or ("is truncated" in message and "the file holds 672 of their" in message), message


def test_a_header_promising_more_than_any_memory_says_how_much_it_needs(tmp_path):
    n = 32767  # the largest NIfTI-1 dimension
    path = promising_file(tmp_path / "vast.nii.gz", (n, n, n), np.float64)
    with pytest.raises(VolumeError) as err:
        read_volume(path)
    message = str(err.value)
    assert_names_the_size(message, path, n ** 3, 8 * n ** 3)
    assert f"need {12 * n ** 3:,} bytes" in message  # float64 as read plus its float32 copy
    assert "too large to read into memory" in message and "crop" in message and "downsample" in message


@pytest.mark.parametrize("name", ["c.nii", "c.nii.gz", "c.npy", "c.mrc"])
def test_the_size_is_checked_before_any_voxel_is_allocated(tmp_path, monkeypatch, name):
    import tracemalloc

    import hyperseg.data.io as io_module

    path = promising_file(tmp_path / name, (256, 256, 256))  # 64 MiB promised
    monkeypatch.setattr(io_module, "available_memory", lambda: 2 ** 20)  # a machine with 1 MiB free
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError) as err:
            read_labels(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 22, peak  # nothing near the promised 64 MiB was allocated
    assert_names_the_size(str(err.value), path, 256 ** 3, 4 * 256 ** 3)
    assert "too large to read into memory" in str(err.value) and "1.0 GiB" not in str(err.value)
    if name != "c.nii.gz":  # with memory to spare, an uncompressed file is measured against its header
        monkeypatch.setattr(io_module, "available_memory", lambda: 2 ** 50)
        with pytest.raises(VolumeError, match=re.escape(f"{name}: is truncated: the header promises 256 x 256 x "
                                                        "256 voxels of float32 (16,777,216 voxels, 67,108,864 "
                                                        "bytes)")):
            read_labels(path)


# ---------------------------------------------------------------------------
# every file is data: no reader unpickles, garbage gets one line
# ---------------------------------------------------------------------------

class _RunsOnUnpickling:
    """An object whose unpickling runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def pickled_command_npy(path, marker):
    """A ``.npy`` of Python objects whose loading with pickle allowed would create ``marker``."""
    np.save(path, np.array([_RunsOnUnpickling(marker)], dtype=object), allow_pickle=True)
    return path


def test_the_crafted_npy_does_run_code_when_unpickled(tmp_path):
    """The crafted file of the tests below is a real attack: NumPy with pickle allowed runs it."""
    path = pickled_command_npy(tmp_path / "evil.npy", tmp_path / "MARKER")
    np.load(path, allow_pickle=True)
    assert (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("reader", [read_volume, read_labels], ids=["volume", "label map"])
def test_a_pickled_npy_is_refused_unread(tmp_path, reader):
    marker = tmp_path / "MARKER"
    path = pickled_command_npy(tmp_path / "evil.npy", marker)
    with pytest.raises(VolumeError) as err:
        reader(path)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: holds Python objects") and "numeric" in message


def garbage_file(path, seed=0):
    """4 KB of random bytes under a volume suffix."""
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    return path


@pytest.mark.parametrize("name", ["g.nii", "g.nii.gz", "g.tif", "g.mrc", "g.npy"])
@pytest.mark.parametrize("reader", [read_volume, read_labels], ids=["volume", "label map"])
def test_garbage_bytes_give_one_line_naming_the_file(tmp_path, name, reader):
    path = garbage_file(tmp_path / name)
    with pytest.raises(VolumeError) as err:
        reader(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: cannot be read as ") and len(message) < 400


def test_no_reader_can_unpickle():
    """Every ``np.load`` in the package passes ``allow_pickle=False``; the readers do not import pickle."""
    import ast
    from pathlib import Path

    import hyperseg

    root = Path(hyperseg.__file__).parent
    loads = 0
    for source in sorted(root.rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"):
                loads += 1
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("allow_pickle"), ast.Constant) and flags["allow_pickle"].value is False, \
                    f"{source}:{node.lineno}: np.load without allow_pickle=False"
        if source.relative_to(root).as_posix() in ("data/io.py", "evaluate.py"):
            imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                        for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not imported & {"pickle", "cPickle", "dill", "joblib", "torch"}, source
    assert loads >= 1  # the .npy reader is found


# ---------------------------------------------------------------------------
# the same files through `hyperseg segment`: exit 2, one line naming the file
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A model trained for 2 steps on two noisy boxes (see tests/conftest.py)."""
    from conftest import tiny_yaml

    from hyperseg.cli import main

    root = tmp_path_factory.mktemp("io_model")
    (root / "train").mkdir()
    for i in range(2):
        box = rand(16, 16, 16, seed=i)
        box[4:12, 4:12, 4:12] += 3
        np.save(root / "train" / f"t{i}.npy", box)
    (root / "tiny.yaml").write_text(tiny_yaml(levels="[2]"))
    assert main(["train", "-i", str(root / "train"), "-o", str(root / "run"), "--config", str(root / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    return root / "run"


def segment_errors(run, capsys, *args):
    """``hyperseg segment -m RUN ARGS -q``: its exit status and its stderr lines."""
    from hyperseg.cli import main

    capsys.readouterr()
    rc = main(["segment", "-m", str(run), "-q", *args])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line]


def test_segment_refuses_a_header_promising_2048_cubed_float32_at_once(tiny_run, tmp_path, capsys):
    import time

    big = promising_file(tmp_path / "big.nii", (2048, 2048, 2048))
    start = time.perf_counter()
    rc, lines = segment_errors(tiny_run, capsys, "-i", str(big), "-o", str(tmp_path / "out"))
    assert time.perf_counter() - start < 5
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"hyperseg: error: {big}: ")
    assert_names_the_size(lines[0].removeprefix("hyperseg: error: "), big, 2048 ** 3, 4 * 2048 ** 3)


BAD_FILES = ["pickled.npy", "garbage.nii", "garbage.nii.gz", "garbage.tif", "garbage.mrc"]


@pytest.mark.parametrize("name", BAD_FILES)
@pytest.mark.parametrize("role", ["volume", "mask"])
def test_segment_reads_every_file_as_data(tiny_run, tmp_path, capsys, name, role):
    marker = tmp_path / "MARKER"
    bad = pickled_command_npy(tmp_path / name, marker) if name.startswith("pickled") \
        else garbage_file(tmp_path / name)
    good = tmp_path / "good.npy"
    box = rand(12, 12, 12, seed=5)
    box[3:9, 3:9, 3:9] += 3
    np.save(good, box)
    args = ["-i", str(bad)] if role == "volume" else ["-i", str(good), "--mask", str(bad)]
    rc, lines = segment_errors(tiny_run, capsys, *args, "-o", str(tmp_path / "out"))
    assert rc == 2 and len(lines) == 1, lines
    problem = "holds Python objects" if name.startswith("pickled") else "cannot be read as"
    assert lines[0].startswith(f"hyperseg: error: {bad}: {problem}"), lines[0]
    assert not marker.exists()
