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
    """``log_x(y) = 2 / (sqrt(c) lambda_x) artanh(sqrt(c)|-x (+) y|) (-x (+) y) / |-x (+) y|``."""
    return gmath.logmap(x, y, k=curvature(c, x))


def transp0(x: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Parallel transport of ``v`` from the origin to ``x``: ``v * lambda_0 / lambda_x = v (1 - c|x|^2)``."""
    return gmath.parallel_transport0(x, v, k=curvature(c, x))


def transp0back(x: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Parallel transport of ``v`` from ``x`` back to the origin: ``v * lambda_x / lambda_0``."""
    return gmath.parallel_transport0back(x, v, k=curvature(c, x))


def dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Geodesic distance ``d(x, y) = 2/sqrt(c) artanh(sqrt(c) |-x (+) y|)``. ``(..., d) -> (...)``.

    Equal to the paper's Eq. (1), ``arccosh(1 + 2|x-y|^2 / ((1-|x|^2)(1-|y|^2)))`` for c = 1.
    """
    return gmath.dist(x, y, k=curvature(c, x))


def dist0(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Distance to the origin ``2/sqrt(c) artanh(sqrt(c)|x|)``. ``(..., d) -> (...)``."""
    return gmath.dist0(x, k=curvature(c, x))


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """All distances between ``x`` ``(N, d)`` and ``y`` ``(K, d)``, shape ``(N, K)``.

    Uses the arccosh form, which needs only norms and one matrix product:
    ``d(x, y) = 1/sqrt(c) arccosh(1 + 2c|x-y|^2 / ((1 - c|x|^2)(1 - c|y|^2)))``.
    ``|x-y|^2`` is formed as ``|x|^2 + |y|^2 - 2<x,y>`` and clamped at 0;
    the denominators are clamped at ``MIN_NORM`` so that points on the
    projection shell still give finite distances.
    """
    x2 = (x * x).sum(-1, keepdim=True)  # (N, 1)
    y2 = (y * y).sum(-1)[None, :]  # (1, K)
    sq = (x2 + y2 - 2.0 * x @ y.T).clamp_min(0.0)
    denom = ((1.0 - c * x2) * (1.0 - c * y2)).clamp_min(MIN_NORM)
    arg = 1.0 + 2.0 * c * sq / denom
    return torch.acosh(arg.clamp_min(1.0 + MIN_NORM)) / c**0.5
