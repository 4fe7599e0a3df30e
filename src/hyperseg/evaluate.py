"""Scoring a folder of label maps against ground truth, level by level.

Predictions are ``PRED/{case}_k{K}.{ext}``; ground truth is
``LABELS/{case}_level{L}.{ext}``, where ``ext`` is any format hyperseg reads
(NIfTI, TIFF, MRC, npy; see :mod:`hyperseg.data.io`), and the two need not
share one. A prediction with ``K`` clusters is
scored against the level whose number of classes is ``K`` according to
``levels.json`` (looked for in ``LABELS``, then its parent and grandparent);
without that file, or for a ``K`` no level has, the sorted ``K`` values are
paired with levels 1, 2, 3, ... in order. Dice and IoU follow the paper:
Hungarian matching of clusters to classes, averaged over classes, then
mean and standard deviation over volumes. Predictions without ground truth
are not scored and are named in the summary (``no_truth``).

:func:`write_reports` (``hyperseg evaluate --report``) draws every scored
case beside its ground truth, each cluster in the colour of the class it is
matched to: ``PRED/{case}_evaluation.png`` (mid-slices) and
``PRED/{case}_evaluation.html`` (:mod:`hyperseg.report_html`, with the Dice
table, and the disk when ``{case}_embedding.npy`` is there).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .data.io import SUFFIXES, VolumeError, case_name, is_volume_file, read_labels
from .metrics import dice_iou

PRED_RE = re.compile(r"^(?P<case>.+)_k(?P<k>\d+)$")
TRUTH_RE = re.compile(r"^(?P<case>.+)_level(?P<level>\d+)$")


def find_levels_json(labels_dir: Path) -> dict[int, int]:
    """``{level: n_classes}`` from the nearest ``levels.json``, or ``{}``.

    The file is ``{"levels": {L: {"n_classes": n, ...}}}`` or ``{L: n}``; a
    file that is not such JSON raises ``ValueError`` naming it.
    """
    for folder in (labels_dir, labels_dir.parent, labels_dir.parent.parent):
        f = folder / "levels.json"
        if f.is_file():
            try:
                data = json.loads(f.read_text())
                levels = data.get("levels", data)
                return {int(k): int(v["n_classes"] if isinstance(v, dict) else v) for k, v in levels.items()}
            except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as err:
                msg = " ".join(str(err).split())[:200] or type(err).__name__
                raise ValueError(f"{f}: not a levels file ({msg}); give {{\"levels\": {{L: {{\"n_classes\": N}}}}}} "
                                 "or remove it") from None
    return {}


def level_for_k(ks: list[int], levels: dict[int, int]) -> dict[int, int]:
    by_classes = {n: lvl for lvl, n in levels.items()}
    if levels and all(k in by_classes for k in ks):
        return {k: by_classes[k] for k in ks}
    return {k: i + 1 for i, k in enumerate(sorted(ks))}


def find_truth(labels_dir: Path) -> dict[tuple[str, int], Path]:
    """``{(case, level): file}`` of the ``{case}_level{L}`` label maps in ``labels_dir``, in any format.

    Two files for one case and level (``a_level1.nii.gz`` and
    ``a_level1.tif``) are an error: which one is the truth is not for
    hyperseg to guess.
    """
    truth: dict[tuple[str, int], Path] = {}
    for p in sorted(labels_dir.iterdir()):
        m = TRUTH_RE.match(case_name(p)) if is_volume_file(p) else None
        if not m:
            continue
        key = (m["case"], int(m["level"]))
        if key in truth:
            raise VolumeError(f"{p}: case {key[0]} has level {key[1]} ground truth also in {truth[key].name}; "
                              "keep one file per case and level")
        truth[key] = p
    return truth


def evaluate_folder(pred_dir: str | Path, labels_dir: str | Path) -> dict:
    """Score every prediction that has ground truth; returns a JSON-able summary.

    ``{"levels": [{"level", "k", "n_cases", "dice", "dice_std", "iou", "iou_std"}],
    "cases": {case: {k: {"dice", "iou"}}},
    "no_truth": {case: [level, ...]}}``: ``no_truth`` names the predicted
    cases that have no ground-truth file for a level (empty when every
    prediction was scored).
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
        raise FileNotFoundError(f"{pred_dir}: no predictions named {{case}}_k{{K}} ({', '.join(SUFFIXES)})")
    truth = find_truth(labels_dir)
    mapping = level_for_k(sorted(preds), find_levels_json(labels_dir))
    rows, cases = [], {}
    no_truth: dict[str, list[int]] = {}
    for k in sorted(preds):
        level = mapping[k]
        dices, ious = [], []
        for case, path in sorted(preds[k].items()):
            gt_path = truth.get((case, level))
            if gt_path is None:
                no_truth.setdefault(case, []).append(level)
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
        raise FileNotFoundError(f"{labels_dir}: no ground truth {{case}}_level{{L}} ({', '.join(SUFFIXES)}) for "
                                f"the predictions in {pred_dir}; name each truth file after its case and level")
    return {"levels": rows, "cases": cases, "no_truth": {c: sorted(set(lv)) for c, lv in sorted(no_truth.items())}}


def format_no_truth(no_truth: dict[str, list[int]]) -> str:
    """One line naming the cases without ground truth (``""`` when there are none)."""
    if not no_truth:
        return ""
    named = [f"{case} (level{'s' if len(lv) > 1 else ''} {', '.join(map(str, lv))})" for case, lv in no_truth.items()]
    return f"not scored, no ground truth: {', '.join(named)}"


def format_table(summary: dict) -> str:
    """The per-level summary as a Markdown table, then a line naming the cases without ground truth."""
    lines = ["| level | clusters | cases | Dice | IoU |", "|---|---|---|---|---|"]
    for r in summary["levels"]:
        lines.append(f"| {r['level']} | {r['k']} | {r['n_cases']} | {r['dice']:.3f} +- {r['dice_std']:.3f} "
                     f"| {r['iou']:.3f} +- {r['iou_std']:.3f} |")
    missing = format_no_truth(summary.get("no_truth", {}))
    if missing:
        lines += ["", missing]
    return "\n".join(lines)


def write_reports(pred_dir: str | Path, labels_dir: str | Path, images_dir: str | Path) -> list[Path]:
    """For every case with predictions and ground truth, and an image in ``images_dir`` (any format
    :func:`hyperseg.data.io.find_cases` reads), write ``{case}_evaluation.png`` and ``.html`` into
    ``pred_dir``; returns the files written. Levels are paired with truth by :func:`hyperseg.report.truth_for`
    (the level with ``K`` classes, else the nearest)."""
    from .data.io import find_cases, read_case
    from .report import save_slices_png
    from .report_html import save_html_report

    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    preds: dict[str, dict[int, Path]] = {}
    for p in sorted(pred_dir.iterdir()):
        m = PRED_RE.match(case_name(p)) if is_volume_file(p) else None
        if m:
            preds.setdefault(m["case"], {})[int(m["k"])] = p
    truth_files: dict[str, dict[int, Path]] = {}
    for (case, level), path in find_truth(labels_dir).items():
        truth_files.setdefault(case, {})[level] = path
    images = {c.name: c for c in find_cases(images_dir)}
    missing = sorted(c for c in preds if c in truth_files and c not in images)
    if missing:
        raise FileNotFoundError(f"{images_dir}: no image for case {missing[0]} to draw its report; give the folder "
                                "of the segmented volumes with --images")
    written: list[Path] = []
    for case in sorted(c for c in preds if c in truth_files):
        image = read_case(images[case]).array[0]
        labels = {k: read_labels(f) for k, f in sorted(preds[case].items())}
        truth = {lvl: read_labels(f) for lvl, f in sorted(truth_files[case].items())}
        emb_file = pred_dir / f"{case}_embedding.npy"
        embedding = np.load(emb_file, allow_pickle=False) if emb_file.is_file() else None
        if embedding is not None and embedding.shape[:3] != image.shape:
            embedding = None
        written.append(save_slices_png(pred_dir / f"{case}_evaluation.png", image, labels, truth,
                                       title=f"{case}: clusters in the colours of their matched classes"))
        written.append(save_html_report(pred_dir / f"{case}_evaluation.html", image, labels, embedding,
                                        title=f"{case}: evaluation", truth=truth))
    return written
