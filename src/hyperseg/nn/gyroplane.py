"""Gyroplane convolution: a 3D convolution over a volume of Poincare-ball points.

Hsu et al. (NeurIPS 2021), Eq. 5-7, built on Ganea et al.'s (2018) hyperbolic
multinomial-logistic-regression (MLR) layer. A Euclidean convolution sums
affine scores ``<w, x> + b`` of the inputs in its window; here every affine
score is replaced by the score of a ball point with respect to a *gyroplane*
``H_{a,p} = {z : <-p (+) z, a> = 0}`` (``p`` a ball point, ``a`` a tangent
vector at ``p``):

.. math::

    f_{a,p}(x) = \\frac{\\lambda_p |a|}{\\sqrt c}\\,
        \\operatorname{arsinh}\\Big(\\frac{2\\sqrt c\\,\\langle -p \\oplus x, a\\rangle}
                                        {(1 - c|-p \\oplus x|^2)\\,|a|}\\Big),
    \\qquad \\lambda_p = \\frac{2}{1 - c|p|^2},

i.e. ``sign * ||a||_p * d(x, H_{a,p})`` (paper Eq. 5-6, with curvature ``-c``).
As in a Euclidean convolution, each (output channel, input channel, kernel
offset) has its own gyroplane, and

``y[b, o, s] = bias[o] + sum_{i, u} f_{a[o,i,u], p[o,i,u]}(x[b, i, s + u])``

(paper Eq. 7 summed over the window, extended to several channels, padding
and even/anisotropic kernels; stride 1, no dilation).

Evaluation without forming ``-p (+) x``
---------------------------------------
With ``alpha = 1 - 2c<p,x> + c|x|^2``, ``beta = 1 - c|p|^2`` and
``gamma = 1 - 2c<p,x> + c^2|p|^2|x|^2``, Mobius addition gives
``-p (+) x = (beta x - alpha p) / gamma``, hence

* ``<-p (+) x, a> = (beta <x,a> - alpha <p,a>) / gamma``, and
* ``1 - c|-p (+) x|^2 = beta (1 - c|x|^2) / gamma`` (the standard identity
  ``1 - c|u (+) v|^2 = (1 - c|u|^2)(1 - c|v|^2) / (1 + 2c<u,v> + c^2|u|^2|v|^2)``).

``gamma`` cancels, so the arsinh argument is

``2 sqrt(c) (beta <x,a> - alpha <p,a>) / (beta (1 - c|x|^2) |a|)``

and the layer needs only the inner products ``<p,x>``, ``<x,a>`` (one einsum
over the coordinate axis) and ``|x|^2``, ``|p|^2``, ``<p,a>``, ``|a|``. The
identity form also avoids the cancellation in ``1 - c|-p (+) x|^2`` when
``x`` is near the rim.

Numerical guards
----------------
``CONFORMAL_MIN``
    Floor for the conformal denominators ``1 - c|x|^2`` and ``1 - c|p|^2``
    (their product over ``gamma`` is ``1 - c|-p (+) x|^2``, which is therefore
    clamped too). It only acts on points on or outside the rim: a float64
    point at norm ``1 - 1e-5`` has ``1 - |x|^2 ~ 2e-5``, far above it, so
    values and gradients there are exact and finite.
``NORMAL_MIN``
    Floor for ``|a|`` (computed as ``sqrt(max(|a|^2, NORMAL_MIN^2))``): a zero
    normal gives score 0 (the limit) and finite gradients instead of 0/0.

Padding
-------
Padded positions hold the **origin of the ball** (the zero vector), a valid
ball point and the hyperbolic analogue of zero padding. Their contribution
is ``f_{a,p}(0) = -(lambda_p|a|/sqrt c) arsinh(2 sqrt(c) <p,a> / (beta |a|))``,
generally non-zero (as ``<w, 0> + b = b`` is for a Euclidean affine map).

Memory
------
The forward pass materialises the unfolded input, ``B*C_in*K*S*dim``
elements (``K = kd*kh*kw``, ``S = D'H'W'``), and a handful (about ten with
autograd) of per-term tensors of ``B*C_out*C_in*K*S`` elements each before
the sum over input channels and offsets.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..geometry.poincare import expmap0, transp0

#: Floor of ``1 - c|x|^2`` and ``1 - c|p|^2`` (see module docstring).
CONFORMAL_MIN = 1e-15
#: Floor of the Euclidean norm ``|a|`` of the gyroplane normals.
NORMAL_MIN = 1e-15
#: Standard deviation of the initial tangent offsets ``p_tangent`` (p starts near 0).
P_INIT_STD = 1e-2

__all__ = ["GyroplaneConv3d", "CONFORMAL_MIN", "NORMAL_MIN", "gyroplane_score"]


def _triple(v: int | tuple[int, int, int], name: str) -> tuple[int, int, int]:
    t = (v, v, v) if isinstance(v, int) else tuple(int(e) for e in v)
    if len(t) != 3:
        raise ValueError(f"{name} must be an int or a 3-tuple, got {v!r}")
    return t  # type: ignore[return-value]


def gyroplane_score(
    px: torch.Tensor,
    xa: torch.Tensor,
    x2: torch.Tensor,
    p2: torch.Tensor,
    pa: torch.Tensor,
    a2: torch.Tensor,
    c: float,
) -> torch.Tensor:
    """Ganea's MLR score ``f_{a,p}(x)`` from inner products only (all broadcast).

    Arguments are ``<p,x>``, ``<x,a>``, ``|x|^2``, ``|p|^2``, ``<p,a>``,
    ``|a|^2``; returns
    ``(2|a| / (beta sqrt c)) arsinh(2 sqrt(c) (beta<x,a> - alpha<p,a>) / (beta (1-c|x|^2) |a|))``
    with ``alpha = 1 - 2c<p,x> + c|x|^2`` and ``beta = 1 - c|p|^2`` (module
    docstring for the derivation and the guards).
    """
    sqrt_c = math.sqrt(c)
    beta = (1.0 - c * p2).clamp_min(CONFORMAL_MIN)
    a_norm = a2.clamp_min(NORMAL_MIN**2).sqrt()
    alpha = 1.0 - 2.0 * c * px + c * x2
    one_minus_x = (1.0 - c * x2).clamp_min(CONFORMAL_MIN)
    num = beta * xa - alpha * pa
    arg = (2.0 * sqrt_c) * num / (one_minus_x * (beta * a_norm))
    return (2.0 / sqrt_c) * (a_norm / beta) * torch.asinh(arg)


class GyroplaneConv3d(nn.Module):
    """3D convolution of a volume of ball points by gyroplane scores (paper Eq. 5-7).

    Args:
        in_channels: ``C_in``, ball points per voxel.
        out_channels: ``C_out``, real output channels.
        kernel_size: ``k`` or ``(kd, kh, kw)``.
        dim: dimension of the ball (coordinates per point).
        c: curvature magnitude (the ball has curvature ``-c``), ``c > 0``.
        padding: ``p`` or ``(pd, ph, pw)`` voxels on each side, filled with
            the ball's origin (the zero vector).
        bias: add a learned real bias per output channel.

    Shapes:
        input ``(B, C_in, D, H, W, dim)`` of points with ``c|x|^2 < 1``;
        output ``(B, C_out, D', H', W')`` with ``D' = D + 2 pd - kd + 1`` (etc.).

    Parameters (all Euclidean, so any ``torch.optim`` optimiser applies):
        ``p_tangent`` ``(C_out, C_in, kd, kh, kw, dim)``: the gyroplane offsets
        are ``p = expmap0(p_tangent, c)`` (:meth:`points`);
        ``a0`` (same shape): the normals, tangent at the origin, are moved to
        ``p`` by parallel transport, ``a = transp0(p, a0, c) = (1 - c|p|^2) a0``
        (:meth:`normals`); ``bias`` ``(C_out,)``.
        They are created in float32; the forward pass casts them to the
        input's dtype and device, so a float64 input is computed in float64.

    Init: ``p_tangent ~ N(0, 1e-2^2)`` (gyroplanes through points near the
    origin); ``a0 ~ N(0, (sqrt(2 / fan_in) / 4)^2)`` with
    ``fan_in = C_in * kd*kh*kw * dim`` -- Kaiming's ReLU scale divided by the
    layer's slope at the origin, ``f_{a,0}(x) ~ 4 <a, x>`` (``lambda_0 = 2``
    times the 2 of the distance formula); bias zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        dim: int,
        c: float = 1.0,
        padding: int | tuple[int, int, int] = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if c <= 0:
            raise ValueError(f"curvature magnitude c must be > 0, got {c}")
        if min(in_channels, out_channels, dim) < 1:
            raise ValueError("in_channels, out_channels and dim must be positive")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.padding = _triple(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.padding) < 0:
            raise ValueError(f"need kernel_size >= 1 and padding >= 0, got {kernel_size}, {padding}")
        self.dim = int(dim)
        self.c = float(c)
        shape = (self.out_channels, self.in_channels, *self.kernel_size, self.dim)
        self.p_tangent = nn.Parameter(torch.empty(shape))
        self.a0 = nn.Parameter(torch.empty(shape))
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        fan_in = self.in_channels * math.prod(self.kernel_size) * self.dim
        with torch.no_grad():
            self.p_tangent.normal_(0.0, P_INIT_STD)
            self.a0.normal_(0.0, math.sqrt(2.0 / fan_in) / 4.0)
            if self.bias is not None:
                self.bias.zero_()

    def _points_normals(self, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pt, a0 = self.p_tangent, self.a0
        if like is not None:
            pt, a0 = pt.to(like), a0.to(like)
        p = expmap0(pt, self.c)
        return p, transp0(p, a0, self.c)

    def points(self) -> torch.Tensor:
        """Gyroplane offsets ``p = expmap0(p_tangent)``, ``(C_out, C_in, kd, kh, kw, dim)``."""
        return self._points_normals()[0]

    def normals(self) -> torch.Tensor:
        """Gyroplane normals ``a = transp0(p, a0)`` (tangent at ``p``), same shape as :meth:`points`."""
        return self._points_normals()[1]

    def output_shape(self, spatial: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(D', H', W')`` for an input of spatial size ``(D, H, W)``."""
        return tuple(n + 2 * q - k + 1 for n, q, k in zip(spatial, self.padding, self.kernel_size))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W, dim)`` ball points to ``(B, C_out, D', H', W')`` scores."""
        if x.dim() != 6 or x.shape[1] != self.in_channels or x.shape[-1] != self.dim:
            raise ValueError(
                f"expected input (B, {self.in_channels}, D, H, W, {self.dim}), got {tuple(x.shape)}"
            )
        out_sp = self.output_shape(tuple(x.shape[2:5]))  # type: ignore[arg-type]
        if min(out_sp) < 1:
            raise ValueError(f"input spatial size {tuple(x.shape[2:5])} too small for kernel "
                             f"{self.kernel_size} with padding {self.padding}")
        B = x.shape[0]
        kd, kh, kw = self.kernel_size
        pd, ph, pw = self.padding
        K, S = kd * kh * kw, math.prod(out_sp)

        # Pad with the origin (zero vector) and cut out the windows:
        # (B, Ci, D', H', W', dim, kd, kh, kw) -> (B, Ci, K, S, dim), offsets in (kd, kh, kw) order.
        if pd or ph or pw:
            x = F.pad(x, (0, 0, pw, pw, ph, ph, pd, pd))
        win = x.unfold(2, kd, 1).unfold(3, kh, 1).unfold(4, kw, 1)
        win = win.permute(0, 1, 6, 7, 8, 2, 3, 4, 5).reshape(B, self.in_channels, K, S, self.dim)

        p, a = self._points_normals(like=x)
        p = p.reshape(self.out_channels, self.in_channels, K, self.dim)
        a = a.reshape(self.out_channels, self.in_channels, K, self.dim)

        # <p,x> and <x,a> in one einsum: (2, B, Co, Ci, K, S).
        pa_stack = torch.stack((p, a))
        px, xa = torch.einsum("biksd,toikd->tboiks", win, pa_stack).unbind(0)
        x2 = (win * win).sum(-1)[:, None]  # (B, 1, Ci, K, S)
        p2 = (p * p).sum(-1)[..., None]  # (Co, Ci, K, 1)
        pa = (p * a).sum(-1)[..., None]
        a2 = (a * a).sum(-1)[..., None]

        score = gyroplane_score(px, xa, x2, p2, pa, a2, self.c)  # (B, Co, Ci, K, S)
        y = score.sum(dim=(2, 3))  # (B, Co, S)
        if self.bias is not None:
            y = y + self.bias.to(y)[:, None]
        return y.reshape(B, self.out_channels, *out_sp)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dim={self.dim}, "
                f"c={self.c}, padding={self.padding}, bias={self.bias is not None}")
