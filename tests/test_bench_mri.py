"""The real-MRI benchmark's truth and scores (benchmarks/bench_mri.py): the MNI152 tissue truth, the level-3
truth derived from it, and the level-4 scores against three tissue classes."""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_mri  # noqa: E402


def _write(folder: Path, name: str, a: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(a.astype(np.uint8), np.eye(4)), str(folder / name))


def _tiny_mni(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 6 x 6 x 6 'template': brain in the inner 4^3, GM / WM probabilities (0-255) chosen per voxel."""
    rng = np.random.default_rng(0)
    t1 = np.zeros((6, 6, 6))
    t1[1:5, 1:5, 1:5] = rng.uniform(50, 250, (4, 4, 4))
    gm = rng.integers(0, 128, (6, 6, 6)).astype(np.float64)
    wm = rng.integers(0, 128, (6, 6, 6)).astype(np.float64)
    _write(folder, bench_mri.MNI_FILES["t1"], t1)
    _write(folder, bench_mri.MNI_FILES["gm"], gm)
    _write(folder, bench_mri.MNI_FILES["wm"], wm)
    return t1, gm / 255.0, wm / 255.0


def test_mni152_truth_is_the_largest_of_csf_gm_wm_inside_the_brain(tmp_path):
    t1, gm, wm = _tiny_mni(tmp_path)
    x, truth = bench_mri.load_mni152(tmp_path)
    assert x.shape == truth.shape == (6, 6, 6)
    # voxel by voxel: background outside the template's brain, else the largest of 1 - GM - WM, GM, WM
    for idx in np.ndindex(*x.shape):
        if t1[idx] == 0:
            assert truth[idx] == 0
        else:
            probs = [max(1.0 - gm[idx] - wm[idx], 0.0), gm[idx], wm[idx]]
            assert truth[idx] == int(np.argmax(probs)) + 1
    assert set(np.unique(truth[t1 > 0])) <= {1, 2, 3}


def test_mni152_missing_files_say_what_to_install(tmp_path):
    with pytest.raises(SystemExit, match="pip install nilearn"):
        bench_mri.load_mni152(tmp_path)


def test_three_class_truth_keeps_grey_matter_and_merges_csf_with_white_matter():
    t4 = np.array([0, 1, 2, 3, 2, 0])
    assert bench_mri.three_class(t4).tolist() == [0, 2, 1, 2, 1, 0]
    t3 = np.array([0, 1, 2, 1])  # Colin27's truth is already three-class
    assert bench_mri.three_class(t3) is t3


def test_tissue_score_against_csf_gm_wm_truth():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (8, 8, 8))
    perm = np.array([2, 0, 3, 1])  # cluster ids are arbitrary: a relabelled truth is a perfect segmentation
    perfect = {2: (truth > 0).astype(np.int64), 3: bench_mri.three_class(truth), 4: perm[truth]}
    s = bench_mri.score(perfect, truth)
    assert s["2"] == pytest.approx(1.0) and s["3"] == pytest.approx(1.0)
    assert s["4"] == pytest.approx(1.0) and s["4t"] == pytest.approx(1.0)
    # CSF and WM swapped: the merged score (GM against the rest) cannot see it, the tissue score is still
    # perfect (Hungarian matching); CSF labelled as WM loses the CSF class
    merged = {**perfect, 4: np.where(truth == 1, 3, truth)}
    s = bench_mri.score(merged, truth)
    assert s["4"] == pytest.approx(1.0)
    assert s["4t_classes"][1] == 0.0 and s["4t"] < 0.85
    assert s["4t_classes"][2] == pytest.approx(1.0)
    # Colin27's three-class truth has no tissue score
    assert "4t" not in bench_mri.score({2: perfect[2], 3: perfect[3], 4: perfect[3]}, bench_mri.three_class(truth))


def test_degrade_keeps_four_tissue_labels_on_the_2mm_grid():
    truth = np.zeros((8, 8, 8), np.int64)
    truth[2:6, 2:6, 2:6] = 2
    truth[2:4, 2:4, 2:4] = 3
    truth[4:6, 4:6, 4:6] = 1
    x = np.where(truth > 0, 100.0 * truth, 0.0)
    y, t, _ = bench_mri.degrade(x, truth, 2, 0.0, 0.0, seed=0)
    assert y.shape == t.shape == (4, 4, 4)
    assert t[1, 1, 1] == 3 and t[2, 2, 2] == 1 and t[1, 2, 1] == 2 and t[0, 0, 0] == 0
