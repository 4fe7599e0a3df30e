"""Resampling to isotropic voxels for the model and back to the input grid."""
import numpy as np
import torch
from torch.nn import functional as F

from hyperseg.data.resample import (
    is_isotropic,
    isotropic_shape,
    resample_image,
    resample_nearest,
)


def test_isotropic_shape_uses_the_finest_spacing():
    assert isotropic_shape((10, 20, 30), (3.0, 1.0, 1.0)) == (30, 20, 30)
    assert isotropic_shape((10, 20, 30), (1.0, 1.0, 1.0)) == (10, 20, 30)
    assert isotropic_shape((7, 8, 9), (2.0, 2.0004, 2.0)) == (7, 8, 9)  # within the tolerance
    assert is_isotropic((0.5, 0.5, 0.5)) and not is_isotropic((0.5, 0.5, 1.5))


def test_trilinear_image_resampling_matches_interpolate_and_preserves_linear_ramps():
    d = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 5, 6), np.float32)
    a = np.stack([d, 2 * d])
    up = resample_image(a, (12, 5, 6))
    want = F.interpolate(torch.from_numpy(a)[None], size=(12, 5, 6), mode="trilinear", align_corners=False)[0]
    assert up.shape == (2, 12, 5, 6) and np.allclose(up, want.numpy())
    # interior samples of a ramp are the ramp at the sampled source position (j + 0.5) * 4 / 12 - 0.5
    j = np.arange(2, 10)
    assert np.allclose(up[0, j, 0, 0], (j + 0.5) / 3 - 0.5, atol=1e-6)
    assert resample_image(a, (4, 5, 6)) is not None and np.array_equal(resample_image(a, (4, 5, 6)), a)


def test_nearest_round_trip_returns_the_input_grid():
    labels = np.random.default_rng(0).integers(0, 5, (4, 5, 6)).astype(np.uint8)
    up = resample_nearest(labels, (12, 5, 6))
    assert up.dtype == np.uint8 and np.array_equal(up[::3], labels) and np.array_equal(up[1::3], labels)
    assert np.array_equal(resample_nearest(up, (4, 5, 6)), labels)
    emb = np.random.default_rng(1).random((12, 5, 6, 2))
    back = resample_nearest(emb, (4, 5, 6))
    assert back.shape == (4, 5, 6, 2) and np.array_equal(back, emb[1::3])
