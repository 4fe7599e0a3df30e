"""Poincare-ball maths for curvature -c (c > 0), as pure functions.

Every function takes ball points as tensors whose last axis holds the
coordinates, and the positive curvature magnitude ``c`` as a float. The
heavy lifting is delegated to geoopt's kappa-stereographic model with
``k = -c``; what lives here are the formulas (in the docstrings), the
numerical guards, and the vectorised pairwise distance used by k-means.

Numerical guards
----------------
``MIN_NORM``
    Lower bound on norms before dividing by them (0/0 at the origin).
``BALL_EPS``
    Distance kept from the boundary, per dtype: points are projected onto
    the ball of radius ``(1 - eps) / sqrt(c)``. float32 cannot resolve
    ``1 - |x|^2`` much below 1e-3 relative, so it keeps 4e-3 (geoopt's own
    choice); float64 keeps 1e-5. Use float64 for latent maths where points
    approach the rim.

Accuracy near the rim
---------------------
:func:`dist`, :func:`logmap` and :func:`pairwise_dist` do not go through
geoopt's ``artanh(|-x (+) y|)``: that form clamps ``artanh``'s input at
``1 - 1e-7``, so it saturates at ``d = 16.8`` although two float64 points on
the projection shell can be 24.4 apart (31 % error), and it loses digits for
close pairs near the rim (1 % error at ``|x| = 1 - 1e-5``). They use the
cancellation-free forms given in their docstrings (checked against 50-digit
references: relative error below 1e-11 in float64, 2e-5 in float32).
"""
from __future__ import annotations

import torch
from geoopt.manifolds.stereographic import math as gmath

MIN_NORM = 1e-15
BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}

__all__ = [
    "MIN_NORM",
    "BALL_EPS",
    "curvature",
    "project",
    "lambda_x",
    "mobius_add",
    "expmap0",
    "logmap0",
    "expmap",
    "logmap",
    "transp0",
    "transp0back",
    "dist",
    "dist0",
    "pairwise_dist",
    "klein_to_ball",
    "gyromidpoint",
    "arccosh1p",
    "cosh_dist_minus_1",
]


def curvature(c: float, like: torch.Tensor) -> torch.Tensor:
    """geoopt's signed curvature ``k = -c`` as a 0-d tensor on ``like``'s device and dtype."""
    if c <= 0:
        raise ValueError(f"curvature magnitude c must be > 0 for the Poincare ball, got {c}")
    return torch.tensor(-float(c), dtype=like.dtype, device=like.device)


def project(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Pull points back inside the ball: ``x * min(1, (1 - eps) / (sqrt(c) |x|))``.

    Shape ``(..., d) -> (..., d)``; eps is ``BALL_EPS[x.dtype]``.
    """
    eps = BALL_EPS.get(x.dtype, 1e-5)
    maxnorm = (1.0 - eps) / c**0.5
    norm = x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(norm > maxnorm, x / norm * maxnorm, x)


def lambda_x(x: torch.Tensor, c: float = 1.0, keepdim: bool = False) -> torch.Tensor:
    """Conformal factor ``lambda_x = 2 / (1 - c |x|^2)``. ``(..., d) -> (...)``."""
    return gmath.lambda_x(x, k=curvature(c, x), keepdim=keepdim)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Mobius addition

    ``x (+) y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2 |x|^2 |y|^2)``.
    Broadcasts ``(..., d), (..., d) -> (..., d)``.
    """
    return gmath.mobius_add(x, y, k=curvature(c, x))


def expmap0(v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Exponential map at the origin ``exp_0(v) = tanh(sqrt(c)|v|) v / (sqrt(c)|v|)``, projected."""
    return project(gmath.expmap0(v, k=curvature(c, v)), c)


def logmap0(y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Logarithmic map at the origin ``log_0(y) = artanh(sqrt(c)|y|) y / (sqrt(c)|y|)``."""
    return gmath.logmap0(y, k=curvature(c, y))


def expmap(x: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """``exp_x(v) = x (+) (tanh(sqrt(c) lambda_x |v| / 2) v / (sqrt(c)|v|))``, projected."""
    return project(gmath.expmap(x, v, k=curvature(c, x)), c)


def logmap(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """``log_x(y) = 2 / (sqrt(c) lambda_x) artanh(sqrt(c)|-x (+) y|) (-x (+) y) / |-x (+) y|``.

    Evaluated as the same vector written without cancellation: its Riemannian
    norm is ``d_c(x, y)`` (taken from the accurate :func:`dist`, instead of
    ``artanh(|w|)``, which loses digits and is clamped at ``1 - 1e-7`` once
    ``|w| -> 1``), and its direction is that of ``w = -x (+) y``, whose numerator
    ``(1 - 2c<x,y> + c|y|^2)(-x) + (1 - c|x|^2) y`` is rearranged to
    ``n = (1 - c|x|^2)(y - x) - c|x - y|^2 x`` (for close pairs near the rim the
    first form cancels catastrophically: 0.2 % error in float64 at |x| = 1-1e-5):

    ``log_x(y) = d_c(x, y) / lambda_x * n / |n|``.  ``(..., d), (..., d) -> (..., d)``.
    """
    diff = y - x
    x2 = (x * x).sum(-1, keepdim=True)
    n = (1.0 - c * x2) * diff - c * (diff * diff).sum(-1, keepdim=True) * x
    n_norm = n.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    lam = lambda_x(x, c, keepdim=True)
    return (dist(x, y, c).unsqueeze(-1) / lam) * (n / n_norm)


def transp0(x: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Parallel transport of ``v`` from the origin to ``x``: ``v * lambda_0 / lambda_x = v (1 - c|x|^2)``."""
    return gmath.parallel_transport0(x, v, k=curvature(c, x))


def transp0back(x: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Parallel transport of ``v`` from ``x`` back to the origin: ``v * lambda_x / lambda_0``."""
    return gmath.parallel_transport0back(x, v, k=curvature(c, x))


def dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Geodesic distance ``d(x, y) = 2/sqrt(c) artanh(sqrt(c) |-x (+) y|)``. ``(..., d) -> (...)``.

    Equal to the paper's Eq. (1), ``arccosh(1 + 2|x-y|^2 / ((1-|x|^2)(1-|y|^2)))`` for c = 1.
    Evaluated in the equivalent half-angle form (``cosh d = 1 + 2 sinh^2(d/2)``)

    ``d(x, y) = 2/sqrt(c) arsinh( sqrt(c) |x - y| / sqrt((1 - c|x|^2)(1 - c|y|^2)) )``,

    which has no cancellation: it is accurate to a few ulps both for close
    pairs (where arccosh loses half the digits) and near the rim (where
    geoopt's ``artanh`` form saturates at ``2 artanh(1 - 1e-7) = 16.8`` although
    float64 points on the projection shell can be 24.4 apart). The
    denominators are clamped at ``MIN_NORM``. The gradient at ``x = y`` is the
    zero subgradient of ``|x - y|``.
    """
    diff = (x - y).norm(dim=-1)
    x2 = (x * x).sum(-1)
    y2 = (y * y).sum(-1)
    denom = ((1.0 - c * x2).clamp_min(MIN_NORM) * (1.0 - c * y2).clamp_min(MIN_NORM)).sqrt()
    return 2.0 / c**0.5 * torch.asinh(c**0.5 * diff / denom)


def dist0(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Distance to the origin ``2/sqrt(c) artanh(sqrt(c)|x|)``. ``(..., d) -> (...)``."""
    return gmath.dist0(x, k=curvature(c, x))


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """All distances between ``x`` ``(N, d)`` and ``y`` ``(K, d)``, shape ``(N, K)``.

    Same half-angle form as :func:`dist`, with ``|x_n - y_k|`` from
    ``torch.cdist`` in its direct (not ``|x|^2 + |y|^2 - 2<x,y>``) mode so that
    close pairs keep their digits:
    ``d(x, y) = 2/sqrt(c) arsinh( sqrt(c) |x-y| / sqrt((1 - c|x|^2)(1 - c|y|^2)) )``.
    The denominators are clamped at ``MIN_NORM`` so that points on the
    projection shell still give finite distances.
    """
    diff = torch.cdist(x, y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")  # (N, K)
    x2 = (x * x).sum(-1, keepdim=True)  # (N, 1)
    y2 = (y * y).sum(-1)[None, :]  # (1, K)
    denom = ((1.0 - c * x2).clamp_min(MIN_NORM) * (1.0 - c * y2).clamp_min(MIN_NORM)).sqrt()
    return 2.0 / c**0.5 * torch.asinh(c**0.5 * diff / denom)


def klein_to_ball(k: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Beltrami-Klein to Poincare coordinates ``x = k / (1 + sqrt(1 - c|k|^2))``. ``(..., d) -> (..., d)``.

    This equals the Mobius half ``(1/2) (x) k`` (``tanh(artanh(u)/2) = u / (1 + sqrt(1 - u^2))``).
    ``1 - c|k|^2`` is clamped at 0 so that a Klein point on the rim maps to the rim; the
    result is projected into the ball.
    """
    root = (1.0 - c * (k * k).sum(-1, keepdim=True)).clamp_min(0.0).sqrt()
    return project(k / (1.0 + root), c)


def gyromidpoint(x: torch.Tensor, weights: torch.Tensor | None = None, dim: int = 0, c: float = 1.0) -> torch.Tensor:
    """Weighted gyromidpoint (Ungar 2010) of ball points ``x`` along ``dim``.

    ``m = (1/2) (x) ( sum_i w_i lambda_i x_i / sum_i w_i (lambda_i - 1) )``, ``lambda_i = 2 / (1 - c|x_i|^2)``.

    This is the Einstein midpoint ``sum_i w_i gamma_i k_i / sum_i w_i gamma_i`` of the
    Beltrami-Klein points ``k_i = 2 x_i / (1 + c|x_i|^2)`` (Lorentz factors
    ``gamma_i = lambda_i - 1``), mapped back to the ball. Unlike the Frechet mean it is
    closed-form, and numerator and denominator are *linear* in the weights, which is what
    lets :func:`hyperseg.smooth.smooth_embedding` filter a whole grid of points with a
    Gaussian. It commutes with the ball's isometries (Mobius gyrotranslations and
    rotations) and tends to the weighted arithmetic mean when all points are near 0.

    ``x``: ``(..., N, ..., d)`` with the N points on ``dim``; ``weights``: ``(N,)``,
    non-negative and not all zero (default: equal). Returns ``x`` without ``dim``.
    """
    dim = dim % x.dim()
    if dim == x.dim() - 1:
        raise ValueError("dim must index the points, not the coordinate axis (the last one)")
    lam = 2.0 / (1.0 - c * (x * x).sum(-1, keepdim=True)).clamp_min(MIN_NORM)  # (..., N, ..., 1)
    w = torch.ones(x.shape[dim], dtype=x.dtype, device=x.device) if weights is None else weights.to(x)
    w = w.reshape([-1 if i == dim else 1 for i in range(x.dim())])
    num = (w * lam * x).sum(dim)
    den = (w * (lam - 1.0)).sum(dim).clamp_min(MIN_NORM)
    return klein_to_ball(num / den, c)


def arccosh1p(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(arccosh(1 + delta), sinh(arccosh(1 + delta)))`` for ``delta >= 0``, elementwise.

    ``arccosh(1 + delta) = log1p(delta + sqrt(delta (delta + 2)))`` and
    ``sinh(arccosh(1 + delta)) = sqrt(delta (delta + 2))``: no cancellation for
    small ``delta`` (``arccosh`` of a number near 1 loses half the digits), and
    about twice as fast as ``torch.acosh`` on the CPU. With
    ``delta =`` :func:`cosh_dist_minus_1` it gives ``sqrt(c) d_c(x, y)``; the sinh
    is returned too because the Frechet-mean step needs ``d / sinh d``.
    Shape-preserving.
    """
    sh = torch.sqrt(delta * (delta + 2.0))
    return torch.log1p(delta + sh), sh


def cosh_dist_minus_1(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """``cosh(sqrt(c) d_c(x, y)) - 1 = 2c |x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))``. ``(..., d) -> (...)``.

    The argument of the paper's Eq. (1) minus one, from exact differences (no
    cancellation for close pairs); increasing in the distance, with no
    transcendental function, so it can rank distances by itself. The
    denominator is clamped at ``MIN_NORM``. ``arccosh1p`` of it, divided by
    ``sqrt(c)``, is the distance.
    """
    sq = ((x - y) ** 2).sum(-1)
    den = ((1.0 - c * (x * x).sum(-1)) * (1.0 - c * (y * y).sum(-1))).clamp_min(MIN_NORM)
    return 2.0 * c * sq / den
