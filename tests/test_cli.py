"""End to end through the command line on tiny volumes."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY, tiny_yaml

from hyperseg.checkpoint import CONFIG_FILE, WEIGHTS_FILE
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
    assert (run / WEIGHTS_FILE).is_file() and (run / CONFIG_FILE).is_file()
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
    # the table's Dice is the mean over cases of the Hungarian-matched Dice of the files just written
    from hyperseg.metrics import mean_dice

    cases = sorted(p.name.replace(".nii.gz", "") for p in test_dir.glob("*.nii.gz"))
    for k, level in ((2, 1), (4, 2)):
        per_case = [mean_dice(np.asarray(nib.load(str(out / f"{c}_k{k}.nii.gz")).dataobj),
                              np.asarray(nib.load(str(test_dir / "labels" / f"{c}_level{level}.nii.gz")).dataobj),
                              ) for c in cases]
        assert levels[level]["dice"] == pytest.approx(float(np.mean(per_case)), abs=1e-9)


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


def test_highpass_is_trained_with_and_applied_when_segmenting(bench, capsys):
    import torch

    from hyperseg.data.io import read_volume
    from hyperseg.data.preprocess import highpass, normalize
    from hyperseg.embed import embed_volume
    from hyperseg.checkpoint import load_model

    run = bench / "run_highpass"
    assert main(["train", "-i", str(bench / "data" / "train"), "-o", str(run), "--config",
                 str(bench / "tiny.yaml"), "--steps", "2", "--highpass", "3", "-q"]) == 0
    assert "highpass_sigma: 3.0" in (run / "config.yaml").read_text()
    # segment reads it from the run: the saved embedding is that of the high-passed volume
    test_dir, out = bench / "data" / "test", bench / "seg_highpass"
    assert main(["segment", "-m", str(run), "-i", str(test_dir), "-o", str(out), "--levels", "2", "-q",
                 "--save-embeddings", "--smooth", "0"]) == 0
    case = sorted(test_dir.glob("*.nii.gz"))[0]
    model = load_model(run)
    x = normalize(highpass(read_volume(case).array, 3.0), (0.5, 99.5), "auto")
    want = embed_volume(model, torch.from_numpy(x)).numpy()
    saved = np.load(out / f"{case.name[:-7]}_embedding.npy")
    assert np.allclose(saved, want, atol=1e-5)
    raw = embed_volume(model, torch.from_numpy(normalize(read_volume(case).array, (0.5, 99.5), "auto"))).numpy()
    assert not np.allclose(saved, raw, atol=1e-3)  # the check above can tell the two apart
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "3", "--highpass", "5", "-q"]) == 2
    assert "highpass_sigma 3.0" in capsys.readouterr().err
    assert main(["train", "-i", str(bench / "data" / "train"), "-o", str(bench / "run_bad_hp"),
                 "--highpass", "-1", "-q"]) == 2


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperseg: error:") and "missing" in err and "\n" not in err
    assert main(["segment", "-m", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "train" in capsys.readouterr().err  # tells the user how to get a model


def test_every_subcommand_takes_q(capsys):
    from hyperseg.cli import SUBCOMMANDS, build_parser

    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit):
            build_parser().parse_args([name, "--help"])
        assert "-q, --quiet" in capsys.readouterr().out, name


def test_building_the_parser_imports_neither_torch_nor_nibabel():
    """``hyperseg --help`` and argument errors stay fast: lists from data.io are read only when used."""
    code = ("import sys; from hyperseg.cli import build_parser; build_parser(); "
            "print([m for m in ('torch', 'nibabel') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_writes_the_label_maps_segment_writes_with_its_model(tmp_path, monkeypatch):
    """The demo segments through the pipeline `hyperseg segment` runs: same files, same labels."""
    import hyperseg.data.synthetic as synthetic
    import hyperseg.train as training
    from hyperseg.data.io import read_labels

    real_write, real_train = synthetic.write_benchmark, training.train
    monkeypatch.setattr(synthetic, "write_benchmark", lambda out, **kw: real_write(out, **kw, shape=(24, 24, 24)))
    monkeypatch.setattr(training, "train", lambda cfg, arrays, run_dir, **kw: real_train(
        cfg.replace(**TINY), arrays, run_dir, steps=2, progress=False))
    demo = tmp_path / "demo"
    assert main(["demo", "-o", str(demo), "--n-train", "1", "--n-test", "2", "-q"]) == 0
    assert main(["segment", "-m", str(demo / "run"), "-i", str(demo / "data" / "test"), "-o", str(tmp_path / "seg"),
                 "-q"]) == 0
    cases = sorted(p.name[: -len(".nii.gz")] for p in (demo / "data" / "test").glob("*.nii.gz"))
    maps = sorted(p.name for p in (demo / "segmentations").iterdir() if "_k" in p.name)
    assert sorted(p.name for p in (demo / "segmentations").glob("*_embedding.npy")) == [
        f"{case}_embedding.npy" for case in cases]  # the first one's is drawn in demo_report.html
    assert len(cases) == 2
    assert maps == sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        f"{case}_k{k}.nii.gz" for case in cases for k in (2, 4, 6)]
    for name in maps:
        assert np.array_equal(read_labels(demo / "segmentations" / name), read_labels(tmp_path / "seg" / name))
    assert json.loads((demo / "scores.json").read_text())["levels"]
    assert (demo / "demo.png").read_bytes().startswith(b"\x89PNG")
    page = (demo / "demo_report.html").read_text()
    assert "Dice against the ground truth" in page and "truth level 3" in page
