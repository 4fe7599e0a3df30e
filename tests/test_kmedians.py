"""k-medians in the Poincare ball and in R^d: the geometric median, the estimator, its use in segmentation."""
import math

import numpy as np
import pytest
import torch

from hyperseg.cluster import EuclideanKMedians, HyperbolicKMeans, HyperbolicKMedians, geometric_median
from hyperseg.config import Config
from hyperseg.geometry.poincare import expmap, expmap0, pairwise_dist
from hyperseg.segment import cluster_points

from test_cluster import ball_blobs, py_dist, py_mobius_add, same_partition


def py_geometric_median(points, iters=3000):
    """Weiszfeld on the ball, one point at a time: m <- exp_m(sum w_i log_m x_i / sum w_i), w_i = 1/d_i."""
    m = [sum(p[j] for p in points) / len(points) * 0.5 for j in range(len(points[0]))]
    for _ in range(iters):
        lam = 2 / (1 - sum(a * a for a in m))
        acc, wsum = [0.0] * len(m), 0.0
        for p in points:
            u = py_mobius_add([-a for a in m], p)
            nu = math.sqrt(sum(a * a for a in u))
            if nu > 1e-14:
                d = 2 * math.atanh(nu)
                log = [2 / lam * math.atanh(nu) * a / nu for a in u]  # Riemannian norm d
                acc = [s + a / d for s, a in zip(acc, log)]
                wsum += 1 / d
        v = [s / wsum for s in acc]
        nv = math.sqrt(sum(a * a for a in v))
        if nv < 1e-15:
            break
        m = py_mobius_add(m, [math.tanh(lam * nv / 2) * a / nv for a in v])
    return m


def sum_dist(m, points):
    return sum(py_dist(m, p) for p in points)


# -- the geometric median ----------------------------------------------------------

def test_geometric_median_matches_naive_weiszfeld_and_is_a_minimiser():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)) * 0.5
    X = X / np.maximum(1.0, np.linalg.norm(X, axis=1, keepdims=True) / 0.9)
    labels = rng.integers(0, 2, 40)
    ours = geometric_median(X, labels, n_clusters=2)
    for k in range(2):
        pts = X[labels == k].tolist()
        assert py_dist(ours[k].tolist(), py_geometric_median(pts)) < 1e-7
        f0 = sum_dist(ours[k].tolist(), pts)
        for dm in ([1e-4, 0], [0, 1e-4], [-1e-4, 0], [0, -1e-4]):
            assert f0 <= sum_dist((ours[k] + np.array(dm)).tolist(), pts)


def test_geometric_median_ignores_a_far_outlier_group_that_drags_the_frechet_mean():
    """Five points at the centre and two far away: the median stays, the Frechet mean moves."""
    centre = np.zeros((5, 2)) + np.array([[0.0, 0.0], [0.01, 0], [-0.01, 0], [0, 0.01], [0, -0.01]])
    far = np.array([[0.95, 0.0], [0.95, 0.01]])
    X = np.concatenate([centre, far])
    from hyperseg.cluster import frechet_mean
    med, mean = geometric_median(X), frechet_mean(X)
    assert py_dist(med.tolist(), [0.0, 0.0]) < 0.05
    assert py_dist(mean.tolist(), [0.0, 0.0]) > 0.5


def test_geometric_median_of_points_symmetric_about_p_is_p_for_any_curvature():
    for c in (1.0, 2.5):
        p = torch.tensor([0.3, -0.45], dtype=torch.float64) / math.sqrt(c)
        g = torch.Generator().manual_seed(1)
        v = 0.3 * torch.randn(20, 2, generator=g, dtype=torch.float64)
        pts = expmap(p.expand(40, 2), torch.cat([v, -v]), c)  # geodesic reflections through p
        np.testing.assert_allclose(geometric_median(pts, c=c), p.numpy(), atol=1e-9)


def test_geometric_median_reaches_the_median_from_a_data_point():
    """Seeded on a data point (distance 0: no direction), the guard still lets it move."""
    X = np.array([[0.3, 0.0], [0.0, 0.3], [-0.3, 0.0], [0.0, -0.3], [0.2, 0.2], [0.25, -0.1]])
    med = geometric_median(X, init=X[:1])
    assert py_dist(med.tolist(), X[0].tolist()) > 0.05
    assert py_dist(med.tolist(), py_geometric_median(X.tolist())) < 1e-7


# -- the estimators ------------------------------------------------------------------

def test_separated_blobs_are_recovered_and_centres_are_cluster_medians():
    X, y = ball_blobs(150, [2.0, 3.0, 1.0, 2.5], sigma=0.3)
    km = HyperbolicKMedians(n_clusters=4, seed=0, tol=1e-10, max_iter=2000).fit(X)
    assert same_partition(km.labels_, y)
    assert km.labels_.dtype == np.int64 and km.cluster_centers_.shape == (4, 2)
    for k in range(4):
        pts = X[km.labels_ == k].tolist()
        assert py_dist(km.cluster_centers_[k].tolist(), py_geometric_median(pts)) < 1e-5


def test_inertia_is_the_sum_of_unsquared_distances_and_predict_agrees():
    X, _ = ball_blobs(100, [1.0, 2.0, 3.0], sigma=0.8, seed=4)
    km = HyperbolicKMedians(n_clusters=3, seed=1).fit(X)
    d = pairwise_dist(torch.from_numpy(X), torch.from_numpy(km.cluster_centers_), 1.0).numpy()
    np.testing.assert_array_equal(km.labels_, d.argmin(1))
    assert km.inertia_ == pytest.approx(float(d.min(1).sum()), rel=1e-9)
    np.testing.assert_array_equal(km.predict(X), km.labels_)


def two_regions_and_a_small_group(latent: str = "hyperbolic") -> tuple[np.ndarray, np.ndarray]:
    """Two large, adjacent groups A and B (1000 points each, 0.6 apart in the tangent plane) and a small group C
    (60 points) 3 away; ball points (``expmap0`` of the tangent points) or, for ``"euclidean"``, the tangent points.

    2-means prefers {A+B, C} (its objective is lower), 2-medians {A, B+C}, in both geometries. Labels 0, 1, 2.
    """
    g = torch.Generator().manual_seed(0)

    def blob(n, centre):
        return torch.tensor(centre, dtype=torch.float64) + 0.08 * torch.randn(n, 2, generator=g, dtype=torch.float64)

    tang = torch.cat([blob(1000, [-0.3, 0.0]), blob(1000, [0.3, 0.0]), blob(60, [0.0, 3.0])])
    X = expmap0(tang).numpy() if latent == "hyperbolic" else tang.numpy()
    return X, np.repeat([0, 1, 2], [1000, 1000, 60])


def a_and_b_together(labels: np.ndarray, y: np.ndarray) -> bool:
    """Whether A and B share a cluster; each must stay whole (C, above their midpoint, may go either way)."""
    a, b = labels[y == 0], labels[y == 1]
    assert (a == a[0]).all() and (b == b[0]).all(), "A and B must each stay whole"
    if a[0] == b[0]:
        assert (labels[y == 2] != a[0]).all(), "with A and B together, C is the other cluster"
    return bool(a[0] == b[0])


def test_two_large_regions_beat_a_small_distant_group_where_2_means_does_not():
    """The level-1 failure in miniature (kmedians.py docstring)."""
    X, y = two_regions_and_a_small_group()
    assert a_and_b_together(HyperbolicKMeans(n_clusters=2, n_init=8, seed=0).fit(X).labels_, y)
    assert not a_and_b_together(HyperbolicKMedians(n_clusters=2, n_init=8, seed=0).fit(X).labels_, y)


def test_euclidean_kmedians_matches_the_flat_weiszfeld_median():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(80, 3)), rng.normal(size=(80, 3)) + 6.0])
    km = EuclideanKMedians(n_clusters=2, seed=0, tol=1e-12, max_iter=5000).fit(X)
    assert same_partition(km.labels_, np.repeat([0, 1], 80))
    for k in range(2):
        P = X[km.labels_ == k]
        m = P.mean(0)
        for _ in range(5000):  # textbook Weiszfeld
            w = 1 / np.linalg.norm(P - m, axis=1)
            m = (w[:, None] * P).sum(0) / w.sum()
        np.testing.assert_allclose(km.cluster_centers_[k], m, atol=1e-6)
    assert km.inertia_ == pytest.approx(float(np.linalg.norm(X - km.cluster_centers_[km.labels_], axis=1).sum()))


def test_same_seed_same_result():
    X, _ = ball_blobs(80, [1.0, 2.0, 3.0], sigma=1.0, seed=5)
    a = HyperbolicKMedians(n_clusters=3, seed=7).fit(X)
    b = HyperbolicKMedians(n_clusters=3, seed=7).fit(torch.from_numpy(X))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_


@pytest.mark.parametrize("kwargs, msg", [
    ({"median_iters": 0}, "median_iters"),
    ({"c": -1.0}, "curvature"),
    ({"n_clusters": 0}, "n_clusters"),
])
def test_invalid_parameters_are_refused(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        HyperbolicKMedians(**kwargs)


def test_get_params_lists_the_constructor_arguments():
    p = HyperbolicKMedians(n_clusters=3, median_iters=2).get_params()
    assert p["median_iters"] == 2 and p["n_clusters"] == 3 and "frechet_iters" not in p


# -- segmentation ------------------------------------------------------------------

@pytest.mark.parametrize("latent", ["hyperbolic", "euclidean"])
def test_cluster_points_runs_the_method_the_config_names(latent):
    """On data where 2-means and 2-medians disagree, each setting gives its own method's partition."""
    X, y = two_regions_and_a_small_group(latent)
    base = Config(latent=latent, decoder_input="linear" if latent == "euclidean" else "gyroplane", kmeans_n_init=8)
    means = cluster_points(X, 2, base.replace(clustering="kmeans", level_clustering={}))
    medians = cluster_points(X, 2, base.replace(clustering="kmedians", level_clustering={}))
    assert a_and_b_together(means, y) and not a_and_b_together(medians, y)
    # the default level_clustering {2: "kmedians"} overrides clustering "kmeans" at two clusters
    assert not a_and_b_together(cluster_points(X, 2, base), y)
    assert a_and_b_together(cluster_points(X, 2, base.replace(level_clustering={2: "kmeans"}, clustering="kmedians")), y)
    # and the estimator is the latent's own: the Euclidean k-medians partition of ball points would be another one
    ref = (HyperbolicKMedians(n_clusters=2, n_init=8, seed=0, sample_size=base.kmeans_sample) if latent == "hyperbolic"
           else EuclideanKMedians(n_clusters=2, n_init=8, seed=0, sample_size=base.kmeans_sample))
    assert same_partition(medians, ref.fit(X).labels_)


def test_config_refuses_an_unknown_clustering_with_the_choices():
    with pytest.raises(ValueError, match="kmeans, mixture, kmedians"):
        Config(clustering="kmedoids")
