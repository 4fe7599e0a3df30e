"""A level's assignment after the clustering: the class log-likelihoods, the intensity term and the Potts prior."""
import math

import numpy as np
import pytest

from hyperseg.cluster import make_clusterer
from hyperseg.config import Config
from hyperseg.regularize import class_loglik, intensity_loglik, potts_labels
from hyperseg.segment import LevelFit, fit_level, regularise_level


def test_kmeans_loglik_is_a_shared_isotropic_gaussian_in_euclidean_space():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0], [4.0, 3.0]])
    M = np.array([[0.5, 0.0], [4.0, 1.5]])
    lab = np.array([0, 0, 1, 1])
    # own distances 0.5, 0.5, 1.5, 1.5 -> s2 = mean(r^2) / dim = 1.25 / 2
    s2 = (0.25 + 0.25 + 2.25 + 2.25) / 4 / 2
    d = np.sqrt(((X[:, None] - M[None]) ** 2).sum(-1))
    L = class_loglik(X, lab, M, "kmeans", latent="euclidean")
    np.testing.assert_allclose(L, -d ** 2 / (2 * s2), rtol=1e-12)


def test_kmedians_loglik_uses_unsquared_poincare_distances():
    # points on one axis of the ball: d(x, 0) = 2 artanh(|x|) for c = 1
    X = np.array([[0.0, 0.0], [0.5, 0.0], [-0.3, 0.0]])
    M = np.array([[0.0, 0.0]])
    lab = np.zeros(3, dtype=np.int64)
    r = np.array([0.0, 2 * math.atanh(0.5), 2 * math.atanh(0.3)])
    b = r.mean() / 2
    np.testing.assert_allclose(class_loglik(X, lab, M, "kmedians", latent="hyperbolic", c=1.0)[:, 0], -r / b,
                               rtol=1e-9, atol=1e-12)


def test_the_mixture_loglik_is_its_own_in_the_levels_cluster_order():
    rng = np.random.default_rng(0)
    X = np.concatenate([0.05 * rng.standard_normal((60, 2)) + [0.5, 0.0],
                        0.02 * rng.standard_normal((60, 2)) + [0.0, 0.1]])
    est = make_clusterer("mixture", "hyperbolic", 2, c=1.0, seed=0).fit(X)
    order = np.array([1, 0])
    L = class_loglik(X, est.labels_, est.cluster_centers_[order], "mixture", estimator=est, order=order)
    np.testing.assert_array_equal(L, est.log_prob(X)[:, order])


def test_intensity_loglik_is_a_gaussian_per_cluster_fitted_on_its_voxels():
    x = np.array([0.0, 2.0, 10.0, 14.0])
    lab = np.array([0, 0, 1, 1])
    L = intensity_loglik(x, lab, 2)
    # cluster 0: mean 1, var 1; cluster 1: mean 12, var 4
    expect0 = -0.5 * (np.log(2 * np.pi * 1.0) + (x - 1.0) ** 2 / 1.0)
    expect1 = -0.5 * (np.log(2 * np.pi * 4.0) + (x - 12.0) ** 2 / 4.0)
    np.testing.assert_allclose(L, np.stack([expect0, expect1], 1), rtol=1e-12)


def test_potts_off_returns_the_clusterings_labels_and_on_removes_a_weakly_supported_speck():
    shape = (6, 6, 6)
    lab = np.zeros(shape, dtype=np.int64)
    lab[2, 2, 2] = 1  # a speck the data barely prefers
    L = np.zeros((lab.size, 2))
    L[:, 0] = 0.0
    L[:, 1] = -3.0
    L[np.ravel_multi_index((2, 2, 2), shape)] = [-0.1, 0.0]
    flat = lab.reshape(-1)
    np.testing.assert_array_equal(potts_labels(L, flat, shape, 0.0), flat)
    for method in ("icm", "mean_field"):
        out = potts_labels(L, flat, shape, 0.5, method=method)
        assert (out == 0).all(), method
    # evidence stronger than six disagreeing neighbours (6 x 0.5 nats) keeps the speck
    L[np.ravel_multi_index((2, 2, 2), shape)] = [-5.0, 0.0]
    for method in ("icm", "mean_field"):
        out = potts_labels(L, flat, shape, 0.5, method=method).reshape(shape)
        assert out[2, 2, 2] == 1 and out.sum() == 1, method


def _slab_volume(shape=(8, 8, 8)):
    """Two halves along W; the embedding of the one-voxel slab at w = 4 is smeared halfway to the other side."""
    truth = np.zeros(shape, dtype=np.int64)
    truth[:, :, 4:] = 1
    truth[:, :, 4] = 2  # one-voxel structure, as dark as the left half in the embedding's blur
    rng = np.random.default_rng(1)
    pts = np.where(truth[..., None] == 1, [0.4, 0.0], [-0.4, 0.0]).astype(np.float64)
    pts[truth == 2] = [0.05, 0.0]  # nearer the right half's centre than the left's: k-means puts it right
    pts += 0.01 * rng.standard_normal(pts.shape)
    intensity = np.where(truth == 0, -1.0, 1.0) + 0.02 * rng.standard_normal(shape)
    intensity[truth == 2] = -1.0 + 0.02 * rng.standard_normal(int((truth == 2).sum()))
    return truth, pts.reshape(-1, 2), intensity.reshape(-1, 1)


def test_the_intensity_term_moves_a_thin_structure_to_the_cluster_its_own_intensity_matches():
    truth, pts, values = _slab_volume()
    shape = truth.shape
    cfg = Config(level_clustering={}, kmeans_n_init=2, intensity_weight=0.0, potts_beta=0.0)
    fit = fit_level(pts, 2, cfg, seed=0)
    slab = (truth == 2).reshape(-1)
    right = (truth == 1).reshape(-1)
    assert (fit.labels[slab] == fit.labels[right][0]).all()  # the embedding alone puts the slab right
    off = regularise_level(pts, fit, cfg, shape, values)
    assert off is fit.labels
    on = regularise_level(pts, fit, cfg.replace(intensity_weight=8.0), shape, values)
    left = (truth == 0).reshape(-1)
    assert (on[slab] == on[left][0]).all()
    assert (on[right] == fit.labels[right]).all() and (on[left] == fit.labels[left]).all()


def test_regularise_level_without_intensities_refuses_an_intensity_weight():
    truth, pts, values = _slab_volume()
    cfg = Config(level_clustering={}, kmeans_n_init=1, intensity_weight=1.0)
    fit = LevelFit(labels=(truth > 0).reshape(-1).astype(np.int64), centres=np.array([[-0.4, 0.0], [0.4, 0.0]]),
                   method="kmeans", estimator=None, order=np.arange(2))
    with pytest.raises(ValueError, match="intensities"):
        regularise_level(pts, fit, cfg, truth.shape, None)


@pytest.mark.parametrize("bad, match", [
    (dict(potts_beta=-0.5), "potts_beta must be >= 0"),
    (dict(intensity_weight=-1.0), "intensity_weight must be >= 0"),
    (dict(potts_method="graphcut"), "potts_method must be one of icm, mean_field"),
    (dict(potts_iter=0), "potts_iter must be an integer >= 1"),
    (dict(hierarchy="divisive", level_clustering={}, potts_beta=1.0), "need hierarchy 'independent'"),
    (dict(hierarchy="agglomerative", level_clustering={}, intensity_weight=1.0), "need hierarchy 'independent'"),
])
def test_the_regularisation_settings_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        Config(**bad)


def test_segment_array_applies_the_intensity_term_and_the_potts_prior_to_every_level():
    import torch

    from hyperseg.data.preprocess import normalize_for
    from hyperseg.embed import embed_volume
    from hyperseg.model import HyperVAE
    from hyperseg.segment import segment_array
    from hyperseg.smooth import smooth_embedding

    torch.manual_seed(0)
    tiny = dict(encoder_channels=[4, 4], decoder_channels=[4, 4], hidden=8, gyro_channels=8, patch_edge=6,
                embed_patch_edge=6, kmeans_n_init=1, levels=[2, 3])
    rng = np.random.default_rng(0)
    image = (np.where(np.arange(12)[None, None, :] < 6, -1.0, 1.0) + 0.5 * rng.standard_normal((12, 12, 12)))
    image = image[None].astype(np.float32)
    cfg = Config(**tiny, intensity_weight=3.0, potts_beta=1.0, hierarchy="independent")
    model = HyperVAE(cfg).eval()
    seg = segment_array(model, image, levels=[2, 3])
    x = normalize_for(cfg, image, None)
    emb = embed_volume(model, torch.from_numpy(x))
    flat = smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c).reshape(-1, cfg.latent_dim)
    values = x.reshape(1, -1).T
    off = HyperVAE(cfg.replace(intensity_weight=0.0, potts_beta=0.0))
    off.load_state_dict(model.state_dict())  # the same encoder, regularisation off
    plain = segment_array(off.eval(), image, levels=[2, 3])
    for k in (2, 3):
        fit = fit_level(flat, k, cfg)
        expect = regularise_level(flat, fit, cfg, (12, 12, 12), values).reshape(12, 12, 12)
        np.testing.assert_array_equal(seg.labels[k], expect)
        assert seg.labels[k].dtype == np.uint8
        np.testing.assert_array_equal(plain.labels[k], fit.labels.reshape(12, 12, 12))
    assert any((seg.labels[k] != plain.labels[k]).any() for k in (2, 3))


# ----------------------------------------------------------------------------- foreground, masked prior, EM
from hyperseg.regularize import border_cluster, diagonal_gaussian_loglik, foreground_of, hmrf_em  # noqa: E402


def _sphere(shape=(12, 12, 12), r=4.0):
    d, h, w = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    return (d - c[0]) ** 2 + (h - c[1]) ** 2 + (w - c[2]) ** 2 <= r * r


def test_the_border_cluster_is_the_one_on_the_faces_whatever_its_number():
    ball = _sphere()
    for bg in (0, 1):
        labels = np.where(ball, 1 - bg, bg).reshape(-1)
        assert border_cluster(labels, ball.shape) == bg
        np.testing.assert_array_equal(foreground_of(labels, ball.shape).reshape(ball.shape), ball)


def test_a_hole_of_background_inside_the_foreground_is_foreground():
    ball = _sphere(r=5.0)
    core = _sphere(r=1.5)  # a "ventricle" labelled like the background, not connected to the border
    labels = np.where(ball & ~core, 1, 0).reshape(-1)
    fg = foreground_of(labels, ball.shape).reshape(ball.shape)
    assert fg[core].all() and (fg == ball).all()


def test_potts_labels_in_a_mask_match_the_masked_potts_on_the_full_grid():
    from hyperseg import potts

    rng = np.random.default_rng(3)
    shape = (6, 7, 5)
    mask = _sphere(shape, r=2.6).reshape(-1)
    L = rng.standard_normal((int(mask.sum()), 3))
    start = L.argmax(1)
    full = np.zeros((3, mask.size))
    full[:, mask] = L.T
    for method in ("icm", "mean_field"):
        got = potts_labels(L, start, shape, 0.7, method=method, n_iter=4, mask=mask)
        grid = full.reshape((3,) + shape)
        if method == "icm":
            s0 = np.zeros(mask.size, np.int64)
            s0[mask] = start
            want = potts.icm(grid, 0.7, labels=s0.reshape(shape), mask=mask.reshape(shape), n_iter=4)
        else:
            want = potts.mean_field(grid, 0.7, mask=mask.reshape(shape), n_iter=4).argmax(0)
        np.testing.assert_array_equal(got, want.reshape(-1)[mask])
    with pytest.raises(ValueError, match="one true voxel per row"):
        potts_labels(L[:-1], start[:-1], shape, 0.7, mask=mask)


def test_the_diagonal_gaussian_loglik_is_the_weighted_naive_density():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((30, 2))
    q = rng.random((3, 30))
    got = diagonal_gaussian_loglik(F, q)
    for k in range(3):
        w = q[k] / q[k].sum()
        mu = (w[:, None] * F).sum(0)
        var = (w[:, None] * (F - mu) ** 2).sum(0)
        want = sum(-0.5 * np.log(2 * np.pi * var[j]) - 0.5 * (F[:, j] - mu[j]) ** 2 / var[j] for j in range(2))
        np.testing.assert_allclose(got[:, k], want, rtol=1e-10)


def test_hmrf_em_moves_a_wrong_start_to_the_intensity_boundary_and_the_embedding_can_hold_it():
    rng = np.random.default_rng(1)
    shape = (10, 10, 10)
    truth = (np.indices(shape)[2] >= 5).reshape(-1).astype(np.int64)  # two slabs
    values = (2.0 * truth + 0.4 * rng.standard_normal(truth.size))[:, None]
    wrong = (np.indices(shape)[0] >= 5).reshape(-1).astype(np.int64)  # the start splits the other axis
    emb = np.stack([0.3 * wrong - 0.15 + 0.01 * rng.standard_normal(truth.size),
                    0.01 * rng.standard_normal(truth.size)], 1)  # an embedding that follows the start
    free = hmrf_em(emb, values, wrong, 2, shape, beta=0.5, embedding_weight=0.0, intensity_weight=1.0)
    agree = max((free == truth).mean(), (free != truth).mean())
    assert agree > 0.97  # intensities only: the EM leaves the start for the intensity boundary
    held = hmrf_em(emb, values, wrong, 2, shape, beta=0.5, embedding_weight=5.0, intensity_weight=1.0)
    assert (held == wrong).mean() > 0.97  # a heavy embedding weight keeps the embedding's partition
    with pytest.raises(ValueError, match="embedding_weight or intensity_weight"):
        hmrf_em(emb, values, wrong, 2, shape, beta=0.5, embedding_weight=0.0, intensity_weight=0.0)


@pytest.mark.parametrize("bad, match", [
    (dict(refine="gibbs"), "refine must be one of once, hmrf_em"),
    (dict(embedding_weight=-1.0), "embedding_weight must be >= 0"),
    (dict(embedding_weight_mm=-2.0), "embedding_weight_mm must be >= 0 mm"),
    (dict(refine_iter=0), "refine_iter must be an integer >= 1"),
    (dict(foreground="otsu"), "foreground must be one of split, threshold"),
    (dict(refine="hmrf_em", embedding_weight=0.0, intensity_weight=0.0), "needs embedding_weight or"),
    (dict(refine="hmrf_em", hierarchy="divisive", level_clustering={}, intensity_weight=0.0, potts_beta=0.0),
     "refine 'hmrf_em' refines each level"),
])
def test_the_refinement_settings_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        Config(**bad)


def _two_tissue_volume(shape=(16, 16, 16), seed=0):
    """A ball (two halves of different brightness) on a dark background, with noise: ``(1, D, H, W)``."""
    rng = np.random.default_rng(seed)
    ball = _sphere(shape, r=6.0)
    half = np.indices(shape)[2] >= shape[2] // 2
    x = np.where(ball, np.where(half, 3.0, 1.5), 0.0) + 0.2 * rng.standard_normal(shape)
    return x[None].astype(np.float32), ball, half


@pytest.mark.parametrize("foreground", ["split", "threshold"])
def test_foreground_levels_label_the_background_0_and_cluster_only_inside(foreground):
    import torch

    from hyperseg.model import HyperVAE
    from hyperseg.segment import segment_array

    torch.manual_seed(0)
    tiny = dict(encoder_channels=[4, 4], decoder_channels=[4, 4], hidden=8, gyro_channels=8, patch_edge=6,
                embed_patch_edge=6, kmeans_n_init=1, levels=[2, 3, 4])
    image, ball, half = _two_tissue_volume()
    model = HyperVAE(Config(**tiny, foreground=foreground, refine="hmrf_em", embedding_weight=0.1,
                            intensity_weight=1.0, potts_beta=0.5)).eval()
    seg = segment_array(model, image, levels=[2, 3, 4])
    fg = seg.labels[2] == 1
    assert set(np.unique(seg.labels[2])) == {0, 1}
    assert (fg == ball).mean() > 0.95
    for k in (3, 4):
        lab = seg.labels[k]
        np.testing.assert_array_equal(lab == 0, ~fg)  # background is 0 at every level, and only there
        assert set(np.unique(lab[fg])) <= set(range(1, k))
    inside = seg.labels[3][ball & fg]  # two tissue classes: the two halves
    agree = (inside == np.where(half[ball & fg], 2, 1)).mean()
    assert max(agree, 1 - agree) > 0.95
