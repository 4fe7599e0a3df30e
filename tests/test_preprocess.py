"""Robust per-channel normalisation, shared by training and segmentation."""
import numpy as np
import pytest

from hyperseg.config import Config
from hyperseg.data.preprocess import Z_MAX, foreground_mask, normalize, normalize_for


def brain_like(seed=0):
    """Two channels: a bright noisy ball (foreground) in a flat zero background, plus one outlier."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:20, :20, :20]
    ball = (z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 < 49
    a = np.zeros((2, 20, 20, 20), np.float32)
    a[0][ball] = 100 + 10 * rng.standard_normal(ball.sum())
    a[1][ball] = 5 + rng.standard_normal(ball.sum())
    a[0, 10, 10, 10] = 1e6  # a hot voxel inside the object
    return a, ball


def test_auto_mask_is_the_object_above_the_flat_background():
    a, ball = brain_like()
    assert np.array_equal(foreground_mask(a), ball)
    noisy = np.random.default_rng(0).random((1, 8, 8, 8))
    assert foreground_mask(noisy) is None  # no flat floor: all voxels


def test_statistics_come_from_inside_the_mask_and_ignore_outliers():
    a, ball = brain_like()
    out = normalize(a)
    assert out.dtype == np.float32 and out.shape == a.shape
    for c in range(2):
        inside = out[c][ball]
        assert abs(inside.mean()) < 1e-4 and inside.std() == pytest.approx(1.0, abs=1e-3)
    assert out[0, 10, 10, 10] < 4  # the 1e6 voxel was clipped to the 99.5th percentile
    assert (out[0][~ball] < -4).all()  # the background stays below the object, unclipped


def test_given_mask_and_no_mask():
    a, ball = brain_like()
    assert np.allclose(normalize(a, mask=ball), normalize(a, mask="auto"))
    plain = normalize(a, clip_percentiles=None, mask="none")
    x = a.astype(np.float64)
    want = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    assert np.allclose(plain, want, atol=1e-5)
    with pytest.raises(ValueError, match="mask shape"):
        normalize(a, mask=ball[:5])


def test_constant_channel_is_centred_and_extremes_stay_finite():
    a = np.zeros((2, 6, 6, 6), np.float32)
    a[0] = 7.0
    a[1] = np.random.default_rng(0).random((6, 6, 6))
    a[1, 0, 0, 0] = 3e38
    out = normalize(a, mask="none", clip_percentiles=None)
    assert np.all(out[0] == 0) and np.isfinite(out).all() and out.max() <= Z_MAX


def test_normalize_for_follows_the_configuration():
    a, _ = brain_like()
    assert np.array_equal(normalize_for(Config(), a), normalize(a, (0.5, 99.5), "auto"))
    assert np.array_equal(normalize_for(Config(normalize=False), a), a)
    cfg = Config(clip_percentiles=None, normalize_mask="none")
    assert np.array_equal(normalize_for(cfg, a), normalize(a, None, "none"))
    with pytest.raises(ValueError, match="clip_percentiles"):
        Config(clip_percentiles=[50, 10])
    with pytest.raises(ValueError, match="normalize_mask"):
        Config(normalize_mask="otsu")
