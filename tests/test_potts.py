"""The Potts prior (hyperseg.potts): each fast function beside a per-voxel loop that reads like its formula."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperseg import potts

OFFSETS = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def neighbours(i, shape):
    for o in OFFSETS:
        j = tuple(a + b for a, b in zip(i, o))
        if all(0 <= c < s for c, s in zip(j, shape)):
            yield j


def naive_energy(L, lab, beta, mask):
    shape = lab.shape
    e = 0.0
    for i in itertools.product(*map(range, shape)):
        if not mask[i]:
            continue
        e -= L[(lab[i],) + i]
        for j in neighbours(i, shape):
            if mask[j] and j > i and lab[i] != lab[j]:  # each unordered pair once
                e += beta
    return e


def naive_icm(L, beta, lab, mask, n_iter):
    """Sequential ICM, voxel by voxel: the even colour in raster order, then the odd one."""
    lab = np.where(mask, lab, 0).copy()
    K, shape = L.shape[0], lab.shape
    for _ in range(n_iter):
        for colour in (0, 1):
            for i in itertools.product(*map(range, shape)):
                if not mask[i] or sum(i) % 2 != colour:
                    continue
                score = [L[(k,) + i] + beta * float(sum(1 for j in neighbours(i, shape) if mask[j] and lab[j] == k))
                         for k in range(K)]
                best = int(np.argmax(score))
                if score[lab[i]] < score[best]:  # keep the current label on a tie
                    lab[i] = best
    return lab


def naive_mean_field(L, beta, mask, n_iter):
    q = np.exp(L - L.max(0))
    q /= q.sum(0)
    K, shape = L.shape[0], L.shape[1:]
    for _ in range(n_iter):
        for colour in (0, 1):
            new = q.copy()
            for i in itertools.product(*map(range, shape)):
                if not mask[i] or sum(i) % 2 != colour:
                    continue
                s = np.array([L[(k,) + i] + beta * sum(q[(k,) + j] for j in neighbours(i, shape) if mask[j])
                              for k in range(K)])
                e = np.exp(s - s.max())
                new[(slice(None),) + i] = e / e.sum()
            q = new
    return q


def problem(seed, shape=(3, 4, 5), K=3, masked=True):
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(K,) + shape)
    mask = rng.random(shape) > 0.25 if masked else np.ones(shape, bool)
    lab = rng.integers(0, K, shape)
    return L, mask, lab


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.0, 0.4, 1.5])
def test_energy_is_the_data_term_plus_beta_per_disagreeing_neighbour_pair(seed, beta):
    L, mask, lab = problem(seed)
    assert potts.potts_energy(L, lab, beta, mask) == pytest.approx(naive_energy(L, lab, beta, mask), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("n_iter", [1, 3])
def test_icm_equals_the_sequential_voxel_loop_in_checkerboard_order(seed, beta, n_iter):
    L, mask, lab = problem(seed)
    got = potts.icm(L, beta, labels=lab, mask=mask, n_iter=n_iter)
    np.testing.assert_array_equal(got, naive_icm(L, beta, lab, mask, n_iter))


def test_icm_without_coupling_is_the_per_voxel_argmax():
    L, mask, _ = problem(7, masked=False)
    np.testing.assert_array_equal(potts.icm(L, 0.0), L.argmax(0))


def test_icm_accepts_classes_last():
    L, mask, lab = problem(3)
    a = potts.icm(L, 0.8, labels=lab, mask=mask)
    b = potts.icm(np.moveaxis(L, 0, -1), 0.8, labels=lab, mask=mask, class_axis=-1)
    np.testing.assert_array_equal(a, b)


def test_voxels_outside_the_mask_do_not_vote():
    L, mask, lab = problem(5)
    L2, lab2 = L.copy(), lab.copy()
    rng = np.random.default_rng(0)
    L2[:, ~mask] = rng.normal(size=(L.shape[0], int((~mask).sum()))) * 100
    lab2[~mask] = rng.integers(0, L.shape[0], int((~mask).sum()))
    a = potts.icm(L, 2.0, labels=lab, mask=mask)
    b = potts.icm(L2, 2.0, labels=lab2, mask=mask)
    np.testing.assert_array_equal(a, b)
    assert (a[~mask] == 0).all()
    q1 = potts.mean_field(L, 2.0, mask=mask)
    q2 = potts.mean_field(L2, 2.0, mask=mask)
    np.testing.assert_allclose(q1[:, mask], q2[:, mask], rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), beta=st.floats(0.0, 4.0), K=st.integers(2, 4),
       shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)))
def test_icm_never_increases_the_energy(seed, beta, K, shape):
    L, mask, lab = problem(seed, shape, K)
    energies = [potts.potts_energy(L, lab, beta, mask)]
    for _ in range(4):
        lab = potts.icm(L, beta, labels=lab, mask=mask, n_iter=1)
        energies.append(potts.potts_energy(L, lab, beta, mask))
    assert all(b <= a + 1e-9 for a, b in zip(energies, energies[1:])), energies


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_mean_field_equals_the_voxel_loop(seed, beta):
    L, mask, _ = problem(seed)
    got = potts.mean_field(L, beta, mask=mask, n_iter=3)
    np.testing.assert_allclose(got, naive_mean_field(L, beta, mask, 3), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(0), 1.0)


def test_kmeans_1d_finds_the_centres_of_separated_groups():
    x = np.concatenate([np.full(50, -3.0), np.full(30, 1.0), np.full(20, 6.0)])
    np.testing.assert_allclose(potts.kmeans_1d(x, 3), [-3.0, 1.0, 6.0])


def two_class_volume(seed, noise):
    """Two half-spaces of intensity 0 and 1 with a sphere of 1 in the 0 half, Gaussian noise of sd ``noise``."""
    d, h, w = np.indices((16, 16, 16))
    truth = ((w >= 8) | ((d - 8) ** 2 + (h - 8) ** 2 + (w - 3) ** 2 <= 6)).astype(np.int64)
    x = truth + np.random.default_rng(seed).normal(0, noise, truth.shape)
    return x, truth


def test_hmrf_em_recovers_the_class_means_and_the_prior_removes_noise_errors():
    x, truth = two_class_volume(0, 0.45)
    plain, _ = potts.hmrf_em(x, 2, beta=0.0)
    smooth, params = potts.hmrf_em(x, 2, beta=1.0)
    err_plain = (plain != truth).mean()
    err_smooth = (smooth != truth).mean()
    assert err_smooth < 0.5 * err_plain, (err_plain, err_smooth)
    assert err_smooth < 0.02
    np.testing.assert_allclose(params["mean"], [0.0, 1.0], atol=0.1)


def test_hmrf_em_labels_zero_outside_the_mask_and_ignores_it():
    x, truth = two_class_volume(1, 0.3)
    mask = np.zeros(x.shape, bool)
    mask[2:14, 2:14, 2:14] = True
    x2 = x.copy()
    x2[~mask] = 50.0  # would be a third cluster if it were seen
    a, _ = potts.hmrf_em(x, 2, beta=0.5, mask=mask)
    b, _ = potts.hmrf_em(x2, 2, beta=0.5, mask=mask)
    np.testing.assert_array_equal(a, b)
    assert (a[~mask] == 0).all()
    assert (a[mask] == truth[mask]).mean() > 0.97


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="potts: log-likelihoods"):
        potts.icm(np.zeros((2, 3, 3)), 1.0)
    with pytest.raises(ValueError, match="mask shape"):
        potts.icm(np.zeros((2, 3, 3, 3)), 1.0, mask=np.ones((3, 3, 2), bool))
    with pytest.raises(ValueError, match="beta"):
        potts.mean_field(np.zeros((2, 3, 3, 3)), -1.0)
