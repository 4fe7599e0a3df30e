"""Nested (hierarchy-consistent) clustering: finer levels split coarser ones."""
import numpy as np
import pytest

from hyperseg.config import Config
from hyperseg.cluster import NestedClustering
from hyperseg.segment import cluster_levels

from test_kmedians import a_and_b_together, two_regions_and_a_small_group


def _tree_blobs(n_per: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points in the 2-D ball: 2 far-apart groups, each of 2 sub-blobs (4 leaves)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.6, 0.0], [0.6, 0.25], [-0.6, 0.0], [-0.6, -0.25]])
    X = np.concatenate([c + 0.03 * rng.standard_normal((n_per, 2)) for c in centres])
    leaf = np.repeat(np.arange(4), n_per)
    return X, leaf // 2, leaf


def _nested(coarse: np.ndarray, fine: np.ndarray) -> bool:
    """Every fine cluster lies inside exactly one coarse cluster."""
    return all(len(np.unique(coarse[fine == f])) == 1 for f in np.unique(fine))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("method", ["divisive", "agglomerative"])
@pytest.mark.parametrize("latent", ["hyperbolic", "euclidean"])
def test_recovers_a_two_level_tree(method, latent):
    X, top, leaf = _tree_blobs()
    out = NestedClustering([4, 2], method=method, latent=latent, n_init=2, seed=0).fit_predict(X)
    assert sorted(out) == [2, 4]
    assert _same_partition(out[2], top) and _same_partition(out[4], leaf)


@pytest.mark.parametrize("method", ["divisive", "agglomerative"])
def test_levels_nest_for_every_point_even_beyond_the_sample(method):
    rng = np.random.default_rng(1)
    X = 0.7 * rng.uniform(-1, 1, (3000, 2)) / np.sqrt(2)  # no cluster structure at all
    out = NestedClustering([2, 3, 5, 7], method=method, sample_size=500, n_init=1, seed=0).fit_predict(X)
    for k, lab in out.items():
        assert lab.shape == (3000,) and sorted(np.unique(lab)) == list(range(k))
    assert _nested(out[2], out[3]) and _nested(out[3], out[5]) and _nested(out[5], out[7])


@pytest.mark.parametrize("latent", ["hyperbolic", "euclidean"])
def test_divisive_coarsest_level_is_plain_kmeans_not_kmedians(latent):
    """On data where 2-means and 2-medians disagree, the divisive level 2 is the independent 2-means."""
    X, y = two_regions_and_a_small_group(latent)
    cfg = Config(latent=latent, decoder_input="linear" if latent == "euclidean" else "gyroplane", kmeans_n_init=8)
    means = cluster_levels(X, [2], cfg.replace(level_clustering={}))[2]
    medians = cluster_levels(X, [2], cfg)[2]  # the default level_clustering: k-medians at 2 clusters
    assert a_and_b_together(means, y) and not a_and_b_together(medians, y)
    for hierarchy in ("divisive", "agglomerative"):
        nested = cluster_levels(X, [2, 4], cfg.replace(hierarchy=hierarchy))
        assert _nested(nested[2], nested[4])
        if hierarchy == "divisive":
            assert _same_partition(nested[2], means)  # the same k-means (nested labels are not ordered by norm)
        else:
            assert a_and_b_together(nested[2], y)  # merged from k-means at 4: not the k-medians partition either


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="method"):
        NestedClustering([2, 4], method="bogus")
    with pytest.raises(ValueError, match="levels"):
        NestedClustering([], method="divisive")
    with pytest.raises(ValueError, match="hierarchy"):
        Config(hierarchy="tree")
