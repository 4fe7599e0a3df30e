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
    cfg = Config(level_clustering={}, kmeans_n_init=2)
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
    cfg = Config(**tiny, intensity_weight=3.0, potts_beta=1.0)
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
