"""Mixing proportions in the hidden-MRF EM (``Config.mixture_proportions``, ``regularize.mixing_proportions``)."""
import numpy as np
import pytest

from hyperseg.config import Config
from hyperseg.regularize import MIN_INTENSITY_VARIANCE, hmrf_em, mixing_proportions


def _softmax(L: np.ndarray) -> np.ndarray:
    e = np.exp(L - L.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_mixing_proportions_are_the_log_of_the_mean_posterior():
    rng = np.random.default_rng(0)
    post = _softmax(5.0 * rng.standard_normal((200, 3))).T  # (K, M)
    want = np.empty(3)
    for k in range(3):  # one class at a time, from the definition
        want[k] = np.log(sum(post[k, i] for i in range(200)) / 200)
    np.testing.assert_allclose(mixing_proportions(post), want, rtol=1e-10)
    np.testing.assert_allclose(mixing_proportions(post.astype(np.float32)), want, rtol=1e-6)
    # a class no voxel takes counts as one voxel, not log 0
    post[2] = 0.0
    got = mixing_proportions(post)
    assert np.isfinite(got).all() and got[2] == pytest.approx(np.log(1 / 200))


def _naive_mixture_em(x: np.ndarray, start: np.ndarray, K: int, n_iter: int) -> np.ndarray:
    """A Gaussian mixture's EM on one channel, step by step: responsibilities -> means, variances; E step with the
    log weights of the previous E step (none in the first), the weights then the mean posterior."""
    q = np.eye(K)[start]  # (M, K)
    log_pi = None
    for _ in range(n_iter):
        mu = (q * x[:, None]).sum(0) / q.sum(0)
        var = np.maximum((q * x[:, None] ** 2).sum(0) / q.sum(0) - mu ** 2, MIN_INTENSITY_VARIANCE)
        L = -0.5 * np.log(2 * np.pi * var) - 0.5 * (x[:, None] - mu) ** 2 / var
        if log_pi is not None:
            L = L + log_pi
        q = _softmax(L)
        log_pi = np.log(q.mean(0))
    return q.argmax(1)


def test_without_a_prior_hmrf_em_with_proportions_is_the_gaussian_mixtures_em():
    rng = np.random.default_rng(1)
    shape = (12, 12, 12)
    truth = (rng.random(np.prod(shape)) < 0.15).astype(np.int64)  # a small class, scattered (no prior here)
    x = np.where(truth == 1, 2.5 + 1.5 * rng.standard_normal(truth.size), rng.standard_normal(truth.size))
    start = (x > 1.25).astype(np.int64)
    got = hmrf_em(None, x[:, None], start, 2, shape, beta=0.0, embedding_weight=0.0, intensity_weight=1.0,
                  n_iter=6, proportions=1.0)
    want = _naive_mixture_em(x, start, 2, 6)
    np.testing.assert_array_equal(got, want)
    equal_priors = hmrf_em(None, x[:, None], start, 2, shape, beta=0.0, embedding_weight=0.0,
                           intensity_weight=1.0, n_iter=6)
    assert (equal_priors != got).sum() > 20  # the weights change labels here: the comparison above can fail


def test_proportions_keep_a_wide_small_class_out_of_the_large_classs_tail():
    """A small class with a wide spread (CSF beside grey matter in a brain) takes the large class's tail when
    both classes are equally likely a priori; its weight gives that tail back. Without the Potts prior: with it
    (beta 0.5) this thin slab is found either way, and the weight then shrinks it (362 of its 800 voxels against
    851 with equal priors): the trade-off BENCHMARKS.md measures on brains."""
    rng = np.random.default_rng(2)
    shape = (20, 20, 20)
    truth = (np.indices(shape)[0] < 2).reshape(-1).astype(np.int64)  # 10 % of the voxels, a slab
    x = np.where(truth == 1, 3.0 + 2.0 * rng.standard_normal(truth.size), rng.standard_normal(truth.size))
    start = (x > 1.5).astype(np.int64)
    kw = dict(beta=0.0, embedding_weight=0.0, intensity_weight=1.0, n_iter=8)
    equal = hmrf_em(None, x[:, None], start, 2, shape, **kw)
    weighted = hmrf_em(None, x[:, None], start, 2, shape, proportions=1.0, **kw)
    err_equal, err_weighted = (equal != truth).mean(), (weighted != truth).mean()
    assert err_weighted < 0.5 * err_equal  # 0.055 against 0.242
    # the small class's size comes closer to its true 800 voxels
    assert abs(int(weighted.sum()) - 800) < abs(int(equal.sum()) - 800)


@pytest.mark.parametrize("bad, match", [
    (dict(refine="hmrf_em", mixture_proportions=-0.5), "mixture_proportions must be >= 0"),
    (dict(refine="once", mixture_proportions=1.0), "read by refine 'hmrf_em' only"),
    (dict(refine="hmrf_em", mixture_proportions=0.25, mixture_proportions_mm=-2.0), "mixture_proportions_mm must be >= 0"),
])
def test_the_proportions_weight_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        Config(**bad)


def test_hmrf_em_refuses_a_negative_proportions_weight():
    x = np.zeros((8, 1))
    with pytest.raises(ValueError, match="proportions must be >= 0"):
        hmrf_em(None, x, np.zeros(8, np.int64), 2, (2, 2, 2), beta=0.0, embedding_weight=0.0, proportions=-1.0)


def test_the_masked_stage_passes_its_proportions_weight_to_the_em(monkeypatch):
    import hyperseg.segment as segment

    seen = []
    real = segment.hmrf_em

    def spy(*args, **kwargs):
        seen.append(kwargs.get("proportions"))
        return real(*args, **kwargs)

    monkeypatch.setattr(segment, "hmrf_em", spy)
    cfg = Config(hierarchy="foreground", foreground="threshold", refine="hmrf_em", refine_init="intensity",
                 embedding_weight=0.0, mixture_proportions=0.7, levels=[2, 3])
    rng = np.random.default_rng(3)
    x = np.zeros((1, 12, 12, 12), np.float32)
    x[0, 2:10, 2:10, 2:10] = np.where(np.indices((8, 8, 8))[2] < 4, 2.0, 4.0)
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    emb = np.zeros((12, 12, 12, 2), np.float32)
    segment.segment_embedding(cfg, emb, x, [2, 3])
    assert seen and all(p == 0.7 for p in seen)
    # with a reference edge, the weight the EM gets follows the grid's voxel edge
    seen.clear()
    segment.segment_embedding(cfg.replace(mixture_proportions=0.25, mixture_proportions_mm=2.0), emb, x, [2, 3],
                              voxel_size=1.0)
    assert seen and all(p == 0.5 for p in seen)


@pytest.mark.parametrize("tau, ref_mm, voxel, expected", [
    (0.25, 2.0, 2.0, 0.25),   # at the reference edge: as given
    (0.25, 2.0, 3.0, 0.25),   # coarser: as given, never less
    (0.25, 2.0, 1.0, 0.5),    # half the edge: twice the weight
    (0.2, 2.0, 1.6, 0.25),
    (0.25, 2.0, 0.8, 0.5),    # at most MAX_GRID_PROPORTIONS, the largest weight that held at 1 mm
    (0.25, 2.0, 0.0001, 0.5),  # a grid far finer than a brain's (0.1 um voxels): the same cap
    (0.75, 2.0, 0.5, 0.75),   # a weight set above the cap is kept, not lowered by it
    (0.25, 0.0, 1.0, 0.25),   # no reference edge: the same weight at every voxel size
    (0.0, 2.0, 1.0, 0.0),     # no proportions stays none
])
def test_the_proportions_weight_grows_as_the_voxel_edge_shrinks(tau, ref_mm, voxel, expected):
    from hyperseg.segment import hmrf_proportions

    cfg = Config(refine="hmrf_em", mixture_proportions=tau, mixture_proportions_mm=ref_mm)
    assert hmrf_proportions(cfg, voxel) == pytest.approx(expected)


def test_the_masked_stage_sets_the_reference_edge():
    assert Config().mixture_proportions_mm == 0.0
    masked = Config().masked_config()
    assert masked.mixture_proportions == 0.25 and masked.mixture_proportions_mm == 2.0
