"""Scoring an unsupervised segmentation against ground truth (paper.md 1.7).

Protocol of Hsu et al. (2021), after their ``segment_and_score.py``: the
Dice score of every (cluster, class) pair is computed from the confusion
matrix; the Hungarian algorithm (scipy ``linear_sum_assignment``) pairs
clusters with classes one-to-one so that the summed Dice is maximal; the
volume's score is the mean over ground-truth classes of the matched Dice
(and the IoU of the same pairs). Volumes are then averaged
(:func:`summarise`).

Conventions
-----------
* Classes are the labels ``0 .. n_classes-1`` that occur in ``target``
  (background included, as in the reference code). A class of that range
  that does not occur in this volume is left out of the matching and of
  the means, and reported as NaN.
* With fewer clusters than classes, the classes left without a cluster
  score 0 (Dice and IoU) and count in the mean.
* With more clusters than classes, the clusters left without a class are
  ignored (their voxels only lower the matched classes' scores through
  false negatives), as in the reference code.
* Dice ``= 2|P & T| / (|P| + |T|)``; IoU ``= |P & T| / |P | T|``.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["confusion_matrix", "dice_iou", "mean_dice", "mean_iou", "match_clusters", "summarise"]


def _labels(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label array, got dtype {arr.dtype} "
                         "(cast label maps with np.rint(x).astype(int))")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); labels must be >= 0")
    return arr.reshape(-1).astype(np.int64, copy=False)


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p_arr, t_arr = np.asarray(pred), np.asarray(target)
    if p_arr.shape != t_arr.shape:
        raise ValueError(f"pred and target must have the same shape, got {p_arr.shape} and {t_arr.shape}")
    if p_arr.size == 0:
        raise ValueError("pred and target are empty")
    return _labels(p_arr, "pred"), _labels(t_arr, "target")


def confusion_matrix(pred, target, n_clusters: int | None = None, n_classes: int | None = None) -> np.ndarray:
    """Voxel counts ``M[k, j] = |{pred == k} & {target == j}|``, shape ``(K_pred, K_true)``.

    ``K_pred`` defaults to ``pred.max() + 1`` and ``K_true`` to
    ``target.max() + 1``; larger values pad with zeros. One ``np.bincount``.
    """
    p, t = _pair(pred, target)
    kp = int(p.max()) + 1 if n_clusters is None else int(n_clusters)
    kt = int(t.max()) + 1 if n_classes is None else int(n_classes)
    if p.max() >= kp:
        raise ValueError(f"pred has label {p.max()} >= n_clusters={kp}")
    if t.max() >= kt:
        raise ValueError(f"target has label {t.max()} >= n_classes={kt}")
    return np.bincount(p * kt + t, minlength=kp * kt).reshape(kp, kt)


def dice_iou(pred, target, n_classes: int | None = None) -> dict:
    """Per-class Dice and IoU after Hungarian matching of clusters to classes.

    ``pred`` (cluster ids) and ``target`` (class ids): integer arrays of one
    shape. ``n_classes`` (default ``target.max() + 1``) fixes the length of
    the per-class arrays, so that volumes missing a class stay comparable.

    Returns a dict:
    ``dice``, ``iou``: float arrays ``(n_classes,)`` (NaN for classes absent
    from ``target``, 0 for classes left without a cluster);
    ``mean_dice``, ``mean_iou``: their means over the classes present;
    ``matching``: ``{cluster: class}`` for the matched pairs;
    ``confusion``: the ``(K_pred, n_classes)`` confusion matrix.
    """
    cm = confusion_matrix(pred, target, n_classes=n_classes)
    kt = cm.shape[1]
    size_p = cm.sum(1)[:, None].astype(np.float64)
    size_t = cm.sum(0)[None, :].astype(np.float64)
    present = np.flatnonzero(size_t[0] > 0)
    inter = cm.astype(np.float64)
    dice_m = 2.0 * inter / np.maximum(size_p + size_t, 1.0)
    iou_m = inter / np.maximum(size_p + size_t - inter, 1.0)
    rows, cols = linear_sum_assignment(dice_m[:, present], maximize=True)
    cols = present[cols]
    dice = np.full(kt, np.nan)
    iou = np.full(kt, np.nan)
    dice[present] = 0.0
    iou[present] = 0.0
    dice[cols] = dice_m[rows, cols]
    iou[cols] = iou_m[rows, cols]
    return {
        "dice": dice,
        "iou": iou,
        "mean_dice": float(np.mean(dice[present])),
        "mean_iou": float(np.mean(iou[present])),
        "matching": {int(r): int(c) for r, c in zip(rows, cols)},
        "confusion": cm,
    }


def mean_dice(pred, target, n_classes: int | None = None) -> float:
    """``dice_iou(pred, target)["mean_dice"]``: the paper's per-volume score."""
    return dice_iou(pred, target, n_classes)["mean_dice"]


def mean_iou(pred, target, n_classes: int | None = None) -> float:
    """``dice_iou(pred, target)["mean_iou"]``."""
    return dice_iou(pred, target, n_classes)["mean_iou"]


def match_clusters(pred, target, n_classes: int | None = None) -> dict[int, int]:
    """The Hungarian ``{cluster: class}`` matching maximising total Dice."""
    return dice_iou(pred, target, n_classes)["matching"]


def summarise(scores: list[dict]) -> dict:
    """Mean and standard deviation (``ddof=0``) over volumes of :func:`dice_iou` results.

    Returns ``{"n_volumes", "mean_dice", "mean_dice_std", "mean_iou",
    "mean_iou_std"}`` and, when every volume has per-class arrays of one
    length, ``"dice"``, ``"dice_std"``, ``"iou"``, ``"iou_std"`` per class
    (NaN entries, i.e. classes absent from a volume, are skipped).
    """
    if not scores:
        raise ValueError("summarise needs at least one score dict")
    out: dict = {"n_volumes": len(scores)}
    for key in ("mean_dice", "mean_iou"):
        vals = np.array([s[key] for s in scores], dtype=np.float64)
        out[key] = float(vals.mean())
        out[key + "_std"] = float(vals.std())
    for key in ("dice", "iou"):
        arrs = [np.asarray(s[key], dtype=np.float64) for s in scores if key in s]
        if len(arrs) == len(scores) and len({a.shape for a in arrs}) == 1:
            stack = np.stack(arrs)
            seen = ~np.isnan(stack)
            n = seen.sum(0)
            filled = np.where(seen, stack, 0.0)
            mean = np.divide(filled.sum(0), n, out=np.full(stack.shape[1], np.nan), where=n > 0)
            var = np.divide((np.where(seen, stack - mean, 0.0) ** 2).sum(0), n,
                            out=np.full(stack.shape[1], np.nan), where=n > 0)
            out[key] = mean
            out[key + "_std"] = np.sqrt(var)
    return out
