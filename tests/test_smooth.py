"""Specification of the gyromidpoint and of the smoothing of an embedding field.

Weighted gyromidpoint (Ungar 2010) of ball points x_i with weights w_i, curvature -c:

    m = (1/2) (x) ( sum_i w_i lambda_i x_i / sum_i w_i (lambda_i - 1) ),  lambda_i = 2 / (1 - c|x_i|^2).

Properties checked with numbers: the naive per-point formula, the midpoint of two
points is the geodesic's middle, it commutes with Mobius translations, it tends to
the arithmetic mean near 0; the field filter equals the naive weighted midpoint
at a voxel, leaves a constant field unchanged and stays inside the ball.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hyperseg.config import Config
from hyperseg.geometry.poincare import dist, expmap0, gyromidpoint, klein_to_ball, mobius_add
from hyperseg.smooth import smooth_embedding

C_VALUES = [1.0, 0.5, 2.0]


def _random_ball(n: int, d: int, c: float, seed: int, radius: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=torch.float64) * radius
    return expmap0(v, c)


def _naive_midpoint(points: list[list[float]], weights: list[float], c: float) -> np.ndarray:
    """The formula above, one point at a time, in plain Python floats."""
    d = len(points[0])
    num = [0.0] * d
    den = 0.0
    for x, w in zip(points, weights):
        lam = 2.0 / (1.0 - c * sum(t * t for t in x))
        for j in range(d):
            num[j] += w * lam * x[j]
        den += w * (lam - 1.0)
    y = [t / den for t in num]
    norm = math.sqrt(sum(t * t for t in y))
    # (1/2) (x) y = tanh(artanh(sqrt(c)|y|) / 2) y / (sqrt(c)|y|)
    scale = math.tanh(math.atanh(math.sqrt(c) * norm) / 2) / (math.sqrt(c) * norm)
    return np.array([t * scale for t in y])


@pytest.mark.parametrize("c", C_VALUES)
def test_gyromidpoint_equals_the_naive_formula(c):
    x = _random_ball(7, 3, c, seed=1)
    w = torch.rand(7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    fast = gyromidpoint(x, w, dim=0, c=c).numpy()
    slow = _naive_midpoint(x.tolist(), w.tolist(), c)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", C_VALUES)
def test_midpoint_of_two_points_is_the_middle_of_their_geodesic(c):
    x, y = _random_ball(2, 2, c, seed=3)
    m = gyromidpoint(torch.stack([x, y]), dim=0, c=c)
    d_xy = dist(x, y, c)
    assert torch.allclose(dist(x, m, c), d_xy / 2, rtol=1e-9)
    assert torch.allclose(dist(m, y, c), d_xy / 2, rtol=1e-9)


@pytest.mark.parametrize("c", C_VALUES)
def test_gyromidpoint_commutes_with_mobius_translation(c):
    x = _random_ball(5, 2, c, seed=4)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    a = _random_ball(1, 2, c, seed=5, radius=1.5)[0]
    moved_then_mid = gyromidpoint(mobius_add(a.expand_as(x), x, c), w, c=c)
    mid_then_moved = mobius_add(a, gyromidpoint(x, w, c=c), c)
    assert torch.allclose(moved_then_mid, mid_then_moved, atol=1e-10)


def test_gyromidpoint_near_the_origin_is_the_arithmetic_mean():
    x = _random_ball(6, 2, 1.0, seed=6, radius=1e-4)
    w = torch.arange(1.0, 7.0, dtype=torch.float64)
    arithmetic = (w[:, None] * x).sum(0) / w.sum()
    assert torch.allclose(gyromidpoint(x, w), arithmetic, rtol=1e-6, atol=1e-14)


def test_gyromidpoint_weights_on_one_point_return_it_and_dim_is_checked():
    x = _random_ball(4, 2, 1.0, seed=7)
    w = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(gyromidpoint(x, w), x[2], atol=1e-12)
    with pytest.raises(ValueError, match="coordinate axis"):
        gyromidpoint(x, dim=-1)


def test_klein_to_ball_inverts_the_poincare_to_klein_map():
    x = _random_ball(50, 3, 1.0, seed=8)
    k = 2 * x / (1 + (x * x).sum(-1, keepdim=True))
    assert torch.allclose(klein_to_ball(k), x, atol=1e-10)


# ----------------------------------------------------------------------------- the field filter
def _field(shape=(9, 8, 7), d=2, c=1.0, seed=0) -> np.ndarray:
    pts = _random_ball(int(np.prod(shape)), d, c, seed=seed, radius=2.5)
    return pts.numpy().reshape(*shape, d)


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_smoothing_a_voxel_is_the_gaussian_weighted_gyromidpoint_of_the_grid(c):
    emb = _field(shape=(11, 12, 11), c=c)  # the kernel (radius 5) stays inside: no border effects
    sigma = 1.3
    out = smooth_embedding(emb, sigma, latent="hyperbolic", c=c)
    # naive: at an interior voxel, weight every voxel of the grid by the sampled Gaussian
    # (scipy truncates at 4 sigma and normalises the sampled kernel; normalisation cancels)
    v = np.array([5, 6, 5])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in emb.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    off = idx - v
    radius = int(4 * sigma + 0.5)
    w = np.exp(-(off ** 2).sum(-1) / (2 * sigma ** 2)) * (np.abs(off) <= radius).all(-1)
    naive = _naive_midpoint(emb.reshape(-1, 2).tolist(), w.tolist(), c)
    np.testing.assert_allclose(out[tuple(v)], naive, atol=1e-9)


def test_smoothing_keeps_a_constant_field_and_stays_in_the_ball():
    p = np.array([0.6, -0.7])  # |p| = 0.92
    const = np.broadcast_to(p, (6, 6, 6, 2)).copy()
    np.testing.assert_allclose(smooth_embedding(const, 2.0), const, atol=1e-12)
    rim = _random_ball(9 * 8 * 7, 2, 1.0, seed=9, radius=12.0).numpy().reshape(9, 8, 7, 2)  # |x| up to 1 - 1e-5
    out = smooth_embedding(rim, 3.0)
    assert np.isfinite(out).all() and (np.linalg.norm(out, axis=-1) < 1).all()


def test_sigma_zero_is_the_identity_and_euclidean_is_a_gaussian_filter():
    emb = _field()
    np.testing.assert_array_equal(smooth_embedding(emb, 0.0), emb)
    from scipy import ndimage as ndi

    flat = smooth_embedding(emb, 1.0, latent="euclidean")
    np.testing.assert_allclose(flat[..., 1], ndi.gaussian_filter(emb[..., 1], 1.0, mode="nearest"))


def test_smoothing_reduces_scatter_inside_a_region():
    """Two halves with points scattered (symmetrically, in each centre's tangent space) around
    two centres: away from the interface, smoothing pulls each half onto its centre."""
    from hyperseg.geometry.poincare import expmap

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.5, 0.0], [-0.5, 0.3]], dtype=torch.float64)
    lab = torch.zeros(24, 10, 10, dtype=torch.long)
    lab[12:] = 1
    emb = expmap(centres[lab], 0.1 * torch.randn(24, 10, 10, 2, generator=g, dtype=torch.float64))
    out = torch.from_numpy(smooth_embedding(emb.numpy(), 1.5))
    far = slice(0, 4)  # >= 8 voxels from the interface; the kernel reaches 6
    before = dist(emb[far], centres[0]).mean()
    after = dist(out[far], centres[0]).mean()
    assert after < 0.2 * before


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="D, H, W, d"):
        smooth_embedding(np.zeros((4, 2)), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        smooth_embedding(_field(), -1.0)
    with pytest.raises(ValueError, match="smooth_sigma"):
        Config(smooth_sigma=-0.5)
