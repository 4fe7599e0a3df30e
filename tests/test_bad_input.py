"""Bad input gets one clear line, exit status 2, and loses nothing.

Each test puts one bad case beside a good one in a folder (or gives the bad
thing directly) and checks: exit status 2; one ``hyperseg: error: {file}: ...``
line naming the bad file; the good case's label maps written; nothing written
for the bad case; earlier outputs untouched.
"""
import contextlib
import gzip
import io
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import tiny_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hyperseg.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from hyperseg.cli import main

TINY_CONFIG = tiny_yaml(checkpoint_every=2, levels="[2, 3]")
SHAPE = (10, 9, 8)


def blob(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(np.float32)
    a[tuple(slice(n // 4, 3 * n // 4) for n in shape[-3:])] += 4
    return a


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_model")
    data = root / "train"
    data.mkdir()
    for i in range(2):
        np.save(data / f"t{i}.npy", blob((20, 20, 20), i))
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    assert main(["train", "-i", str(data), "-o", str(root / "run"), "--config", str(root / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    return root / "run"


@pytest.fixture
def folder(tmp_path):
    """An input folder holding one good case, ``good.npy``."""
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "good.npy", blob(seed=1))
    return src


def segment(run, src, out, *extra):
    return main(["segment", "-m", str(run), "-i", str(src), "-o", str(out), "-q", "--levels", "2", *extra])


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line]


def assert_bad_case_reported(run, src, out, bad: Path, capsys, problem: str, *extra):
    """Exit 2, one error line naming ``bad`` and the problem, the good case done, nothing for the bad one."""
    capsys.readouterr()
    assert segment(run, src, out, *extra) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"hyperseg: error: {bad}"), lines[0]
    assert problem in lines[0].lower(), lines[0]
    assert np.load(out / "good_k2.npy").shape == SHAPE
    assert sorted(p.name for p in out.iterdir()) == ["good_k2.npy"]  # nothing for the bad case, no temporaries


@pytest.mark.parametrize("shape", [(10, 9), (1, 1, 4, 4, 4)], ids=["2d", "5d"])
def test_not_3d_or_4d(run, folder, tmp_path, capsys, shape):
    np.save(folder / "bad.npy", np.random.default_rng(0).random(shape).astype(np.float32))
    assert_bad_case_reported(run, folder, tmp_path / "out", folder / "bad.npy", capsys, "shape")


def test_nan_voxels_are_an_error_unless_filled(run, folder, tmp_path, capsys):
    a = blob(seed=2)
    a[1, 2, 3] = np.nan
    a[4, 4, 4] = np.inf
    np.save(folder / "bad.npy", a)
    assert_bad_case_reported(run, folder, tmp_path / "out", folder / "bad.npy", capsys, "nan")
    assert segment(run, folder, tmp_path / "filled", "--nan-policy", "fill") == 0
    assert np.load(tmp_path / "filled" / "bad_k2.npy").shape == SHAPE


def test_constant_volume(run, folder, tmp_path, capsys):
    np.save(folder / "bad.npy", np.full(SHAPE, 7.0, np.float32))
    assert_bad_case_reported(run, folder, tmp_path / "out", folder / "bad.npy", capsys, "constant")


def test_volume_smaller_than_the_patch_is_padded_and_segmented(run, folder, tmp_path):
    np.save(folder / "tiny.npy", blob((3, 2, 4), seed=3))  # the model's patch edge is 10
    assert segment(run, folder, tmp_path / "out") == 0
    assert np.load(tmp_path / "out" / "tiny_k2.npy").shape == (3, 2, 4)


def test_volume_with_fewer_voxels_than_clusters(run, folder, tmp_path, capsys):
    np.save(folder / "bad.npy", np.array([[[1.0, 2.0]]], np.float32))
    capsys.readouterr()
    assert segment(run, folder, tmp_path / "out", "--levels", "3") == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {folder / 'bad.npy'}") and "3 clusters" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_k3.npy"]


@pytest.mark.parametrize("kind", ["truncated npy", "truncated nii.gz", "garbage nii.gz", "empty nii"])
def test_corrupt_or_truncated_file(run, folder, tmp_path, capsys, kind):
    if kind == "truncated npy":
        bad = folder / "bad.npy"
        np.save(bad, blob(seed=4))
        bad.write_bytes(bad.read_bytes()[:300])
    elif kind == "truncated nii.gz":
        bad = folder / "bad.nii.gz"
        nib.save(nib.Nifti1Image(blob(seed=4), np.eye(4)), str(bad))
        bad.write_bytes(bad.read_bytes()[:-200])
    elif kind == "garbage nii.gz":
        bad = folder / "bad.nii.gz"
        bad.write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    else:
        bad = folder / "bad.nii"
        bad.write_bytes(b"")
    assert_bad_case_reported(run, folder, tmp_path / "out", bad, capsys, "")


def test_unknown_extension_given_directly(run, tmp_path, capsys):
    bad = tmp_path / "scan.txt"
    bad.write_text("1 2 3")
    assert segment(run, bad, tmp_path / "out") == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {bad}") and "format" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_channels_of_different_shapes(run, folder, tmp_path, capsys):
    np.save(folder / "mri_0000.npy", blob(seed=5))
    np.save(folder / "mri_0001.npy", blob((10, 9, 7), seed=6))
    assert_bad_case_reported(run, folder, tmp_path / "out", folder / "mri_0001.npy", capsys, "shape")


def test_a_case_with_more_channels_than_the_model_was_trained_on(run, folder, tmp_path, capsys):
    np.save(folder / "bad.npy", np.stack([blob(seed=s) for s in range(4)]))  # 4D, channels first
    assert_bad_case_reported(run, folder, tmp_path / "out", folder / "bad.npy", capsys, "4 channel")


def test_a_checkpoint_whose_weights_do_not_fit_its_configuration(run, folder, tmp_path, capsys):
    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    cfg = yaml.safe_load((other / CONFIG_FILE).read_text())
    cfg["hidden"] = 16  # the weights were trained with hidden: 8
    (other / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    assert segment(other, folder, tmp_path / "out") == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {other / WEIGHTS_FILE}") and "checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_a_run_folder_without_a_trained_model(run, folder, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert segment(empty, folder, tmp_path / "out") == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {empty}") and WEIGHTS_FILE in line and "hyperseg train" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_unwritable_output_folder(run, folder, tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    out = blocker if where == "a file" else blocker / "out"
    assert segment(run, folder, out) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {out}") and "cannot write" in line
    assert blocker.read_text() == "I am a file"


def test_a_bad_case_does_not_cost_its_earlier_outputs(run, folder, tmp_path, capsys):
    out = tmp_path / "out"
    np.save(folder / "scan.npy", blob(seed=7))
    assert segment(run, folder, out, "--save-embeddings") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (folder / "scan.npy").write_bytes((folder / "scan.npy").read_bytes()[:200])  # the file got damaged
    capsys.readouterr()
    assert segment(run, folder, out, "--save-embeddings") == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"hyperseg: error: {folder / 'scan.npy'}")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32,
          np.float64]


@st.composite
def volumes(draw):
    ndim = draw(st.sampled_from([3, 3, 3, 4, 1, 2, 5]))  # mostly volumes, some of the wrong rank
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=volumes())
def test_segment_survives_random_arrays(run, array):
    """Exit 0 with label maps of the input's spatial shape, or exit 2 with one line per bad case."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "x.npy", Path(tmp) / "out"
        np.save(src, array)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = segment(run, src, out)
        assert code in (0, 2)
        lines = err.getvalue().splitlines()
        if code == 0:
            spatial = array.shape if array.ndim == 3 else array.shape[1:]
            assert np.load(out / "x_k2.npy").shape == spatial
            assert lines == []
        else:
            assert len(lines) == 1 and lines[0].startswith(f"hyperseg: error: {src}"), lines
            assert "internal error" not in lines[0], lines[0]
