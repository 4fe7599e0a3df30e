"""PNG reports: the disk projection of the embeddings, and the figures themselves."""
import io
from collections import Counter

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib import image as mpimg

from hyperseg.geometry.poincare import dist0
from hyperseg.report import (
    OVERLAY_ALPHA,
    disk_coordinates,
    render_case_report,
    save_case_report,
    save_slices_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _ball_points(n, d, c, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    radius = rng.uniform(0, 0.999, size=(n, 1)) / np.sqrt(c)
    return x / np.linalg.norm(x, axis=1, keepdims=True) * radius


def test_two_dimensional_ball_points_are_drawn_as_they_are_on_the_unit_disk():
    x = _ball_points(50, 2, c=4.0)
    xy, how = disk_coordinates(x, c=4.0)
    np.testing.assert_allclose(xy, x * 2.0)  # radius 1/sqrt(c) = 1/2 scaled onto the unit disk
    assert "latent" in how


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_higher_dimensional_points_are_projected_inside_the_disk_without_moving_outward(c):
    x = _ball_points(400, 5, c=c, seed=1)
    xy, how = disk_coordinates(x, c=c)
    assert xy.shape == (400, 2) and np.isfinite(xy).all()
    assert np.linalg.norm(xy, axis=1).max() < 1.0
    # hyperbolic distance to the origin never grows (the projection of log_0 is orthogonal)
    before = dist0(torch.from_numpy(x), c=c).numpy()
    after = dist0(torch.from_numpy(xy / np.sqrt(c)), c=c).numpy()
    assert (after <= before + 1e-9).all()
    assert "principal" in how


def test_points_in_a_plane_of_a_higher_dimensional_ball_keep_their_distances_to_the_origin():
    plane = _ball_points(200, 2, c=1.0, seed=2)
    rot, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(4, 4)))
    x = np.concatenate([plane, np.zeros((200, 2))], axis=1) @ rot.T  # the same plane, turned inside R^4
    xy, _ = disk_coordinates(x, c=1.0)
    np.testing.assert_allclose(np.linalg.norm(xy, axis=1), np.linalg.norm(plane, axis=1), atol=1e-9)


def test_euclidean_latent_is_projected_without_the_disk():
    x = np.random.default_rng(4).normal(size=(100, 3)) * 10
    xy, how = disk_coordinates(x, c=None)
    assert xy.shape == (100, 2) and np.linalg.norm(xy, axis=1).max() > 1  # not squeezed into a disk
    assert "principal" in how


def _case(shape=(9, 12, 7), d=3):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    labels = {2: (image > 0.5).astype(np.uint8), 3: np.minimum(image * 3, 2).astype(np.uint8)}
    emb = _ball_points(int(np.prod(shape)), d, c=1.0).reshape(*shape, d)
    return image, labels, emb


def test_case_report_is_a_png_with_a_row_per_level_and_the_disk_panel(tmp_path):
    image, labels, emb = _case()
    with_disk = render_case_report(image, labels, emb, c=1.0, title="case")
    assert with_disk.startswith(PNG_MAGIC)
    one_level = render_case_report(image, {2: labels[2]}, None)
    (w1, h1), (w2, h2) = _png_size(with_disk), _png_size(one_level)
    assert h1 > h2 and w1 > w2  # more rows for more levels; the disk panel adds width
    out = save_case_report(tmp_path / "r.png", image, labels, emb, c=1.0, spacing=(2.0, 1.0, 1.0))
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]  # no temporary file left


def test_case_report_refuses_mismatched_shapes():
    image, labels, emb = _case()
    with pytest.raises(ValueError, match="label map"):
        render_case_report(image, {2: labels[2][:-1]}, emb)
    with pytest.raises(ValueError, match="embedding"):
        render_case_report(image, labels, emb[:-1])


def test_demo_slices_figure_still_works(tmp_path):
    image, labels, _ = _case()
    out = save_slices_png(tmp_path / "demo.png", image, labels, truth={1: labels[2]}, title="demo")
    assert out.read_bytes().startswith(PNG_MAGIC)


# --------------------------------------------------------------------------- what the pixels show
#: tab10's first two colours: what labels 0 and 1 are drawn in (report and demo figure alike).
TAB = np.array(colormaps["tab10"].colors[:2])
#: Colour distance (per channel, RGB in [0, 1]) within which a pixel counts as a given colour.
COLOUR_TOL = 3 / 255


def _rgb(png: bytes) -> np.ndarray:
    """The PNG's pixels, ``(rows, cols, 3)`` floats in [0, 1]."""
    return mpimg.imread(io.BytesIO(png))[..., :3]


def _colour_runs(rgb: np.ndarray, colours: np.ndarray, min_run: int = 3) -> list[str]:
    """Each pixel row as the sequence of colours it crosses: ``"0"``/``"1"`` for ``colours[0]``/``[1]``, ``"."``
    for anything else; runs shorter than ``min_run`` pixels (anti-aliased edges) are dropped, repeats merged."""
    tokens = np.full(rgb.shape[:2], ".")
    for j, colour in enumerate(colours):
        tokens[np.abs(rgb - colour).max(-1) < COLOUR_TOL] = str(j)
    rows = []
    for row in tokens:
        cuts = np.flatnonzero(row[1:] != row[:-1]) + 1
        runs = [r[0] for r in np.split(row, cuts) if len(r) >= min_run]
        rows.append("".join(t for i, t in enumerate(runs) if i == 0 or t != runs[i - 1]))
    return rows


def _halves_case(shape=(8, 10, 12)):
    """A black image whose label map is 0 on the low half of axis 2 (W) and 1 on the high half."""
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[:, :, shape[2] // 2:] = 1
    return image, labels


def test_report_overlays_each_label_in_its_colour_where_that_label_is():
    image, labels = _halves_case()
    rgb = _rgb(render_case_report(image, {2: labels}, None))
    # over the black image a label's colour is OVERLAY_ALPHA times its tab10 colour
    rows = _colour_runs(rgb, OVERLAY_ALPHA * TAB)
    assert not any("10" in r for r in rows)  # inside a panel label 0 (low W) is always left of label 1
    # across the three mid-slices: (H, W) and (D, W) show both halves, (D, H) at w = 6 lies in label 1
    counts = Counter(r for r in rows if r != ".")
    assert counts.most_common(1)[0][0] == ".01.01.1."
    assert sum(n for r, n in counts.items() if r.count("0") == 2) > 50  # a label row of the figure, ~150 px tall


def test_report_disk_panel_colours_each_voxel_by_its_finest_label():
    image, labels = _halves_case()
    rng = np.random.default_rng(0)
    # label-0 voxels sit left of the disk's centre, label-1 voxels right of it
    emb = np.stack([np.where(labels == 1, 0.5, -0.5) + rng.uniform(-0.1, 0.1, labels.shape),
                    rng.uniform(-0.5, 0.5, labels.shape)], -1)
    rgb = _rgb(render_case_report(image, {2: labels}, emb, c=1.0))
    overlay_cols = np.flatnonzero((np.abs(rgb[..., None, :] - OVERLAY_ALPHA * TAB).max(-1) < COLOUR_TOL).any((0, 2)))
    disk = rgb[:, overlay_cols.max() + 5:]  # the panel right of the slices
    xs = []
    for colour in TAB:  # a scatter point's pixels: the colour blended onto white, weight a > 0.5
        a = ((1 - disk) * (1 - colour)).sum(-1) / ((1 - colour) ** 2).sum()
        hit = (a > 0.5) & (np.abs(disk - (1 - a[..., None] * (1 - colour))).max(-1) < 0.04)
        assert hit.sum() > 200
        xs.append(np.nonzero(hit)[1])
    assert xs[0].max() < xs[1].min()  # every label-0 point left of every label-1 point


def test_demo_figure_draws_each_label_in_its_colour_where_that_label_is(tmp_path):
    image, labels = _halves_case()
    out = save_slices_png(tmp_path / "demo.png", image, {2: labels}, truth={1: labels})
    rows = _colour_runs(_rgb(out.read_bytes()), TAB)  # label maps are drawn opaque, in tab10
    # figure rows, top to bottom, are the mid-slices normal to D, H and W; columns image, k = 2, truth.
    # Normal to D and H both halves show (label 0 left), normal to W (w = 6) only label 1.
    bands: list[list] = []  # [pattern, pixel rows] of consecutive pixel rows that cross label colours
    for r in rows:
        if r != "." and (not bands or bands[-1][0] != r):
            bands.append([r, 0])
        if r != ".":
            bands[-1][1] += 1
    assert [b[0] for b in bands] == [".01.01.", ".1.1."]
    assert bands[0][1] > 1.5 * bands[1][1]  # two figure rows, then one
