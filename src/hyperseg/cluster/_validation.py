"""What every clustering estimator shares: one parameter check, one input conversion, one subsample.

Parameters
----------
Each estimator lists a rule per constructor argument (``_RULES``, a mapping
from the argument's name to an :class:`Integer`, :class:`Real`,
:class:`OneOf` or :class:`Levels`) and pairs ``(a, b)`` that must satisfy
``a is None or a >= b`` (``_AT_LEAST``). :func:`check_params` checks them all
and raises ``ValueError("Owner: what is wrong, got value; what to do")``.

Points
------
:func:`as_points` turns any real ``(N, d)`` array-like (numpy, torch, any
real dtype) into a contiguous float64 CPU tensor and refuses non-finite,
empty or mis-shaped input; :func:`to_unit_ball` additionally checks that the
points lie in the ball of curvature ``-c`` and returns ``sqrt(c) X``, the same
points in the unit ball, projected onto its float64 projection shell.

Subsampling
-----------
:func:`subsample` draws the indices of at most ``sample_size`` points,
``torch.randperm(N, generator)[:sample_size]``, or returns ``None`` when all
points are to be used. k-means, k-medians, the mixture and the nested
clustering all fit on a subsample drawn this way.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from ..geometry.poincare import project

__all__ = ["Integer", "Real", "OneOf", "Levels", "Rule", "CURVATURE", "check_params", "as_points", "to_unit_ball",
           "subsample", "DTYPE"]

DTYPE = torch.float64  # all clustering runs in float64 on the CPU


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Integer:
    """An integer ``>= minimum`` (``optional``: ``None`` is accepted too)."""

    minimum: int
    optional: bool = False

    def accepts(self, value: Any) -> bool:
        return (value is None and self.optional) or (_is_int(value) and value >= self.minimum)

    def expected(self) -> str:
        return f"an integer >= {self.minimum}" + (" or None" if self.optional else "")


@dataclass(frozen=True)
class Real:
    """A finite real number ``>= minimum`` (``> minimum`` if ``strict``), and ``< below`` if given."""

    minimum: float
    strict: bool = False
    below: float | None = None
    label: str | None = None  # how the message names the parameter, e.g. "curvature magnitude c"

    def accepts(self, value: Any) -> bool:
        if not (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
                and math.isfinite(value)):
            return False
        low = value > self.minimum if self.strict else value >= self.minimum
        return low and (self.below is None or value < self.below)

    def expected(self) -> str:
        low = f"{'>' if self.strict else '>='} {self.minimum:g}"
        return f"a finite number {low}" + ("" if self.below is None else f" and < {self.below:g}")


@dataclass(frozen=True)
class OneOf:
    """One of a fixed tuple of choices."""

    choices: tuple

    def accepts(self, value: Any) -> bool:
        return any(value == ch and type(value) is type(ch) for ch in self.choices)

    def expected(self) -> str:
        return "one of " + ", ".join(repr(ch) for ch in self.choices)


@dataclass(frozen=True)
class Levels:
    """A non-empty sequence of integer numbers of clusters, each ``>= 1``."""

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str) and len(value) > 0
                and all(_is_int(k) and k >= 1 for k in value))

    def expected(self) -> str:
        return "a non-empty list of numbers of clusters (integers >= 1)"


Rule = Union[Integer, Real, OneOf, Levels]


def check_params(owner: str, params: Mapping[str, Any], rules: Mapping[str, Rule],
                 at_least: Sequence[tuple[str, str]] = ()) -> None:
    """Check ``params`` against ``rules`` (one per name) and the ``at_least`` pairs; raise ``ValueError``.

    ``owner`` (the estimator's class or the function's name) starts the
    message. A parameter without a rule is refused too, so that a new
    constructor argument cannot go unchecked.
    """
    for name, value in params.items():
        if name not in rules:
            raise ValueError(f"{owner}: parameter {name!r} has no validation rule; add one to {owner}._RULES")
        rule = rules[name]
        if not rule.accepts(value):
            label = getattr(rule, "label", None) or name
            raise ValueError(f"{owner}: {label} must be {rule.expected()}, got {value!r}; "
                             f"pass {name} as {rule.expected()}")
    for big, small in at_least:
        if params[big] is not None and params[big] < params[small]:
            raise ValueError(f"{owner}: {big}={params[big]} must be >= {small}={params[small]}; "
                             f"raise {big}, or pass {big}=None to use all points")


def as_points(X, owner: str, name: str = "X") -> torch.Tensor:
    """Any real ``(N, d)`` array-like -> contiguous float64 CPU tensor ``(N, d)``, checked finite and non-empty."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        a = np.asarray(X)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{owner}: {name} must be a real numeric array, got dtype {a.dtype}; "
                             "convert it with np.asarray(X, dtype=float)")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.is_complex():
        raise ValueError(f"{owner}: {name} must be real, got dtype {t.dtype}; pass its real part or magnitude")
    if t.ndim != 2:
        raise ValueError(f"{owner}: {name} must have shape (n_samples, n_features), got shape "
                         f"{tuple(t.shape)}; reshape a single point to (1, d)")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{owner}: {name} is empty (shape {tuple(t.shape)}); pass at least one point")
    t = t.to(device="cpu", dtype=DTYPE).contiguous()
    if not torch.isfinite(t).all():
        raise ValueError(f"{owner}: {name} contains NaN or infinite values; remove or impute them first")
    return t


def to_unit_ball(X, c: float, owner: str, name: str = "X") -> torch.Tensor:
    """Points of the ball of curvature ``-c`` ``(N, d)`` -> ``sqrt(c) X`` in the unit ball (float64), projected.

    Points of norm ``>= 1/sqrt(c)`` are refused; those within ``BALL_EPS[float64]``
    (relative) of the rim are projected onto the shell of radius ``1 - 1e-5``
    (:func:`hyperseg.geometry.poincare.project` with ``c = 1``), so every
    distance is finite.
    """
    x = as_points(X, owner, name)
    z = x * math.sqrt(c)
    norms = z.norm(dim=-1)
    if norms.max().item() >= 1.0:
        i = int(norms.argmax())
        raise ValueError(
            f"{owner}: {name} has points outside the Poincare ball of curvature -{c}: points must have norm "
            f"< 1/sqrt(c) = {1 / math.sqrt(c):.6g}, but point {i} has norm {x[i].norm().item():.6g}; "
            "map tangent vectors onto the ball with expmap0, or rescale/project the points first")
    return project(z, 1.0)


def subsample(n: int, sample_size: int | None, generator: torch.Generator) -> torch.Tensor | None:
    """Indices ``(sample_size,)`` int64 of a random subset of ``range(n)``, or ``None`` to use all ``n`` points.

    ``torch.randperm(n, generator=generator)[:sample_size]`` when
    ``sample_size`` is set and smaller than ``n`` (the draw advances
    ``generator``); ``None`` otherwise (no draw).
    """
    if sample_size is None or n <= sample_size:
        return None
    return torch.randperm(n, generator=generator)[:sample_size]


#: The curvature magnitude of every hyperbolic estimator (the ball has curvature ``-c``).
CURVATURE = Real(0.0, strict=True, label="curvature magnitude c")
