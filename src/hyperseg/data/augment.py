"""Augmentations of triplet patches: intensity jitter and the cube's symmetries, drawn per patch.

Intensity jitter: each patch gets its own random offset and contrast.

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

Symmetries (:func:`random_symmetry`): each patch is turned by one of the 48
symmetries of the cube (a permutation of the three spatial axes, then a flip of
any of them), drawn uniformly and independently per patch. The triplet loss then
pulls a child towards its parent whatever their relative orientation: a striped
or ringed texture seen along another axis is still the same region, so the
embedding is pushed to code the texture's kind rather than its direction.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["CUBE_SYMMETRIES", "apply_symmetry", "jitter_intensity", "random_symmetry"]

#: The 48 symmetries of the cube as ``(axis permutation, flip mask)``; the identity is entry 0.
CUBE_SYMMETRIES: tuple[tuple[tuple[int, int, int], tuple[bool, bool, bool]], ...] = tuple(
    (perm, (bool(bits & 1), bool(bits & 2), bool(bits & 4)))
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
    for bits in range(8))


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


def apply_symmetry(patch: Tensor, index: int) -> Tensor:
    """Patch ``(..., m, m, m)`` turned by ``CUBE_SYMMETRIES[index]``: its last three axes permuted, then flipped."""
    perm, flips = CUBE_SYMMETRIES[index]
    lead = patch.dim() - 3
    out = patch.permute(*range(lead), *(lead + a for a in perm))
    dims = [lead + i for i, f in enumerate(flips) if f]
    return out.flip(dims) if dims else out


def random_symmetry(patches: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, ...]:
    """Turn every patch by its own symmetry of the cube, drawn uniformly from the 48 (module docstring).

    Args:
        patches: tensors ``(B_i, C, m, m, m)`` with cubic patches (equal last three sizes).
        generator: CPU generator; one index per patch is drawn, tensor by tensor in order.

    Returns:
        new contiguous tensors of the same shapes, dtypes and devices.
    """
    out = []
    for p in patches:
        if p.dim() != 5 or not p.shape[2] == p.shape[3] == p.shape[4]:
            raise ValueError(f"random_symmetry needs cubic patches (B, C, m, m, m), got {tuple(p.shape)}")
        index = torch.randint(len(CUBE_SYMMETRIES), (p.shape[0],), generator=generator)
        turned = torch.empty_like(p)
        for i in torch.unique(index).tolist():
            rows = (index == i).nonzero().flatten().to(p.device)
            turned[rows] = apply_symmetry(p[rows], i)
        out.append(turned)
    return tuple(out)
