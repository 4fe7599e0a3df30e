"""``evaluate``: ground truth in every format hyperseg reads, cases without truth named, bad truth refused."""
import json

import mrcfile
import nibabel as nib
import numpy as np
import pytest
import tifffile
from test_io import garbage_file, pickled_command_npy

from hyperseg.cli import main
from hyperseg.data.io import VolumeError
from hyperseg.evaluate import evaluate_folder, format_table
from hyperseg.metrics import dice_iou

SHAPE = (6, 5, 4)


def truth_and_prediction(seed, k):
    """Classes ``0..k-1`` in slabs, and a prediction that relabels them and gets a few voxels wrong."""
    truth = (np.arange(np.prod(SHAPE)).reshape(SHAPE) * k // np.prod(SHAPE)).astype(np.uint8)
    pred = (truth + 1) % k  # the cluster ids need Hungarian matching
    wrong = np.random.default_rng(seed).random(SHAPE) < 0.15
    pred[wrong] = (pred[wrong] + 1) % k
    return truth, pred.astype(np.uint8)


def save_labels(path, labels):
    """A label map written by the format's own library (not by hyperseg), as other tools write them."""
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(path))
    elif name.endswith((".tif", ".tiff")):
        tifffile.imwrite(path, labels, photometric="minisblack")
    elif name.endswith((".mrc", ".rec", ".map")):
        with mrcfile.new(str(path)) as mrc:
            mrc.set_data(labels)
    else:
        np.save(path, labels)
    return path


@pytest.fixture
def folders(tmp_path):
    """Predictions for cases a and b at k = 2 and 3, and a levels.json (level 1: 2 classes, level 2: 3)."""
    pred, labels = tmp_path / "pred", tmp_path / "data" / "labels"
    pred.mkdir()
    labels.mkdir(parents=True)
    (tmp_path / "data" / "levels.json").write_text(json.dumps({"levels": {"1": {"n_classes": 2},
                                                                          "2": {"n_classes": 3}}}))
    truths = {}
    for i, case in enumerate("ab"):
        for level, k in ((1, 2), (2, 3)):
            truth, p = truth_and_prediction(10 * i + k, k)
            np.save(pred / f"{case}_k{k}.npy", p)
            truths[case, level] = (truth, p)
    return pred, labels, truths


def expected(truths):
    """The summary computed by hand: Dice and IoU per case, mean over the cases of each level."""
    rows = []
    for level, k in ((1, 2), (2, 3)):
        scores = [dice_iou(p, t) for (case, lv), (t, p) in sorted(truths.items()) if lv == level]
        dices, ious = [s["mean_dice"] for s in scores], [s["mean_iou"] for s in scores]
        rows.append({"level": level, "k": k, "n_cases": 2, "dice": np.mean(dices), "dice_std": np.std(dices),
                     "iou": np.mean(ious), "iou_std": np.std(ious)})
    return rows


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".tif", ".tiff", ".mrc", ".rec", ".map", ".npy"])
def test_truth_in_every_format_scores_as_in_nifti(folders, ext):
    pred, labels, truths = folders
    for (case, level), (truth, _) in truths.items():
        save_labels(labels / f"{case}_level{level}{ext}", truth)
    summary = evaluate_folder(pred, labels)
    assert summary["no_truth"] == {}
    want = expected(truths)
    assert [(r["level"], r["k"], r["n_cases"]) for r in summary["levels"]] == [(1, 2, 2), (2, 3, 2)]
    for got, ref in zip(summary["levels"], want):
        for key in ("dice", "dice_std", "iou", "iou_std"):
            assert got[key] == pytest.approx(ref[key], abs=1e-12), (ext, key)
    assert 0.5 < want[0]["dice"] < 0.99  # a score a reader that dropped or shuffled voxels would miss


def test_truth_of_mixed_formats_in_one_folder(folders):
    pred, labels, truths = folders
    for i, ((case, level), (truth, _)) in enumerate(sorted(truths.items())):
        save_labels(labels / f"{case}_level{level}{('.tif', '.mrc', '.npy', '.nii.gz')[i]}", truth)
    summary = evaluate_folder(pred, labels)
    assert summary["no_truth"] == {} and [r["n_cases"] for r in summary["levels"]] == [2, 2]


def test_cases_without_truth_are_named(folders, capsys):
    pred, labels, truths = folders
    save_labels(labels / "a_level1.tif", truths["a", 1][0])
    save_labels(labels / "a_level2.mrc", truths["a", 2][0])
    save_labels(labels / "b_level2.nii.gz", truths["b", 2][0])
    np.save(pred / "c_k3.npy", truths["b", 2][1])  # a case with no truth at all
    summary = evaluate_folder(pred, labels)
    assert summary["no_truth"] == {"b": [1], "c": [2]}
    assert [(r["level"], r["n_cases"]) for r in summary["levels"]] == [(1, 1), (2, 2)]
    assert sorted(summary["cases"]) == ["a", "b"]
    assert format_table(summary).splitlines()[-1] == "not scored, no ground truth: b (level 1), c (level 2)"
    assert main(["evaluate", "-p", str(pred), "-t", str(labels)]) == 0
    assert "not scored, no ground truth: b (level 1), c (level 2)" in capsys.readouterr().out
    assert main(["evaluate", "-p", str(pred), "-t", str(labels), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["no_truth"] == {"b": [1], "c": [2]}


def test_no_truth_at_all_says_which_names_are_looked_for(folders):
    pred, labels, _ = folders
    save_labels(labels / "a_truth.tif", np.zeros(SHAPE, np.uint8))
    with pytest.raises(FileNotFoundError, match=r"no ground truth \{case\}_level\{L\} \(\.nii\.gz, .*\.tif"):
        evaluate_folder(pred, labels)


def test_two_truth_files_for_one_case_and_level_are_refused(folders):
    pred, labels, truths = folders
    save_labels(labels / "a_level1.nii.gz", truths["a", 1][0])
    save_labels(labels / "a_level1.tif", truths["a", 1][0])
    with pytest.raises(VolumeError, match=r"a_level1\.tif: case a has level 1 ground truth also in a_level1\.nii\.gz"):
        evaluate_folder(pred, labels)


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_a_pickled_npy_as_truth_runs_nothing(folders, tmp_path, capsys):
    pred, labels, truths = folders
    marker = tmp_path / "MARKER"
    save_labels(labels / "a_level1.nii.gz", truths["a", 1][0])
    evil = pickled_command_npy(labels / "b_level1.npy", marker)
    with pytest.raises(VolumeError, match=f"{evil}: holds Python objects"):
        evaluate_folder(pred, labels)
    capsys.readouterr()
    assert main(["evaluate", "-p", str(pred), "-t", str(labels)]) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {evil}: holds Python objects")
    assert not marker.exists()


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".tif", ".mrc"])
def test_garbage_truth_gives_one_line_naming_the_file(folders, capsys, ext):
    pred, labels, truths = folders
    save_labels(labels / "a_level1.npy", truths["a", 1][0])
    bad = garbage_file(labels / f"b_level1{ext}")
    capsys.readouterr()
    assert main(["evaluate", "-p", str(pred), "-t", str(labels)]) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {bad}: cannot be read as {ext}")


def test_a_levels_file_that_is_not_json_is_named(folders, capsys):
    pred, labels, truths = folders
    save_labels(labels / "a_level1.npy", truths["a", 1][0])
    bad = labels.parent / "levels.json"
    bad.write_text("{not json")
    capsys.readouterr()
    assert main(["evaluate", "-p", str(pred), "-t", str(labels)]) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {bad}: not a levels file")
