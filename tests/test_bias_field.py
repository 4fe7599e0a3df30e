"""The bias field of hidden-MRF EM (FAST's): estimated from residuals, it takes a smooth shading off the classes."""
import numpy as np
import pytest

from hyperseg.config import Config
from hyperseg.data.io import Volume
from hyperseg.pipeline import voxel_edge_mm
from hyperseg.regularize import bias_field_step, hmrf_em
from hyperseg.segment import FWHM_PER_SIGMA, bias_sigma_voxels

SHAPE = (20, 22, 24)


def _scene(seed: int = 0):
    """Two tissue classes in blobs (class means 0 and 1), a linear shading of 1.4 peak to peak, noise sd 0.12."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    truth = (gaussian_filter(rng.standard_normal(SHAPE), 2.0) > 0).astype(np.int64)
    ramp = np.broadcast_to(np.linspace(-0.7, 0.7, SHAPE[2]), SHAPE)
    values = truth + ramp + 0.12 * rng.standard_normal(SHAPE)
    return truth.reshape(-1), values.reshape(-1, 1), ramp.reshape(-1)


def _accuracy(labels, truth):
    agree = float(np.mean(labels == truth))
    return max(agree, 1.0 - agree)  # cluster numbers are arbitrary


def test_one_step_from_the_true_classes_recovers_the_shading():
    truth, values, ramp = _scene()
    q = np.eye(2)[truth].T
    field = bias_field_step(values, q, SHAPE, sigma=3.0)[:, 0]
    # the shading is linear, so the normalised Gaussian smoothing keeps it wherever the kernel fits (a linear
    # function is its own local weighted mean); the estimate is centred, so compare the centred ramp
    inner = np.zeros(SHAPE, bool)
    inner[:, :, 8:-8] = True
    err = (field - (ramp - ramp.mean()))[inner.reshape(-1)]
    # over the whole grid the faces count too, where the normalised convolution is one-sided (no data past
    # the grid) and pulls a ramp's ends towards the inside: 0.051 mean against 0.7 at the ends
    assert np.abs(err).max() < 0.08 and np.abs(field - ramp + ramp.mean()).mean() < 0.06
    # a later step, corrected by the previous field: a constant in that field would pass straight into the
    # residuals; the centring leaves the overall level to the class means
    again = bias_field_step(values, q, SHAPE, sigma=3.0, field=field[:, None] + 0.3)[:, 0]
    assert abs(again.mean()) < 0.01 and np.abs(again - field).mean() < 0.02


def test_the_em_with_the_field_separates_shaded_classes_the_em_without_it_mixes():
    truth, values, _ = _scene(1)
    start = (values[:, 0] > np.median(values)).astype(np.int64)  # a threshold: the shading decides it at the ends
    plain = hmrf_em(None, values, start, 2, SHAPE, beta=0.5, embedding_weight=0.0, n_iter=8)
    fixed = hmrf_em(None, values, start, 2, SHAPE, beta=0.5, embedding_weight=0.0, n_iter=8, bias_sigma=4.0)
    assert _accuracy(plain, truth) < 0.9
    assert _accuracy(fixed, truth) > 0.97


def test_the_field_stays_inside_the_mask_and_a_flat_volume_gets_none():
    truth, values, _ = _scene(2)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    m = mask.reshape(-1)
    flat = truth[m] + 0.0  # no shading, no noise: the residuals are 0
    field = bias_field_step(flat[:, None], np.eye(2)[truth[m]].T, SHAPE, sigma=3.0, mask=m)
    assert field.shape == (int(m.sum()), 1) and np.abs(field).max() < 1e-9
    with pytest.raises(ValueError, match="voxels for a mask"):
        bias_field_step(flat[:, None], np.eye(2)[truth[m]].T, SHAPE, sigma=3.0)


def test_fwhm_in_mm_becomes_sigma_in_voxels():
    cfg = Config(refine="hmrf_em", bias_fwhm=20.0)
    assert FWHM_PER_SIGMA == pytest.approx(2.354820045)
    assert bias_sigma_voxels(cfg, 1.0) == pytest.approx(8.4932, abs=1e-4)
    assert bias_sigma_voxels(cfg, 2.0) == pytest.approx(4.2466, abs=1e-4)
    assert bias_sigma_voxels(Config(), 1.0) == 0.0


def test_the_voxel_edge_is_read_in_mm():
    vol = np.zeros((1, 4, 4, 4), np.float32)
    assert voxel_edge_mm(Volume(array=vol, spacing=(2.0, 1.5, 3.0))) == 1.5  # no unit: read as mm
    assert voxel_edge_mm(Volume(array=vol, spacing=(2.0, 2.0, 2.0), unit="mm")) == 2.0
    assert voxel_edge_mm(Volume(array=vol, spacing=(500.0, 500.0, 500.0), unit="µm")) == pytest.approx(0.5)


def test_a_bias_field_needs_the_em():
    with pytest.raises(ValueError, match="bias_fwhm 20.0 is estimated by refine 'hmrf_em' only"):
        Config(bias_fwhm=20.0)
    with pytest.raises(ValueError, match="bias_fwhm must be >= 0"):
        Config(refine="hmrf_em", bias_fwhm=-1.0)
    assert Config().masked_config().bias_fwhm == 20.0  # the default's masked stage estimates one, as FAST does


@pytest.mark.parametrize("sigma", [4.25, 8.5])
def test_the_coarse_low_pass_gives_the_full_normalised_convolution(sigma):
    from scipy.ndimage import gaussian_filter

    from hyperseg.regularize import normalised_low_pass

    rng = np.random.default_rng(0)
    shape = (45, 54, 45)
    d, h, w = np.indices(shape)
    mask = ((d - 22) / 20) ** 2 + ((h - 27) / 25) ** 2 + ((w - 22) / 20) ** 2 < 1
    field = 0.3 * np.sin(d / 12.0) + 0.2 * np.cos(h / 15.0)
    r = field + 0.5 * rng.standard_normal(shape)
    wt = np.where(mask, rng.uniform(0.5, 2, shape), 0.0)
    full = gaussian_filter(wt * r, sigma, mode="constant") / gaussian_filter(wt, sigma, mode="constant")
    idx = np.flatnonzero(mask)
    fast = normalised_low_pass((wt * r).reshape(-1)[idx], wt.reshape(-1)[idx], idx, shape, sigma)[:, 0]
    err, own = np.abs(fast - full[mask]), np.abs(full - field)[mask]
    # measured: max 0.008 / 0.005, mean 0.0014 / 0.0013; the coarse grid read half a block off (cell centres
    # taken at the block's first voxel) fails these bounds
    assert err.max() < 0.011 and err.mean() < 0.0022 and err.mean() < 0.1 * own.mean()
    # f = 1: scipy's filter itself, channel by channel
    two = np.stack([(wt * r).reshape(-1)[idx], 2 * (wt * r).reshape(-1)[idx]], 1)
    got = normalised_low_pass(two, np.stack([wt.reshape(-1)[idx]] * 2, 1), idx, shape, 3.0)
    want = gaussian_filter(wt * r, 3.0, mode="constant") / gaussian_filter(wt, 3.0, mode="constant")
    np.testing.assert_allclose(got[:, 0], want[mask], rtol=1e-10)
    np.testing.assert_allclose(got[:, 1], 2 * want[mask], rtol=1e-10)


def test_the_em_on_the_masks_bounding_box_is_the_em_on_the_grid():
    from hyperseg.regularize import _crop_to_mask

    truth, values, _ = _scene(3)
    mask = np.zeros(SHAPE, bool)
    mask[3:15, 4:20, 2:17] = True
    mask[5, 6, 3] = False
    m = mask.reshape(-1)
    shape, cut = _crop_to_mask(SHAPE, m)
    assert shape == (12, 16, 15) and cut.sum() == m.sum()
    start = (values[m, 0] > np.median(values[m])).astype(np.int64)
    got = hmrf_em(None, values[m], start, 2, SHAPE, beta=0.5, embedding_weight=0.0, mask=m, bias_sigma=3.0)
    # the same EM with the crop undone: a grid that is the box itself
    again = hmrf_em(None, values[m], start, 2, shape, beta=0.5, embedding_weight=0.0, mask=cut, bias_sigma=3.0)
    np.testing.assert_array_equal(got, again)
    assert _accuracy(got, truth[m]) > 0.97


def _three_tissues(seed: int = 0):
    """Three classes (means 0, 1, 2: CSF, GM, WM) in blobs inside a box mask, a linear shading of 1.0 peak to
    peak, noise sd 0.1; returns (values (N, 1), mask (N,), points (N, 2) a weak embedding)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.standard_normal(SHAPE), 2.0)
    truth = np.digitize(g, np.quantile(g, [0.25, 0.6]))
    ramp = np.broadcast_to(np.linspace(-0.5, 0.5, SHAPE[2]), SHAPE)
    values = (truth + ramp + 0.1 * rng.standard_normal(SHAPE)).reshape(-1, 1)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    points = 0.3 * np.tanh(0.2 * rng.standard_normal((values.shape[0], 2)))
    return values, mask.reshape(-1), points


def test_hmrf_em_returns_the_field_it_subtracted_last():
    values, mask, _ = _three_tissues()
    start = np.digitize(values[mask, 0], [0.5, 1.5])
    plain = hmrf_em(None, values[mask], start, 3, SHAPE, beta=0.5, embedding_weight=0.0, mask=mask, bias_sigma=3.0)
    labels, field = hmrf_em(None, values[mask], start, 3, SHAPE, beta=0.5, embedding_weight=0.0, mask=mask,
                            bias_sigma=3.0, return_field=True)
    np.testing.assert_array_equal(labels, plain)
    assert field.shape == (int(mask.sum()), 1)
    assert np.corrcoef(field[:, 0], values[mask, 0] - start)[0, 1] > 0.5  # the field follows the shading
    assert hmrf_em(None, values[mask], start, 3, SHAPE, beta=0.5, embedding_weight=0.0, mask=mask,
                   return_field=True)[1] is None


def test_bias_classes_fits_one_field_that_every_level_holds_fixed():
    """``bias_classes: 3``: the field of the 3-class EM, subtracted once; level 4 is that EM's labels, level 3 the
    2-class EM on the corrected intensities with no field of its own (the naive sequence beside the stage)."""
    from hyperseg.regularize import intensity_kmeans
    from hyperseg.segment import refined_levels, tissue_bias_field

    values, mask, points = _three_tissues(1)
    cfg = Config(hierarchy="foreground", foreground="threshold", refine="hmrf_em", refine_init="intensity",
                 embedding_weight=0.1, intensity_weight=1.0, potts_beta=1.0, bias_fwhm=6.0, bias_classes=3,
                 overcluster=1)
    fields = {k: points for k in (2, 3, 4)}
    got = refined_levels(fields, values, cfg, SHAPE, foreground=mask, voxel_size=1.0)
    sigma = bias_sigma_voxels(cfg, 1.0)
    tissue, field = tissue_bias_field(points[mask], values[mask], cfg, SHAPE, mask, 1.0)
    np.testing.assert_array_equal(got[4][mask], tissue + 1)
    corrected = values[mask] - field
    two = hmrf_em(points[mask], corrected, intensity_kmeans(corrected, 2), 2, SHAPE, cfg.potts_beta,
                  embedding_weight=cfg.embedding_weight, intensity_weight=1.0, n_iter=cfg.refine_iter, mask=mask,
                  bias_sigma=0.0)
    np.testing.assert_array_equal(got[3][mask], two + 1)
    assert (got[3][~mask] == 0).all() and (got[4][~mask] == 0).all()
    # bias_classes 0: each level fits its own field (the stage before bias_classes)
    per_level = refined_levels(fields, values, cfg.replace(bias_classes=0), SHAPE, foreground=mask, voxel_size=1.0)
    own = hmrf_em(points[mask], values[mask], intensity_kmeans(values[mask], 2), 2, SHAPE, cfg.potts_beta,
                  embedding_weight=cfg.embedding_weight, intensity_weight=1.0, n_iter=cfg.refine_iter, mask=mask,
                  bias_sigma=sigma)
    np.testing.assert_array_equal(per_level[3][mask], own + 1)
    np.testing.assert_array_equal(per_level[4][mask], tissue + 1)  # the 3-class level is the same EM either way


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bias_classes_must_be_a_count(bad):
    with pytest.raises(ValueError, match="bias_classes"):
        Config(bias_classes=bad)
