"""PNG figures a person can look at.

* :func:`save_slices_png` (used by ``hyperseg demo``): the three orthogonal
  mid-slices of a volume beside each level's label map and the ground truth,
  every cluster drawn in the colour of the class it is matched to
  (:func:`colours_matched_to_truth`), so prediction and truth line up.
* :func:`save_case_report` / :func:`render_case_report` (used by
  ``hyperseg segment --report``): the mid-slices with each level's labels
  overlaid, and the voxel embeddings in the Poincare disk coloured by the
  finest level's clusters.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas
directly, never through ``pyplot``, so no global backend or figure registry is
touched and nothing needs a display.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .utils import atomic_write

#: Voxels drawn in the embedding panel (a random subsample; drawing millions adds nothing).
MAX_DISK_POINTS = 20000
#: Opacity of the label overlay on the grey image.
OVERLAY_ALPHA = 0.45
#: Display range of the grey image: these percentiles, so a few hot voxels do not wash it out.
DISPLAY_PERCENTILES = (1.0, 99.0)
AXIS_NAMES = ("axis 0 (D) mid-slice", "axis 1 (H) mid-slice", "axis 2 (W) mid-slice")


def _new_figure(width: float, height: float):
    """A pyplot-free figure with an Agg canvas attached."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue()


def _write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def label_cmap(n_labels: int):
    """A qualitative colormap with one colour per label ``0..n_labels-1``."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    n = max(int(n_labels), 1)
    if n <= 10:
        colours = colormaps["tab10"].colors[:n]
    elif n <= 20:
        colours = colormaps["tab20"].colors[:n]
    else:
        colours = colormaps["turbo"](np.linspace(0, 1, n))
    return ListedColormap(colours, name=f"labels{n}")


def truth_for(k: int, truth: dict[int, np.ndarray]) -> int:
    """The ground-truth level a ``k``-cluster map is compared with: the one with ``k`` classes
    (``max + 1``), else the one with the nearest number of classes (the finer one on a tie)."""
    if not truth:
        raise ValueError("no ground-truth levels given")
    n = {lvl: int(np.max(t)) + 1 for lvl, t in truth.items()}
    return min(sorted(n), key=lambda lvl: (abs(n[lvl] - k), -n[lvl]))


def colours_matched_to_truth(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour indices for a cluster map: each cluster takes the index of the class it is matched to.

    ``pred`` (clusters) and ``truth`` (classes ``0..n-1``): integer ``(D, H, W)``.
    The matching is the Hungarian one of :func:`hyperseg.metrics.dice_iou`
    (maximal summed Dice). Clusters left without a class (more clusters than
    classes) take ``n, n + 1, ...`` in cluster order, so no two clusters
    share a colour. Returns the recoloured map ``(D, H, W)`` int64 and the
    lookup table ``(max(pred) + 1,)`` cluster -> colour index (0 for numbers no voxel carries).
    """
    from .metrics import dice_iou

    pred = np.asarray(pred).astype(np.int64)
    result = dice_iou(pred, np.asarray(truth).astype(np.int64))
    matching = result["matching"]
    present = np.bincount(pred.reshape(-1)) > 0
    lut = np.zeros(len(present), dtype=np.int64)  # a number no voxel carries keeps colour 0
    spare = result["dice"].shape[0]
    for cluster in np.flatnonzero(present):
        if cluster in matching:
            lut[cluster] = matching[cluster]
        else:
            lut[cluster], spare = spare, spare + 1
    return lut[pred], lut


def save_slices_png(path: str | Path, image: np.ndarray, labels: dict[int, np.ndarray],
                    truth: dict[int, np.ndarray] | None = None, title: str = "") -> Path:
    """Write a grid: rows are the three orthogonal mid-slices; columns the image,
    then one label map per number of clusters (and ground truth if given).

    ``image``: ``(D, H, W)``; ``labels``: ``{K: (D, H, W)}``; ``truth``: ``{level: (D, H, W)}``.
    With ground truth, each ``K``'s clusters are drawn in the colours of the
    classes they are matched to (:func:`colours_matched_to_truth`, against
    the level :func:`truth_for` picks), so a cluster and its class look alike.
    """
    shown = {k: colours_matched_to_truth(lab, truth[truth_for(k, truth)])[0] if truth else lab
             for k, lab in labels.items()}
    cols: list[tuple[str, np.ndarray, bool]] = [("image", image, False)]
    cols += [(f"k = {k}", lab, True) for k, lab in sorted(shown.items())]
    if truth:
        cols += [(f"truth level {lvl}", lab, True) for lvl, lab in sorted(truth.items())]
    n_colours = max([int(np.max(v)) + 1 for _, v, is_label in cols if is_label] + [10])
    cmap = label_cmap(n_colours)
    centre = [n // 2 for n in image.shape]
    fig = _new_figure(2.2 * len(cols), 6.6)
    axes = fig.subplots(3, len(cols), squeeze=False)
    for j, (name, vol, is_label) in enumerate(cols):
        for i in range(3):
            sl = np.take(vol, centre[i], axis=i)
            ax = axes[i, j]
            if is_label:
                ax.imshow(sl, cmap=cmap, vmin=-0.5, vmax=n_colours - 0.5, interpolation="nearest")
            else:
                ax.imshow(sl, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _write_bytes(path, _png_bytes(fig, dpi=90))


def disk_coordinates(points: np.ndarray, c: float | None = 1.0) -> tuple[np.ndarray, str]:
    """Map latent points ``(N, d)`` to 2D coordinates ``(N, 2)`` for drawing, with a description.

    Hyperbolic latent (``c`` > 0), ball of radius ``1/sqrt(c)``:

    * ``d = 2``: the points themselves, scaled by ``sqrt(c)`` onto the unit disk.
    * ``d > 2``: ``v = log_0(x)`` (tangent vectors at the origin), the two
      leading principal directions ``P`` (``d x 2``) of the centred ``v``,
      ``y = sqrt(c) exp_0(v P)``. The projection is orthogonal and through the
      origin, so ``|v P| <= |v|``: the origin stays at the centre, every point
      stays inside the unit disk and no point moves away from the origin.
    * ``d = 1``: the coordinate on the horizontal diameter.

    Euclidean latent (``c`` is ``None``): the points (``d = 2``) or their
    orthogonal projection onto the two leading principal directions.
    """
    project, how = disk_projection(points, c)
    return project(points), how


def disk_projection(points: np.ndarray, c: float | None = 1.0) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The map of :func:`disk_coordinates` fitted on ``points`` ``(N, d)``, as a function that draws any
    other points ``(M, d)`` of the same latent at ``(M, 2)`` the same way (the principal directions are
    those of ``points``), and its description."""
    import torch

    from .geometry.poincare import expmap0, logmap0

    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"expected latent points of shape (N, d), got {x.shape}")
    d = x.shape[1]
    hyperbolic = c is not None

    def tangent(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64).reshape(-1, d)
        return logmap0(torch.from_numpy(p), c).numpy() if hyperbolic and d > 2 else p

    basis = None
    if d == 1:
        how = "the single latent coordinate"
    elif d == 2:
        how = "the latent coordinates"
    else:
        v = tangent(x)
        centred = v - v.mean(axis=0)
        # right singular vectors = principal directions; guard N < 2 (no variance to speak of)
        _, _, vt = np.linalg.svd(centred, full_matrices=False) if len(v) > 1 else (None, None, np.eye(d))
        basis = vt[:2].T
        how = ("exp_0 of the projection of log_0(z) onto its two leading principal directions"
               if hyperbolic else "projection onto the two leading principal directions")

    def project(p: np.ndarray) -> np.ndarray:
        v = tangent(p)
        if d == 1:
            v = np.concatenate([v, np.zeros_like(v)], axis=1)
        elif basis is not None:
            v = v @ basis
        if hyperbolic:
            y = expmap0(torch.from_numpy(np.ascontiguousarray(v)), c).numpy() if d > 2 else v
            return y * np.sqrt(c)
        return v

    return project, how


def _overlay_axes(ax, image: np.ndarray, labels: np.ndarray | None, n_labels: int,
                  aspect: float, lo: float, hi: float) -> None:
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
    if labels is not None:
        ax.imshow(labels, cmap=label_cmap(n_labels), vmin=-0.5, vmax=n_labels - 0.5,
                  alpha=OVERLAY_ALPHA, interpolation="nearest", aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])


def disk_frame(ax, hyperbolic: bool) -> None:
    """Frame a scatter of latent points on ``ax``: the unit circle and limits just outside it for the Poincare
    disk (``hyperbolic``), equal aspect, no ticks. Shared by the PNG and HTML reports and the napari dock."""
    from matplotlib.patches import Circle

    if hyperbolic:
        ax.add_patch(Circle((0, 0), 1.0, fill=False, color="black", linewidth=1))
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def render_case_report(
    image: np.ndarray,
    labels: dict[int, np.ndarray],
    embedding: np.ndarray | None,
    c: float | None = 1.0,
    spacing: tuple[float, float, float] | None = None,
    title: str = "",
    max_points: int = MAX_DISK_POINTS,
    seed: int = 0,
    dpi: int = 90,
) -> bytes:
    """Draw one case's report and return the PNG bytes (nothing is written).

    ``image``: ``(D, H, W)`` (the first channel); ``labels``: ``{K: (D, H, W)}``
    integer label maps; ``embedding``: ``(D, H, W, d)`` latent points (ball
    points for ``c`` > 0, Euclidean for ``c = None``) or ``None`` to leave the
    panel out; ``spacing``: voxel size along D, H, W, so anisotropic slices
    are drawn with the right aspect.

    Layout: columns are the three orthogonal mid-slices; the first row is the
    raw image, then one row per level (ascending K) with the labels overlaid.
    The right-hand panel shows at most ``max_points`` voxels drawn at random
    (``seed``) in the Poincare disk (unit circle drawn, see
    :func:`disk_coordinates` for the projection when ``d > 2``), coloured by
    the finest level's clusters (the largest K).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (D, H, W), got {image.shape}")
    levels = sorted(labels)
    for k in levels:
        if labels[k].shape != image.shape:
            raise ValueError(f"label map for k={k} has shape {labels[k].shape}, the image {image.shape}")
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, DISPLAY_PERCENTILES) if finite.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    centre = [n // 2 for n in image.shape]
    nrows, with_disk = 1 + len(levels), embedding is not None
    cell = 2.3
    fig = _new_figure(cell * 3 + (cell * max(nrows, 2) * 0.9 if with_disk else 0), cell * nrows + 0.5)
    grid = fig.add_gridspec(nrows, 4 if with_disk else 3,
                            width_ratios=[1, 1, 1, max(nrows, 2)] if with_disk else None)
    for j in range(3):
        # slice normal to axis j shows the other two axes; aspect = row spacing / column spacing
        rows_ax, cols_ax = [a for a in range(3) if a != j]
        aspect = sp[rows_ax] / sp[cols_ax]
        img = np.take(image, centre[j], axis=j)
        for i in range(nrows):
            ax = fig.add_subplot(grid[i, j])
            k = levels[i - 1] if i else None
            lab = np.take(labels[k], centre[j], axis=j) if k is not None else None
            _overlay_axes(ax, img, lab, k or 1, aspect, float(lo), float(hi))
            if i == 0:
                ax.set_title(AXIS_NAMES[j], fontsize=8)
            if j == 0:
                ax.set_ylabel("image" if k is None else f"k = {k}", fontsize=9)
    if with_disk:
        emb = np.asarray(embedding)
        if emb.shape[:3] != image.shape:
            raise ValueError(f"embedding has shape {emb.shape}, expected {image.shape} + (d,)")
        flat = emb.reshape(-1, emb.shape[-1])
        rng = np.random.default_rng(seed)
        n = min(len(flat), max(int(max_points), 1))
        idx = np.sort(rng.choice(len(flat), size=n, replace=False))
        xy, how = disk_coordinates(flat[idx], c)
        ax = fig.add_subplot(grid[:, 3])
        if levels:
            kmax = levels[-1]
            colour = np.asarray(labels[kmax]).reshape(-1)[idx]
            ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=label_cmap(kmax), vmin=-0.5, vmax=kmax - 0.5,
                       s=2, linewidths=0, rasterized=True)
            ax.set_title(f"embedding ({n} voxels), coloured by k = {kmax}", fontsize=9)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=2, linewidths=0, color="0.3", rasterized=True)
            ax.set_title(f"embedding ({n} voxels)", fontsize=9)
        disk_frame(ax, c is not None)
        ax.set_xlabel(f"{'Poincare disk' if c is not None else 'Euclidean latent'}: {how}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png_bytes(fig, dpi=dpi)


def save_case_report(path: str | Path, image: np.ndarray, labels: dict[int, np.ndarray],
                     embedding: np.ndarray | None, **kwargs) -> Path:
    """:func:`render_case_report`, written atomically to ``path``. Returns ``path``."""
    return _write_bytes(path, render_case_report(image, labels, embedding, **kwargs))


def write_png(path: str | Path, data: bytes) -> Path:
    """Write PNG bytes (from :func:`render_case_report`) atomically."""
    return _write_bytes(path, data)


__all__: list[str] = [
    "MAX_DISK_POINTS",
    "colours_matched_to_truth",
    "truth_for",
    "disk_coordinates",
    "disk_projection",
    "label_cmap",
    "render_case_report",
    "save_case_report",
    "save_slices_png",
    "write_png",
]
