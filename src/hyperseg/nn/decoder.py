"""Decoder from a latent point to a patch, starting with a gyroplane layer.

The first layer reads the latent point ``z`` where it lives: for the
hyperbolic model it is a :class:`~hyperseg.nn.GyroplaneConv3d` on ``z`` as a
``1^3`` volume of ball points (signed, scaled distances to learned
gyroplanes; paper Eq. 5-7), not a log-map to the tangent space. The
ablations replace it by a linear layer on ``log_0(z)`` (hyperbolic, no
gyroplane) or on ``z`` (Euclidean). Each posterior sample is decoded on its
own; the released code's reshaping of the 8 samples into a ``2^3`` grid is
not reproduced.

Transposed convolutions then mirror the encoder back to ``m^3``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..geometry import logmap0
from .gyroplane import GyroplaneConv3d


class Decoder(nn.Module):
    """Latent points ``(N, d)`` to patches ``(N, C, m, m, m)``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.gyro_channels
        self.gyroplane: GyroplaneConv3d | None = None
        self.linear: nn.Linear | None = None
        if cfg.decoder_input == "gyroplane":
            self.gyroplane = GyroplaneConv3d(1, width, 1, dim=cfg.latent_dim, c=cfg.c)
        else:
            self.linear = nn.Linear(cfg.latent_dim, width)
        last_window = cfg.patch_edge - len(cfg.encoder_channels) * (cfg.encoder_kernel - 1)
        chans = list(cfg.decoder_channels)
        if len(chans) != len(cfg.encoder_channels):
            raise ValueError("decoder_channels must have as many entries as encoder_channels "
                             f"({len(cfg.encoder_channels)}), got {len(chans)}")
        layers: list[nn.Module] = [nn.ReLU(inplace=True), nn.ConvTranspose3d(width, chans[0], last_window)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.ReLU(inplace=True), nn.ConvTranspose3d(cin, cout, cfg.encoder_kernel)]
        out = cfg.in_channels * (2 if cfg.likelihood == "scale" else 1)  # mean (and raw scale) per channel
        layers += [nn.ReLU(inplace=True), nn.ConvTranspose3d(chans[-1], out, cfg.encoder_kernel)]
        self.body = nn.Sequential(*layers)

    def first_layer(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` latent points to ``(N, width, 1, 1, 1)`` float32 features."""
        if self.gyroplane is not None:
            h = self.gyroplane(z[:, None, None, None, None, :])  # (N, width, 1, 1, 1)
            return h.float()
        assert self.linear is not None
        v = logmap0(z, self.cfg.c) if self.cfg.latent == "hyperbolic" else z
        return self.linear(v.float())[:, :, None, None, None]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.first_layer(z))
