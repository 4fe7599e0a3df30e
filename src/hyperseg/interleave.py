"""Merging clusters that interleave: over-cluster a level, then merge back the pieces of split classes.

Why
---
k-means (and the one-pass refinement after it) gives every cluster about the same spread, so a class much
larger than the others and varied inside (the cytoplasm of the synthetic cells: 50 000 voxels of granular
texture against organelles of 2 000-4 000) is cut into pieces by its own variation while the small classes
share what is left. On the simple validation volumes the default's 4-cluster level put the cytoplasm's voxels
into two or three clusters in nearly every volume (e.g. 8 470 / 16 797 / 33 302 voxels), with vesicles and
mitochondria mixed in one.

The pieces of one class cut by its internal variation are *interleaved*: they meet along an interface far
larger than any compact region of their size has as its whole surface. Two different structures meet along a
surface no larger than the smaller one's own (an organelle inside the cytoplasm: its surface, once).

What
----
A level of ``k`` clusters is clustered into ``overcluster x k`` (:attr:`hyperseg.config.Config.overcluster`),
then the pair with the largest **interleaving** is merged, over and over, until ``k`` are left:

    ``s(A, B) = a(A, B) / min(|A|, |B|)^p``,   ``p = INTERLEAVE_EXPONENT = 1/2``,

``a(A, B)`` the number of voxel faces between a voxel of ``A`` and a 6-neighbour of ``B`` (:func:`interface_areas`)
and ``|A|`` a cluster's number of voxels. With ``p = 2/3`` the denominator is (up to the factor
``(36 pi)^(1/3)``) the least surface a region of the smaller cluster's volume can have, so ``s`` would be the
interface in units of that surface: small for a compact structure enclosed by the other, large for pieces that
interleave. On the synthetic validation volumes (seed-0 models, 20 volumes each; levels 2 / 3) ``p = 1/2`` gave
simple 0.672 / 0.455 and irregular 0.475 / 0.322, ``2/3`` 0.675 / 0.453 and 0.455 / 0.307; measured afterwards,
0.4 gave 0.676 / 0.455 and 0.479 / 0.329 and 0.6 gave 0.675 / 0.454 and 0.464 / 0.313 (without merging: 0.604 /
0.418 and 0.468 / 0.296; prototype script, output not kept). ``1/2`` was kept: 0.4 and 1/2 are within 0.007 of
each other everywhere (a tie at this sample size), 0.6 and 2/3 lose up to 0.02 on the irregular volumes. After
each merge the interface areas and sizes are updated by adding rows (no second pass over the grid).

Label 0 (outside the foreground) takes no part: it is never merged, and its interfaces are never scored.
Chosen on the synthetic validation volumes (BENCHMARKS.md); not in the paper.
"""
from __future__ import annotations

import numpy as np

__all__ = ["INTERLEAVE_EXPONENT", "interface_areas", "interleaving", "merge_interleaved"]

#: the exponent ``p`` of the smaller cluster's size in the interleaving score (module docstring)
INTERLEAVE_EXPONENT = 0.5


def interface_areas(labels: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Symmetric ``(n, n)`` int64 matrix of voxel faces between labels: entry ``(i, j)``, ``i != j``, counts the
    6-neighbour pairs of voxels with labels ``i`` and ``j``; the diagonal counts pairs inside one label.

    ``labels``: ``(D, H, W)`` non-negative integers; ``n_labels``: ``n`` (default ``labels.max() + 1``).
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"interface_areas: labels must be a (D, H, W) grid, got shape {lab.shape}")
    lab = lab.astype(np.int64, copy=False)
    n = int(lab.max()) + 1 if n_labels is None else int(n_labels)
    if lab.size and (lab.min() < 0 or lab.max() >= n):
        raise ValueError(f"interface_areas: labels must lie in 0..{n - 1}, got {lab.min()}..{lab.max()}")
    counts = np.zeros(n * n, dtype=np.int64)
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        pair = a[1:].reshape(-1) * n + a[:-1].reshape(-1)
        counts += np.bincount(pair, minlength=n * n)
    out = counts.reshape(n, n)
    return out + out.T - np.diag(np.diag(out))


def interleaving(areas: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(n, n)`` scores ``s(i, j) = areas[i, j] / min(sizes[i], sizes[j])^p`` (``p``: :data:`INTERLEAVE_EXPONENT`,
    module docstring), 0 on the diagonal and where a cluster is empty. ``areas``: :func:`interface_areas`;
    ``sizes``: ``(n,)`` voxels per label."""
    sizes = np.asarray(sizes, dtype=np.float64)
    smaller = np.minimum(sizes[:, None], sizes[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(smaller > 0, np.asarray(areas, dtype=np.float64) / smaller ** INTERLEAVE_EXPONENT, 0.0)
    np.fill_diagonal(s, 0.0)
    return s


def merge_interleaved(labels: np.ndarray, n_keep: int) -> np.ndarray:
    """Merge the most interleaved pair of clusters until ``n_keep`` are left (module docstring).

    ``labels``: ``(D, H, W)`` integers, 0 outside the foreground (never merged) and ``1..m`` the clusters.
    Returns the merged labels ``(D, H, W)`` int64, renumbered ``1..n_keep`` in order of each group's smallest
    original label (0 stays 0). With ``m <= n_keep`` non-empty clusters the labels are only renumbered.
    """
    lab = np.asarray(labels).astype(np.int64, copy=False)
    if n_keep < 1:
        raise ValueError(f"merge_interleaved: n_keep must be >= 1, got {n_keep}")
    n = int(lab.max()) + 1 if lab.size else 1
    areas = interface_areas(lab, n).astype(np.float64)
    sizes = np.bincount(lab.reshape(-1), minlength=n).astype(np.float64)
    group = np.arange(n)  # each original label's current representative
    alive = sizes > 0
    alive[0] = False
    while int(alive.sum()) > n_keep:
        s = interleaving(areas, sizes)
        s[~alive, :] = -1.0
        s[:, ~alive] = -1.0
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        i, j = min(i, j), max(i, j)  # j joins i (the diagonal, never scored, is not kept up to date)
        areas[i, :] += areas[j, :]
        areas[:, i] += areas[:, j]
        areas[j, :] = 0.0
        areas[:, j] = 0.0
        sizes[i] += sizes[j]
        sizes[j] = 0.0
        alive[j] = False
        group[group == j] = i
    kept = np.flatnonzero(alive)
    rank = np.zeros(n, dtype=np.int64)
    rank[kept] = np.arange(1, len(kept) + 1)
    return rank[group][lab]
