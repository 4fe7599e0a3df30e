"""3D convolutional encoder whose receptive field is exactly one patch.

All convolutions are *valid* (no padding), so the network applied to an
``m^3`` patch returns one vector, and the same network applied to a whole
volume returns, at every position, exactly the vector of the ``m^3`` patch
starting there. That is what makes dense voxel embeddings one
fully-convolutional pass (see :mod:`hyperseg.embed`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import Config
from ..geometry import expmap0

#: Added to the softplus scale so that the posterior never degenerates.
MIN_SCALE = 1e-5


class Encoder(nn.Module):
    """Patch ``(B, C, m, m, m)`` to the posterior's location and scale.

    Layers: ``L`` valid ``k^3`` convolutions with ReLU, one valid convolution
    covering the remaining ``s^3`` window (``s = m - L (k - 1)``, the paper's
    flatten + fully-connected layer written as a convolution), ReLU, then two
    ``1^3`` heads. The location head is mapped onto the ball by ``exp_0``
    for the hyperbolic latent (paper, Fig. 1); the scale head by softplus.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        for cout in cfg.encoder_channels:
            layers += [nn.Conv3d(cin, cout, cfg.encoder_kernel), nn.ReLU(inplace=True)]
            cin = cout
        self.last_window = cfg.patch_edge - len(cfg.encoder_channels) * (cfg.encoder_kernel - 1)
        layers += [nn.Conv3d(cin, cfg.hidden, self.last_window), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.loc_head = nn.Conv3d(cfg.hidden, cfg.latent_dim, 1)
        self.scale_head = nn.Conv3d(cfg.hidden, cfg.latent_dim, 1)

    @property
    def receptive_field(self) -> int:
        return self.cfg.patch_edge

    def to_latent(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw location ``(..., d)`` to the latent space: ``exp_0`` onto the ball, or identity."""
        if self.cfg.latent_float64:
            raw = raw.double()
        if self.cfg.latent == "hyperbolic":
            return expmap0(raw, self.cfg.c)
        return raw

    def dense_loc(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Posterior location at window positions ``stride * i`` along each axis.

        ``x``: ``(B, C, D, H, W)`` with ``D, H, W >= m``. With the defaults returns
        ``(B, D-m+1, H-m+1, W-m+1, d)``: entry ``[b, i, j, k]`` is the location
        for the patch ``x[b, :, i:i+m, j:j+m, k:k+m]``. With ``stride = t``, entry
        ``[b, i, j, k]`` is the patch starting at ``t (i, j, k)``. The
        layers before the last convolution still run at every position (their
        windows overlap), but the last convolution, about a quarter of the
        work, and the heads run only where they are needed.
        """
        head = self.loc_head.weight.dtype  # the body may run in bfloat16 (nn/precision.py), the heads do not
        if stride == 1:
            h = self.body(x)
        else:
            h = self.body[:-2](x)
            last: nn.Conv3d = self.body[-2]  # type: ignore[assignment]
            h = F.relu(F.conv3d(h, last.weight, last.bias, stride=stride))
        raw = self.loc_head(h.to(head))
        return self.to_latent(raw.movedim(1, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, m, m, m)`` to ``(loc (B, d), scale (B, d))``."""
        m = self.cfg.patch_edge
        if x.shape[-3:] != (m, m, m):
            raise ValueError(f"encoder expects patches of edge {m}, got shape {tuple(x.shape)}")
        h = self.body(x)
        loc = self.to_latent(self.loc_head(h).flatten(1))
        scale = F.softplus(self.scale_head(h).flatten(1)) + MIN_SCALE
        return loc, scale.to(loc.dtype)
