import math

import numpy as np
import pytest
import torch

from hyperseg.cluster import EuclideanKMeans, HyperbolicKMeans, frechet_mean
from hyperseg.errors import NotFittedError
from hyperseg.geometry.poincare import expmap, expmap0, pairwise_dist, transp0


def ball_blobs(n_per, centres_dist, sigma=0.05, seed=0, c=1.0, dim=2):
    """Wrapped-normal blobs: centres at hyperbolic distance ``centres_dist`` from 0, evenly spread."""
    g = torch.Generator().manual_seed(seed)
    k = len(centres_dist)
    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    dirs = torch.zeros(k, dim, dtype=torch.float64)
    dirs[:, 0], dirs[:, 1] = ang.cos(), ang.sin()
    # d(0, expmap0(u)) = 2|u| for any c: centres at distance r / sqrt(c), i.e. the c = 1 layout rescaled
    mu = expmap0(torch.tensor(centres_dist, dtype=torch.float64)[:, None] / 2 * dirs / math.sqrt(c), c)
    y = torch.arange(k).repeat_interleave(n_per)
    v = sigma * torch.randn(len(y), dim, generator=g, dtype=torch.float64) / 2
    x = expmap(mu[y], transp0(mu[y], v, c), c)
    return x.numpy(), y.numpy()


def same_partition(a, b):
    """True when labels a and b differ only by a permutation of the label values."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# -- plain-Python reference maths (no torch, no geoopt) -------------------------

def py_dist(x, y):
    sq = sum((a - b) ** 2 for a, b in zip(x, y))
    return math.acosh(1 + 2 * sq / ((1 - sum(a * a for a in x)) * (1 - sum(b * b for b in y))))


def py_mobius_add(x, y):
    xy = sum(a * b for a, b in zip(x, y))
    x2, y2 = sum(a * a for a in x), sum(b * b for b in y)
    den = 1 + 2 * xy + x2 * y2
    return [((1 + 2 * xy + y2) * a + (1 - x2) * b) / den for a, b in zip(x, y)]


def py_karcher_mean(points, iters=500):
    """m <- exp_m(mean_i log_m(x_i)) with the unit ball's exp/log maps, one point at a time."""
    m = list(points[0])
    for _ in range(iters):
        lam = 2 / (1 - sum(a * a for a in m))
        acc = [0.0] * len(m)
        for p in points:
            u = py_mobius_add([-a for a in m], p)
            nu = math.sqrt(sum(a * a for a in u))
            if nu > 0:
                acc = [s + 2 / lam * math.atanh(nu) * a / nu for s, a in zip(acc, u)]
        v = [s / len(points) for s in acc]
        nv = math.sqrt(sum(a * a for a in v))
        if nv < 1e-15:
            break
        m = py_mobius_add(m, [math.tanh(lam * nv / 2) * a / nv for a in v])
    return m


# -- hyperbolic k-means -------------------------------------------------------------

def test_separated_ball_blobs_are_recovered_exactly():
    X, y = ball_blobs(200, [2.0, 3.0, 1.0, 2.5, 3.5], sigma=0.3)
    km = HyperbolicKMeans(n_clusters=5, seed=0).fit(X)
    assert same_partition(km.labels_, y)
    assert km.labels_.dtype == np.int64 and km.labels_.shape == (1000,)
    assert km.cluster_centers_.shape == (5, 2) and km.n_iter_ >= 1


def test_frechet_mean_of_points_symmetric_about_p_is_p():
    for c in (1.0, 2.5):
        p = torch.tensor([0.3, -0.45], dtype=torch.float64) / math.sqrt(c)
        g = torch.Generator().manual_seed(1)
        v = 0.3 * torch.randn(20, 2, generator=g, dtype=torch.float64)  # stays off the projection shell
        pts = expmap(p.expand(40, 2), torch.cat([v, -v]), c)  # geodesic reflections through p
        np.testing.assert_allclose(frechet_mean(pts, c=c), p.numpy(), atol=1e-10)


def test_frechet_update_matches_naive_per_cluster_karcher():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 2)) * 0.4
    X = X / np.maximum(1.0, np.linalg.norm(X, axis=1, keepdims=True) / 0.95)  # inside the ball
    labels = rng.integers(0, 3, 90)
    ours = frechet_mean(X, labels, n_clusters=3)
    for k in range(3):
        naive = py_karcher_mean(X[labels == k].tolist())
        np.testing.assert_allclose(ours[k], naive, atol=1e-8)
        # and it is a minimiser of the sum of squared distances
        f = lambda m: sum(py_dist(m, p) ** 2 for p in X[labels == k].tolist())  # noqa: E731
        for dm in ([1e-4, 0], [0, 1e-4], [-1e-4, 0], [0, -1e-4]):
            assert f(ours[k]) <= f(ours[k] + np.array(dm))


def test_fitted_centroids_are_frechet_means_of_their_clusters():
    X, _ = ball_blobs(60, [1.5, 2.5, 3.0], sigma=0.6, seed=2)
    km = HyperbolicKMeans(n_clusters=3, tol=1e-9, seed=0).fit(X)
    for k in range(3):
        naive = py_karcher_mean(X[km.labels_ == k].tolist())
        assert py_dist(km.cluster_centers_[k].tolist(), naive) < 1e-6


def test_inertia_and_labels_agree_with_pairwise_distances():
    X, _ = ball_blobs(100, [1.0, 2.0, 3.0, 2.0], sigma=0.8, seed=4)
    km = HyperbolicKMeans(n_clusters=4, seed=1).fit(X)
    d = pairwise_dist(torch.from_numpy(X), torch.from_numpy(km.cluster_centers_), 1.0).numpy()
    np.testing.assert_array_equal(km.labels_, d.argmin(1))
    assert km.inertia_ == pytest.approx(float((d.min(1) ** 2).sum()), rel=1e-9)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    np.testing.assert_array_equal(km.fit_predict(X), km.labels_)


def test_same_seed_same_result_and_inputs_of_any_type():
    X, _ = ball_blobs(80, [1.0, 2.0, 3.0], sigma=1.0, seed=5)
    a = HyperbolicKMeans(n_clusters=3, seed=7).fit(X)
    b = HyperbolicKMeans(n_clusters=3, seed=7).fit(torch.from_numpy(X))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_
    f32 = HyperbolicKMeans(n_clusters=3, seed=7).fit(torch.from_numpy(X).float())
    np.testing.assert_array_equal(f32.labels_, HyperbolicKMeans(n_clusters=3, seed=7).fit(X.astype(np.float32)).labels_)


def test_boundary_points_stay_finite():
    rng = np.random.default_rng(6)
    dirs = rng.normal(size=(300, 2))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    inner = rng.normal(size=(100, 2)) * 0.1
    for radius, dtype in ((1 - 1e-5, np.float64), (1 - 1e-3, np.float32)):
        X = np.concatenate([dirs * radius, inner]).astype(dtype)
        km = HyperbolicKMeans(n_clusters=4, seed=0).fit(X)
        assert np.isfinite(km.cluster_centers_).all() and np.isfinite(km.inertia_)
        assert (np.linalg.norm(km.cluster_centers_, axis=1) < 1).all()
        assert set(km.labels_.tolist()) <= set(range(4))
        np.testing.assert_array_equal(km.predict(X), km.labels_)


def test_curvature_rescales_the_problem():
    X, y = ball_blobs(50, [1.0, 2.0, 3.0], sigma=0.4, seed=8)
    c = 4.0
    a = HyperbolicKMeans(n_clusters=3, seed=0).fit(X)
    b = HyperbolicKMeans(n_clusters=3, seed=0, c=c).fit(X / math.sqrt(c))
    assert same_partition(a.labels_, b.labels_) and same_partition(a.labels_, y)
    order = [int(b.labels_[a.labels_ == k][0]) for k in range(3)]
    np.testing.assert_allclose(b.cluster_centers_[order], a.cluster_centers_ / math.sqrt(c), atol=1e-9)
    assert b.inertia_ == pytest.approx(a.inertia_ / c, rel=1e-9)


def test_sample_size_fits_on_a_subset_and_labels_all_points():
    X, y = ball_blobs(300, [2.0, 2.0, 2.0], sigma=0.3, seed=9)
    km = HyperbolicKMeans(n_clusters=3, sample_size=100, seed=0).fit(X)
    assert km.labels_.shape == (900,)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert same_partition(km.labels_, y)


def test_empty_clusters_and_duplicate_points_do_not_break_the_fit():
    X = np.array([[0.1, 0.2]] * 5 + [[-0.3, 0.4]] * 5)  # only 2 distinct points for 3 clusters
    for km in (HyperbolicKMeans(n_clusters=3, init="random", seed=0), EuclideanKMeans(n_clusters=3, seed=0)):
        km.fit(X)
        assert np.isfinite(km.cluster_centers_).all()
        assert km.inertia_ == pytest.approx(0.0, abs=1e-12)
    # a centroid far from every point loses all its points and is moved onto the farthest point
    km = HyperbolicKMeans(n_clusters=2, seed=0)
    pts = km._points(np.array([[0.0, 0.0], [0.01, 0.0], [0.5, 0.0]]))
    C = torch.tensor([[0.0, 0.0], [-0.9, 0.0]], dtype=torch.float64)
    labels = pts.assign(C)
    assert labels.tolist() == [0, 0, 0]
    assert km._reseed_empty(pts, labels, C)
    assert labels.tolist() == [0, 0, 1] and C[1].tolist() == [0.5, 0.0]


def test_threads_setting_is_restored():
    before = torch.get_num_threads()
    X, _ = ball_blobs(20, [1.0, 2.0], seed=0)
    HyperbolicKMeans(n_clusters=2, n_threads=1).fit(X)
    assert torch.get_num_threads() == before


# -- Euclidean k-means ----------------------------------------------------------------

def test_euclidean_kmeans_recovers_blobs():
    rng = np.random.default_rng(10)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 20]], dtype=float)
    y = np.repeat(np.arange(5), 150)
    X = centres[y] + rng.normal(size=(750, 2))
    km = EuclideanKMeans(n_clusters=5, seed=0).fit(X.astype(np.float32))
    assert same_partition(km.labels_, y)
    d2 = ((X[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.labels_, d2.argmin(1))
    assert km.inertia_ == pytest.approx(d2.min(1).sum(), rel=1e-6)
    for k in range(5):
        np.testing.assert_allclose(km.cluster_centers_[k], X[km.labels_ == k].mean(0), atol=1e-4)
    np.testing.assert_array_equal(km.predict(X), km.labels_)


# -- validation -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,msg", [
    (dict(n_clusters=0), "n_clusters"),
    (dict(n_clusters=2.5), "n_clusters"),
    (dict(n_init=0), "n_init"),
    (dict(max_iter=0), "max_iter"),
    (dict(tol=-1.0), "tol"),
    (dict(c=0.0), "curvature"),
    (dict(c=-1.0), "curvature"),
    (dict(frechet_iters=0), "frechet_iters"),
    (dict(init="kmeans"), "init"),
    (dict(n_clusters=4, sample_size=3), "sample_size"),
    (dict(n_threads=0), "n_threads"),
])
def test_invalid_parameters_are_refused(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        HyperbolicKMeans(**kwargs)


def test_invalid_data_is_refused_with_a_hint():
    km = HyperbolicKMeans(n_clusters=2)
    with pytest.raises(ValueError, match=r"norm < 1/sqrt\(c\)"):
        km.fit(np.array([[0.1, 0.0], [1.0, 0.0], [0.2, 0.2]]))
    with pytest.raises(ValueError, match=r"1/sqrt\(c\) = 0.5"):
        HyperbolicKMeans(n_clusters=1, c=4.0).fit(np.array([[0.6, 0.0]]))
    with pytest.raises(ValueError, match="n_samples=1 should be >= n_clusters=2"):
        km.fit(np.array([[0.1, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        km.fit(np.array([[0.1, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        km.fit(np.zeros(5))
    with pytest.raises(NotFittedError):
        km.predict(np.zeros((3, 2)))
    km.fit(np.array([[0.1, 0.0], [0.5, 0.0], [0.2, 0.2]]))
    with pytest.raises(ValueError, match="features"):
        km.predict(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="n_clusters"):
        EuclideanKMeans(n_clusters=-1)


# -- one dispatch, one set of conventions ----------------------------------------------

from hyperseg.cluster import (  # noqa: E402
    EuclideanKMedians,
    EuclideanMixture,
    HyperbolicKMedians,
    HyperbolicMixture,
    NestedClustering,
    make_clusterer,
)
from hyperseg.cluster._validation import CURVATURE, Integer, OneOf, Real, check_params, subsample  # noqa: E402
from hyperseg.config import CLUSTERINGS, LATENTS  # noqa: E402

EXPECTED_CLASS = {
    ("kmeans", "hyperbolic"): HyperbolicKMeans, ("kmeans", "euclidean"): EuclideanKMeans,
    ("kmedians", "hyperbolic"): HyperbolicKMedians, ("kmedians", "euclidean"): EuclideanKMedians,
    ("mixture", "hyperbolic"): HyperbolicMixture, ("mixture", "euclidean"): EuclideanMixture,
}
ESTIMATOR_CLASSES = sorted(set(EXPECTED_CLASS.values()), key=lambda cls: cls.__name__)


@pytest.mark.parametrize("method", CLUSTERINGS)
@pytest.mark.parametrize("latent", LATENTS)
def test_make_clusterer_gives_the_method_and_latent_estimator_with_the_parameters(method, latent):
    est = make_clusterer(method, latent, 3, c=2.5, n_init=2, seed=5, sample_size=700)
    assert type(est) is EXPECTED_CLASS[method, latent]
    params = est.get_params()
    assert (params["n_clusters"], params["n_init"], params["seed"], params["sample_size"]) == (3, 2, 5, 700)
    if latent == "hyperbolic":
        assert params["c"] == 2.5
    else:
        assert "c" not in params  # R^d has no curvature
    untouched = set(params) - {"n_clusters", "n_init", "seed", "sample_size", "c"}
    defaults = type(est)().get_params()
    assert {k: params[k] for k in untouched} == {k: defaults[k] for k in untouched}


def test_make_clusterer_refuses_unknown_methods_latents_and_parameters():
    with pytest.raises(ValueError, match="make_clusterer: method must be one of kmeans, mixture, kmedians, got 'kmedoids'"):
        make_clusterer("kmedoids", "hyperbolic", 2)
    with pytest.raises(ValueError, match="latent must be one of hyperbolic, euclidean, got 'spherical'"):
        make_clusterer("kmeans", "spherical", 2)
    with pytest.raises(ValueError, match="EuclideanKMeans takes no parameter frechet_iters"):
        make_clusterer("kmeans", "euclidean", 2, frechet_iters=2)


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES + [NestedClustering], ids=lambda cls: cls.__name__)
def test_get_params_and_repr_give_the_constructor_arguments_as_passed(cls):
    import inspect

    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    first = {"levels": [4, 2]} if cls is NestedClustering else {"n_clusters": 3}
    est = cls(**first, seed=4)
    params = est.get_params()
    assert list(params) == names and set(cls._RULES) == set(names)  # every argument is checked
    assert params["seed"] == 4 and params[next(iter(first))] == next(iter(first.values()))  # stored as given
    assert repr(est) == f"{cls.__name__}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_estimator_fits_predicts_and_refuses_predict_before_fit(cls):
    X, y = ball_blobs(60, [2.0, 2.0, 2.0], sigma=0.3, seed=11)
    est = cls(n_clusters=3, seed=0)
    with pytest.raises(NotFittedError, match=f"{cls.__name__}: this estimator is not fitted yet"):
        est.predict(X)
    assert est.fit(X) is est
    assert same_partition(est.labels_, y) and est.cluster_centers_.shape == (3, 2)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    np.testing.assert_array_equal(cls(n_clusters=3, seed=0).fit_predict(X), est.labels_)


def test_nested_clustering_fit_predict_and_labels_of_new_points():
    X, y = ball_blobs(80, [2.0, 2.0, 2.0, 2.0], sigma=0.2, seed=12)
    for method in ("divisive", "agglomerative"):
        nc = NestedClustering([2, 4], method=method, n_init=2, seed=0)
        with pytest.raises(NotFittedError):
            nc.predict(X)
        assert nc.fit(X) is nc and nc.levels_ == [2, 4]
        again = nc.predict(X)
        assert all(np.array_equal(again[k], nc.labels_[k]) for k in (2, 4))
        assert same_partition(nc.labels_[4], y)
        new = nc.predict(X[::7] * 0.99)  # points it was not fitted on still nest
        assert all(len(np.unique(new[2][new[4] == f])) == 1 for f in np.unique(new[4]))


def test_subsample_is_one_randperm_prefix_or_none():
    g = torch.Generator().manual_seed(3)
    assert subsample(10, None, g) is None and subsample(10, 10, g) is None
    idx = subsample(10, 4, torch.Generator().manual_seed(3))
    assert idx.tolist() == torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4].tolist()


@pytest.mark.parametrize("cls", [HyperbolicMixture, EuclideanMixture, NestedClustering], ids=lambda c: c.__name__)
def test_mixture_and_nested_fit_on_the_subsample_of_the_shared_helper(cls):
    X, _ = ball_blobs(100, [2.0, 2.5, 3.0], sigma=0.5, seed=13)
    first = {"levels": [2, 3], "n_init": 1} if cls is NestedClustering else {"n_clusters": 3}
    idx = subsample(len(X), 90, torch.Generator().manual_seed(6)).numpy()
    part = cls(**first, sample_size=90, seed=6).fit(X)
    whole = cls(**first, sample_size=None, seed=6).fit(X[idx])
    if cls is NestedClustering:
        theirs = whole.predict(X)
        assert all(np.array_equal(part.labels_[k], theirs[k]) for k in (2, 3))
    else:
        np.testing.assert_array_equal(part.cluster_centers_, whole.cluster_centers_)


# -- the one parameter check ---------------------------------------------------------------

@pytest.mark.parametrize("rule, value, message", [
    (Integer(1), 0, "Owner: n must be an integer >= 1, got 0; pass n as an integer >= 1"),
    (Integer(1), True, "Owner: n must be an integer >= 1, got True"),  # a bool is not a count
    (Integer(1), 2.0, "Owner: n must be an integer >= 1, got 2.0"),
    (Integer(1, optional=True), 0, "Owner: n must be an integer >= 1 or None, got 0"),
    (Real(0.0), -1e-9, "Owner: n must be a finite number >= 0, got -1e-09"),
    (Real(0.0), math.nan, "Owner: n must be a finite number >= 0, got nan"),
    (Real(0.0, below=1.0), 1.0, "Owner: n must be a finite number >= 0 and < 1, got 1.0"),
    (CURVATURE, 0.0, "Owner: curvature magnitude c must be a finite number > 0, got 0.0; pass n as"),
    (CURVATURE, math.inf, "Owner: curvature magnitude c must be a finite number > 0, got inf"),
    (OneOf(("a", "b")), "c", "Owner: n must be one of 'a', 'b', got 'c'; pass n as one of 'a', 'b'"),
])
def test_check_params_says_what_is_wrong_and_what_to_pass(rule, value, message):
    with pytest.raises(ValueError) as err:
        check_params("Owner", {"n": value}, {"n": rule})
    assert str(err.value).startswith(message)


def test_check_params_accepts_valid_values_and_checks_pairs_and_missing_rules():
    rules = {"n": Integer(1), "size": Integer(1, optional=True), "c": CURVATURE, "how": OneOf(("a", "b"))}
    check_params("Owner", {"n": 3, "size": None, "c": 2, "how": "a"}, rules, at_least=(("size", "n"),))
    check_params("Owner", {"n": np.int64(3), "size": 3, "c": 0.5, "how": "b"}, rules, at_least=(("size", "n"),))
    with pytest.raises(ValueError, match=r"^Owner: size=2 must be >= n=3; raise size, or pass size=None"):
        check_params("Owner", {"n": 3, "size": 2, "c": 1.0, "how": "a"}, rules, at_least=(("size", "n"),))
    with pytest.raises(ValueError, match=r"^Owner: parameter 'extra' has no validation rule"):
        check_params("Owner", {"extra": 1}, rules)


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES + [NestedClustering], ids=lambda cls: cls.__name__)
def test_every_estimator_checks_its_parameters_with_its_name_in_the_message(cls):
    first = {"levels": [2]} if cls is NestedClustering else {"n_clusters": 2}
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: seed must be an integer >= 0, got -1"):
        cls(**first, seed=-1)
    est = cls(**first)
    est.n_init = 0  # changed after construction: fit checks again
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: n_init must be an integer >= 1, got 0"):
        est.fit(np.zeros((4, 2)))
