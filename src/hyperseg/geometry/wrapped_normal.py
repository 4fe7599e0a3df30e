r"""Wrapped normal distribution on the Poincare ball (Mathieu et al. 2019).

The ball of curvature :math:`-c` (``c > 0``) is :math:`\mathbb{B}^d_c = \{x : c\|x\|^2 < 1\}`
with metric :math:`g_x = \lambda_x^2 g^E`, :math:`\lambda_x = 2 / (1 - c\|x\|^2)`, so that
the Riemannian volume element is

.. math::

    d\mathcal{M}(x) = \lambda_x^d \, dx .

The wrapped normal :math:`\mathcal{N}^W(\mu, \Sigma)`, :math:`\Sigma = \mathrm{diag}(\sigma^2)`,
is the push-forward of a Euclidean normal living in the tangent space at the
origin, expressed in orthonormal coordinates of :math:`T_0\mathbb{B}` (the
Riemannian norm of a tangent vector :math:`u` at 0 is :math:`\lambda_0 \|u\|`,
with :math:`\lambda_0 = 2` for every ``c``):

.. math::

    v \sim \mathcal{N}(0, \Sigma), \qquad
    u = v / \lambda_0, \qquad
    z = \exp_\mu\big(P_{0 \to \mu}(u)\big),

where :math:`P_{0\to\mu}(u) = u \, \lambda_0 / \lambda_\mu` is parallel transport.
Because parallel transport is an isometry and :math:`\exp_\mu` moves a
Riemannian distance equal to the Riemannian norm of its argument,

.. math::

    d_c(\mu, z) = \lambda_\mu \|P_{0\to\mu}(u)\| = \lambda_0 \|u\| = \|v\| .

The density with respect to :math:`d\mathcal{M}` is (Mathieu et al. 2019, Eq. 5;
the paper's Eq. (4) for ``c = 1``)

.. math::

    \log \mathcal{N}^W(z \mid \mu, \Sigma)
        = \log \mathcal{N}(v \mid 0, \Sigma)
          - (d - 1) \log \frac{\sinh(\sqrt{c}\, r)}{\sqrt{c}\, r},
    \qquad
    v = \lambda_0 \, P_{\mu \to 0}\big(\log_\mu z\big),
    \quad r = d_c(\mu, z),

the second term being the log-Jacobian of :math:`\exp_\mu` in geodesic polar
coordinates (the area of a geodesic sphere of radius :math:`r` in curvature
:math:`-c` is proportional to :math:`(\sinh(\sqrt{c} r)/\sqrt{c})^{d-1}`).

Numerical guard
---------------
``LOG_SINHC_SERIES_CUTOFF``
    :math:`\log(\sinh x / x)` is ``0/0`` at ``x = 0`` (the value ``z = loc``),
    and ``sinh`` overflows for large ``x``. Below the cutoff ``0.1`` the even
    series :math:`x^2/6 - x^4/180 + x^6/2835 - x^8/37800` is used (truncation
    error :math:`< x^{10}/467775 \approx 2 \cdot 10^{-16}`, relative
    :math:`10^{-13}`, at the cutoff, where the closed form would lose ~3 digits to
    cancellation); above it the overflow-free form
    :math:`x + \log(-\mathrm{expm1}(-2x)) - \log(2x)`. The branch that is not
    selected is fed a safe input, so gradients stay finite at ``x = 0``.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints

from .poincare import dist, expmap, logmap, transp0, transp0back

__all__ = ["LOG_SINHC_SERIES_CUTOFF", "LAMBDA_0", "log_sinhc", "WrappedNormal"]

LOG_SINHC_SERIES_CUTOFF = 0.1
#: Conformal factor at the origin, ``2 / (1 - c * 0) = 2`` for every curvature.
LAMBDA_0 = 2.0
_LOG_2PI = math.log(2.0 * math.pi)


def log_sinhc(x: torch.Tensor) -> torch.Tensor:
    r"""Elementwise :math:`\log(\sinh(x) / x)` for ``x >= 0``, finite (value and gradient) at 0.

    .. math::

        \log\frac{\sinh x}{x} =
        \begin{cases}
            x^2/6 - x^4/180 + x^6/2835 - x^8/37800 + O(x^{10}) & x < \text{LOG\_SINHC\_SERIES\_CUTOFF} \\
            x + \log\big(-\mathrm{expm1}(-2x)\big) - \log(2x) & \text{otherwise}
        \end{cases}

    Shape-preserving; does not overflow for large ``x`` (it grows like ``x - log(2x)``).
    """
    small = x < LOG_SINHC_SERIES_CUTOFF
    x_big = torch.where(small, torch.full_like(x, 1.0), x)
    big = x_big + torch.log(-torch.expm1(-2.0 * x_big)) - torch.log(2.0 * x_big)
    x_small = torch.where(small, x, torch.zeros_like(x))
    x2 = x_small * x_small
    series = x2 * (1.0 / 6.0 + x2 * (-1.0 / 180.0 + x2 * (1.0 / 2835.0 - x2 / 37800.0)))
    return torch.where(small, series, big)


class _PoincareBallSupport(constraints.Constraint):
    """Open ball ``{x : c |x|^2 < 1}``; event dimension 1 (coordinates on the last axis)."""

    is_discrete = False
    event_dim = 1

    def __init__(self, c: float) -> None:
        self.c = float(c)
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (self.c * (value * value).sum(-1) < 1.0) & torch.isfinite(value).all(-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__[1:]}(c={self.c})"


class WrappedNormal(Distribution):
    r"""Wrapped (Riemannian) normal :math:`\mathcal{N}^W(\mu, \mathrm{diag}(\sigma^2))` on the Poincare ball.

    Sampling (reparametrised, gradients flow to ``loc`` and ``scale``):

    .. math::

        \epsilon \sim \mathcal{N}(0, I_d),\quad v = \sigma \odot \epsilon,\quad
        z = \exp_\mu\!\big(P_{0\to\mu}(v / \lambda_0)\big)
          = \exp_\mu\!\big(v / \lambda_\mu\big).

    Log-density with respect to the Riemannian volume :math:`\lambda_z^d dz`:

    .. math::

        \log p(z) = \sum_{i=1}^d \Big[-\tfrac{v_i^2}{2\sigma_i^2} - \log\sigma_i - \tfrac12\log 2\pi\Big]
                    - (d-1)\log\frac{\sinh(\sqrt c\, r)}{\sqrt c\, r},

    with :math:`v = \lambda_0 P_{\mu\to 0}(\log_\mu z)` and :math:`r = d_c(\mu, z)\ (= \|v\|)`.

    Args:
        loc: mean :math:`\mu` on the ball, shape ``(*batch_shape, d)``. Its dtype
            and device are those of every result.
        scale: positive standard deviations in the tangent space at 0 (orthonormal
            coordinates), shape ``(*batch_shape, d)`` (diagonal covariance) or
            anything broadcastable to it, e.g. ``(*batch_shape, 1)`` (isotropic).
            Cast to ``loc``'s dtype.
        c: curvature magnitude (the ball has curvature ``-c``), ``c > 0``.
        validate_args: as in :class:`torch.distributions.Distribution`: check that
            ``loc`` is inside the ball, ``scale > 0`` and that ``log_prob``'s
            argument is inside the ball.

    Shapes: ``batch_shape = broadcast(loc.shape[:-1], scale.shape[:-1])``,
    ``event_shape = (d,)``.
    """

    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor | float,
        c: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        if c <= 0:
            raise ValueError(f"curvature magnitude c must be > 0, got {c}")
        if loc.dim() < 1:
            raise ValueError("loc must have at least one dimension (the coordinates)")
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        if scale.dim() == 0:
            scale = scale.reshape(1)
        self._loc, self._scale = torch.broadcast_tensors(loc, scale)
        self._c = float(c)
        super().__init__(
            batch_shape=self._loc.shape[:-1],
            event_shape=self._loc.shape[-1:],
            validate_args=validate_args,
        )

    # ------------------------------------------------------------------ properties
    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        return {"loc": _PoincareBallSupport(self._c), "scale": constraints.positive}

    @property
    def support(self) -> constraints.Constraint:
        return _PoincareBallSupport(self._c)

    @property
    def loc(self) -> torch.Tensor:
        """Mean point on the ball, ``(*batch_shape, d)``."""
        return self._loc

    @property
    def scale(self) -> torch.Tensor:
        """Tangent-space standard deviations, ``(*batch_shape, d)``."""
        return self._scale

    @property
    def c(self) -> float:
        """Curvature magnitude (curvature is ``-c``)."""
        return self._c

    @property
    def mean(self) -> torch.Tensor:
        """The Frechet mean of the wrapped normal is ``loc``, ``(*batch_shape, d)``."""
        return self._loc

    def expand(self, batch_shape, _instance=None) -> "WrappedNormal":
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.event_shape
        return WrappedNormal(
            self._loc.expand(shape), self._scale.expand(shape), self._c, validate_args=False
        )

    # ------------------------------------------------------------------ sampling
    def rsample(
        self, sample_shape: torch.Size | tuple = torch.Size(), generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""Reparametrised samples, shape ``(*sample_shape, *batch_shape, d)``.

        ``z = expmap(loc, transp0(loc, scale * eps / lambda_0))`` with ``eps ~ N(0, I)``;
        ``expmap`` projects the result inside the ball (``BALL_EPS`` per dtype).
        ``generator`` optionally makes the draw reproducible without touching the global RNG.
        """
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self._loc.dtype, device=self._loc.device, generator=generator)
        v = self._scale * eps  # N(0, diag(scale^2)) in orthonormal coords of T_0
        u = transp0(self._loc, v / LAMBDA_0, self._c)  # Euclidean coords of T_loc
        return expmap(self._loc, u, self._c)

    def sample(
        self, sample_shape: torch.Size | tuple = torch.Size(), generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Like :meth:`rsample` but detached from the graph."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    # ------------------------------------------------------------------ density
    def tangent_coords(self, z: torch.Tensor) -> torch.Tensor:
        r"""Inverse of the sampling map: ``v = lambda_0 * transp0back(loc, logmap(loc, z))``.

        ``(*sample_shape, *batch_shape, d) -> (*sample_shape, *batch_shape, d)``; ``|v| = d_c(loc, z)``.
        """
        return LAMBDA_0 * transp0back(self._loc, logmap(self._loc, z, self._c), self._c)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""Log-density w.r.t. the Riemannian volume ``lambda_z^d dz``.

        ``z``: ``(*sample_shape, *batch_shape, d)`` -> ``(*sample_shape, *batch_shape)``.

        ``log N(v | 0, diag(scale^2)) - (d - 1) log(sinh(sqrt(c) r) / (sqrt(c) r))`` with
        ``v = lambda_0 P_{loc->0}(log_loc z)`` and ``r = dist(loc, z)``.
        """
        if self._validate_args:
            self._validate_sample(z)
        v = self.tangent_coords(z)
        d = z.shape[-1]
        gauss = (
            -0.5 * (v / self._scale).pow(2) - torch.log(self._scale) - 0.5 * _LOG_2PI
        ).sum(-1)
        r = dist(self._loc, z, self._c)
        sqrt_c = self._c**0.5
        return gauss - (d - 1) * log_sinhc(sqrt_c * r)

    def __repr__(self) -> str:
        return (
            f"WrappedNormal(loc: {tuple(self._loc.shape)}, scale: {tuple(self._scale.shape)}, "
            f"c={self._c}, dtype={self._loc.dtype})"
        )
