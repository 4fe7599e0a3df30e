"""PNG reports: the disk projection of the embeddings, and the figures themselves."""
import numpy as np
import pytest
import torch

from hyperseg.geometry.poincare import dist0
from hyperseg.report import (
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
