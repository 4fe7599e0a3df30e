"""Dense voxel embeddings: the encoder mean of the patch centred on every voxel.

The embedding of voxel ``v`` is the encoder mean of the ``p^3`` patch centred
on ``v`` (``p = embed_patch_edge``, 5 in the paper), resized to the model's
input edge ``m``. Instead of cutting and encoding one patch per voxel, the
volume is resampled once by ``s = m / p`` and the encoder, whose
convolutions are all valid, runs over it as one fully-convolutional pass;
the output at window start ``j0(v)`` is voxel ``v``'s embedding. At native
scale (``p = m``) this is exactly the per-patch result. At ``s != 1`` the
two differ only in how the patch border is interpolated: a cut-out patch
replicates its own edge, the resampled volume sees the true neighbour.

Window geometry, per axis, for a volume padded by ``P`` voxels on each side
and resampled with ``F.interpolate(scale_factor=s, align_corners=False)``
(resampled index ``j`` samples padded native position ``(j + 0.5)/s - 0.5``):

``j0(v) = floor(s (v + P) + s (1 - p) / 2)``

so the window ``[j0, j0 + m)`` covers native ``[v - p/2, v + p/2]``; for even
``p`` at native scale the window is ``[v - p/2, v + p/2 - 1]``.

The pass is tiled in 3D blocks of ``embed_tile`` output voxels, so memory is
bounded by the block, not the volume.

Constant background
-------------------
A skull-stripped scan, a masked stack or a zero-padded volume holds a region of
one constant value ``b`` (per channel). Voxel ``v``'s embedding reads only the
native voxels within ``P - 1`` (:func:`padding_for`) of ``v`` along each axis:
the window covers ``[v - p/2, v + p/2]`` and trilinear resampling adds one
neighbour on each side; the check uses ``r = P``, one voxel to spare (with
``r = P - 2`` the embedding moves by about 3e-4, which
``tests/test_embed_constant.py`` catches). Where all of them equal ``b`` the embedding is
``f(b)``, the embedding of a constant volume: the output is filled with ``f(b)``
and each tile encodes only the bounding box of its other voxels, none if it
has none (:func:`constant_background`). Padding keeps this exact: ``replicate`` and
``reflect`` copy voxels from within ``r`` of ``v``; ``zeros`` pads with 0, so
with ``b != 0`` the voxels within ``r`` of the volume's faces are encoded.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from typing import TYPE_CHECKING

from .nn.precision import inference_copy, resolve_dtype

if TYPE_CHECKING:
    from .model import HyperVAE

#: Guards ``floor`` in ``j0`` against ``2.9999999`` from float rounding.
FLOOR_EPS = 1e-6

_TORCH_PAD = {"zeros": "constant", "replicate": "replicate", "reflect": "reflect"}


def padding_for(patch_edge: int) -> int:
    """Native voxels of padding on each side so that every window fits."""
    return math.ceil(patch_edge / 2) + 1


def window_starts(n: int, patch_edge: int, scale: float, pad: int) -> torch.Tensor:
    """``j0(v)`` for ``v = 0..n-1`` (see the module docstring). ``-> (n,)`` long."""
    v = torch.arange(n, dtype=torch.float64)
    return torch.floor(scale * (v + pad) + scale * (1 - patch_edge) / 2 + FLOOR_EPS).long()


def _common_step(starts: list[torch.Tensor]) -> int:
    """The step shared by three arithmetic progressions of window starts, else 1.

    Each progression must start at the block's origin, which holds since a block
    begins at its first start. An axis with a single start fits any step.
    """
    steps = set()
    for st in starts:
        if len(st) > 1:
            d = st[1:] - st[:-1]
            if not bool((d == d[0]).all()):
                return 1
            steps.add(int(d[0]))
    return steps.pop() if len(steps) == 1 else 1


def pad_volume(volume: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """``(C, D, H, W)`` to ``(1, C, D+2P, H+2P, W+2P)``."""
    x = volume[None]
    if mode == "reflect" and min(volume.shape[1:]) <= pad:
        mode = "replicate"  # reflection needs more voxels than the padding
    return F.pad(x, (pad,) * 6, mode=_TORCH_PAD[mode])


#: Below this share of voxels equal to the corner's value the background is not looked for (a noisy
#: background: the dilation would cost time and find nothing to skip).
MIN_CONSTANT_SHARE = 0.05


def constant_background(volume: torch.Tensor, reach: int, pad_mode: str
                        ) -> tuple[torch.Tensor, np.ndarray] | None:
    """The volume's constant background and the voxels whose embedding reads anything else.

    ``volume`` ``(C, D, H, W)``; ``b`` ``(C,)`` is the value of voxel ``(0, 0, 0)``. Returns ``(b, active)``,
    ``active`` ``(D, H, W)`` bool: the voxels with a voxel ``!= b`` (in any channel) within ``reach`` along
    every axis (a cube of edge ``2 reach + 1``), and, with ``pad_mode == "zeros"`` and ``b != 0``, the voxels
    within ``reach`` of a face, which read the padding. Every other voxel's embedding is that of a constant
    volume of ``b`` (module docstring). ``None`` when fewer than :data:`MIN_CONSTANT_SHARE` of the voxels
    equal ``b`` (no constant background).
    """
    from scipy import ndimage

    v = volume.detach().cpu()
    b = v[:, 0, 0, 0].clone()
    differs = (v != b[:, None, None, None]).any(0).numpy()
    if 1.0 - float(differs.mean()) < MIN_CONSTANT_SHARE:
        return None
    active = ndimage.maximum_filter(differs, size=2 * reach + 1, mode="constant", cval=False)
    if pad_mode == "zeros" and bool((b != 0).any()):
        active[:reach] = active[-reach:] = True
        active[:, :reach] = active[:, -reach:] = True
        active[:, :, :reach] = active[:, :, -reach:] = True
    return b, active


def _active_box(active: np.ndarray, ranges: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """The bounding box ``[(start, stop)] * 3`` of ``active``'s voxels inside the tile ``ranges``; ``None`` if
    it holds none. Only the box is encoded: a tile at the rim of a brain is mostly background."""
    sub = active[tuple(slice(a, b) for a, b in ranges)]
    if not sub.any():
        return None
    box = []
    for axis, (a, _) in enumerate(ranges):
        hit = np.flatnonzero(sub.any(axis=tuple(j for j in range(3) if j != axis)))
        box.append((a + int(hit[0]), a + int(hit[-1]) + 1))
    return box


@torch.no_grad()
def embed_volume(
    model: HyperVAE,
    volume: torch.Tensor,
    patch_edge: int | None = None,
    tile: int | None = None,
    pad_mode: str | None = None,
    progress: bool = False,
    strided: bool = True,
    dtype: str | None = None,
    skip_constant: bool = True,
) -> torch.Tensor:
    """Embedding of every voxel by one tiled fully-convolutional pass.

    ``volume``: float ``(C, D, H, W)``, already normalised. Returns
    ``(D, H, W, d)`` latent points (ball points for the hyperbolic model) in
    the latent dtype (float64 by default), on the CPU. When the resampling
    factor ``s`` is an integer (``p = 5``: ``s = 2``), the window starts of
    consecutive voxels are ``s`` apart and the encoder's last layer runs only
    at those starts (``strided``; ``False`` computes every position, the same
    numbers up to rounding, for testing). ``dtype`` (default ``cfg.embed_dtype``):
    what the encoder's convolutions run in, ``"float32"``, ``"bfloat16"`` or
    ``"auto"`` (bfloat16 where the device multiplies it natively; see
    :mod:`hyperseg.nn.precision`); the heads and ``exp_0`` stay in float32 / the
    latent dtype. ``skip_constant``: voxels that see only the volume's constant
    background (:func:`constant_background`) take the embedding of a constant
    volume, and each tile encodes only the bounding box of the others
    (``False``: encode every voxel, for testing and benchmarks).
    """
    cfg = model.cfg
    p = patch_edge or cfg.embed_patch_edge
    tile = tile or cfg.embed_tile
    pad_mode = pad_mode or cfg.pad_mode
    m = cfg.patch_edge
    s = m / p
    if volume.ndim != 4 or volume.shape[0] != cfg.in_channels:
        raise ValueError(f"expected a volume of shape ({cfg.in_channels}, D, H, W), got {tuple(volume.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    compute = resolve_dtype(dtype or cfg.embed_dtype, device)
    encoder = inference_copy(model.encoder, compute)
    pad = padding_for(p)
    x = pad_volume(volume.to(device=device, dtype=torch.float32), pad, pad_mode)
    if s != 1:
        x = F.interpolate(x, scale_factor=s, mode="trilinear", align_corners=False,
                          recompute_scale_factor=False)
    x = x.to(compute)
    layout = torch.channels_last_3d if compute != torch.float32 else torch.contiguous_format
    shape = volume.shape[1:]
    starts = [window_starts(n, p, s, pad) for n in shape]
    out: torch.Tensor | None = None
    # each tile as its output ranges [(start, stop)] * 3
    blocks = [[(c, min(c + tile, n)) for c, n in zip(corner, shape)]
              for corner in itertools.product(*[range(0, n, tile) for n in shape])]
    background = constant_background(volume, pad, pad_mode) if skip_constant and len(blocks) > 1 else None
    if background is not None:
        value, active = background
        blocks = [r for r in (_active_box(active, blk) for blk in blocks) if r is not None]
        # f(value): the centre of a constant volume, far enough from its faces for any padding
        q = 2 * pad + 1
        const = value.to(volume.dtype)[:, None, None, None].expand(-1, q, q, q).contiguous()
        fb = embed_volume(model, const, patch_edge=p, tile=q, pad_mode=pad_mode, strided=strided,
                          dtype=dtype, skip_constant=False)[pad, pad, pad]
        out = fb.expand(*shape, fb.shape[-1]).clone()
    for ranges in tqdm(blocks, desc="embed", unit="tile", disable=not progress, leave=False):
        sel = [st[a:b] for st, (a, b) in zip(starts, ranges)]
        lo = [int(s_[0]) for s_ in sel]
        hi = [int(s_[-1]) + m for s_ in sel]
        block = x[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].contiguous(memory_format=layout)
        step = _common_step(sel)
        if strided and step > 1:  # starts on a regular lattice: run the last layer only there
            loc = encoder.dense_loc(block, stride=step)[0]
            loc = loc[:len(sel[0]), :len(sel[1]), :len(sel[2])]
        else:
            loc = encoder.dense_loc(block)[0]  # (a, b, c, d) at every start in the block
            loc = loc[sel[0] - lo[0]][:, sel[1] - lo[1]][:, :, sel[2] - lo[2]]
        if out is None:
            out = torch.empty(*shape, loc.shape[-1], dtype=loc.dtype)
        (a, _), (b, _), (c, _) = ranges
        out[a:a + loc.shape[0], b:b + loc.shape[1], c:c + loc.shape[2]] = loc.cpu()
    model.train(was_training)
    assert out is not None
    return out


@torch.no_grad()
def embed_patches(
    model: HyperVAE,
    volume: torch.Tensor,
    patch_edge: int | None = None,
    pad_mode: str | None = None,
    batch_size: int = 4096,
    voxels: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Reference: cut the ``p^3`` patch of each voxel, resize it to ``m^3``, encode it.

    This is what the released code does (one patch per voxel), batched. It
    exists to check and benchmark :func:`embed_volume`. ``voxels``: optional
    ``(N, 3)`` indices to embed (default: all, in C order). Returns
    ``(N, d)``, or ``(D, H, W, d)`` when ``voxels`` is ``None``.
    """
    cfg = model.cfg
    p = patch_edge or cfg.embed_patch_edge
    pad_mode = pad_mode or cfg.pad_mode
    m = cfg.patch_edge
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = padding_for(p)
    x = pad_volume(volume.to(device=device, dtype=torch.float32), pad, pad_mode)[0]  # (C, D', H', W')
    shape = volume.shape[1:]
    if voxels is None:
        grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
        idx = torch.stack([g.reshape(-1) for g in grids], 1)
    else:
        idx = voxels.long()
    first = idx + pad - p // 2  # patch start in the padded volume, (N, 3)
    windows = x.unfold(1, p, 1).unfold(2, p, 1).unfold(3, p, 1)  # (C, ., ., ., p, p, p) view
    outs = []
    for i in tqdm(range(0, len(first), batch_size), desc="embed patches", disable=not progress, leave=False):
        f = first[i:i + batch_size]
        patches = windows[:, f[:, 0], f[:, 1], f[:, 2]].transpose(0, 1).contiguous()  # (n, C, p, p, p)
        if p != m:
            patches = F.interpolate(patches, size=(m, m, m), mode="trilinear", align_corners=False)
        loc, _ = model.encoder(patches)
        outs.append(loc.cpu())
    model.train(was_training)
    res = torch.cat(outs)
    return res.view(*shape, -1) if voxels is None else res
