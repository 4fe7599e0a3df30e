"""Clustering with a scale per cluster (hyperseg.mixture) beside plain k-means."""
import numpy as np
import pytest
import torch

from hyperseg.cluster import EuclideanMixture, HyperbolicKMeans, HyperbolicMixture
from hyperseg.errors import NotFittedError
from hyperseg.geometry import WrappedNormal
from hyperseg.metrics import mean_dice


def _compact_and_wide(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A compact blob (scale 0.05) beside a wide cloud (scale 0.5) on the 2-D ball."""
    torch.manual_seed(seed)
    a = WrappedNormal(torch.tensor([[0.55, 0.0]], dtype=torch.float64), torch.full((1, 2), 0.05, dtype=torch.float64))
    b = WrappedNormal(torch.tensor([[-0.1, 0.0]], dtype=torch.float64), torch.full((1, 2), 0.5, dtype=torch.float64))
    X = torch.cat([a.rsample(torch.Size([1500]))[:, 0], b.rsample(torch.Size([3000]))[:, 0]]).numpy()
    return X, np.repeat([0, 1], [1500, 3000])


def test_log_density_is_the_wrapped_normal_one():
    """Each component's log-density equals WrappedNormal.log_prob with an isotropic scale."""
    X, _ = _compact_and_wide()
    m = HyperbolicMixture(2, seed=0).fit(X)
    lp = m.log_prob(X[:50])
    for j in range(2):
        wn = WrappedNormal(torch.from_numpy(m.cluster_centers_[j][None]),
                           torch.full((1, 2), float(np.sqrt(m.variances_[j])), dtype=torch.float64))
        ref = wn.log_prob(torch.from_numpy(X[:50])[:, None]).numpy().reshape(-1) + np.log(m.weights_[j])
        np.testing.assert_allclose(lp[:, j], ref, rtol=1e-6, atol=1e-6)


def test_separates_a_compact_blob_from_a_wide_cloud_where_kmeans_does_not():
    X, truth = _compact_and_wide()
    mix = HyperbolicMixture(2, seed=0).fit(X)
    km = HyperbolicKMeans(2, seed=0).fit(X)
    assert mean_dice(mix.labels_, truth) > 0.95
    assert mean_dice(mix.labels_, truth) > mean_dice(km.labels_, truth) + 0.05
    small = int(np.argmin(mix.variances_))
    assert np.sqrt(mix.variances_[small]) == pytest.approx(0.05, rel=0.3)


def test_euclidean_mixture_and_api():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.05, (500, 2)) + [1, 0], rng.normal(0, 0.6, (1000, 2))])
    m = EuclideanMixture(2, seed=0, sample_size=800)
    with pytest.raises(NotFittedError):
        m.predict(X)
    labels = m.fit_predict(X)
    assert labels.shape == (1500,) and np.array_equal(labels, m.predict(X))
    sd = np.sort(np.sqrt(m.variances_))  # isotropic per-axis scales of the two clusters
    assert sd[0] == pytest.approx(0.05, rel=0.3) and sd[1] == pytest.approx(0.6, rel=0.2)
    assert m.weights_.sum() == pytest.approx(1.0)


def test_bad_parameters():
    with pytest.raises(ValueError, match="n_clusters"):
        HyperbolicMixture(0)
    with pytest.raises(ValueError, match="n_init"):
        HyperbolicMixture(2, n_init=0)
    with pytest.raises(ValueError, match="curvature"):
        HyperbolicMixture(2, c=-1.0)
    with pytest.raises(ValueError, match="finite"):
        HyperbolicMixture(2).fit(np.array([[0.1, np.nan], [0.2, 0.1], [0.0, 0.0]]))
