"""PNG figures: mid-slices of a volume with each level's label map beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .utils import atomic_write


def save_slices_png(path: str | Path, image: np.ndarray, labels: dict[int, np.ndarray],
                    truth: dict[int, np.ndarray] | None = None, title: str = "") -> Path:
    """Write a grid: rows are the three orthogonal mid-slices; columns the image,
    then one label map per number of clusters (and ground truth if given).

    ``image``: ``(D, H, W)``; ``labels``: ``{K: (D, H, W)}``; ``truth``: ``{level: (D, H, W)}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols: list[tuple[str, np.ndarray, bool]] = [("image", image, False)]
    cols += [(f"k = {k}", lab, True) for k, lab in sorted(labels.items())]
    if truth:
        cols += [(f"truth level {lvl}", lab, True) for lvl, lab in sorted(truth.items())]
    centre = [n // 2 for n in image.shape]
    fig, axes = plt.subplots(3, len(cols), figsize=(2.2 * len(cols), 6.6), squeeze=False)
    for j, (name, vol, is_label) in enumerate(cols):
        for i in range(3):
            sl = np.take(vol, centre[i], axis=i)
            ax = axes[i, j]
            if is_label:
                ax.imshow(sl, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            else:
                ax.imshow(sl, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path
