"""Pictures comparable at a glance (clusters in their matched class's colour) and the HTML report per case."""
import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib import image as mpimg

from hyperseg.metrics import dice_iou
from hyperseg.report import colours_matched_to_truth, save_slices_png, truth_for
from hyperseg.report_html import render_html_report, save_html_report


def nested_truth(shape=(16, 20, 12)):
    """Level 1: background 0, object 1; level 2: the object split into 1 and 2 along W."""
    t1 = np.zeros(shape, dtype=np.int64)
    t1[3:13, 4:16, 2:10] = 1
    t2 = t1.copy()
    t2[3:13, 4:16, 6:10] = 2
    return {1: t1, 2: t2}


def payload(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="hyperseg-data">(.*?)</script>', page,
                                re.S).group(1).replace("<\\/", "</"))


def decoded(b64: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(shape)


# ----------------------------------------------------------------------------- matched colours
def test_a_cluster_takes_the_colour_of_the_class_it_is_matched_to():
    truth = nested_truth()[2]
    pred = np.array([2, 0, 1])[truth]  # the same regions under other numbers
    shown, lut = colours_matched_to_truth(pred, truth)
    np.testing.assert_array_equal(shown, truth)
    np.testing.assert_array_equal(lut, [1, 2, 0])


def test_clusters_left_without_a_class_get_colours_of_their_own():
    truth = nested_truth()[1]
    pred = truth * 2
    pred[truth == 1] += np.arange(int((truth == 1).sum())) % 2  # the object in clusters 2 and 3
    shown, lut = colours_matched_to_truth(pred, truth)
    assert lut[0] == 0 and sorted(lut[2:]) == [1, 2]  # one object cluster is class 1, the other a new colour
    assert set(np.unique(shown)) == {0, 1, 2}


def test_each_level_is_compared_with_the_truth_of_as_many_classes_or_the_nearest():
    truth = nested_truth()
    assert truth_for(2, truth) == 1 and truth_for(3, truth) == 2
    assert truth_for(6, truth) == 2 and truth_for(1, truth) == 1


def test_the_demo_figure_draws_a_renumbered_prediction_exactly_like_the_truth(tmp_path):
    truth = nested_truth()
    image = truth[2].astype(np.float32)
    renumbered = {2: 1 - truth[1], 3: np.array([2, 0, 1])[truth[2]]}
    as_truth = {2: truth[1], 3: truth[2]}
    a = save_slices_png(tmp_path / "a.png", image, renumbered, truth).read_bytes()
    b = save_slices_png(tmp_path / "b.png", image, as_truth, truth).read_bytes()
    assert a == b
    c = save_slices_png(tmp_path / "c.png", image, renumbered).read_bytes()  # no truth: colours as numbered
    assert c != save_slices_png(tmp_path / "d.png", image, as_truth).read_bytes()


# ----------------------------------------------------------------------------- the HTML report
@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    truth = nested_truth()
    image = (truth[2] * 2.0 + rng.normal(size=truth[2].shape)).astype(np.float32)
    labels = {2: (1 - truth[1]).astype(np.uint8), 3: np.array([2, 0, 1])[truth[2]].astype(np.uint8)}
    embedding = rng.normal(size=(*image.shape, 4)) * 0.1
    return image, labels, embedding, truth


def test_the_report_is_one_file_that_fetches_nothing(case):
    image, labels, embedding, truth = case
    page = render_html_report(image, labels, embedding, spacing=(1.0, 1.0, 2.5), title="case <1>", truth=truth)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', page)
    assert "<link" not in page and "<script src" not in page and "@import" not in page
    assert "default-src 'none'" in page  # the browser is told to fetch nothing either
    assert "<title>case &lt;1&gt;</title>" in page


def test_the_data_block_holds_every_layer_in_d_h_w_order_recoloured_to_the_truth(case):
    image, labels, embedding, truth = case
    data = payload(render_html_report(image, labels, embedding, spacing=(1.0, 1.0, 2.5), truth=truth))
    assert data["shape"] == list(image.shape) and data["spacing"] == [1.0, 1.0, 2.5]
    assert [layer["name"] for layer in data["layers"]] == ["k = 2", "k = 3", "truth level 1", "truth level 2"]
    grey = decoded(data["image"], image.shape)
    assert np.corrcoef(grey.ravel(), image.ravel())[0, 1] > 0.95  # the image, not a transposition of it
    for layer, expected in zip(data["layers"], [truth[1], truth[2], truth[1], truth[2]]):
        np.testing.assert_array_equal(decoded(layer["data"], image.shape), expected)
        assert base64.b64decode(layer["disk"]).startswith(b"\x89PNG")
    tab10 = ["#" + "".join(f"{round(v * 255):02x}" for v in rgb) for rgb in colormaps["tab10"].colors]
    assert data["palette"][:10] == tab10  # the PNG report's colours


def test_the_tables_give_the_cluster_sizes_and_the_dice_of_the_metrics(case):
    image, labels, embedding, truth = case
    pred3 = labels[3].copy()
    pred3[:2] = 0  # a few mistakes, so that Dice is not 1
    page = render_html_report(image, {2: labels[2], 3: pred3}, None, truth=truth)
    for k, lab in ((2, labels[2]), (3, pred3)):
        for n in np.bincount(lab.ravel()):
            assert f"<td>{n:,}</td><td>{100 * n / lab.size:.1f} %</td>" in page
    score = dice_iou(pred3, truth[2])
    assert f"<td>2</td><td>3</td><td><b>{score['mean_dice']:.3f}</b></td>" in page
    assert score["mean_dice"] < 1.0
    assert 'id="disk" hidden' in page  # no embedding, no disk


def test_a_report_without_truth_keeps_the_cluster_numbers_and_has_no_dice_table(case):
    image, labels, embedding, _ = case
    page = render_html_report(image, labels, embedding)
    data = payload(page)
    np.testing.assert_array_equal(decoded(data["layers"][1]["data"], image.shape), labels[3])
    assert "Dice" not in page


def test_a_large_volume_is_shown_subsampled_with_a_note(case):
    image, labels, embedding, truth = case
    data = payload(page := render_html_report(image, labels, None, max_voxels=image.size // 8))
    assert data["stride"] == 2 and data["shape"] == [8, 10, 6]
    np.testing.assert_array_equal(decoded(data["layers"][0]["data"], (8, 10, 6)), labels[2][::2, ::2, ::2])
    assert "Shown: one voxel in 2 along each axis (8 x 10 x 6 of 16 x 20 x 12)" in page


def test_save_writes_the_page_atomically(case, tmp_path):
    image, labels, embedding, truth = case
    path = save_html_report(tmp_path / "r.html", image, labels, embedding, truth=truth)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ----------------------------------------------------------------------------- in a real browser
def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    message = "no chromium on PATH (.ci/run installs Debian's chromium); the page is not rendered here"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def headless(browser, tmp_path, *args):
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.chromium
def test_the_report_renders_in_headless_chromium(tmp_path):
    browser = chromium()
    truth = nested_truth((24, 30, 18))
    image = np.zeros(truth[1].shape, dtype=np.float32)  # black everywhere: the overlay colour alone shows
    labels = {2: truth[1].astype(np.uint8), 3: truth[2].astype(np.uint8)}
    page = save_html_report(tmp_path / "case_report.html", image, labels, None, title="headless")
    dom = headless(browser, tmp_path, "--dump-dom", page.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="3"' in body  # the script ran and drew the three views
    d, h, w = image.shape
    assert f'data-label-pixels="{h * w + d * w + d * h}"' in body  # every pixel of every view overlaid
    shot = tmp_path / "shot.png"
    headless(browser, tmp_path, "--window-size=1100,800", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(mpimg.imread(io.BytesIO(shot.read_bytes()), format="png"))[..., :3]
    alpha = 0.45
    for colour in colormaps["tab10"].colors[:2]:  # background (class 0) and object (class 1) drawn at 45 %
        blended = alpha * np.asarray(colour)
        near = np.abs(pixels - blended).max(axis=-1) < 3 / 255
        assert near.sum() > 2000, f"too few pixels of {colour} over black in the screenshot"


# ----------------------------------------------------------------------------- hyperseg segment --report
def test_segment_report_html_writes_the_page_beside_the_label_maps(tmp_path, one_thread):
    from conftest import tiny_yaml

    from hyperseg.cli import main

    truth = nested_truth((20, 20, 20))
    (tmp_path / "train").mkdir()
    np.save(tmp_path / "train" / "a.npy", (truth[2] * 3.0).astype(np.float32)
            + np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    (tmp_path / "tiny.yaml").write_text(tiny_yaml(levels="[2, 3]"))
    run = tmp_path / "run"
    assert main(["train", "-i", str(tmp_path / "train"), "-o", str(run), "--config", str(tmp_path / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    out = tmp_path / "seg"
    assert main(["segment", "-m", str(run), "-i", str(tmp_path / "train"), "-o", str(out), "-q",
                 "--report", "html"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_k2.npy", "a_k3.npy", "a_report.html"]
    data = payload((out / "a_report.html").read_text(encoding="utf-8"))
    assert [layer["name"] for layer in data["layers"]] == ["k = 2", "k = 3"]
    np.testing.assert_array_equal(decoded(data["layers"][1]["data"], (20, 20, 20)), np.load(out / "a_k3.npy"))
    assert data["layers"][0]["disk"]  # the embedding's disk, coloured by the layer


# ----------------------------------------------------------------------------- hyperseg evaluate --report
def test_evaluate_report_draws_each_case_beside_its_truth_in_matched_colours(tmp_path, capsys):
    from hyperseg.cli import main

    truth = nested_truth()
    data, labels, pred = tmp_path / "data", tmp_path / "data" / "labels", tmp_path / "pred"
    labels.mkdir(parents=True)
    pred.mkdir()
    np.save(data / "a.npy", truth[2].astype(np.float32) + np.random.default_rng(0).normal(size=truth[2].shape))
    for level, t in truth.items():
        np.save(labels / f"a_level{level}.npy", t.astype(np.uint8))
    np.save(pred / "a_k2.npy", (1 - truth[1]).astype(np.uint8))
    np.save(pred / "a_k3.npy", np.array([2, 0, 1])[truth[2]].astype(np.uint8))
    assert main(["evaluate", "-p", str(pred), "-t", str(labels), "--report"]) == 0
    assert "wrote 2 report files" in capsys.readouterr().out
    assert sorted(p.name for p in pred.glob("a_evaluation.*")) == ["a_evaluation.html", "a_evaluation.png"]
    page = (pred / "a_evaluation.html").read_text(encoding="utf-8")
    data_block = payload(page)
    shape = truth[2].shape
    np.testing.assert_array_equal(decoded(data_block["layers"][0]["data"], shape), truth[1])
    np.testing.assert_array_equal(decoded(data_block["layers"][1]["data"], shape), truth[2])
    assert "<td>2</td><td>3</td><td><b>1.000</b></td>" in page
    # without the images next to the truth, the report says where to point it
    (data / "a.npy").unlink()
    np.save(data / "other.npy", np.ones((2, 2, 2), dtype=np.float32) * np.arange(2))
    with pytest.raises(FileNotFoundError, match="no image for case a to draw its report; give the folder"):
        from hyperseg.evaluate import write_reports

        write_reports(pred, labels, data)
