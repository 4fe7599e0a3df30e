"""From a volume to label maps: shapes, dtypes, and an easy case done right."""
import numpy as np
import pytest
import torch

from hyperseg.config import Config
from hyperseg.metrics import dice_iou
from hyperseg.model import HyperVAE
from hyperseg.segment import cluster_points, segment_array
from hyperseg.train import train

TINY = dict(encoder_channels=[4, 4], decoder_channels=[4, 4], hidden=8, gyro_channels=8, patch_edge=6,
            embed_patch_edge=6, kmeans_n_init=2)


def two_regions(shape=(16, 16, 16)) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros(shape, dtype=np.int64)
    truth[:, :, shape[2] // 2:] = 1
    rng = np.random.default_rng(0)
    image = np.where(truth == 1, 3.0, -3.0) + 0.05 * rng.standard_normal(shape)
    return image[None].astype(np.float32), truth


def test_two_flat_regions_are_separated_after_a_short_training(tmp_path):
    torch.manual_seed(0)
    image, truth = two_regions((20, 20, 20))
    cfg = Config(**TINY, parent_range=[4, 10], child_range=[3, 6], batch_size=8, n_samples=1, lr=3e-3)
    model = train(cfg, [image], tmp_path / "run", steps=60, progress=False)
    seg = segment_array(model, image, levels=[2])
    lab = seg.labels[2]
    assert lab.shape == truth.shape and lab.dtype == np.uint8
    # away from the interface (patches that straddle it may go either way) it is exact
    inner = np.ones_like(truth, bool)
    inner[:, :, 7:13] = False
    assert dice_iou(lab[inner], truth[inner])["mean_dice"] == 1.0
    assert dice_iou(lab, truth)["mean_dice"] > 0.9
    assert seg.embedding.shape == (20, 20, 20, cfg.latent_dim)
    assert (np.linalg.norm(seg.embedding, axis=-1) < 1).all()


def test_each_level_has_at_most_k_labels_and_is_reproducible():
    torch.manual_seed(1)
    model = HyperVAE(Config(**TINY))
    image = np.random.default_rng(1).standard_normal((1, 12, 10, 8)).astype(np.float32)
    a = segment_array(model, image, levels=[2, 3, 5], seed=3)
    b = segment_array(model, image, levels=[2, 3, 5], seed=3)
    for k in (2, 3, 5):
        assert a.labels[k].max() < k
        assert np.array_equal(a.labels[k], b.labels[k])


def test_labels_are_ordered_by_centroid_distance_from_the_origin():
    cfg = Config(**TINY)
    rng = np.random.default_rng(0)
    far = np.array([0.8, 0.0]) + 0.01 * rng.standard_normal((50, 2))
    near = 0.01 * rng.standard_normal((50, 2))
    labels = cluster_points(np.concatenate([far, near]), 2, cfg)
    assert (labels[50:] == 0).all() and (labels[:50] == 1).all()


def test_the_clustered_embedding_is_the_smoothed_field_of_encoder_means():
    from hyperseg.data.preprocess import normalize_for
    from hyperseg.embed import embed_volume
    from hyperseg.smooth import smooth_embedding

    torch.manual_seed(2)
    model = HyperVAE(Config(**TINY, smooth_sigma=1.5))
    image = np.random.default_rng(2).standard_normal((1, 12, 11, 10)).astype(np.float32)
    seg = segment_array(model, image, levels=[3])
    raw = embed_volume(model, torch.from_numpy(normalize_for(model.cfg, image)))
    np.testing.assert_allclose(seg.embedding, smooth_embedding(raw, 1.5), atol=1e-6)
    assert not np.allclose(seg.embedding, raw.numpy(), atol=1e-3)  # it did smooth
    model.cfg = model.cfg.replace(smooth_sigma=0.0)
    np.testing.assert_allclose(segment_array(model, image, levels=[3]).embedding, raw.numpy(), atol=1e-6)


def test_a_level_with_its_own_sigma_is_clustered_on_its_own_smoothed_field():
    torch.manual_seed(4)
    image = np.random.default_rng(4).standard_normal((1, 14, 12, 10)).astype(np.float32)
    model = HyperVAE(Config(**TINY, smooth_sigma=1.0, hierarchy="independent"))
    plain = segment_array(model, image, levels=[2, 3])
    model.cfg = model.cfg.replace(smooth_sigma=3.0)
    coarse = segment_array(model, image, levels=[2])
    model.cfg = model.cfg.replace(smooth_sigma=1.0, level_smooth_sigma={2: 3.0})
    mixed = segment_array(model, image, levels=[2, 3])
    assert np.array_equal(mixed.labels[2], coarse.labels[2])  # k = 2 on the sigma-3 field
    assert np.array_equal(mixed.labels[3], plain.labels[3])  # k = 3 keeps smooth_sigma
    np.testing.assert_array_equal(mixed.embedding, plain.embedding)


def test_level_sigmas_are_validated():
    import pytest

    with pytest.raises(ValueError, match="level_smooth_sigma must map"):
        Config(level_smooth_sigma={0: 1.0})
    with pytest.raises(ValueError, match="needs hierarchy 'independent'"):
        Config(level_smooth_sigma={2: 4.0}, hierarchy="divisive")


def test_a_level_with_its_own_clustering_method_uses_it_and_the_others_keep_theirs():
    torch.manual_seed(5)
    image = np.random.default_rng(5).standard_normal((1, 14, 12, 10)).astype(np.float32)
    model = HyperVAE(Config(**TINY, level_clustering={}, hierarchy="independent"))
    plain = segment_array(model, image, levels=[2, 3])
    model.cfg = model.cfg.replace(clustering="kmedians")
    medians = segment_array(model, image, levels=[2])
    model.cfg = model.cfg.replace(clustering="kmeans", level_clustering={2: "kmedians"})
    mixed = segment_array(model, image, levels=[2, 3])
    assert np.array_equal(mixed.labels[2], medians.labels[2])  # k = 2 by k-medians
    assert not np.array_equal(mixed.labels[2], plain.labels[2])  # which differs from k-means here
    assert np.array_equal(mixed.labels[3], plain.labels[3])  # k = 3 keeps k-means


def test_level_clustering_is_validated():
    import pytest

    with pytest.raises(ValueError, match="level_clustering must map"):
        Config(level_clustering={2: "kmedoids"})
    with pytest.raises(ValueError, match="level_clustering must map"):
        Config(level_clustering={0: "kmedians"})
    # nested levels are one k-means tree: the untouched default (k-medians at k = 2) is allowed, not applied
    assert Config(hierarchy="divisive").level_clustering == {2: "kmedians"}


@pytest.mark.parametrize("hierarchy", ["divisive", "agglomerative"])
def test_nested_levels_refuse_a_clustering_they_would_not_apply(hierarchy):
    for setting in ({"level_clustering": {4: "mixture"}}, {"level_clustering": {2: "kmedians", 4: "kmeans"}},
                    {"clustering": "kmedians", "level_clustering": {}}, {"clustering": "mixture"}):
        with pytest.raises(ValueError, match=f"hierarchy '{hierarchy}' cuts every level from one k-means tree"):
            Config(hierarchy=hierarchy, **setting)
    for setting in ({}, {"level_clustering": {}}, {"level_clustering": {2: "kmeans"}}):
        Config(hierarchy=hierarchy, **setting)  # k-means at every level, as nested levels are
