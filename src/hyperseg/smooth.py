"""Spatial smoothing of a voxel-embedding field before it is clustered.

Each voxel's embedding is the encoder mean of the small patch around it (5^3 or
10^3 voxels), so neighbouring voxels inside one structure scatter around a
common point, and the scatter grows where the texture is coarse next to the
patch. :func:`smooth_embedding` replaces every voxel's point by the
Gaussian-weighted mean of its neighbours' points before k-means:

* hyperbolic latent: the weighted **gyromidpoint**
  (:func:`hyperseg.geometry.gyromidpoint`),
  ``m(v) = (1/2) (x) ( sum_u g(u - v) lambda_u x_u / sum_u g(u - v) (lambda_u - 1) )``
  with ``g`` a Gaussian of standard deviation ``sigma`` voxels. Numerator and
  denominator are linear in the weights, so each is one separable Gaussian
  filter over the grid (``d + 1`` filters in all) and the result is exact, not
  an approximation through a tangent space;
* Euclidean latent: the Gaussian-filtered coordinates (the weighted arithmetic mean).

This is not in the paper (its voxels are clustered one by one). It was chosen
on validation volumes, never on test volumes; BENCHMARKS.md gives what it buys.
``sigma = 0`` turns it off. Borders are handled by replicating the edge voxel
(``scipy.ndimage`` mode ``"nearest"``); the maths runs in float64.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from .geometry.poincare import MIN_NORM, klein_to_ball

__all__ = ["smooth_embedding"]

#: planes along D mapped from the Klein model back to the ball at a time (bounds the temporaries)
SLAB = 8


def _gaussian(field: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(field, sigma, mode="nearest")


def smooth_embedding(embedding: np.ndarray | torch.Tensor, sigma: float, latent: str = "hyperbolic",
                     c: float = 1.0) -> np.ndarray:
    """Gaussian-weighted mean of each voxel's neighbourhood: ``(D, H, W, d) -> (D, H, W, d)`` float64.

    ``sigma`` is in voxels of the grid the embedding lives on; 0 returns the input
    unchanged (as float64). ``latent`` is ``"hyperbolic"`` (points in the ball of
    curvature ``-c``: gyromidpoint) or ``"euclidean"`` (plain mean).
    """
    x = embedding.detach().cpu().numpy() if isinstance(embedding, torch.Tensor) else np.asarray(embedding)
    if x.ndim != 4:
        raise ValueError(f"expected an embedding field (D, H, W, d), got shape {x.shape}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 voxels, got {sigma}")
    if latent not in ("hyperbolic", "euclidean"):
        raise ValueError(f"latent must be 'hyperbolic' or 'euclidean', got {latent!r}")
    x = x.astype(np.float64, copy=False)
    if sigma == 0:
        return x
    d = x.shape[-1]
    if latent == "euclidean":
        return np.stack([_gaussian(x[..., j], sigma) for j in range(d)], axis=-1)
    # the gyromidpoint's formula (geometry.poincare.gyromidpoint) with Gaussian weights over the grid
    lam = 2.0 / np.maximum(1.0 - c * np.einsum("...j,...j->...", x, x), MIN_NORM)  # (D, H, W)
    den = np.maximum(_gaussian(lam - 1.0, sigma), MIN_NORM)
    klein = np.empty(x.shape, dtype=np.float64)  # filled channel by channel: no list of d grids beside it
    for j in range(d):
        np.divide(_gaussian(lam * x[..., j], sigma), den, out=klein[..., j])
    del lam, den
    # back to the ball slab by slab along D (elementwise per voxel, so the same numbers), in place: the
    # temporaries are a slab's, not the grid's (the chunked smooth pass holds one region per task)
    for a in range(0, klein.shape[0], SLAB):
        klein[a:a + SLAB] = klein_to_ball(torch.from_numpy(klein[a:a + SLAB]), c).numpy()
    return klein
