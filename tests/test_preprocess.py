"""Robust per-channel normalisation, shared by training and segmentation."""
import numpy as np
import pytest

from hyperseg.config import Config
from scipy import ndimage as ndi

from hyperseg.data.preprocess import Z_MAX, foreground_mask, highpass, normalize, normalize_for


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


def biased_cube(seed=0, n=24):
    """A two-tissue texture (checkerboard of 3-voxel blocks, values 0 and 1) under a smooth
    additive ramp of 4 intensity units across the volume, plus a little noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n]
    tissue = ((z // 3 + y // 3 + x // 3) % 2).astype(np.float64)
    bias = 4.0 * x / (n - 1)
    return tissue, bias, (tissue + bias + 0.05 * rng.standard_normal(tissue.shape))[None]


def test_highpass_without_a_mask_is_the_volume_minus_its_gaussian_smoothing():
    _, _, a = biased_cube()
    want = a[0] - ndi.gaussian_filter(a[0], 5.0, mode="nearest")
    assert np.allclose(highpass(a, 5.0, mask="none")[0], want, atol=1e-5)


def test_highpass_removes_a_bias_field_and_keeps_the_tissue_contrast():
    tissue, bias, a = biased_cube()
    out = highpass(a, 6.0, mask="none")[0]
    core = (slice(6, -6),) * 3  # away from the edges, where a replicated edge biases the Gaussian
    # Before: the ramp moves tissue 0 across the whole tissue-1 range. After: the two separate.
    raw0, raw1 = a[0][core][tissue[core] == 0], a[0][core][tissue[core] == 1]
    assert raw0.max() > raw1.min()
    hp0, hp1 = out[core][tissue[core] == 0], out[core][tissue[core] == 1]
    assert hp0.max() < hp1.min()
    # what is left of the ramp: the per-x-slice tissue-0 means differ by under 0.2 (were 4 apart)
    means = [out[core][..., i][tissue[core][..., i] == 0].mean() for i in range(out[core].shape[-1])]
    assert np.ptp(means) < 0.2


def test_masked_highpass_is_a_normalised_convolution_and_keeps_a_floor():
    a, ball = brain_like()
    a = a.copy()
    a[0, 10, 10, 10] = 100  # no hot voxel here
    z = np.mgrid[:20, :20, :20][0]
    a[0][ball] += 3.0 * z[ball]  # a bias ramp inside the object only
    out = highpass(a, 4.0, mask=ball)
    x = a[0].astype(np.float64)
    num = ndi.gaussian_filter(np.where(ball, x, 0), 4.0, mode="constant")
    den = ndi.gaussian_filter(ball.astype(np.float64), 4.0, mode="constant")
    assert np.allclose(out[0][ball], (x - num / den)[ball], atol=1e-3)
    # the zero floor around the object does not brighten its rim as a plain high-pass does
    rim = ball & ~ndi.binary_erosion(ball)
    plain = highpass(a, 4.0, mask="none")[0]
    assert plain[rim].mean() > 30 and abs(out[0][rim].mean()) < 5
    assert np.all(out[0][~ball] == out[0][ball].min())  # a flat floor at the object's minimum
    assert np.array_equal(foreground_mask(out), ball)
    assert np.allclose(highpass(a, 4.0, mask="auto"), out)  # the auto mask finds the same ball


def test_highpass_rejects_bad_arguments():
    _, _, a = biased_cube()
    with pytest.raises(ValueError, match="sigma"):
        highpass(a, 0.0)
    with pytest.raises(ValueError, match="shape"):
        highpass(a[0], 3.0)
    with pytest.raises(ValueError, match="highpass_sigma"):
        Config(highpass_sigma=-1)


def test_normalize_for_applies_the_highpass_first():
    _, _, a = biased_cube()
    cfg = Config(highpass_sigma=6.0)
    assert np.array_equal(normalize_for(cfg, a), normalize(highpass(a, 6.0, "auto"), (0.5, 99.5), "auto"))
    assert np.array_equal(normalize_for(cfg.replace(normalize=False), a), highpass(a, 6.0, "auto"))
