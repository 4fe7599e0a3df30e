"""The variational autoencoder and its objective.

Objective (minimised), for a batch of ``B`` triplets (parent, positive child,
negative child), following the paper's Eq. (8)-(9) and its released code:

``L = mean_b mean_roles [ -ELBO(x) ] + beta * mean_b triplet(b)``

* ``-ELBO(x) = - mean_k [ log p(x | z_k) - kl_weight (log q(z_k | x) - log p(z_k)) ]``
  with ``z_k ~ q(z | x)``, ``k = 1..K``: the Riemannian ELBO of Mathieu et al.
  2019 with a Monte-Carlo KL. ``p(x | z)`` is a unit-variance Gaussian on the
  voxels (the released code's likelihood; ``likelihood: scale`` lets the decoder
  predict each voxel's standard deviation too); ``q`` and the prior are wrapped
  normals on the ball (normals for the Euclidean ablation).
* ``triplet = max(0, d(mu_p, mu_pos) - d(mu_p, mu_neg) + margin)`` on the
  encoder means with the Poincare distance (Euclidean for the Euclidean
  latent): the paper's equation; ``triplet_distance: squared`` squares both
  distances, as the released code does.

By default both terms are averaged over the batch (``elbo_reduction:
mean``), which is the paper's Eq. (9) per example. The released code sums
the ELBO over the batch and averages the triplet term, which divides the
triplet weight by the batch size (``elbo_reduction: sum`` reproduces it).
All three patches of a triplet get the ELBO (averaged over the three roles):
the small children are the scale that segmentation embeds.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.distributions import Independent, Normal

from .config import Config
from .geometry import WrappedNormal, dist
from .nn.decoder import Decoder
from .nn.encoder import Encoder

LOG_2PI = math.log(2 * math.pi)


class HyperVAE(nn.Module):
    """Encoder, posterior, prior and decoder of one configuration."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def hyperbolic(self) -> bool:
        return self.cfg.latent == "hyperbolic"

    # --- distributions ---------------------------------------------------
    def posterior(self, loc: torch.Tensor, scale: torch.Tensor):
        """``q(z | x)`` for locations and scales ``(B, d)``; ``log_prob`` gives ``(..., B)``."""
        if self.hyperbolic:
            return WrappedNormal(loc, scale, c=self.cfg.c)
        return Independent(Normal(loc, scale), 1)

    def prior(self, like: torch.Tensor):
        """The fixed prior at the origin with scale ``prior_scale``, batch-shaped like ``like``."""
        zero = torch.zeros_like(like)
        scale = torch.full_like(like, self.cfg.prior_scale)
        if self.hyperbolic:
            return WrappedNormal(zero, scale, c=self.cfg.c)
        return Independent(Normal(zero, scale), 1)

    def latent_dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance between latent points ``(..., d)``: Poincare or Euclidean. ``-> (...)``."""
        if self.hyperbolic:
            return dist(a, b, self.cfg.c)
        return (a - b).norm(dim=-1)

    # --- passes ------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, m, m, m)`` to ``(loc, scale)``, each ``(B, d)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` latent points to reconstructions (means) ``(N, C, m, m, m)``."""
        return self.decode_dist(z)[0]

    def decode_dist(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(N, d)`` to the mean ``(N, C, m, m, m)`` of ``p(x | z)`` and its per-voxel
        standard deviation (same shape), or ``None`` for the unit-variance likelihood.

        ``sigma = s_min + softplus(raw)``: the floor ``s_min = likelihood_min_scale`` keeps
        ``-log sigma`` bounded on flat patches, where the NLL would otherwise fall without limit.
        """
        out = self.decoder(z).float()  # under bfloat16 autocast (train_dtype) the likelihood stays float32
        if self.cfg.likelihood == "unit":
            return out, None
        mean, raw = out.chunk(2, dim=1)
        return mean, self.cfg.likelihood_min_scale + F.softplus(raw)

    def negative_elbo(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch ``-ELBO``, reconstruction NLL and Monte-Carlo KL, each ``(B,)``."""
        K = self.cfg.n_samples
        q = self.posterior(loc, scale)
        z = q.rsample(torch.Size([K]))  # (K, B, d)
        kl = (q.log_prob(z) - self.prior(loc).log_prob(z)).mean(0)  # (B,)
        mean, sigma = self.decode_dist(z.reshape(-1, z.shape[-1]))
        resid = mean.view(K, *x.shape) - x.unsqueeze(0)
        if sigma is None:  # -log N(x; mean, 1), summed over voxels
            nll = 0.5 * (resid.pow(2).flatten(2).sum(-1) + x[0].numel() * LOG_2PI)  # (K, B)
        else:  # -log N(x; mean, sigma^2) = (x - mean)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2
            sigma = sigma.view(K, *x.shape)
            nll = (0.5 * (resid / sigma).pow(2) + sigma.log()).flatten(2).sum(-1) + 0.5 * x[0].numel() * LOG_2PI
        nll = nll.mean(0).to(kl.dtype)
        return nll + self.cfg.kl_weight * kl, nll, kl

    def triplet_loss(self, mu_p: torch.Tensor, mu_pos: torch.Tensor, mu_neg: torch.Tensor) -> torch.Tensor:
        """``max(0, d(mu_p, mu_pos) - d(mu_p, mu_neg) + margin)`` per triplet, ``(B,)``.

        With ``triplet_distance: squared`` both distances are squared (the released code).
        """
        d_pos = self.latent_dist(mu_p, mu_pos)
        d_neg = self.latent_dist(mu_p, mu_neg)
        if self.cfg.triplet_distance == "squared":
            d_pos, d_neg = d_pos ** 2, d_neg ** 2
        return torch.relu(d_pos - d_neg + self.cfg.triplet_margin)

    def loss(self, parent: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective for a batch of triplets, each ``(B, C, m, m, m)``.

        Returns the scalar loss and per-patch diagnostics (floats).
        """
        B = parent.shape[0]
        x = torch.cat([parent, positive, negative], 0)
        loc, scale = self.encode(x)
        neg_elbo, nll, kl = self.negative_elbo(x, loc, scale)
        total = neg_elbo.mean() if self.cfg.elbo_reduction == "mean" else neg_elbo.sum() / 3.0
        stats = {"nll": nll.mean().item(), "kl": kl.mean().item()}
        if self.cfg.triplet:
            mu_p, mu_pos, mu_neg = loc.split(B)
            trip = self.triplet_loss(mu_p, mu_pos, mu_neg).mean()
            total = total + self.cfg.triplet_weight * trip
            stats["triplet"] = trip.item()
        stats["loss"] = total.item() / (B if self.cfg.elbo_reduction == "sum" else 1)
        return total, stats
