"""Multi-scale hierarchical triplet sampler (paper.md 1.4 and 1.6), batched in torch.

A triplet is (parent, positive child, negative child), three cubic boxes of a
volume, each resized to ``m^3`` (``m = patch_edge``) by trilinear interpolation:

* **volume**: drawn uniformly over the volumes (every volume equally likely,
  whatever its size). Because constant parents are rejected afterwards, a volume's
  effective share is proportional to its fraction of non-constant parents.
* **parent**: edge ``r`` uniform over the integers ``parent_range`` (inclusive), or
  with ``scale="log"`` ``r = round(exp(U(log lo, log hi)))`` (log-uniform, skewed to
  small edges, paper 1.6). ``hi`` is capped per volume at
  ``min(parent_hi, min(shape), max(shape) - child_lo)`` so that the parent fits and
  a negative child of the smallest edge can sit beside it (see below). The start
  (the box's lowest corner) is uniform over the positions that keep the box inside
  the volume.
* **positive child**: edge ``c`` uniform over the integers
  ``[child_lo, max(child_lo, min(child_hi, r - 1, max(shape) - r))]``; the same
  centre as the parent: start ``parent_start + (r - c) // 2`` (the centres coincide
  exactly when ``r - c`` is even, and are half a voxel apart per axis otherwise).
* **negative child**: the positive's edge ``c``; drawn *uniformly over all start
  positions* whose box lies inside the volume and does not overlap the parent box,
  i.e. is separated from it along at least one axis (``negatives="disjoint"``, the
  default; exact sampling, no rejection: the valid set is split by the first
  separating axis). With ``negatives="all_axes"`` the box must be separated from the
  parent along *every* axis, each axis drawn uniformly and independently over its
  separated starts: farther away, closer to the released code, which draws the
  negative's centre outside the parent's index range on all three axes (paper.md
  1.4). A parent that leaves no room for such a box (on any axis, or for
  ``all_axes`` on every axis) is rejected and redrawn, which favours smaller
  parents in small volumes.
* **rejection of constant parents**: a parent whose resized ``m^3`` patch (what the
  encoder sees) has standard deviation below ``min_std * max(1, max|x|)`` is
  rejected (the relative factor absorbs float32 rounding of the interpolation on a
  constant region far from zero). A parent whose crop varies only between the
  interpolation's sample points therefore counts as constant too; any accepted
  parent contains non-constant voxels. Rejection is vectorised: each round draws
  more candidates than needed (scaled by the acceptance rate seen so far) and keeps
  the valid ones; after ``max_tries`` rounds without a full batch a ``RuntimeError``
  is raised.

All randomness comes from the ``torch.Generator`` passed to :meth:`TripletSampler.sample`
(a CPU generator; the geometry is drawn on the CPU, patches are cut where the
volumes live), so the same generator state gives the same batch.

Resizing (:func:`extract_patches`) is one ``F.grid_sample`` call per volume for all
patches of that volume, and matches ``F.interpolate(crop, size=(m, m, m),
mode="trilinear", align_corners=False)`` of each cropped box: output index ``i``
samples the crop at ``(i + 0.5) * r / m - 0.5`` (clamped to ``[0, r - 1]``, which is
how ``F.interpolate`` replicates the *patch* border). The clamp is done on the
coordinates before ``grid_sample``, whose own ``padding_mode="border"`` would
replicate the *volume* border instead and only guards against rounding here.
The coordinates pass through float32 normalised grid coordinates, so the two agree
to about ``1e-7 * size * |gradient|`` (below 1e-5 for 50^3 volumes with values in
[0, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import NEGATIVES

__all__ = ["TripletBoxes", "TripletSampler", "extract_patches", "SCALES", "NEGATIVES"]

SCALES = ("uniform", "log")
_CHUNK = 2048  # patches per grid_sample call (bounds the grid's memory)


def extract_patches(volume: Tensor, starts: Tensor, edges: Tensor, m: int) -> Tensor:
    """Cut cubic boxes out of ``volume`` and resize each to ``m^3``, trilinearly.

    Args:
        volume: ``(C, D, H, W)`` floating tensor.
        starts: ``(N, 3)`` integer tensor, the lowest corner ``(d, h, w)`` of each box.
        edges: ``(N,)`` integer tensor, the edge of each box; every box must lie
            inside the volume (``0 <= start`` and ``start + edge <= shape``).
        m: output edge.

    Returns:
        ``(N, C, m, m, m)`` tensor of the volume's dtype and device; patch ``n``
        equals ``F.interpolate(volume[None, :, d:d+e, h:h+e, w:w+e], size=(m, m, m),
        mode="trilinear", align_corners=False)[0]`` up to float32 coordinate
        rounding (see the module docstring). Edges may be smaller or larger than
        ``m``.
    """
    if volume.dim() != 4 or not volume.is_floating_point():
        raise ValueError(f"volume must be a floating (C, D, H, W) tensor, got {tuple(volume.shape)} "
                         f"{volume.dtype}")
    if int(m) < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    m = int(m)
    starts = torch.as_tensor(starts).cpu()
    edges = torch.as_tensor(edges).cpu()
    if starts.is_floating_point() or edges.is_floating_point():
        raise ValueError("starts and edges must be integer tensors")
    if starts.dim() != 2 or starts.shape[1] != 3 or edges.shape != (starts.shape[0],):
        raise ValueError(f"starts must be (N, 3) and edges (N,), got {tuple(starts.shape)} and {tuple(edges.shape)}")
    C, D, H, W = volume.shape
    n = starts.shape[0]
    if n == 0:
        return volume.new_empty((0, C, m, m, m))
    size = torch.tensor([D, H, W])
    if bool((edges < 1).any()) or bool((starts < 0).any()) or bool((starts + edges[:, None] > size).any()):
        raise ValueError(f"every box must have edge >= 1 and lie inside the volume of spatial shape {(D, H, W)}")
    if n > _CHUNK:
        return torch.cat([extract_patches(volume, starts[i:i + _CHUNK], edges[i:i + _CHUNK], m)
                          for i in range(0, n, _CHUNK)])

    # sample positions in voxel index coordinates, exactly F.interpolate's, in float64
    e = edges.to(torch.float64)[:, None]  # (N, 1)
    src = ((torch.arange(m, dtype=torch.float64) + 0.5) * e / m - 0.5).clamp(min=0.0)
    src = torch.minimum(src, e - 1.0)  # replicate the patch border
    pos = starts.to(torch.float64)[:, :, None] + src[:, None, :]  # (N, 3, m)
    denom = (size.to(torch.float64) - 1.0).clamp(min=1.0)[None, :, None]
    g = 2.0 * pos / denom - 1.0  # align_corners=True normalisation
    gz = g[:, 0, :, None, None]
    gy = g[:, 1, None, :, None]
    gx = g[:, 2, None, None, :]
    grid = torch.stack(torch.broadcast_tensors(gx, gy, gz), dim=-1)  # (N, m, m, m, 3), (x, y, z) order
    grid = grid.reshape(1, n * m, m, m, 3).to(device=volume.device, dtype=volume.dtype)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].reshape(C, n, m, m, m).transpose(0, 1).contiguous()


@dataclass(frozen=True)
class TripletBoxes:
    """Geometry of a sampled batch (all CPU ``long`` tensors, starts are lowest corners)."""

    volume: Tensor  # (B,) index into the sampler's volumes
    parent_start: Tensor  # (B, 3)
    parent_edge: Tensor  # (B,)
    child_edge: Tensor  # (B,) edge of both the positive and the negative child
    positive_start: Tensor  # (B, 3)
    negative_start: Tensor  # (B, 3)


def _int_pair(name: str, value: Sequence[int]) -> tuple[int, int]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi) of integers, got {value!r}") from None
    if isinstance(lo, bool) or isinstance(hi, bool) or int(lo) != lo or int(hi) != hi:
        raise ValueError(f"{name} must be a pair (lo, hi) of integers, got {value!r}")
    lo, hi = int(lo), int(hi)
    if not 1 <= lo <= hi:
        raise ValueError(f"{name} must satisfy 1 <= lo <= hi, got {value!r}")
    return lo, hi


class TripletSampler:
    """Draw batches of (parent, positive child, negative child) patches; see the module docstring.

    Args:
        volumes: float32 tensors ``(C, D, H, W)``, same ``C`` and device; sizes may differ.
        patch_edge: edge ``m`` of the returned patches.
        parent_range: inclusive range of parent edges (paper's code: 5..34).
        child_range: inclusive range of child edges (paper's code: 3..14);
            ``child_lo <= parent_lo`` is required.
        scale: ``"uniform"`` (paper, synthetic data) or ``"log"`` (paper, large volumes).
        negatives: ``"disjoint"`` (no overlap with the parent) or ``"all_axes"`` (separated
            from the parent along every axis); see the module docstring.
        min_std: parents whose resized patch has a lower standard deviation are rejected.
        max_tries: rounds of vectorised rejection before giving up.
    """

    def __init__(self, volumes: Sequence[Tensor], patch_edge: int = 10, parent_range: Sequence[int] = (5, 34),
                 child_range: Sequence[int] = (3, 14), scale: str = "uniform", min_std: float = 1e-6,
                 max_tries: int = 50, negatives: str = "disjoint") -> None:
        if isinstance(patch_edge, bool) or int(patch_edge) != patch_edge or patch_edge < 2:
            raise ValueError(f"patch_edge must be an integer >= 2, got {patch_edge!r}")
        self.patch_edge = int(patch_edge)
        self.parent_range = _int_pair("parent_range", parent_range)
        self.child_range = _int_pair("child_range", child_range)
        if self.child_range[0] > self.parent_range[0]:
            raise ValueError(f"child_range lo ({self.child_range[0]}) must be <= parent_range lo "
                             f"({self.parent_range[0]}) so that every parent can hold a positive child")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives
        if not (isinstance(min_std, (int, float)) and math.isfinite(min_std) and min_std >= 0):
            raise ValueError(f"min_std must be a finite number >= 0, got {min_std!r}")
        self.min_std = float(min_std)
        if isinstance(max_tries, bool) or int(max_tries) != max_tries or max_tries < 1:
            raise ValueError(f"max_tries must be an integer >= 1, got {max_tries!r}")
        self.max_tries = int(max_tries)

        volumes = list(volumes)
        if not volumes:
            raise ValueError("volumes is empty: the sampler needs at least one volume")
        plo, phi = self.parent_range
        clo = self.child_range[0]
        shapes, caps = [], []
        for i, v in enumerate(volumes):
            if not isinstance(v, Tensor) or v.dim() != 4:
                raise ValueError(f"volume {i} must be a (C, D, H, W) tensor, got "
                                 f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
            if v.dtype != torch.float32:
                raise ValueError(f"volume {i} has dtype {v.dtype}; convert it with .float() (float32 is expected)")
            if v.shape[0] != volumes[0].shape[0] or v.device != volumes[0].device:
                raise ValueError(f"volume {i} has {v.shape[0]} channels on {v.device}, volume 0 has "
                                 f"{volumes[0].shape[0]} on {volumes[0].device}: all must agree")
            spatial = tuple(int(s) for s in v.shape[1:])
            cap = min(phi, min(spatial), max(spatial) - clo)
            if cap < plo:
                raise ValueError(
                    f"volume {i} with shape {tuple(v.shape)} is too small for any triplet: a parent of edge "
                    f">= {plo} must fit inside it (every spatial edge >= {plo}) and a non-overlapping negative "
                    f"child of edge >= {clo} must fit beside it (one spatial edge >= {plo + clo})")
            if bool(v.amax() == v.amin()):
                raise ValueError(f"volume {i} with shape {tuple(v.shape)} is constant: every parent from it "
                                 "would be rejected; drop it from the sampler")
            shapes.append(spatial)
            caps.append(cap)
        self.volumes = volumes
        self._shapes = torch.tensor(shapes, dtype=torch.long)  # (V, 3)
        self._max_edge = self._shapes.max(dim=1).values  # (V,)
        #: largest parent edge drawn from each volume (the cap described in the module docstring)
        self.parent_edge_caps = torch.tensor(caps, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.volumes)

    def __repr__(self) -> str:
        return (f"TripletSampler({len(self.volumes)} volumes, patch_edge={self.patch_edge}, "
                f"parent_range={self.parent_range}, child_range={self.child_range}, scale={self.scale!r}, "
                f"negatives={self.negatives!r})")

    # ------------------------------------------------------------------
    def _draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """n candidate (volume, parent edge, child edge, parent start) and whether a negative fits."""
        plo = self.parent_range[0]
        clo, chi = self.child_range
        vol = torch.randint(len(self.volumes), (n,), generator=gen)
        shape = self._shapes[vol]  # (n, 3)
        cap = self.parent_edge_caps[vol]
        u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
        if self.scale == "uniform":
            r = plo + (u[:, 0] * (cap - plo + 1)).floor().long()
        else:
            lo, hi = math.log(plo), torch.log(cap.to(torch.float64))
            r = torch.exp(lo + u[:, 0] * (hi - lo)).round().long()
        r = torch.minimum(torch.clamp(r, min=plo), cap)
        c_hi = torch.minimum(torch.minimum(torch.full_like(r, chi), r - 1), self._max_edge[vol] - r)
        c_hi = torch.clamp(c_hi, min=clo)
        c = torch.minimum(clo + (u[:, 1] * (c_hi - clo + 1)).floor().long(), c_hi)
        s = torch.minimum((u[:, 2:5] * (shape - r[:, None] + 1)).floor().long(), shape - r[:, None])
        room = (s >= c[:, None]) | (shape - s - r[:, None] >= c[:, None])  # a negative fits on that axis
        return vol, r, c, s, (room.all(dim=1) if self.negatives == "all_axes" else room.any(dim=1))

    def _negatives(self, vol: Tensor, r: Tensor, c: Tensor, s: Tensor, gen: torch.Generator) -> Tensor:
        """Uniform start of a c-box inside the volume that does not overlap the parent box (s, r)."""
        shape = self._shapes[vol]
        total = shape - c[:, None] + 1  # start positions per axis
        olo = torch.clamp(s - c[:, None] + 1, min=0)  # starts that overlap the parent on this axis
        ohi = torch.minimum(s + r[:, None] - 1, total - 1)
        over = ohi - olo + 1
        free = total - over
        t, o, f = total.double(), over.double(), free.double()
        u = torch.rand(len(vol), 4, generator=gen, dtype=torch.float64)
        if self.negatives == "all_axes":  # separated on every axis: each axis on its own
            k = torch.minimum((u[:, 1:] * f).floor().long(), (free - 1).clamp(min=0))
            return torch.where(k < olo, k, k + over)
        # split the valid set by the first axis along which the box is separated
        w = torch.stack([f[:, 0] * t[:, 1] * t[:, 2], o[:, 0] * f[:, 1] * t[:, 2], o[:, 0] * o[:, 1] * f[:, 2]], 1)
        cum = w.cumsum(dim=1)
        case = (u[:, :1] * cum[:, 2:3] >= cum).sum(dim=1).clamp(max=2)  # (n,) in {0, 1, 2}
        out = torch.empty_like(s)
        for a in range(3):
            ua = u[:, 1 + a]
            anywhere = torch.minimum((ua * t[:, a]).floor().long(), total[:, a] - 1)
            inside = olo[:, a] + torch.minimum((ua * o[:, a]).floor().long(), over[:, a] - 1)
            k = torch.minimum((ua * f[:, a]).floor().long(), (free[:, a] - 1).clamp(min=0))
            outside = torch.where(k < olo[:, a], k, k + over[:, a])
            out[:, a] = torch.where(case == a, outside, torch.where(case > a, inside, anywhere))
        return out

    def _extract(self, vol: Tensor, starts: Tensor, edges: Tensor) -> Tensor:
        """extract_patches for boxes from several volumes: one call per volume."""
        m = self.patch_edge
        first = self.volumes[0]
        out = first.new_empty((len(vol), first.shape[0], m, m, m))
        for v in torch.unique(vol).tolist():
            sel = (vol == v).nonzero().squeeze(1)
            out[sel.to(out.device)] = extract_patches(self.volumes[v], starts[sel], edges[sel], m)
        return out

    def sample(self, batch_size: int, generator: torch.Generator, return_boxes: bool = False):
        """Draw ``batch_size`` triplets.

        Returns ``(parent, positive, negative)``, each ``(B, C, m, m, m)`` float32 on the
        volumes' device, and with ``return_boxes=True`` also a :class:`TripletBoxes`.
        """
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator (the geometry is drawn on the CPU)")
        b = int(batch_size)
        keep: list[tuple[Tensor, ...]] = []
        n_kept = n_drawn = 0
        for _ in range(self.max_tries):
            need = b - n_kept
            rate = 1.0 if n_drawn == 0 else max(n_kept / n_drawn, 1.0 / 16)
            n = int(math.ceil(need / rate * 1.25)) + 8
            vol, r, c, s, room = self._draw(n, generator)
            n_drawn += n
            idx = room.nonzero().squeeze(1)
            vol, r, c, s = vol[idx], r[idx], c[idx], s[idx]
            parents = self._extract(vol, s, r)
            flat = parents.flatten(1)
            std = flat.std(dim=1, unbiased=False)
            thr = self.min_std * flat.abs().amax(dim=1).clamp(min=1.0)
            ok = (std >= thr).cpu() if self.min_std > 0 else torch.ones(len(idx), dtype=torch.bool)
            ok_idx = ok.nonzero().squeeze(1)
            keep.append((vol[ok_idx], r[ok_idx], c[ok_idx], s[ok_idx], parents[ok_idx.to(parents.device)]))
            n_kept += len(ok_idx)
            if n_kept >= b:
                break
        else:
            raise RuntimeError(
                f"only {n_kept} of {b} non-constant parents found in {self.max_tries} rounds "
                f"({n_drawn} candidates): the volumes are almost entirely constant; raise max_tries, lower "
                f"min_std or remove empty volumes")
        vol, r, c, s, parent = (torch.cat(t)[:b] for t in zip(*keep))
        pos = s + torch.div(r - c, 2, rounding_mode="floor")[:, None]
        neg = self._negatives(vol, r, c, s, generator)
        children = self._extract(torch.cat([vol, vol]), torch.cat([pos, neg]), torch.cat([c, c]))
        positive, negative = children[:b], children[b:]
        if return_boxes:
            return parent, positive, negative, TripletBoxes(vol, s, r, c, pos, neg)
        return parent, positive, negative
