"""``hyperseg segment``: outputs per case, several processes, resuming, torchrun shares."""
import os

import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_yaml

from hyperseg.cli import main
from hyperseg.cli.workers import run_spawned, shard, threads_per_process
from hyperseg.config import Config
from hyperseg.data.io import read_labels

TINY_CONFIG = tiny_yaml(checkpoint_every=2, levels="[2, 3]")


def blob(shape, seed, channels=None):
    """A noisy bright box in a dark volume: something with two phases to segment."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape) if channels is None else (channels, *shape)
    a = rng.normal(size=shape).astype(np.float32)
    box = tuple(slice(n // 4, 3 * n // 4) for n in shape[-3:])
    a[(Ellipsis, *box)] += 4
    return a


def train_tiny(root, channels=None):
    data = root / "train"
    data.mkdir()
    for i in range(2):
        np.save(data / f"t{i}.npy", blob((20, 20, 20), i, channels))
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    run = root / "run"
    assert main(["train", "-i", str(data), "-o", str(run), "--config", str(root / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("segment_model"))


@pytest.fixture
def four_cases(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        np.save(src / f"case{i}.npy", blob((10, 9, 8), 10 + i))
    return src


def segment(run, src, out, *extra):
    return main(["segment", "-m", str(run), "-i", str(src), "-o", str(out), "-q", *extra])


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def stamps(folder, file_names):
    """``{name: (mtime_ns, inode)}``: an atomic rewrite changes both."""
    return {n: ((folder / n).stat().st_mtime_ns, (folder / n).stat().st_ino) for n in file_names}


def test_one_label_map_per_level_plus_embeddings_and_report(run, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    np.save(src / "a.npy", blob((12, 10, 8), 1))
    affine = np.diag([0.8, 0.8, 1.6, 1.0])
    affine[:3, 3] = [5, -2, 1]
    nib.save(nib.Nifti1Image(blob((10, 9, 8), 2), affine), str(src / "b.nii.gz"))
    assert segment(run, src, out, "--levels", "2", "3", "--save-embeddings", "--report") == 0
    assert names(out) == ["a_embedding.npy", "a_k2.npy", "a_k3.npy", "a_report.html", "a_report.png",
                          "b_embedding.npy", "b_k2.nii.gz", "b_k3.nii.gz", "b_report.html", "b_report.png"]
    for k in (2, 3):
        a = np.load(out / f"a_k{k}.npy")
        assert a.shape == (12, 10, 8) and a.dtype == np.uint8 and a.max() < k
        b = nib.load(str(out / f"b_k{k}.nii.gz"))
        assert b.shape == (10, 9, 8) and np.allclose(b.affine, affine)
    emb = np.load(out / "a_embedding.npy")
    assert emb.shape == (12, 10, 8, Config().latent_dim) and emb.dtype == np.float32
    assert np.linalg.norm(emb, axis=-1).max() < 1  # ball coordinates
    assert (out / "b_report.png").read_bytes().startswith(b"\x89PNG")


def test_nested_levels_from_the_command_line(run, tmp_path):
    src, out = tmp_path / "a.npy", tmp_path / "out"
    np.save(src, blob((12, 10, 8), 4))
    assert segment(run, src, out, "--levels", "2", "4", "--hierarchy", "divisive", "--clustering", "kmeans") == 0
    coarse, fine = np.load(out / "a_k2.npy"), np.load(out / "a_k4.npy")
    for f in np.unique(fine):  # every fine cluster inside one coarse cluster
        assert len(np.unique(coarse[fine == f])) == 1
    assert segment(run, src, tmp_path / "mix", "--levels", "2", "--clustering", "mixture") == 0
    assert np.load(tmp_path / "mix" / "a_k2.npy").max() <= 1


def test_default_levels_come_from_the_model_and_the_format_can_be_overridden(run, tmp_path):
    src, out = tmp_path / "b.nii.gz", tmp_path / "out"
    nib.save(nib.Nifti1Image(blob((10, 9, 8), 3), np.eye(4)), str(src))
    assert segment(run, src, out, "--output-format", "npy") == 0
    assert names(out) == ["b_k2.npy", "b_k3.npy"]  # levels [2, 3] from the run's configuration
    for fmt in ("tif", "mrc"):
        assert segment(run, src, tmp_path / fmt, "--output-format", fmt, "--levels", "2") == 0
        assert names(tmp_path / fmt) == [f"b_k2.{fmt}"]
        assert read_labels(tmp_path / fmt / f"b_k2.{fmt}").shape == (10, 9, 8)


def test_nnunet_channel_files_are_one_case(tmp_path_factory, tmp_path):
    run2 = train_tiny(tmp_path_factory.mktemp("two_channel_model"), channels=2)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    vol = blob((10, 9, 8), 4, channels=2)
    for c in range(2):
        nib.save(nib.Nifti1Image(vol[c], np.eye(4)), str(src / f"brain_{c:04d}.nii.gz"))
    assert segment(run2, src, out, "--levels", "2") == 0
    assert names(out) == ["brain_k2.nii.gz"]
    assert nib.load(str(out / "brain_k2.nii.gz")).shape == (10, 9, 8)


def test_quiet_silences_progress_bars(run, four_cases, tmp_path, capsys):
    capsys.readouterr()
    assert segment(run, four_cases, tmp_path / "out", "--levels", "2") == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "segmented 4 of 4 cases" in captured.out


@pytest.mark.slow
def test_two_workers_write_exactly_the_expected_files(run, four_cases, tmp_path, capsys):
    out = tmp_path / "out"
    np.save(four_cases / "case4.npy", np.zeros((10, 9, 8), np.float32))  # a bad case among them
    assert segment(run, four_cases, out, "--nproc", "2", "--levels", "2", "3") == 2
    assert names(out) == sorted(f"case{i}_k{k}.npy" for i in range(4) for k in (2, 3))
    for p in out.iterdir():
        assert np.load(p).shape == (10, 9, 8)
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [captured.err.splitlines()[0]]
    assert captured.err.startswith(f"hyperseg: error: {four_cases / 'case4.npy'}: ")
    assert "segmented 4 of 5 cases" in captured.out and "1 failed" in captured.out


class DyingJob:
    """A worker job whose process ends abruptly on the case named "die"."""

    def setup(self, slot):
        return None

    def run_case(self, state, case):
        if case == "die":
            os._exit(3)
        return ("done", case)

    def failed(self, case, message):
        return ("failed", case)


def test_cases_of_a_worker_that_dies_are_reported_not_skipped():
    results = []
    run_spawned(DyingJob(), [["a", "die", "b"], ["c"]], results.append, n_threads=None)
    assert sorted(results) == [("done", "a"), ("done", "c"), ("failed", "b"), ("failed", "die")]


def test_skip_existing_continues_an_interrupted_run_and_leaves_finished_outputs_alone(run, four_cases, tmp_path,
                                                                                      capsys):
    out = tmp_path / "out"
    args = ["--levels", "2", "3", "--report"]
    (four_cases / "case3.npy").unlink()  # three cases are enough here
    assert segment(run, four_cases, out, *args) == 0
    everything = names(out)
    # "interrupt": case1 lost all its outputs, case2 lost one level
    for p in out.glob("case1_*"):
        p.unlink()
    (out / "case2_k3.npy").unlink()
    kept = stamps(out, names(out))
    capsys.readouterr()
    assert segment(run, four_cases, out, *args, "--skip-existing") == 0
    assert names(out) == everything
    assert stamps(out, kept) == kept  # not rewritten (same inode, same time)
    assert "1 skipped" in capsys.readouterr().out
    # asking for a new output makes every case due again, and only that output is written
    assert segment(run, four_cases, out, *args, "--save-embeddings", "--skip-existing") == 0
    assert stamps(out, kept) == kept
    assert sorted(p.name for p in out.glob("*_embedding.npy")) == [f"case{i}_embedding.npy" for i in range(3)]


def test_torchrun_ranks_take_disjoint_shares_without_a_process_group(run, four_cases, tmp_path, monkeypatch):
    done = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        out = tmp_path / f"rank{rank}"
        assert segment(run, four_cases, out, "--levels", "2") == 0
        done.append(names(out))
    assert done == [["case0_k2.npy", "case2_k2.npy"], ["case1_k2.npy", "case3_k2.npy"]]


def test_a_mask_file_is_used_for_every_case_and_must_match_its_grid(run, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    np.save(src / "a.npy", blob((10, 9, 8), 5))
    mask = np.zeros((10, 9, 8), np.uint8)
    mask[2:8, 2:7, 2:6] = 1
    np.save(tmp_path / "mask.npy", mask)
    assert segment(run, src, out, "--levels", "2", "--mask", str(tmp_path / "mask.npy")) == 0
    assert names(out) == ["a_k2.npy"]
    np.save(tmp_path / "small_mask.npy", mask[:-1])
    capsys.readouterr()
    assert segment(run, src, tmp_path / "out2", "--levels", "2", "--mask", str(tmp_path / "small_mask.npy")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hyperseg: error: {src / 'a.npy'}") and "mask" in err


def test_shares_cover_every_case_exactly_once():
    items = list(range(23))
    for n in (1, 2, 3, 7, 30):
        shares = [shard(items, j, n) for j in range(n)]
        assert sorted(x for s in shares for x in s) == items
        assert all(x % n == j for j, s in enumerate(shares) for x in s)


def test_threads_are_shared_between_processes():
    assert threads_per_process(2, cpus=16) == 8
    assert threads_per_process(3, cpus=16) == 5
    assert threads_per_process(32, cpus=16) == 1


# -- a round trip per format: the label map lies on the input's grid ----------------------------
def _asymmetric_volume() -> np.ndarray:
    """A (12, 10, 8) volume with a bright box off-centre: a transposed or flipped map cannot match."""
    rng = np.random.default_rng(5)
    truth = np.zeros((12, 10, 8), dtype=np.float32)
    truth[1:6, 0:4, 3:8] = 1
    return (rng.normal(size=truth.shape) * 0.3 + 4.0 * truth).astype(np.float32)


def _write_input(path, array):
    """Write ``array`` (D, H, W) with a non-trivial geometry (voxel size 0.7) in the format of ``path``."""
    name = path.name
    if name.endswith((".nii", ".nii.gz")):  # axes permuted and flipped in world space
        affine = np.array([[0, 0, -0.7, 10], [0, 0.7, 0, -3], [0.7, 0, 0, 2], [0, 0, 0, 1]], dtype=float)
        nib.save(nib.Nifti1Image(array, affine), str(path))
    elif name.endswith(".tif"):
        import tifffile

        tifffile.imwrite(path, array, imagej=True, resolution=(1 / 0.7, 1 / 0.7), metadata={"spacing": 0.7})
    elif name.endswith(".mrc"):
        import mrcfile

        with mrcfile.new(path) as m:
            m.set_data(array)
            m.voxel_size = 0.7
    else:
        np.save(path, array)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".tif", ".mrc"])
def test_segmenting_a_file_keeps_its_shape_geometry_and_orientation(run, tmp_path, suffix):
    """Same voxels in any format give the same label map, written back with the input's geometry."""
    from hyperseg.data.io import read_volume

    image = _asymmetric_volume()
    np.save(tmp_path / "ref.npy", image)
    assert segment(run, tmp_path / "ref.npy", tmp_path / "ref", "--levels", "3") == 0
    reference = np.load(tmp_path / "ref" / "ref_k3.npy")
    assert len(np.unique(reference)) == 3
    src = tmp_path / f"vol{suffix}"
    _write_input(src, image)
    assert segment(run, src, tmp_path / "out", "--levels", "3") == 0
    out = tmp_path / "out" / f"vol_k3{suffix}"
    assert names(tmp_path / "out") == [out.name]
    vin, vout = read_volume(src), read_volume(out)
    assert vout.spatial_shape == vin.spatial_shape == image.shape
    np.testing.assert_allclose(vout.affine, vin.affine)
    np.testing.assert_allclose(vout.spacing, vin.spacing)
    np.testing.assert_allclose(vin.spacing, [0.7, 0.7, 0.7], rtol=1e-5)
    np.testing.assert_array_equal(read_labels(out), reference)  # nothing transposed or flipped


def test_smooth_option_sets_the_embedding_smoothing(run, tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, blob((12, 10, 8), 5))
    assert segment(run, src, tmp_path / "raw", "--levels", "2", "--smooth", "0", "--save-embeddings") == 0
    assert segment(run, src, tmp_path / "s3", "--levels", "2", "--smooth", "3", "--save-embeddings") == 0
    raw, smooth = np.load(tmp_path / "raw" / "a_embedding.npy"), np.load(tmp_path / "s3" / "a_embedding.npy")
    # smoothing shrinks the spread of the points (distances to their gyromidpoint)
    assert np.std(smooth, axis=(0, 1, 2)).sum() < np.std(raw, axis=(0, 1, 2)).sum()
    assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(tmp_path / "bad"), "--smooth", "-1"]) == 2
    assert "smooth_sigma must be >= 0 voxels" in capsys.readouterr().err


def test_level_smooth_option_is_parsed_and_checked(run, tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, blob((12, 10, 8), 6))
    indep = ("--hierarchy", "independent")
    assert segment(run, src, tmp_path / "o", "--levels", "2", "3", "--level-smooth", "2=4", "3=0", *indep) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_k2.npy", "a_k3.npy"]
    # each independent level is what a plain run with that level's sigma gives
    for k, sigma in (("2", "4"), ("3", "0")):
        assert segment(run, src, tmp_path / f"s{k}", "--levels", k, "--smooth", sigma, *indep) == 0
        assert np.array_equal(np.load(tmp_path / "o" / f"a_k{k}.npy"), np.load(tmp_path / f"s{k}" / f"a_k{k}.npy"))
    assert segment(run, src, tmp_path / "n", "--level-smooth", "2=4", "--hierarchy", "divisive") == 2
    assert "level_smooth_sigma needs hierarchy 'independent'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        segment(run, src, tmp_path / "x", "--level-smooth", "two=4")


def test_level_clustering_option_is_parsed_and_checked(run, tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, blob((12, 10, 8), 6))
    indep = ("--hierarchy", "independent")
    assert segment(run, src, tmp_path / "o", "--levels", "2", "3", "--level-clustering", "2=kmedians", *indep) == 0
    # independent levels: level 2 is what a plain k-medians run gives, level 3 what a plain k-means run gives
    for k, method in (("2", "kmedians"), ("3", "kmeans")):
        assert segment(run, src, tmp_path / f"s{k}", "--levels", k, "--clustering", method, *indep) == 0
        assert np.array_equal(np.load(tmp_path / "o" / f"a_k{k}.npy"), np.load(tmp_path / f"s{k}" / f"a_k{k}.npy"))
    # on this volume the two methods disagree at k = 2, and the default is k-medians there
    assert segment(run, src, tmp_path / "m", "--levels", "2", "--clustering", "kmeans", *indep) == 0
    assert segment(run, src, tmp_path / "d", "--levels", "2", *indep) == 0
    medians = np.load(tmp_path / "s2" / "a_k2.npy")
    assert not np.array_equal(np.load(tmp_path / "m" / "a_k2.npy"), medians)
    assert np.array_equal(np.load(tmp_path / "d" / "a_k2.npy"), medians)
    assert segment(run, src, tmp_path / "n", "--level-clustering", "2=kmedians", "--hierarchy", "divisive") == 2
    assert "--level-clustering needs independent levels" in capsys.readouterr().err
    assert segment(run, src, tmp_path / "x", "--level-clustering", "2=kmedoids") == 2
    assert "level_clustering must map" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        segment(run, src, tmp_path / "x", "--level-clustering", "two")


# -- one configuration, one model load per process, one naming rule ---------------------------------
@pytest.mark.parametrize("extra,rule,option", [
    (["--smooth", "-1"], "smooth_sigma must be >= 0", "--smooth"),
    (["--patch-edge", "0"], "embed_patch_edge must be >= 1", "--patch-edge"),
    (["--levels", "2", "300"], "from 1 to 256", "--levels"),
    (["--level-smooth", "0=2"], "level_smooth_sigma must map", "--level-smooth"),
    (["--level-clustering", "2=kmedoids"], "level_clustering must map", "--level-clustering"),
], ids=["smooth", "patch-edge", "levels", "level-smooth", "level-clustering"])
def test_a_configuration_rule_broken_on_the_command_line_is_one_line_and_nothing_is_made(run, tmp_path, capsys,
                                                                                         extra, rule, option):
    src = tmp_path / "a.npy"
    np.save(src, blob((10, 9, 8), 1))
    capsys.readouterr()
    assert segment(run, src, tmp_path / "out", *extra) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("hyperseg: error: invalid configuration: ") and rule in line
    assert line.endswith(f"(set by {option})")
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


def _count_model_loads(monkeypatch) -> list:
    import hyperseg.checkpoint as checkpoint

    calls, real = [], checkpoint.load_model

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", counting)
    return calls


def test_a_process_that_segments_alone_loads_the_model_once(run, four_cases, tmp_path, monkeypatch):
    calls = _count_model_loads(monkeypatch)
    assert segment(run, four_cases, tmp_path / "out", "--levels", "2") == 0
    assert len(calls) == 1
    assert names(tmp_path / "out") == [f"case{i}_k2.npy" for i in range(4)]


def test_each_worker_loads_the_model_once_and_segments_with_the_resolved_configuration(run, four_cases, tmp_path,
                                                                                       monkeypatch):
    import pickle

    import hyperseg.cli.workers as workers

    seen = []

    def in_process(job, shares, on_result, n_threads, slot0=0):  # run_spawned's protocol, without processes
        job = pickle.loads(pickle.dumps(job))  # what a spawned worker receives
        for j, share in enumerate(shares):
            state = job.setup(slot0 + j)
            seen.append(state.model.cfg)
            for case in share:
                on_result(job.run_case(state, case))

    monkeypatch.setattr(workers, "run_spawned", in_process)
    calls = _count_model_loads(monkeypatch)
    assert segment(run, four_cases, tmp_path / "out", "--nproc", "2", "--levels", "3", "2", "3", "--smooth", "0") == 0
    assert len(calls) == 1 + 2  # the command's own check, then one per worker
    assert [(c.levels, c.smooth_sigma) for c in seen] == [([3, 2], 0.0)] * 2
    assert names(tmp_path / "out") == sorted(f"case{i}_k{k}.npy" for i in range(4) for k in (2, 3))


@pytest.mark.parametrize("fmt,embeddings,report,want", [
    (None, False, False, ["a_k3.npy", "a_k2.npy"]),
    ("tif", True, False, ["a_k3.tif", "a_k2.tif", "a_embedding.npy"]),
    (".MRC", False, True, ["a_k3.mrc", "a_k2.mrc", "a_report.png"]),
    ("nii.gz", True, True, ["a_k3.nii.gz", "a_k2.nii.gz", "a_embedding.npy", "a_report.png"]),
])
def test_the_names_skip_existing_looks_for_are_the_files_segment_case_writes(run, tmp_path, fmt, embeddings, report,
                                                                              want):
    from hyperseg.checkpoint import load_model
    from hyperseg.data.io import find_cases
    from hyperseg.pipeline import SegmentOptions, case_outputs, segment_case

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    np.save(src / "a_0000.npy", blob((10, 9, 8), 2))  # case "a": outputs are named by the case, not the file
    [case] = find_cases(src)
    model = load_model(run)
    model.cfg = model.cfg.replace(levels=[3, 2])
    options = SegmentOptions(output=out, output_format=fmt, save_embeddings=embeddings, report=report)
    named = list(case_outputs(case, model.cfg.levels, options).values())
    assert [p.name for p in named] == want
    written = segment_case(model, case, options)
    assert written == named and names(out) == sorted(want)
    # every output there: a run that skips existing outputs reads nothing (the input is gone) and writes nothing
    (src / "a_0000.npy").write_bytes(b"damaged")
    again = SegmentOptions(output=out, output_format=fmt, save_embeddings=embeddings, report=report,
                           skip_existing=True)
    assert segment_case(model, case, again) == []


def test_an_unknown_output_format_is_refused_before_anything_is_made(run, tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, blob((10, 9, 8), 1))
    with pytest.raises(SystemExit):
        segment(run, src, tmp_path / "out", "--output-format", "png")
    assert "invalid choice: 'png'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_segment_says_which_foreground_each_case_was_clustered_in(run, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "bright.npy", blob((20, 20, 20), 3))  # a bright box on a dark background: the mask agrees
    out = tmp_path / "out"
    assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(out), "--foreground", "auto"]) == 0
    said = capsys.readouterr().out
    import re

    found = re.search(r"bright: (tissue classes inside the automatic intensity mask|classes inside the 2-cluster "
                      r"split)[^\n]*?Dice (\d\.\d+)", said)
    assert found, said
    in_mask = found.group(1).startswith("tissue")
    assert in_mask == (float(found.group(2)) >= 0.9)  # the run's foreground_agreement decides, and is reported
    assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(tmp_path / "q"), "--foreground", "auto",
                 "-q"]) == 0
    assert "intensity mask" not in capsys.readouterr().out  # -q: nothing but the summary


def test_overcluster_option_sets_the_field_and_is_checked(run, tmp_path, capsys, clusters_asked):
    asked = clusters_asked
    src = tmp_path / "a.npy"
    np.save(src, blob((12, 10, 8), 6))
    split = ("--foreground", "split", "--levels", "2", "3")
    assert segment(run, src, tmp_path / "o3", *split, "--overcluster", "3") == 0
    assert asked == [2, 6]  # the split, then 3 x (3 - 1) clusters inside it, merged back to 2
    assert set(np.unique(np.load(tmp_path / "o3" / "a_k3.npy"))) <= {0, 1, 2}
    asked.clear()
    assert segment(run, src, tmp_path / "o1", *split, "--overcluster", "1") == 0
    assert asked == [2, 2]
    asked.clear()
    # independent levels merge nothing: the run's over-clustering is dropped, not refused
    assert segment(run, src, tmp_path / "i", "--levels", "3", "--hierarchy", "independent") == 0
    assert segment(run, src, tmp_path / "bad", *split, "--overcluster", "3", "--refine", "hmrf_em") == 2
    assert "refine 'once'" in capsys.readouterr().err


def test_coherence_sigma_option_sets_the_field_and_is_checked(run, tmp_path, capsys, monkeypatch):
    import hyperseg.segment as segment_module

    seen = []
    real = segment_module.coherence_channel
    monkeypatch.setattr(segment_module, "coherence_channel",
                        lambda values, shape, fg, sigma: seen.append(sigma) or real(values, shape, fg, sigma))
    src = tmp_path / "a.npy"
    np.save(src, blob((12, 10, 8), 6))
    split = ("--foreground", "split", "--levels", "2", "3")
    assert segment(run, src, tmp_path / "c", *split, "--coherence-sigma", "1.5") == 0
    assert seen == [1.5]  # the option reaches the finer level (3), once
    seen.clear()
    assert segment(run, src, tmp_path / "off", *split, "--coherence-sigma", "0") == 0
    assert seen == []
    # independent levels read no coherence: the run's channel is dropped, not refused
    assert segment(run, src, tmp_path / "i", "--levels", "3", "--hierarchy", "independent") == 0
    assert segment(run, src, tmp_path / "bad", *split, "--coherence-sigma", "3", "--refine", "hmrf_em") == 2
    assert "coherence_sigma" in capsys.readouterr().err
    assert segment(run, src, tmp_path / "neg", *split, "--coherence-sigma", "-1") == 2
