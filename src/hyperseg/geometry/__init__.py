"""Poincare-ball geometry: pure functions (``poincare``) and the wrapped normal."""
from .poincare import (
    BALL_EPS,
    MIN_NORM,
    dist,
    dist0,
    expmap,
    expmap0,
    lambda_x,
    logmap,
    logmap0,
    mobius_add,
    pairwise_dist,
    project,
    transp0,
    transp0back,
)
from .wrapped_normal import WrappedNormal

__all__ = [
    "BALL_EPS",
    "MIN_NORM",
    "dist",
    "dist0",
    "expmap",
    "expmap0",
    "lambda_x",
    "logmap",
    "logmap0",
    "mobius_add",
    "pairwise_dist",
    "project",
    "transp0",
    "transp0back",
    "WrappedNormal",
]
