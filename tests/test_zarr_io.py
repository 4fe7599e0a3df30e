"""Zarr and OME-Zarr in (levels, axes, voxel size), NGFF label images out (layout, metadata, atomicity)."""
import json

import numpy as np
import pytest
import zarr

from hyperseg.data.io import find_cases, read_case
from hyperseg.data.zarr_io import (LabelsWriter, ZarrError, open_zarr, read_label_image, write_ome_zarr_image,
                                   write_ome_zarr_labels)


def ramp(shape):
    """A volume whose every voxel says where it is: ``v[d, h, w] = 10000 d + 100 h + w``."""
    d, h, w = np.indices(shape)
    return (10000 * d + 100 * h + w).astype(np.float32)


def hand_written_ome_zarr(path, data, axes, scale, translation=None, level_scale=None):
    """An NGFF 0.4 image as another tool writes it: one level, the metadata written by hand."""
    g = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    g.create_array("s0", shape=data.shape, chunks=data.shape, dtype=data.dtype)[...] = data
    transforms = [{"type": "scale", "scale": scale}]
    if translation is not None:
        transforms.append({"type": "translation", "translation": translation})
    ms = {"version": "0.4", "axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": transforms}]}
    if level_scale is not None:
        ms["coordinateTransformations"] = [{"type": "scale", "scale": level_scale}]
    g.attrs["multiscales"] = [ms]
    return path


def test_multiscale_levels_keep_axes_order_voxel_size_and_unit(tmp_path):
    vol = ramp((8, 10, 12))
    path = write_ome_zarr_image(tmp_path / "img.ome.zarr", vol, spacing=(2.0, 3.0, 4.0), unit="nm", chunks=(4, 5, 6),
                                n_levels=2)
    level0 = open_zarr(path)
    assert level0.array.shape == (1, 8, 10, 12)
    np.testing.assert_array_equal(np.asarray(level0.array[0]), vol)  # D, H, W as stored: no axis swapped
    assert level0.spacing == (2.0, 3.0, 4.0) and level0.unit == "nm" and level0.level == 0
    level1 = open_zarr(path, level=1)
    np.testing.assert_array_equal(np.asarray(level1.array[0]), vol[::2, ::2, ::2])
    assert level1.spacing == (4.0, 6.0, 8.0)
    with pytest.raises(ZarrError, match=r"img.ome.zarr: has 2 multiscale level\(s\) \(0..1\), not 2"):
        open_zarr(path, level=2)


def test_hand_written_metadata_channels_time_and_translation(tmp_path):
    data = np.stack([ramp((4, 5, 6)), -ramp((4, 5, 6))])[None]  # (t=1, c=2, z, y, x)
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    path = hand_written_ome_zarr(tmp_path / "cells.zarr", data, axes, [1, 1, 0.5, 0.25, 0.125],
                                 translation=[0, 0, 10, 20, 30], level_scale=[1, 1, 2, 2, 2])
    img = open_zarr(path)
    assert img.array.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(np.asarray(img.array), data[0])
    assert img.spacing == (1.0, 0.5, 0.25)  # dataset scale times the multiscale's
    assert img.origin == (20.0, 40.0, 60.0)  # the translation is scaled by the multiscale's scale
    assert img.unit == "µm"
    assert [a["name"] for a in img.axes] == ["z", "y", "x"]
    np.testing.assert_allclose(img.affine, [[1, 0, 0, 20], [0, 0.5, 0, 40], [0, 0, 0.25, 60], [0, 0, 0, 1]])


def test_axes_stored_x_first_are_read_in_stored_order(tmp_path):
    """Nothing is transposed: an image stored (x, y, z) is segmented on that grid, its voxel sizes in that order."""
    data = ramp((6, 5, 4))
    axes = [{"name": n, "type": "space"} for n in "xyz"]
    img = open_zarr(hand_written_ome_zarr(tmp_path / "xyz.ome.zarr", data, axes, [1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(img.array[0]), data)
    assert img.spacing == (1.0, 2.0, 3.0) and [a["name"] for a in img.axes] == ["x", "y", "z"]


def test_refused_inputs_are_named_in_one_line(tmp_path):
    data = np.zeros((2, 3, 4, 5), np.float32)
    axes = [{"name": "t", "type": "time"}] + [{"name": n, "type": "space"} for n in "zyx"]
    path = hand_written_ome_zarr(tmp_path / "movie.ome.zarr", data, axes, [1, 1, 1, 1])
    with pytest.raises(ZarrError, match=r"movie.ome.zarr: axis 't' \(time\) has 2 points"):
        open_zarr(path)
    flat = hand_written_ome_zarr(tmp_path / "flat.ome.zarr", np.zeros((3, 4), np.float32),
                                 [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}], [1, 1])
    with pytest.raises(ZarrError, match="flat.ome.zarr: has 2 spatial axes"):
        open_zarr(flat)
    g = zarr.open_group(store=str(tmp_path / "bare.zarr"), mode="w", zarr_format=2)
    g.create_array("raw", shape=(4, 4, 4), dtype="uint8")
    with pytest.raises(ZarrError, match=r"bare.zarr: a Zarr group without OME-Zarr 'multiscales'.*bare.zarr/raw"):
        open_zarr(tmp_path / "bare.zarr")


def test_plain_zarr_arrays_3d_and_4d(tmp_path):
    z3 = zarr.open_array(store=str(tmp_path / "vol.zarr"), mode="w", shape=(4, 5, 6), chunks=(2, 5, 6), dtype="uint16")
    z3[...] = ramp((4, 5, 6)).astype(np.uint16) % 60000
    img = open_zarr(tmp_path / "vol.zarr")
    assert img.array.shape == (1, 4, 5, 6) and img.spacing == (1.0, 1.0, 1.0) and not img.ngff
    z4 = zarr.open_array(store=str(tmp_path / "two.zarr"), mode="w", shape=(2, 4, 5, 6), dtype="float32", zarr_format=3)
    z4[...] = 1.0
    assert open_zarr(tmp_path / "two.zarr").array.shape == (2, 4, 5, 6)
    with pytest.raises(ZarrError, match="a plain Zarr array has one level"):
        open_zarr(tmp_path / "vol.zarr", level=1)


def test_find_cases_and_read_case(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", ramp((4, 4, 4)))
    write_ome_zarr_image(src / "b.ome.zarr", ramp((6, 7, 8)), spacing=(0.5, 0.5, 0.5), unit="µm", n_levels=2)
    cases = find_cases(src)
    assert [(c.name, c.zarr) for c in cases] == [("a", False), ("b", True)]
    assert [c.name for c in find_cases(src / "b.ome.zarr")] == ["b"]
    vol = read_case(cases[1], zarr_level=1)
    assert vol.array.shape == (1, 3, 4, 4) and vol.array.dtype == np.float32
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.unit == "µm" and vol.fmt == ".ome.zarr"


def test_label_images_follow_ngff_labels(tmp_path):
    img = open_zarr(write_ome_zarr_image(tmp_path / "em.ome.zarr", ramp((6, 7, 8)), spacing=(4.0, 2.0, 1.0),
                                         unit="nm"))
    labels = {2: (ramp((6, 7, 8)) % 2).astype(np.uint8), 3: (ramp((6, 7, 8)) % 3).astype(np.uint8)}
    root = write_ome_zarr_labels(tmp_path / "out" / "em.ome.zarr", labels, img.spacing, (0.0, 8.0, 0.0), img.unit,
                                 like=img, source="../em.ome.zarr")
    assert json.loads((root / "labels" / ".zattrs").read_text()) == {"labels": ["k2", "k3"]}
    for k, lab in labels.items():
        data, attrs = read_label_image(root, k)
        np.testing.assert_array_equal(data, lab)
        ms = attrs["multiscales"][0]
        assert ms["version"] == "0.4"
        assert ms["axes"] == [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
        assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [4.0, 2.0, 1.0]}, {"type": "translation", "translation": [0.0, 8.0, 0.0]}]}]
        colours = attrs["image-label"]["colors"]
        assert [c["label-value"] for c in colours] == list(range(k)) and colours[0]["rgba"][3] == 0
    zarray = json.loads((root / "labels" / "k3" / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/" and zarray["dtype"] == "|u1"
    # read back as an image: the label image is itself a valid single-scale OME-Zarr image
    back = open_zarr(root / "labels" / "k3")
    assert back.spacing == (4.0, 2.0, 1.0) and back.origin == (0.0, 8.0, 0.0)


def test_labels_are_written_atomically(tmp_path):
    root = tmp_path / "case.ome.zarr"
    write_ome_zarr_labels(root, {2: np.ones((3, 3, 3), np.uint8)}, (1.0, 1.0, 1.0))
    with pytest.raises(RuntimeError):
        with LabelsWriter(root, (3, 3, 3), (1.0, 1.0, 1.0)) as w:
            w.add(2, np.zeros((3, 3, 3), np.uint8))
            raise RuntimeError("killed half-way")
    np.testing.assert_array_equal(read_label_image(root, 2)[0], 1)  # the earlier result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.ome.zarr"]  # no temporary folder left


def test_cli_segments_an_ome_zarr_level_chunked_or_in_memory(tmp_path, one_thread):
    from conftest import tiny_yaml

    from hyperseg.cli import main

    (tmp_path / "tiny.yaml").write_text(tiny_yaml(levels="[2, 3]"))
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(36, 38, 40)).astype(np.float32)
    vol[8:28, 9:30, 10:30] += 4
    (tmp_path / "train").mkdir()
    np.save(tmp_path / "train" / "t.npy", vol)
    run = tmp_path / "run"
    assert main(["train", "-i", str(tmp_path / "train"), "-o", str(run), "--config", str(tmp_path / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    src = write_ome_zarr_image(tmp_path / "scan.ome.zarr", vol, spacing=(0.5, 0.5, 0.5), unit="µm", n_levels=2,
                               chunks=(16, 16, 16))
    out = tmp_path / "out"
    assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(out), "--levels", "2", "3", "--zarr-level", "1",
                 "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scan.ome.zarr"]  # nothing else, no temporary folder left
    labels, attrs = read_label_image(out / "scan.ome.zarr", 3)
    assert labels.shape == (18, 19, 20) and set(np.unique(labels)) == {0, 1, 2}
    ms = attrs["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]  # level 1: 2 x 0.5 µm
    assert [a["unit"] for a in ms["axes"]] == ["micrometer"] * 3
    assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(out), "--levels", "2", "3", "--in-memory",
                 "--report", "png", "-q"]) == 0
    assert read_label_image(out / "scan.ome.zarr", 2)[0].shape == (36, 38, 40)
    assert (out / "scan_report.png").exists()
    assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(tmp_path / "o2"), "--report", "-q"]) == 2
