"""Specification of the Poincare-ball maths and of the wrapped normal.

Ball of curvature -c: {x in R^d : c|x|^2 < 1}, metric lambda_x^2 g^E with
lambda_x = 2 / (1 - c|x|^2). Paper (Hsu et al. 2021) Eq. (1), c = 1:

    d(x, y) = arccosh(1 + 2|x - y|^2 / ((1 - |x|^2)(1 - |y|^2))).

Wrapped normal (Mathieu et al. 2019; paper Eq. (4)), density w.r.t. the
Riemannian volume dM(z) = lambda_z^d dz:

    log p(z) = log N(v | 0, diag(scale^2)) - (d - 1) log(sinh(sqrt(c) r) / (sqrt(c) r)),
    v = lambda_0 P_{mu->0}(log_mu z),  r = d(mu, z) = |v|,  lambda_0 = 2.

Every random draw is seeded; every tolerance says where it comes from.

Known limit (not a test): ``expmap`` is geoopt's Moebius form ``x (+) s``, whose
denominator ``1 + 2c<x,s> + c^2|x|^2|s|^2`` cancels for geodesics that run from
the rim to the rim. Measured in float64: from |x| = 1 - 1e-5, geodesic lengths
1 / 4 / 8 are reproduced to 1e-11 / 8e-11 / 4e-10, length 16 only to 8e-6.
The tests below keep geodesics shorter than ~8 (wrapped-normal samples with
scale <= 1 in d = 2 are shorter than 6 with probability 1 - 2e-8).
"""
from __future__ import annotations

import math

import mpmath
import pytest
import torch

from hyperseg.geometry import WrappedNormal
from hyperseg.geometry.poincare import (
    BALL_EPS,
    dist,
    dist0,
    expmap,
    expmap0,
    lambda_x,
    logmap,
    logmap0,
    mobius_add,
    pairwise_dist,
    transp0,
    transp0back,
)
from hyperseg.geometry.wrapped_normal import LOG_SINHC_SERIES_CUTOFF, log_sinhc

F64 = torch.float64
CURVATURES = [1.0, 2.0, 0.5]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ball_points(n: int, d: int, c: float, seed: int, spread: float = 1.0, dtype=F64) -> torch.Tensor:
    """``n`` points ``expmap0(spread * N(0, I))``: inside the ball of radius 1/sqrt(c), any c."""
    v = spread * torch.randn(n, d, generator=gen(seed), dtype=F64)
    return expmap0(v, c).to(dtype)


def rim_points(n: int, d: int, norm: float, seed: int, dtype=F64) -> torch.Tensor:
    """``n`` points with Euclidean norm ``norm`` (c = 1) in random directions."""
    u = torch.randn(n, d, generator=gen(seed), dtype=F64)
    return (norm * u / u.norm(dim=-1, keepdim=True)).to(dtype)


def naive_eq1(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Paper Eq. (1), generalised to curvature -c, written literally."""
    num = 2 * c * ((x - y) ** 2).sum(-1)
    den = (1 - c * (x**2).sum(-1)) * (1 - c * (y**2).sum(-1))
    return torch.acosh(1 + num / den) / math.sqrt(c)


# --------------------------------------------------------------------------- Poincare maps


@pytest.mark.parametrize("c", CURVATURES)
def test_expmap0_and_logmap0_are_inverse(c):
    # |v| up to ~4.5 / sqrt(c): dist0 = 2|v| stays below the float64 projection cap 12.2 / sqrt(c).
    v = torch.randn(500, 3, generator=gen(0), dtype=F64) / math.sqrt(c)
    torch.testing.assert_close(logmap0(expmap0(v, c), c), v, rtol=1e-10, atol=1e-12)
    x = ball_points(500, 3, c, seed=1, spread=1.5)
    torch.testing.assert_close(expmap0(logmap0(x, c), c), x, rtol=1e-12, atol=1e-12)
    # exp_0 moves a Riemannian distance lambda_0 |v| = 2|v|.
    torch.testing.assert_close(dist0(expmap0(v, c), c), 2 * v.norm(dim=-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", CURVATURES)
def test_expmap_and_logmap_are_inverse_at_a_non_origin_point(c):
    x = torch.tensor([0.5, -0.3, 0.4], dtype=F64) / math.sqrt(c)  # |x| = 0.707 / sqrt(c)
    y = ball_points(400, 3, c, seed=2, spread=1.0)
    torch.testing.assert_close(expmap(x, logmap(x, y, c), c), y, rtol=1e-10, atol=1e-12)
    # Tangent vectors at x of Riemannian length lambda_x |u| up to ~4 (no projection involved).
    u = torch.randn(400, 3, generator=gen(3), dtype=F64) / lambda_x(x, c)
    torch.testing.assert_close(logmap(x, expmap(x, u, c), c), u, rtol=1e-10, atol=1e-12)
    # The Riemannian norm of log_x(y) is the distance.
    torch.testing.assert_close(
        lambda_x(x, c) * logmap(x, y, c).norm(dim=-1), dist(x, y, c), rtol=1e-12, atol=1e-12
    )


def test_transp0_scales_by_the_ratio_of_conformal_factors():
    x = ball_points(50, 2, 1.0, seed=4)
    v = torch.randn(50, 2, generator=gen(5), dtype=F64)
    torch.testing.assert_close(transp0(x, v), v * 2 / lambda_x(x, keepdim=True))
    torch.testing.assert_close(transp0back(x, transp0(x, v)), v)


@pytest.mark.parametrize("c", CURVATURES)
def test_dist_is_a_metric_on_random_triples(c):
    # spread 0.7: d(0, .) mostly < 6, away from the projection shell (see the module
    # note on expmap).
    x, y, z = (ball_points(2000, 3, c, seed=s, spread=0.7) for s in (6, 7, 8))
    dxy, dyz, dxz = dist(x, y, c), dist(y, z, c), dist(x, z, c)
    torch.testing.assert_close(dxy, dist(y, x, c), rtol=1e-13, atol=0)  # symmetric
    assert (dxy > 0).all()
    assert (dist(x, x, c) == 0).all()
    assert (dxz <= dxy + dyz + 1e-12).all()  # triangle inequality
    # Equality for a point on the geodesic from x to z: y_t = exp_x(t log_x z), t in (0, 1).
    t = torch.rand(2000, 1, generator=gen(9), dtype=F64)
    y_t = expmap(x, t * logmap(x, z, c), c)
    torch.testing.assert_close(dist(x, y_t, c), t[:, 0] * dxz, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dist(x, y_t, c) + dist(y_t, z, c), dxz, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", CURVATURES)
def test_dist_equals_the_papers_eq1(c):
    x, y = ball_points(1000, 3, c, seed=9, spread=1.5), ball_points(1000, 3, c, seed=10, spread=1.5)
    # arccosh near 1 only keeps half the digits, hence atol ~ sqrt(eps_64) ~ 1e-8.
    torch.testing.assert_close(dist(x, y, c), naive_eq1(x, y, c), rtol=1e-10, atol=1e-7)
    # Scaling law: d_c(x, y) = d_1(sqrt(c) x, sqrt(c) y) / sqrt(c).
    sc = math.sqrt(c)
    torch.testing.assert_close(dist(x, y, c), dist(sc * x, sc * y, 1.0) / sc, rtol=1e-12, atol=1e-12)
    # dist0 is geoopt's artanh(sqrt(c)|x|): for |x| on the shell its input's rounding
    # is amplified by 1 / (1 - sqrt(c)|x|) ~ 1e5, hence rtol 1e-10.
    torch.testing.assert_close(dist0(x, c), dist(torch.zeros_like(x), x, c), rtol=1e-10, atol=1e-12)


def test_dist_near_the_rim_is_not_clamped():
    # Two float64 points on the projection shell |x| = 1 - 1e-5 can be 24.4 apart
    # (2 * dist0 = 2 ln((2 - 1e-5) / 1e-5)). geoopt's artanh form saturates at
    # 2 artanh(1 - 1e-7) = 16.8 here; Eq. (1) is exact for far pairs.
    x = rim_points(200, 2, 1 - 1e-5, seed=11)
    y = rim_points(200, 2, 1 - 1e-5, seed=12)
    ref = naive_eq1(x, y)
    assert ref.max() > 24.0
    torch.testing.assert_close(dist(x, y), ref, rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(pairwise_dist(x, y).diagonal(), ref, rtol=1e-9, atol=1e-7)
    # log_x(y) has Riemannian norm d(x, y) there too.
    torch.testing.assert_close(lambda_x(x) * logmap(x, y).norm(dim=-1), ref, rtol=1e-9, atol=1e-7)


def antipodal_dist_exact(x: torch.Tensor, c: float) -> list[float]:
    """``d_c(x, -x) = 4/sqrt(c) artanh(sqrt(c)|x|)`` for each row of ``x``, in 50-digit arithmetic.

    ``-x (+) -x = -2x / (1 + c|x|^2)`` and ``2 artanh(u) = artanh(2u / (1 + u^2))``: the geodesic through the
    origin, twice the distance to it. ``|x|`` is taken from the row's own (rounded) coordinates.
    """
    with mpmath.workdps(50):
        sc = mpmath.sqrt(mpmath.mpf(c))
        return [float(4 / sc * mpmath.atanh(sc * mpmath.sqrt(mpmath.fsum(mpmath.mpf(float(v)) ** 2 for v in row))))
                for row in x.tolist()]


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype, rtol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_antipodal_points_are_twice_their_distance_to_the_origin_apart(c, dtype, rtol):
    # radii sqrt(c)|x| from 1e-6 to the float64 shell 1 - 1e-5 (float32: its shell, 1 - 1e-3)
    radii = torch.tensor([1e-6, 0.1, 0.5, 0.9, 0.99, 1 - 1e-3] + ([1 - 1e-5] if dtype == F64 else []), dtype=F64)
    u = torch.randn(len(radii), 3, generator=gen(15), dtype=F64)
    x = (radii[:, None] * u / u.norm(dim=-1, keepdim=True) / math.sqrt(c)).to(dtype)
    want = torch.tensor(antipodal_dist_exact(x, c), dtype=F64)
    torch.testing.assert_close(dist(x, -x, c).double(), want, rtol=rtol, atol=0.0)
    torch.testing.assert_close(pairwise_dist(x, -x, c).diagonal().double(), want, rtol=rtol, atol=0.0)
    if dtype == F64:  # geoopt's float32 artanh (log(1 + u) - log(1 - u)) keeps only ~2 digits at u = 1e-6
        torch.testing.assert_close(dist0(x, c) * 2, want, rtol=1e-10, atol=0.0)


@pytest.mark.parametrize("c", [1.0, 2.0])
@pytest.mark.parametrize("dtype, rtol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_pairwise_dist_equals_dist_on_all_pairs(c, dtype, rtol):
    x = ball_points(40, 3, c, seed=13, spread=1.5, dtype=dtype)
    y = torch.cat([ball_points(8, 3, c, seed=14, spread=1.5, dtype=dtype), x[:3]])  # 3 exact duplicates
    pw = pairwise_dist(x, y, c)
    assert pw.shape == (40, 11) and pw.dtype == dtype
    ref = dist(x[:, None, :], y[None, :, :], c)
    torch.testing.assert_close(pw, ref, rtol=rtol, atol=rtol)
    assert (pw[torch.arange(3), 8 + torch.arange(3)] == 0).all()  # d(x, x) = 0 exactly


@pytest.mark.parametrize("dtype, norm, dist0_expected", [
    # dist0 = 2 artanh(|x|) = ln((1 + |x|) / (1 - |x|))
    (F64, 1 - 1e-5, math.log((2 - 1e-5) / 1e-5)),  # 12.2061
    (torch.float32, 1 - 1e-3, math.log((2 - 1e-3) / 1e-3)),  # 7.6004
])
def test_maps_are_finite_with_finite_gradients_at_the_rim(dtype, norm, dist0_expected):
    x = rim_points(64, 3, norm, seed=15, dtype=dtype).requires_grad_()
    y = rim_points(64, 3, norm, seed=16, dtype=dtype).requires_grad_()
    outs = {
        "dist": dist(x, y),
        "dist_same_point": dist(x, x),
        "dist0": dist0(x),
        "pairwise_dist": pairwise_dist(x, y),
        "logmap0": logmap0(x),
        "expmap0_logmap0": expmap0(logmap0(x)),
        "logmap": logmap(x, y),
        "expmap_logmap": expmap(x, logmap(x, y)),
        "mobius_add": mobius_add(-x, y),
    }
    for name, out in outs.items():
        assert torch.isfinite(out).all(), name
        (gx, gy) = torch.autograd.grad(out.sum(), (x, y), allow_unused=True, materialize_grads=True)
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all(), name
    rtol = 1e-9 if dtype == F64 else 1e-4  # float32: |x| = 0.999 is stored to 6e-8, / (1 - |x|^2)
    torch.testing.assert_close(outs["dist0"].double(), torch.full((64,), dist0_expected, dtype=F64), rtol=rtol, atol=0)
    assert (outs["dist"] <= 2 * dist0_expected * (1 + rtol)).all()


# --------------------------------------------------------------------------- log(sinh x / x)


def test_log_sinhc_guard():
    # Taylor series log(sinh x / x) = x^2/6 - x^4/180 + x^6/2835 - x^8/37800 + x^10/467775 - ...,
    # truncation < 2e-19 relative for x <= 0.15.
    x = torch.tensor([0.0, 1e-8, 1e-4, 1e-3, 1e-2, 0.05, 0.099, 0.101, 0.15], dtype=F64)
    series = x**2 / 6 - x**4 / 180 + x**6 / 2835 - x**8 / 37800 + x**10 / 467775
    torch.testing.assert_close(log_sinhc(x), series, rtol=1e-12, atol=1e-300)
    # Above the cutoff, the plain formula (itself accurate to ~1e-13 relative there).
    x = torch.linspace(0.15, 30.0, 200, dtype=F64)
    torch.testing.assert_close(log_sinhc(x), torch.log(torch.sinh(x) / x), rtol=1e-12, atol=0)
    # No overflow where sinh does: log(sinh x / x) -> x - log(2x).
    big = torch.tensor([800.0], dtype=F64)
    torch.testing.assert_close(log_sinhc(big), big - torch.log(2 * big))
    assert torch.isfinite(log_sinhc(torch.tensor([200.0]))).all()  # sinh(200) overflows float32
    # Value and gradient at 0 are exact zeros (the r -> 0 guard).
    z = torch.zeros(3, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(log_sinhc(z).sum(), z)
    assert (log_sinhc(z) == 0).all() and (g == 0).all()
    assert LOG_SINHC_SERIES_CUTOFF == 0.1


# --------------------------------------------------------------------------- WrappedNormal


def polar_grid_integral(q: WrappedNormal, n_rho: int = 400, n_theta: int = 256) -> float:
    """Integral of exp(q.log_prob) over the 2-d ball w.r.t. dM = lambda_z^2 dz.

    Euclidean polar coordinates z = s (cos t, sin t), dz = s ds dt, with the
    radius written as s = tanh(sqrt(c) rho / 2) / sqrt(c), ds = (1 - c s^2) / 2 drho,
    so the grid is uniform in hyperbolic radius rho and resolves the rim.
    Midpoint rule (its error here is ~1e-5). rho runs up to dist0(loc) + 7
    max(scale): the tangent Gaussian mass beyond is < 3e-10.
    """
    c = q.c
    sc = math.sqrt(c)
    rho_max = float(dist0(q.loc, c)) + 7 * float(q.scale.max())
    h = rho_max / n_rho
    rho = (torch.arange(n_rho, dtype=F64) + 0.5) * h
    t = (torch.arange(n_theta, dtype=F64) + 0.5) * (2 * math.pi / n_theta)
    s = torch.tanh(sc * rho / 2) / sc
    ds_drho = (1 - c * s**2) / 2
    z = torch.stack([s[:, None] * torch.cos(t), s[:, None] * torch.sin(t)], dim=-1)  # (n_rho, n_theta, 2)
    dz = (s * ds_drho)[:, None] * h * (2 * math.pi / n_theta)
    dM = lambda_x(z, c) ** 2 * dz
    return float((q.log_prob(z).exp() * dM).sum())


INTEGRATION_CASES = {
    "origin, scale 0.3": ([0.0, 0.0], [0.3], 1.0),
    "|loc| 0.7, scale 0.3": ([0.7, 0.0], [0.3], 1.0),
    "|loc| 0.7, scale 0.7": ([0.42, 0.56], [0.7], 1.0),
    "|loc| 0.7, scale 1.0": ([0.0, 0.7], [1.0], 1.0),
    "anisotropic (0.3, 1.0)": ([0.3, -0.2], [0.3, 1.0], 1.0),
    "c = 2, anisotropic (0.5, 0.8)": ([0.2, 0.3], [0.5, 0.8], 2.0),
}


@pytest.mark.parametrize("loc, scale, c", INTEGRATION_CASES.values(), ids=INTEGRATION_CASES.keys())
def test_log_prob_is_a_density_wrt_the_riemannian_volume(loc, scale, c):
    q = WrappedNormal(torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64), c)
    total = polar_grid_integral(q)
    # Requirement: 1 % ; the quadrature is good to ~1e-5, so 1e-3 is asserted.
    assert abs(total - 1.0) < 1e-3, total


def test_integration_check_detects_a_missing_jacobian():
    # Control: without the -(d-1) log(sinh r / r) term the "density" integrates to
    # far more than 1, so the test above would catch a dropped or wrong Jacobian.
    q = WrappedNormal(torch.tensor([0.0, 0.7], dtype=F64), torch.tensor([1.0], dtype=F64))

    class NoJacobian(WrappedNormal):
        def log_prob(self, z):
            v = self.tangent_coords(z)
            return torch.distributions.Normal(0.0, self.scale).log_prob(v).sum(-1)

    wrong = polar_grid_integral(NoJacobian(q.loc, q.scale))
    assert wrong > 1.2, wrong  # 1.41


def test_samples_are_the_tangent_gaussian_pushed_forward():
    # Three 2-d distributions in one batch, 40 000 seeded draws each.
    loc = torch.tensor([[0.0, 0.0], [0.42, 0.56], [0.3, -0.2]], dtype=F64)
    scale = torch.tensor([[0.3, 0.3], [0.7, 0.7], [0.3, 1.0]], dtype=F64)
    q = WrappedNormal(loc, scale)
    n = 40_000
    z = q.sample((n,), generator=gen(17))
    assert z.shape == (n, 3, 2)
    # Undo the construction by hand: log-map at the mean, transport to 0, times lambda_0 = 2.
    v = 2.0 * transp0back(loc, logmap(loc, z))
    # |v| is the hyperbolic distance to the mean.
    torch.testing.assert_close(v.norm(dim=-1), dist(loc, z), rtol=1e-9, atol=1e-12)
    # Mean ~ 0: standard error scale / sqrt(n) = 0.005 * scale; allow 5 standard errors.
    mean = v.mean(0)
    assert (mean.abs() < 5 * scale / math.sqrt(n)).all(), mean
    # Covariance ~ diag(scale^2): var/scale^2 has standard error sqrt(2/n) = 0.0071,
    # the correlation 1/sqrt(n) = 0.005; allow 5 standard errors each.
    vc = v - mean
    cov = torch.einsum("nbi,nbj->bij", vc, vc) / (n - 1)
    var_ratio = torch.diagonal(cov, dim1=-2, dim2=-1) / scale**2
    assert ((var_ratio - 1).abs() < 5 * math.sqrt(2 / n)).all(), var_ratio
    corr = cov[:, 0, 1] / (scale[:, 0] * scale[:, 1])
    assert (corr.abs() < 5 / math.sqrt(n)).all(), corr


def test_samples_follow_log_prob():
    # Importance sampling: for z ~ q, E[p(z) / q(z)] = 1 for any density p. If rsample
    # drew from some q' != q, the mean would be the integral of p q'/q instead.
    loc = torch.tensor([[0.0, 0.0], [0.42, 0.56], [0.3, -0.2]], dtype=F64)
    scale = torch.tensor([[0.3, 0.3], [0.7, 0.7], [0.3, 1.0]], dtype=F64)
    q = WrappedNormal(loc, scale)
    p = WrappedNormal(loc + torch.tensor([0.05, -0.05], dtype=F64), 0.8 * scale)
    n = 40_000
    z = q.sample((n,), generator=gen(18))
    w = (p.log_prob(z) - q.log_prob(z)).exp()
    stderr = w.std(0) / math.sqrt(n)  # ~0.0025 here
    assert ((w.mean(0) - 1).abs() < 5 * stderr).all(), (w.mean(0), stderr)


def test_shapes_properties_and_dtype():
    loc = ball_points(4, 2, 1.0, seed=19, dtype=torch.float32)
    q = WrappedNormal(loc, torch.full((4, 1), 0.5, dtype=F64))  # isotropic scale, cast to loc's dtype
    assert q.batch_shape == (4,) and q.event_shape == (2,)
    assert q.scale.shape == (4, 2) and q.scale.dtype == torch.float32
    assert q.mean is q.loc and q.c == 1.0
    z = q.rsample((5, 3))
    assert z.shape == (5, 3, 4, 2) and z.dtype == torch.float32
    lp = q.log_prob(z)
    assert lp.shape == (5, 3, 4) and lp.dtype == torch.float32
    assert q.log_prob(z[:, :, :1]).shape == (5, 3, 4)  # broadcasting over the batch
    assert q.sample().shape == (4, 2)
    # Same generator seed, same draws.
    torch.testing.assert_close(q.sample((2,), generator=gen(0)), q.sample((2,), generator=gen(0)))
    assert q.expand((6, 4)).batch_shape == (6, 4)


def test_rsample_is_reparametrised():
    loc = torch.tensor([[0.3, -0.4], [0.0, 0.1]], dtype=F64, requires_grad=True)
    scale = torch.tensor([[0.5, 0.9], [1.0, 1.0]], dtype=F64, requires_grad=True)
    q = WrappedNormal(loc, scale)
    z = q.rsample((16,))
    (gl, gs) = torch.autograd.grad((z.sum() + q.log_prob(z).sum()), (loc, scale))
    assert torch.isfinite(gl).all() and torch.isfinite(gs).all()
    assert (gl.abs() > 0).all() and (gs.abs() > 0).all()
    assert not q.sample((4,)).requires_grad
    # Exact derivatives (finite differences, fixed noise).
    torch.autograd.gradcheck(lambda m, s: WrappedNormal(m, s).rsample((3,), generator=gen(20)), (loc, scale))
    zz = z.detach().requires_grad_()
    torch.autograd.gradcheck(lambda m, s, x: WrappedNormal(m, s).log_prob(x), (loc, scale, zz[:3]))


def test_log_prob_at_the_mean_is_finite():
    # r = 0: the Jacobian term is 0 (guarded 0/0) and the density is the Gaussian peak.
    loc = torch.tensor([[0.3, -0.4], [0.0, 0.0], [0.9, 0.0]], dtype=F64, requires_grad=True)
    scale = torch.tensor([[0.5, 0.9], [1.0, 1.0], [0.2, 0.2]], dtype=F64, requires_grad=True)
    q = WrappedNormal(loc, scale)
    for z in (loc, loc.detach()):
        lp = q.log_prob(z)
        expected = (-torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)
        (gl, gs) = torch.autograd.grad(lp.sum(), (loc, scale))
        assert torch.isfinite(gl).all() and torch.isfinite(gs).all()


@pytest.mark.parametrize("dtype, norm", [(F64, 1 - 1e-5), (torch.float32, 1 - BALL_EPS[torch.float32])])
@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_wrapped_normal_at_the_rim_has_no_nan(dtype, norm, scale):
    # Means on the projection shell (float64: 1 - 1e-5; float32: 1 - 4e-3). Samples that
    # would leave the ball are projected back onto the shell, and must stay finite.
    loc = rim_points(8, 2, norm, seed=21, dtype=dtype).requires_grad_()
    s = torch.full((8, 2), scale, dtype=dtype, requires_grad=True)
    q = WrappedNormal(loc, s)
    z = q.rsample((500,), generator=gen(22))
    assert torch.isfinite(z).all()
    assert (z.norm(dim=-1) <= norm * (1 + 1e-6)).all()
    lp = q.log_prob(z)
    assert torch.isfinite(lp).all()
    assert torch.isfinite(q.log_prob(loc)).all()
    (gl, gs) = torch.autograd.grad(lp.sum(), (loc, s))
    assert torch.isfinite(gl).all() and torch.isfinite(gs).all()


def test_invalid_parameters_are_rejected():
    loc = torch.tensor([0.1, 0.2], dtype=F64)
    with pytest.raises(ValueError):
        WrappedNormal(loc, torch.tensor([0.5, 0.0], dtype=F64))  # scale must be > 0
    with pytest.raises(ValueError):
        WrappedNormal(torch.tensor([0.8, 0.8], dtype=F64), 0.5)  # outside the unit ball
    with pytest.raises(ValueError):
        WrappedNormal(torch.tensor([0.6, 0.0], dtype=F64), 0.5, c=4.0)  # outside radius 1/2
    with pytest.raises(ValueError):
        WrappedNormal(loc, 0.5).log_prob(torch.tensor([1.0, 0.5], dtype=F64))
    with pytest.raises(ValueError):
        WrappedNormal(loc, 0.5, c=0.0)
