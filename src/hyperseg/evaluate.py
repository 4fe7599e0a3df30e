"""Scoring a folder of label maps against ground truth, level by level.

Predictions are ``PRED/{case}_k{K}.nii.gz``; ground truth is
``LABELS/{case}_level{L}.nii.gz``. A prediction with ``K`` clusters is
scored against the level whose number of classes is ``K`` according to
``levels.json`` (looked for in ``LABELS``, then its parent and grandparent);
without that file, or for a ``K`` no level has, the sorted ``K`` values are
paired with levels 1, 2, 3, ... in order. Dice and IoU follow the paper:
Hungarian matching of clusters to classes, averaged over classes, then
mean and standard deviation over volumes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .data.io import case_name, is_volume_file, read_labels
from .metrics import dice_iou

PRED_RE = re.compile(r"^(?P<case>.+)_k(?P<k>\d+)$")


def find_levels_json(labels_dir: Path) -> dict[int, int]:
    """``{level: n_classes}`` from the nearest ``levels.json``, or ``{}``."""
    for folder in (labels_dir, labels_dir.parent, labels_dir.parent.parent):
        f = folder / "levels.json"
        if f.is_file():
            data = json.loads(f.read_text())
            levels = data.get("levels", data)
            return {int(k): int(v["n_classes"] if isinstance(v, dict) else v) for k, v in levels.items()}
    return {}


def level_for_k(ks: list[int], levels: dict[int, int]) -> dict[int, int]:
    by_classes = {n: lvl for lvl, n in levels.items()}
    if levels and all(k in by_classes for k in ks):
        return {k: by_classes[k] for k in ks}
    return {k: i + 1 for i, k in enumerate(sorted(ks))}


def evaluate_folder(pred_dir: str | Path, labels_dir: str | Path) -> dict:
    """Score every prediction that has ground truth; returns a JSON-able summary.

    ``{"levels": [{"level", "k", "n_cases", "dice", "dice_std", "iou", "iou_std"}],
    "cases": {case: {k: {"dice", "iou"}}}}``
    """
    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such folder of predictions")
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"{labels_dir}: no such folder of ground-truth labels")
    preds: dict[int, dict[str, Path]] = {}
    for p in sorted(pred_dir.iterdir()):
        if not is_volume_file(p):
            continue
        m = PRED_RE.match(case_name(p))
        if m:
            preds.setdefault(int(m["k"]), {})[m["case"]] = p
    if not preds:
        raise FileNotFoundError(f"{pred_dir}: no predictions named {{case}}_k{{K}}.nii.gz")
    mapping = level_for_k(sorted(preds), find_levels_json(labels_dir))
    rows, cases = [], {}
    for k in sorted(preds):
        level = mapping[k]
        dices, ious = [], []
        for case, path in preds[k].items():
            gt_path = next((labels_dir / f"{case}_level{level}{ext}" for ext in (".nii.gz", ".nii", ".npy")
                            if (labels_dir / f"{case}_level{level}{ext}").is_file()), None)
            if gt_path is None:
                continue
            pred, gt = read_labels(path), read_labels(gt_path)
            if pred.shape != gt.shape:
                raise ValueError(f"{path}: shape {pred.shape} differs from its ground truth {gt_path} {gt.shape}")
            score = dice_iou(pred, gt)
            dices.append(score["mean_dice"])
            ious.append(score["mean_iou"])
            cases.setdefault(case, {})[k] = {"dice": score["mean_dice"], "iou": score["mean_iou"]}
        if dices:
            rows.append({"level": level, "k": k, "n_cases": len(dices),
                         "dice": float(np.mean(dices)), "dice_std": float(np.std(dices)),
                         "iou": float(np.mean(ious)), "iou_std": float(np.std(ious))})
    if not rows:
        raise FileNotFoundError(f"no prediction in {pred_dir} has ground truth {{case}}_level{{L}}.nii.gz in {labels_dir}")
    return {"levels": rows, "cases": cases}


def format_table(summary: dict) -> str:
    """The per-level summary as a Markdown table."""
    lines = ["| level | clusters | cases | Dice | IoU |", "|---|---|---|---|---|"]
    for r in summary["levels"]:
        lines.append(f"| {r['level']} | {r['k']} | {r['n_cases']} | {r['dice']:.3f} +- {r['dice_std']:.3f} "
                     f"| {r['iou']:.3f} +- {r['iou_std']:.3f} |")
    return "\n".join(lines)
