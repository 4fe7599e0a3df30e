import nibabel as nib
import numpy as np
import pytest

from hyperseg.data.io import case_name, find_volumes, read_volume, write_label_map


def test_nifti_label_map_keeps_geometry(tmp_path):
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10, -3, 4]
    nib.save(nib.Nifti1Image(np.random.rand(6, 5, 4).astype(np.float32), affine), str(tmp_path / "a.nii.gz"))
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.array.shape == (1, 6, 5, 4) and vol.case == "a"
    labels = np.arange(120).reshape(6, 5, 4) % 3
    out = write_label_map(tmp_path / "a_k3.nii.gz", labels, vol)
    img = nib.load(str(out))
    assert np.allclose(img.affine, affine) and img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj), labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_npy_round_trip_and_listing(tmp_path):
    np.save(tmp_path / "b.npy", np.ones((4, 4, 4), np.float32))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_volumes(tmp_path)] == ["b.npy"]
    vol = read_volume(tmp_path / "b.npy")
    write_label_map(tmp_path / "b_k2.npy", np.zeros((4, 4, 4), int), vol)
    assert np.load(tmp_path / "b_k2.npy").dtype == np.uint8


def test_clear_errors(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown volume format"):
        find_volumes(tmp_path / "x.txt")
    np.save(tmp_path / "flat.npy", np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="3D"):
        read_volume(tmp_path / "flat.npy")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        read_volume(tmp_path / "broken.nii.gz")
    assert case_name("dir/case007.nii.gz") == "case007"
