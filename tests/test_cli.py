"""End to end through the command line on tiny volumes."""
import json

import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_yaml

from hyperseg.cli import main

TINY_CONFIG = tiny_yaml(checkpoint_every=2)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    assert main(["synth", "-o", str(root / "data"), "--seed", "0", "--n-train", "2", "--n-val", "0",
                 "--n-test", "1", "--size", "32", "-q"]) == 0
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    return root


def test_train_segment_evaluate(bench, capsys):
    run, out = bench / "run", bench / "seg"
    assert main(["train", "-i", str(bench / "data" / "train"), "-o", str(run), "--config",
                 str(bench / "tiny.yaml"), "--steps", "3", "--seed", "1", "-q"]) == 0
    assert (run / "model.pt").is_file() and (run / "config.yaml").is_file()
    assert "seed: 1" in (run / "config.yaml").read_text()
    test_dir = bench / "data" / "test"
    assert main(["segment", "-m", str(run), "-i", str(test_dir), "-o", str(out), "--levels", "2", "4", "-q",
                 "--report"]) == 0
    case = sorted(p.name for p in test_dir.glob("*.nii.gz"))[0].replace(".nii.gz", "")
    src = nib.load(str(test_dir / f"{case}.nii.gz"))
    for k in (2, 4):
        img = nib.load(str(out / f"{case}_k{k}.nii.gz"))
        assert img.shape == src.shape
        assert np.allclose(img.affine, src.affine)
        assert img.get_data_dtype() == np.uint8
        labels = np.asarray(img.dataobj)
        assert labels.max() < k
    assert (out / f"{case}_report.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["evaluate", "-p", str(out), "-t", str(test_dir / "labels"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    levels = {r["level"]: r for r in summary["levels"]}
    assert set(levels) == {1, 2}  # k=2 -> level 1 (2 classes), k=4 -> level 2 (4 classes)
    assert all(0 <= r["dice"] <= 1 for r in summary["levels"])


def test_training_time_limit_saves_a_checkpoint(bench):
    run = bench / "run_minutes"
    assert main(["train", "-i", str(bench / "data" / "train"), "-o", str(run), "--config",
                 str(bench / "tiny.yaml"), "--steps", "100000", "--minutes", "0.02", "-q"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert 0 < info["steps_done"] < 100000


def test_a_single_volume_file_can_be_trained_on(bench):
    one = sorted((bench / "data" / "train").glob("*.nii.gz"))[0]
    assert main(["train", "-i", str(one), "-o", str(bench / "run_one"), "--config", str(bench / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperseg: error:") and "missing" in err and "\n" not in err
    assert main(["segment", "-m", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "train" in capsys.readouterr().err  # tells the user how to get a model
