"""The napari plugin: the dock widget trains on an image layer, segments it, and adds one Labels layer per level.

These tests open a real napari viewer, so they need a display: `make test` runs pytest under `xvfb-run`
when it exists (CI installs Debian's xvfb in `.ci/run`). Without one the module is skipped (before Qt is
started: Qt aborts the process when it finds no display), and fails under CI. The pieces that need no
viewer are in test_napari_core.py.
"""
import json
import os
import threading

import numpy as np
import pytest
from conftest import TINY

pytestmark = pytest.mark.napari

if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    _NO_DISPLAY = ("no display for napari: run pytest under `xvfb-run -a` (Debian package xvfb); "
                   "`make test` does so when xvfb-run exists")
    if os.environ.get("CI"):
        raise RuntimeError(_NO_DISPLAY)  # a collection error: CI must run these tests
    pytest.skip(_NO_DISPLAY, allow_module_level=True)

napari = pytest.importorskip("napari", reason="the napari extra is not installed (pip install 'hyperseg[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from hyperseg.config import Config  # noqa: E402

SCALE = (1.5, 0.5, 0.5)  # anisotropic on purpose: the Labels layers must carry it
TRANSLATE = (10.0, -4.0, 2.5)


def blob_image(shape=(24, 24, 24), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(np.float32)
    a[6:18, 6:18, 6:18] += 4
    a[9:15, 9:15, 9:15] += 4
    return a


@pytest.fixture
def widget(make_napari_viewer, qtbot, one_thread, tmp_path):
    from hyperseg.napari._widget import HypersegWidget

    viewer = make_napari_viewer()
    viewer.add_image(blob_image(), name="image", scale=SCALE, translate=TRANSLATE)
    w = HypersegWidget(viewer)
    viewer.window.add_dock_widget(w, name="hyperseg")
    w.config = Config(**TINY)
    w.run_edit.setText(str(tmp_path / "widget_run"))  # not a temporary folder left behind by the test
    yield w
    if w.busy:  # never leave a worker running into the next test
        w.cancel()
        qtbot.waitUntil(lambda: not w.busy, timeout=60_000)


def wait_idle(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)
    assert w.error is None, w.error


def train_steps(qtbot, w, steps):
    w.minutes.setValue(0)
    w.steps.setValue(steps)
    w.train_button.click()
    assert w.busy  # the click returned at once: training runs in a worker thread
    wait_idle(qtbot, w)


def test_the_widget_trains_segments_and_adds_one_labels_layer_per_level_with_the_images_geometry(widget, qtbot):
    w, viewer = widget, widget.viewer
    seen = []
    w.progressed.connect(lambda p: seen.append((p.step, threading.current_thread() is threading.main_thread())))
    train_steps(qtbot, w, 3)
    assert w.model is not None and (w.run_dir / "model.safetensors").is_file()
    assert seen == [(1, True), (2, True), (3, True)]  # every step reached the progress bar, on the GUI thread
    assert w.progress.value() == w.progress.maximum()
    w.levels_edit.setText("2 3")
    w.segment_button.click()
    wait_idle(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["image", "image_k2", "image_k3"]
    for k in (2, 3):
        layer = viewer.layers[f"image_k{k}"]
        assert isinstance(layer, napari.layers.Labels)
        assert layer.data.shape == (24, 24, 24)
        np.testing.assert_allclose(layer.scale, SCALE)
        np.testing.assert_allclose(layer.translate, TRANSLATE)
        assert set(np.unique(layer.data)) <= set(range(k)) and len(np.unique(layer.data)) > 1
    # a voxel's world position lands on the same voxel of the image and of its labels
    world = viewer.layers["image"].data_to_world((5, 7, 9))
    np.testing.assert_allclose(viewer.layers["image_k3"].world_to_data(world), (5, 7, 9))


def test_the_disk_view_and_the_level_tree_follow_the_segmentation(widget, qtbot):
    w, viewer = widget, widget.viewer
    train_steps(qtbot, w, 2)
    w.levels_edit.setText("2 3")
    w.segment_button.click()
    wait_idle(qtbot, w)
    # the disk: points coloured like the finest Labels layer; a voxel's point marked where the projection puts it
    assert w.disk is not None and w.disk.points_xy is not None
    assert np.linalg.norm(w.disk.points_xy, axis=1).max() < 1.0
    from hyperseg.napari._widget import label_colours

    drawn = w.disk.axes.collections[0].get_facecolors()
    finest = w.segmentation.labels[3].reshape(-1)[w._sample]
    np.testing.assert_allclose(drawn, label_colours(viewer.layers["image_k3"], 3)[finest])
    assert len(np.unique(drawn, axis=0)) == len(np.unique(finest))
    xy = w.show_voxel((12, 12, 12))
    np.testing.assert_allclose(xy, w.disk.project(w.segmentation.embedding[12, 12, 12][None])[0])
    np.testing.assert_allclose(w.disk.marker.get_data(), ([xy[0]], [xy[1]]))
    assert w.show_voxel((24, 0, 0)) is None  # outside the volume
    # the tree: the k = 2 labels at the top, each k = 3 label under exactly one of them
    k2, k3 = viewer.layers["image_k2"].data, viewer.layers["image_k3"].data
    tops = [w.tree.topLevelItem(i) for i in range(w.tree.topLevelItemCount())]
    assert sorted(int(t.data(0, 257)) for t in tops) == sorted(np.unique(k2).tolist())
    children = sorted(int(t.child(j).data(0, 257)) for t in tops for j in range(t.childCount()))
    assert children == sorted(np.unique(k3).tolist())
    # clicking a coarse label shows it alone in its layer and selects its children
    top = tops[-1]
    w._on_tree_click(top)
    assert viewer.layers["image_k2"].selected_label == int(top.data(0, 257))
    assert viewer.layers["image_k2"].show_selected_label
    assert all(top.child(j).isSelected() for j in range(top.childCount()))


def test_cancel_stops_training_and_keeps_the_model_of_the_last_step(widget, qtbot):
    w = widget
    w.minutes.setValue(0)
    w.steps.setValue(10**6)
    w.train_button.click()
    qtbot.waitUntil(lambda: w.progress.value() > 0 or "step" in w.status.text(), timeout=60_000)
    w.cancel_button.click()
    wait_idle(qtbot, w)
    info = json.loads((w.run_dir / "run.json").read_text())
    assert info["status"] == "stopped" and 1 <= info["steps_done"] < 10**6
    assert w.model is not None


def test_a_run_folder_can_be_loaded_and_segmenting_again_updates_the_layers(widget, qtbot, tmp_path):
    w, viewer = widget, widget.viewer
    train_steps(qtbot, w, 2)
    assert w.run_dir == tmp_path / "widget_run"  # the run folder typed in the widget
    w.model = None
    w.load(tmp_path / "widget_run")
    assert w.model is not None and w.error is None
    w.levels_edit.setText("3")
    w.segment_button.click()
    wait_idle(qtbot, w)
    first = viewer.layers["image_k3"]
    viewer.layers["image"].data = blob_image(seed=1)
    w.segment_button.click()
    wait_idle(qtbot, w)
    assert viewer.layers["image_k3"] is first  # updated in place, not a second layer
    assert [layer.name for layer in viewer.layers] == ["image", "image_k3"]


def test_mistakes_are_told_in_the_widget_not_raised(widget, qtbot):
    w, viewer = widget, widget.viewer
    w.segment_button.click()
    assert "no model" in w.status.text()
    w.load("/nonexistent/run")
    assert w.status.text().startswith("error: ") and "/nonexistent/run" in w.status.text()
    viewer.layers.clear()
    viewer.add_image(np.zeros((8, 8), dtype=np.float32) + np.eye(8, dtype=np.float32), name="flat")
    w.train_button.click()
    assert "2 dimensions" in w.status.text() and not w.busy
