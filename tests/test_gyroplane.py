"""GyroplaneConv3d: a convolution whose affine maps are Ganea's hyperbolic MLR scores.

Specification (paper Eq. 5-7, curvature -c): for every output voxel s and
output channel o,

    y[b, o, s] = bias[o] + sum_{i, u} f_{a[o,i,u], p[o,i,u]}(x[b, i, s + u]),
    f_{a,p}(x) = (lambda_p |a| / sqrt c) arsinh(2 sqrt(c) <-p (+) x, a> / ((1 - c|-p (+) x|^2) |a|)),

with lambda_p = 2 / (1 - c|p|^2), (+) Mobius addition, one gyroplane (p, a)
per (output channel, input channel, kernel offset), and padded voxels
holding the ball's origin.
"""
import itertools
import math

import pytest
import torch
from geoopt.manifolds.stereographic.math import dist2plane

from hyperseg.geometry.poincare import expmap0, lambda_x, mobius_add
from hyperseg.nn import GyroplaneConv3d


def score_ref(x: torch.Tensor, p: torch.Tensor, a: torch.Tensor, c: float) -> torch.Tensor:
    """The formula, literally: x ``(B, d)``, one gyroplane ``p, a`` ``(d,)`` -> ``(B,)``."""
    diff = mobius_add(-p, x, c)  # broadcasts
    a_norm = a.norm()
    lam = 2 / (1 - c * p.dot(p))
    arg = 2 * math.sqrt(c) * (diff @ a) / ((1 - c * (diff * diff).sum(-1)) * a_norm)
    return lam * a_norm / math.sqrt(c) * torch.asinh(arg)


@torch.no_grad()
def naive_conv(layer: GyroplaneConv3d, x: torch.Tensor) -> torch.Tensor:
    """Reference: explicit loops over output voxels, channels and kernel offsets."""
    p, a, c = layer.points(), layer.normals(), layer.c
    B, Ci, D, H, W, d = x.shape
    (kd, kh, kw), (pd, ph, pw) = layer.kernel_size, layer.padding
    xpad = torch.zeros(B, Ci, D + 2 * pd, H + 2 * ph, W + 2 * pw, d, dtype=x.dtype)  # origin = 0
    xpad[:, :, pd:pd + D, ph:ph + H, pw:pw + W] = x
    Do, Ho, Wo = D + 2 * pd - kd + 1, H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    out = torch.zeros(B, layer.out_channels, Do, Ho, Wo, dtype=x.dtype)
    for r, s, t in itertools.product(range(Do), range(Ho), range(Wo)):
        for o in range(layer.out_channels):
            acc = torch.zeros(B, dtype=x.dtype)
            if layer.bias is not None:
                acc = acc + layer.bias[o]
            for i in range(Ci):
                for u, v, w in itertools.product(range(kd), range(kh), range(kw)):
                    acc = acc + score_ref(xpad[:, i, r + u, s + v, t + w], p[o, i, u, v, w], a[o, i, u, v, w], c)
            out[:, o, r, s, t] = acc
    return out


def random_ball(shape, c: float = 1.0, max_norm: float = 0.95, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Points with norms uniform in [0, max_norm / sqrt(c)) and uniform directions."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape, generator=g, dtype=dtype)
    r = torch.rand(*shape[:-1], 1, generator=g, dtype=dtype) * max_norm / math.sqrt(c)
    return v / v.norm(dim=-1, keepdim=True) * r


def make_layer(cin, cout, k, dim, c=1.0, padding=0, seed=0, spread=1.0) -> GyroplaneConv3d:
    """A float64 layer with non-trivial gyroplanes (offsets well away from 0, non-zero bias)."""
    torch.manual_seed(seed)
    layer = GyroplaneConv3d(cin, cout, k, dim=dim, c=c, padding=padding).double()
    with torch.no_grad():
        layer.p_tangent.normal_(0.0, spread)
        layer.a0.normal_(0.0, 1.0)
        layer.bias.normal_(0.0, 1.0)
    return layer


def test_reference_formula_is_lambda_p_times_geoopt_dist2plane():
    # geoopt's dist2plane(signed=True, scaled=True) is |a| arsinh(2 sqrt(c)<-p(+)x, a> / ((1-c|-p(+)x|^2)|a|)) / sqrt(c),
    # i.e. the Euclidean |a| times the signed distance. The paper's Eq. 5 scales by the Riemannian norm
    # ||a||_p = lambda_p |a|, so f_{a,p} = lambda_p * dist2plane(..., signed=True, scaled=True).
    for c in (1.0, 0.5, 2.0):
        x = random_ball((50, 3), c, seed=1)
        p = random_ball((3,), c, max_norm=0.9, seed=2)
        a = torch.randn(3, dtype=torch.float64)
        ref = dist2plane(x, p.expand_as(x), a.expand_as(x), k=torch.tensor(-c, dtype=torch.float64),
                         signed=True, scaled=True)
        torch.testing.assert_close(score_ref(x, p, a, c), lambda_x(p, c) * ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("k,padding", [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)])
def test_layer_equals_naive_loops(k, padding, dim):
    # A 4x3x3 volume (not a cube, so that an axis mix-up would show) keeps the loops quick.
    layer = make_layer(2, 3, k, dim, padding=padding, seed=k + 10 * padding + 100 * dim)
    x = random_ball((2, 2, 4, 3, 3, dim), seed=dim)
    y = layer(x)
    assert y.shape == (2, 3, *(n + 2 * padding - k + 1 for n in (4, 3, 3)))
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, naive_conv(layer, x), rtol=1e-5, atol=1e-5)


def test_anisotropic_kernel_and_padding_and_other_curvature():
    layer = make_layer(2, 3, (1, 2, 3), 3, c=0.7, padding=(1, 0, 1), seed=3)
    x = random_ball((2, 2, 3, 4, 5, 3), c=0.7, seed=4)
    y = layer(x)
    assert y.shape == (2, 3, 5, 3, 5)
    torch.testing.assert_close(y, naive_conv(layer, x), rtol=1e-5, atol=1e-5)


def test_rim_points_match_naive_and_gradcheck():
    # Offsets near the rim too (large p_tangent), inputs at norm up to 1 - 1e-4.
    layer = make_layer(1, 2, 2, 2, padding=1, seed=5, spread=3.0)
    x = random_ball((1, 1, 2, 2, 2, 2), max_norm=1 - 1e-4, seed=6)
    torch.testing.assert_close(layer(x), naive_conv(layer, x), rtol=1e-7, atol=1e-7)
    small = make_layer(1, 2, 2, 2, padding=1, seed=7)
    x = random_ball((1, 1, 2, 2, 2, 2), max_norm=0.8, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: small(z), (x,))


def test_kernel_one_single_point_hand_value():
    # p = 0 (p_tangent = 0), a = a0 = e1 (transp0 from 0 to 0 is the identity), x = (t/sqrt(c), 0):
    #   lambda_0 = 2, -0 (+) x = x, so f = (2 / sqrt c) arsinh(2 sqrt(c) x_1 / (1 - c|x|^2))
    #                                     = (2 / sqrt c) arsinh(2t / (1 - t^2)) = (4 / sqrt c) artanh(t),
    #   using sinh(2 artanh t) = 2t / (1 - t^2). That is ||a||_0 = 2 times the signed distance
    #   d(0, x) = (2 / sqrt c) artanh(t) to the gyroplane {z_1 = 0}. For t = 1/2, c = 1: 4 artanh(1/2) = 2 ln 3.
    for c in (1.0, 4.0):
        layer = GyroplaneConv3d(1, 1, 1, dim=2, c=c).double()
        with torch.no_grad():
            layer.p_tangent.zero_()
            layer.a0.copy_(torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 1, 2))
            layer.bias.fill_(0.25)
        x = torch.tensor([0.5 / math.sqrt(c), 0.0], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
        expected = 4 / math.sqrt(c) * math.atanh(0.5) + 0.25
        assert layer(x).item() == pytest.approx(expected, rel=1e-12)
        if c == 1.0:
            assert expected == pytest.approx(2 * math.log(3) + 0.25, rel=1e-12)
        # The mirror point scores the opposite; a point on the gyroplane scores 0 (plus bias).
        assert layer(-x).item() == pytest.approx(-expected + 0.5, rel=1e-12)
        x_on = torch.tensor([0.0, 0.3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
        assert layer(x_on).item() == pytest.approx(0.25, abs=1e-12)


def test_padding_is_the_origin():
    layer = make_layer(2, 3, 3, 2, padding=(1, 2, 0), seed=9)
    x = random_ball((2, 2, 3, 3, 4, 2), seed=10)
    unpadded = make_layer(2, 3, 3, 2, padding=0, seed=9)
    xpad = torch.zeros(2, 2, 5, 7, 4, 2, dtype=torch.float64)
    xpad[:, :, 1:4, 2:5, :] = x
    torch.testing.assert_close(layer(x), unpadded(xpad), rtol=0, atol=1e-12)


def test_translation_equivariance():
    # Cropping (shifting) the input crops (shifts) the output by the same amount.
    layer = make_layer(2, 3, (2, 3, 2), 3, seed=11)
    x = random_ball((2, 2, 6, 6, 6, 3), seed=12)
    y = layer(x)
    torch.testing.assert_close(layer(x[:, :, 2:, 1:, 3:]), y[:, :, 2:, 1:, 3:], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x[:, :, :4, 1:5, :]), y[:, :, :3, 1:3, :5], rtol=0, atol=1e-12)


def test_parameters_points_normals_and_shapes():
    layer = GyroplaneConv3d(3, 5, (3, 1, 2), dim=4, c=2.0, padding=1)
    shape = (5, 3, 3, 1, 2, 4)
    params = dict(layer.named_parameters())
    assert set(params) == {"p_tangent", "a0", "bias"}
    assert all(type(t) is torch.nn.Parameter and t.dtype == torch.float32 for t in params.values())
    assert params["p_tangent"].shape == shape and params["a0"].shape == shape and params["bias"].shape == (5,)
    assert torch.all(params["bias"] == 0)
    p, a = layer.points(), layer.normals()
    assert p.shape == shape and a.shape == shape
    assert torch.all(2.0 * (p * p).sum(-1) < 1)
    torch.testing.assert_close(p, expmap0(layer.p_tangent, 2.0))
    torch.testing.assert_close(a, layer.a0 * (1 - 2.0 * (p * p).sum(-1, keepdim=True)))  # transp0
    # p_tangent starts small; a0 is Kaiming-like, std sqrt(2/fan_in)/4 with fan_in = 3*6*4.
    assert layer.p_tangent.abs().max() < 0.1
    assert 0.5 < layer.a0.std().item() / (math.sqrt(2 / 72) / 4) < 1.5
    # Far-out tangent parameters still give ball points (expmap0 projects).
    with torch.no_grad():
        layer.p_tangent.mul_(1e4)
    p = layer.points()
    assert torch.all(2.0 * (p * p).sum(-1) < 1)

    x = random_ball((2, 3, 4, 5, 6, 4), c=2.0, dtype=torch.float32)
    y = layer(x)
    assert y.shape == (2, 5, 4, 7, 7) and y.dtype == torch.float32
    assert GyroplaneConv3d(1, 2, 1, dim=2, bias=False).bias is None


def test_float32_forward_agrees_with_float64():
    # Offsets well inside the ball: float32 projects p at 1 - 4e-3, float64 at 1 - 1e-5.
    layer = make_layer(2, 3, 2, 3, padding=1, seed=13, spread=0.3)
    x = random_ball((2, 2, 3, 3, 3, 3), seed=14)
    y64 = layer(x)
    layer32 = layer.float()
    torch.testing.assert_close(layer32(x.float()).double(), y64, rtol=1e-4, atol=1e-4)
    assert layer32.p_tangent.dtype == torch.float32


@pytest.mark.parametrize("dtype,gap", [(torch.float64, 1e-5), (torch.float32, 1e-3)])
@pytest.mark.parametrize("c", [1.0, 2.5])
def test_gradients_finite_near_the_rim(dtype, gap, c):
    torch.manual_seed(0)
    layer = GyroplaneConv3d(2, 3, 3, dim=3, c=c, padding=1)
    with torch.no_grad():
        layer.p_tangent[0].mul_(1e3)  # first output channel: offsets on the projection shell
        layer.a0[1, 0].zero_()  # a zero normal: score 0, guarded |a|
    x = random_ball((2, 2, 3, 3, 3, 3), c=c, dtype=dtype, seed=15)
    x = x / x.norm(dim=-1, keepdim=True) * (1 - gap) / math.sqrt(c)  # every point at the rim
    x.requires_grad_()
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, prm in layer.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name


def test_zero_normals_give_the_bias():
    layer = GyroplaneConv3d(1, 2, 2, dim=2)
    with torch.no_grad():
        layer.a0.zero_()
        layer.bias.copy_(torch.tensor([1.5, -2.0]))
    x = random_ball((1, 1, 3, 3, 3, 2), dtype=torch.float32).requires_grad_()
    y = layer(x)
    torch.testing.assert_close(y, torch.tensor([1.5, -2.0]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 2, 2))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.a0.grad).all()


def test_plain_adam_step_keeps_points_in_the_ball():
    layer = GyroplaneConv3d(1, 2, 1, dim=2)
    opt = torch.optim.Adam(layer.parameters(), lr=10.0)
    x = random_ball((4, 1, 2, 2, 2, 2), dtype=torch.float32)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(2).mean().neg().backward()
        opt.step()
    p = layer.points()
    assert torch.isfinite(p).all() and torch.all((p * p).sum(-1) < 1)


def test_bad_inputs_raise():
    layer = GyroplaneConv3d(2, 3, 3, dim=2)
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 2, 4, 4, 4, 3))  # wrong dim
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 1, 4, 4, 4, 2))  # wrong channels
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 2, 2, 4, 4, 2))  # smaller than the kernel
    with pytest.raises(ValueError):
        GyroplaneConv3d(1, 1, 1, dim=2, c=0.0)
    with pytest.raises(ValueError):
        GyroplaneConv3d(1, 1, (1, 2), dim=2)
