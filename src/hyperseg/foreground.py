"""Which foreground the finer levels of ``foreground: auto`` are clustered in: the automatic intensity mask or the
embedding's 2-cluster split (segment.py's module docstring has the why).

* :func:`mask_agreement`: the Dice of mask and split, counted outside a band of the embedding's reach
  (:func:`split_reach`) around the mask's surface;
* :func:`nesting` / :func:`mask_inside_split`: whether the mask lies inside the split as a brain inside its head
  (a scan that keeps skull and scalp);
* :func:`choose_mask`: the masks of two opening radii (:data:`MASK_CLEANUPS`), the first lying inside the split
  taken, else the first agreeing with it, else none (the split is used).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config
from .data.masks import auto_mask

__all__ = ["INSIDE_CONTAINED", "INSIDE_DEPTH", "INSIDE_ENCLOSED", "INSIDE_SIZE", "MASK_CLEANUPS", "MaskChoice",
           "Nesting", "choose_mask", "mask_agreement", "mask_inside_split", "nesting", "split_depth",
           "split_reach"]


def mask_agreement(mask: np.ndarray, split: np.ndarray, shape: tuple[int, int, int] | None = None,
                   band: int = 0) -> float:
    """Dice ``2 |A & B| / (|A| + |B|)`` of two foregrounds ``(N,)`` bool (1 when both are empty), counted outside a
    band of ``band`` voxels on either side of the mask's surface (``shape``: the grid of the ``N`` voxels; needed
    when ``band > 0``).

    The split comes from the embedding of patches smoothed over their neighbours, so its edge lies up to the
    embedding's reach (:func:`split_reach`) outside the object's: on a skull-stripped brain with an exactly zero
    background, the split was the brain dilated by a few voxels and agreed with the mask to 0.893 over the whole
    grid, to 0.965 outside a 4-voxel band. Where the mask leaves nothing outside the band the plain Dice is
    returned, so that a mask of a few voxels cannot agree by having been left out.
    """
    a, b = np.asarray(mask, dtype=bool).reshape(-1), np.asarray(split, dtype=bool).reshape(-1)
    if band > 0:
        if shape is None:
            raise ValueError("mask_agreement: band > 0 needs the grid's shape")
        from scipy import ndimage as ndi

        a3 = a.reshape(shape)
        keep = ~(ndi.binary_dilation(a3, iterations=band) & ~ndi.binary_erosion(a3, iterations=band)).reshape(-1)
        if (a & keep).any():
            a, b = a[keep], b[keep]
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


#: :func:`mask_inside_split`: the share of the mask inside the split, the mask's size as a share of the split's,
#: the share of the mask's surface voxels deeper than ``INSIDE_DEPTH`` voxels inside the split.
INSIDE_CONTAINED = 0.99
INSIDE_SIZE = 0.2
INSIDE_ENCLOSED = 0.95
INSIDE_DEPTH = 2.5


@dataclass(frozen=True)
class Nesting:
    """How an intensity mask sits in the 2-cluster split (:func:`nesting`)."""

    contained: float  # |mask & split| / |mask|
    size: float  # |mask| / |split|
    enclosed: float  # share of the mask's surface voxels farther than INSIDE_DEPTH voxels from outside the split


def split_depth(split: np.ndarray, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """Euclidean distance (voxels) of each voxel of ``split`` (``(N,)`` or ``shape`` bool) to the nearest voxel
    outside it (``scipy.ndimage.distance_transform_edt``), on the split's bounding box grown by one voxel:
    ``(box, depth)`` with ``depth`` of the box's shape; 0 outside the split. The volume's faces do not count as
    outside. An empty split gives an empty box."""
    from scipy import ndimage as ndi

    b = np.asarray(split, dtype=bool).reshape(shape)
    idx = np.nonzero(b)
    if not idx[0].size:
        return tuple(slice(0, 0) for _ in shape), np.zeros((0, 0, 0))
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    return box, ndi.distance_transform_edt(b[box])


def nesting(mask: np.ndarray, split: np.ndarray, shape: tuple[int, int, int],
            depth: tuple[tuple[slice, ...], np.ndarray] | None = None) -> Nesting:
    """:class:`Nesting` of the foregrounds ``mask`` and ``split`` (``(N,)`` or ``shape`` bool) on the grid ``shape``.

    ``enclosed``: the mask's surface voxels are those with a 6-neighbour outside it (the volume's faces do not
    count); each is scored by its distance to the nearest voxel outside the split (:func:`split_depth`; pass
    ``depth``, its result, to reuse it for several masks). An empty mask or split gives zeros.
    """
    from scipy import ndimage as ndi

    a = np.asarray(mask, dtype=bool).reshape(shape)
    b = np.asarray(split, dtype=bool).reshape(shape)
    n_a, n_b = int(a.sum()), int(b.sum())
    if n_a == 0 or n_b == 0:
        return Nesting(0.0, 0.0, 0.0)
    contained = int((a & b).sum()) / n_a
    surface = a & ~ndi.binary_erosion(a, border_value=1)
    n_surface = int(surface.sum())
    box, d = split_depth(b, shape) if depth is None else depth
    deep = int((d[surface[box]] > INSIDE_DEPTH).sum())  # surface voxels outside the box are outside the split
    enclosed = deep / n_surface if n_surface else 0.0
    return Nesting(contained=contained, size=n_a / n_b, enclosed=enclosed)


def mask_inside_split(mask: np.ndarray, split: np.ndarray, shape: tuple[int, int, int],
                      depth: tuple[tuple[slice, ...], np.ndarray] | None = None) -> bool:
    """Whether the intensity mask lies inside the split as a brain inside its head: all of it inside
    (:data:`INSIDE_CONTAINED`), at least :data:`INSIDE_SIZE` of the split's size, and its surface at least
    :data:`INSIDE_DEPTH` voxels inside the split's nearly everywhere (:data:`INSIDE_ENCLOSED`; :func:`nesting`).

    A T1 scan with skull and scalp: the split is the head, the mask the brain under its dark skull (Colin27's
    ``ch2`` at 2 mm: 1.000 / 0.43 / 1.000). On the synthetic cells' validation volumes (40) a mask that is
    enclosed is a bright organelle (size at most 0.057), and a mask of the cell's size reaches the cell's edge
    (enclosed at most 0.68): none passes. ``depth``: :func:`split_depth`'s result, if already computed.
    """
    n = nesting(mask, split, shape, depth)
    return n.contained >= INSIDE_CONTAINED and n.size >= INSIDE_SIZE and n.enclosed >= INSIDE_ENCLOSED


#: The opening radii (voxels) :func:`choose_mask` tries for the intensity mask, in order: ``ants.get_mask``'s 2, then
#: 4, which cuts off a scalp that the first leaves attached to the brain (Colin27's ``ch2`` at 1 mm and 3 % noise:
#: Dice of the mask to the brain 0.699 with 2, 0.950 with 4).
MASK_CLEANUPS = (2, 4)


@dataclass(frozen=True)
class MaskChoice:
    """What :func:`choose_mask` found: the mask to use (``None``: use the split), its agreement with the split (none
    taken: the first mask's), whether it was taken for lying inside the split although the two disagree, and the
    opening radius that made it."""

    mask: np.ndarray | None
    agreement: float
    inside_split: bool = False
    cleanup: int | None = None


def choose_mask(image: np.ndarray, split: np.ndarray, cfg: Config) -> MaskChoice:
    """The intensity mask ``foreground: auto`` takes, if any, for the mean image ``image`` ``(D, H, W)`` and the
    2-cluster split ``split`` ``(D * H * W,)`` bool.

    One mask per opening radius of :data:`MASK_CLEANUPS` (:func:`~hyperseg.data.masks.auto_mask`). The first that
    lies inside the split (:func:`mask_inside_split`) is taken: a brain inside its head, although a narrower
    opening may have left the scalp attached and so "agreed" with the head. Else the first that agrees with the
    split (:func:`mask_agreement` outside the band :func:`split_reach`, at least ``cfg.foreground_agreement``).
    None: ``MaskChoice(None, the first mask's agreement)``.
    """
    shape = tuple(int(n) for n in image.shape)
    band = split_reach(cfg)
    masks = [auto_mask(image, cleanup=r).reshape(-1) for r in MASK_CLEANUPS]
    depth = split_depth(split, shape)  # one distance transform of the split for every mask
    for r, m in zip(MASK_CLEANUPS, masks):
        if mask_inside_split(m, split, shape, depth):
            a = mask_agreement(m, split, shape, band=band)
            return MaskChoice(m, a, a < cfg.foreground_agreement, r)
    agreements = [mask_agreement(m, split, shape, band=band) for m in masks]
    for r, m, a in zip(MASK_CLEANUPS, masks, agreements):
        if a >= cfg.foreground_agreement:
            return MaskChoice(m, a, False, r)
    return MaskChoice(None, agreements[0])


def split_reach(cfg: Config) -> int:
    """How far (voxels) the embedding's 2-cluster split can reach past an object's edge: the patch's half-width
    plus the standard deviation of the 2-cluster level's smoothing (``level_smooth_sigma[2]``, else
    ``smooth_sigma``), ``embed_patch_edge // 2 + ceil(sigma)`` (4 by default)."""
    return int(cfg.embed_patch_edge) // 2 + int(np.ceil(cfg.level_smooth_sigma.get(2, cfg.smooth_sigma)))
