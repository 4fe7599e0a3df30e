"""Intensity jitter of triplet patches: each patch gets its own random offset and contrast.

Why (BENCHMARKS.md, "The irregular bar"): in the synthetic benchmarks, and in
much real data, every object instance has its own brightness, while a class is
defined by its texture. The hierarchical triplet loss pulls a child towards the
patch of the region it sits in. Without jitter, matching mean intensity is
enough to do that, so the embedding learns mostly local mean and contrast. With an
independent offset (and optionally a contrast factor) on every patch, two
patches of one region differ in brightness. The loss can then only pull them together
through what the jitter leaves alone: texture.

For a batch of patches ``x_b`` (``b = 1..B``, channel ``k``), with
``s_k`` the standard deviation of the *first* tensor (the parents) in channel ``k``:

    x'_b = mean(x_b) + g_b (x_b - mean(x_b)) + offset * s_k * eps_b,
    g_b = exp(gain * eta_b),   eps_b, eta_b ~ N(0, 1) per patch and channel,

where ``mean(x_b)`` is the patch's own mean in that channel. The contrast factor
is log-normal, so it is always positive and a factor ``g`` is as likely as
``1 / g``. ``gain = 0`` draws no ``eta`` and ``offset = 0`` no ``eps``, so with
both at 0 the patches are returned unchanged and the generator is untouched.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["jitter_intensity"]


def jitter_intensity(patches: Sequence[Tensor], offset: float, gain: float,
                     generator: torch.Generator) -> tuple[Tensor, ...]:
    """Apply an independent random offset and contrast to every patch (formula in the module docstring).

    Args:
        patches: tensors ``(B_i, C, m, m, m)`` (e.g. parents, positives, negatives), same ``C``;
            the offset unit ``s_k`` is the standard deviation of ``patches[0]`` per channel.
        offset: standard deviation of the offset, in units of ``s_k`` (>= 0; 0 = no offset).
        gain: standard deviation of the log contrast factor (>= 0; 0 = no contrast change).
        generator: CPU generator all random numbers are drawn from, tensor by tensor
            in order: the contrast factors first, then the offsets.

    Returns:
        tensors of the same shapes, dtypes and devices.
    """
    if not (offset >= 0 and gain >= 0):
        raise ValueError(f"offset and gain must be >= 0, got {offset} and {gain}")
    patches = tuple(patches)
    if not patches or (offset == 0 and gain == 0):
        return patches
    first = patches[0]
    channels = first.shape[1]
    unit = first.transpose(0, 1).reshape(channels, -1).std(dim=1).view(1, channels, 1, 1, 1)
    out = []
    for p in patches:
        shape = (p.shape[0], channels) + (1,) * (p.dim() - 2)
        if gain > 0:
            factor = torch.exp(gain * torch.randn(shape, generator=generator)).to(p)
            mean = p.mean(dim=tuple(range(2, p.dim())), keepdim=True)
            p = mean + factor * (p - mean)
        if offset > 0:
            p = p + offset * unit.to(p) * torch.randn(shape, generator=generator).to(p)
        out.append(p)
    return tuple(out)
