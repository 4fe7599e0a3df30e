"""`hyperseg bench`: classical baselines, the row runner, results.json and the table."""
import json

import numpy as np
import pytest

from hyperseg.comparison.baselines import BASELINES
from hyperseg.comparison.rows import FULL_MODEL, ROWS, find_rows
from hyperseg.comparison.runner import Profile, ResumeError, run_benchmark
from hyperseg.comparison.table import PAPER_ROWS, format_table
from hyperseg.cli import main
from hyperseg.metrics import mean_dice

TINY = {"encoder_channels": [4, 4, 4, 4], "decoder_channels": [4, 4, 4, 4], "hidden": 8, "gyro_channels": 8,
        "n_samples": 2, "batch_size": 4, "checkpoint_every": 100, "kmeans_n_init": 1, "kmeans_sample": 2000}


def _two_phase_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball in a dark box, with mild noise: every method should find it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((24, 24, 24))
    truth = ((z - 12) ** 2 + (y - 11) ** 2 + (x - 13) ** 2 <= 49).astype(np.int64)
    image = 2.0 * truth + 0.2 * rng.standard_normal(truth.shape)
    return image[None].astype(np.float32), truth


@pytest.mark.parametrize("name", list(BASELINES))
def test_classical_baselines_find_an_obvious_object(name):
    image, truth = _two_phase_volume()
    labels = BASELINES[name](image, 2, seed=0)
    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert set(np.unique(labels).tolist()) <= {0, 1}
    # local statistics over a Gaussian of 2 voxels see the edge in a band ~4 voxels wide, a large
    # part of this radius-7 sphere (measured 0.80); the per-voxel methods are near exact
    assert mean_dice(labels, truth) > (0.75 if name.startswith("k-means on local mean + std") else 0.95)


@pytest.mark.parametrize("name", list(BASELINES))
def test_classical_baselines_give_k_labels(name):
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    labels = BASELINES[name](image, 6, seed=0)
    assert labels.min() >= 0 and labels.max() <= 5 and len(np.unique(labels)) >= 3


def test_local_statistics_separate_textures_of_equal_mean_where_intensity_cannot():
    from hyperseg.comparison.baselines import kmeans_intensity, kmeans_local_stats

    rng = np.random.default_rng(2)
    truth = np.zeros((24, 24, 24), np.int64)
    truth[:, :, 12:] = 1
    image = rng.standard_normal(truth.shape) * np.where(truth == 1, 1.0, 0.1)  # same mean, other spread
    assert mean_dice(kmeans_local_stats(image[None], 2), truth) > 0.9
    assert mean_dice(kmeans_intensity(image[None], 2), truth) < 0.8


def test_local_mean_and_std_are_gaussian_weighted_moments_of_the_z_scored_channel():
    from hyperseg.comparison.baselines import local_mean_std

    rng = np.random.default_rng(3)
    image = rng.standard_normal((1, 20, 20, 20)) * 3.0 + 5.0
    sigma, centre, r = 1.0, (10, 9, 11), 4  # scipy truncates the kernel at 4 sigma
    feats = local_mean_std(image, sigma)
    assert feats.shape == (2, 20, 20, 20)
    z = (image[0] - image.mean()) / image.std()
    x = np.arange(-r, r + 1)
    w1 = np.exp(-x**2 / (2 * sigma**2))
    w1 /= w1.sum()
    w = w1[:, None, None] * w1[None, :, None] * w1[None, None, :]
    window = z[tuple(slice(c - r, c + r + 1) for c in centre)]
    mean = (w * window).sum()
    std = np.sqrt((w * window**2).sum() - mean**2)
    np.testing.assert_allclose(feats[:, centre[0], centre[1], centre[2]], [mean, std], rtol=1e-10)


def test_every_table_row_is_defined_once():
    names = [r.method for r in ROWS]
    assert len(names) == len(set(names))
    for paper_name, _ in PAPER_ROWS[5:]:  # the ablations have rows of the same name
        assert paper_name in names
    assert {r.baseline for r in ROWS if r.kind == "classical"} == set(BASELINES)
    with pytest.raises(ValueError, match="unknown benchmark rows"):
        find_rows(["no such method"])


def test_run_benchmark_writes_results_and_table(tmp_path):
    profile = Profile("tiny", steps=2, n_train=2, n_test=1, seeds=(0, 1), size=32, config=TINY, threads=1)
    rows = run_benchmark(tmp_path, profile, rows=[FULL_MODEL, "multi-Otsu"], progress=False, isolate=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] == rows and data["profile"]["name"] == "tiny"
    measured = [r for r in rows if r["measured"]]
    assert {(r["dataset"], r["method"]) for r in measured} == {
        (ds, m) for ds in ("simple", "irregular")
        for m in (FULL_MODEL, f"{FULL_MODEL}, nested (divisive)", f"{FULL_MODEL}, nested (agglomerative)",
                  "multi-Otsu")}
    for r in measured:
        assert set(r["dice"]) == set(r["dice_std"]) == {"1", "2", "3"}
        assert all(0.0 <= r["dice"][lvl] <= 1.0 for lvl in "123")
        assert r["seconds"] > 0 and r["peak_mb"] > 0
    # a classical row's Dice is its method applied to the test volume, Hungarian-matched to the truth
    from hyperseg.comparison.baselines import multi_otsu
    from hyperseg.data.io import read_labels, read_volume
    from hyperseg.metrics import mean_dice

    otsu = next(r for r in measured if r["method"] == "multi-Otsu" and r["dataset"] == "simple")
    data = tmp_path / "data" / "simple"
    names = json.loads((data / "levels.json").read_text())["splits"]["test"]
    for lvl, k in ((1, 2), (2, 4), (3, 6)):
        expected = np.mean([mean_dice(multi_otsu(read_volume(data / "test" / f"{n}.nii.gz").array[0], k),
                                      read_labels(data / "test" / "labels" / f"{n}_level{lvl}.nii.gz"))
                            for n in names])
        assert otsu["dice"][str(lvl)] == pytest.approx(float(expected), abs=1e-9)
    model_rows = [r for r in measured if r["method"] == FULL_MODEL]
    assert all(r["n_seeds"] == 2 and r["dice_seed_std"]["1"] is not None for r in model_rows)
    quoted = [r for r in rows if not r["measured"]]
    assert len(quoted) == len(PAPER_ROWS)
    assert any(r["dice"]["1"] == 0.952 for r in quoted)
    table = (tmp_path / "table.md").read_text()
    assert table == format_table(rows)
    assert "### simple" in table and "### irregular" in table and "| multi-Otsu |" in table


def test_resume_keeps_finished_rows_and_runs_only_the_missing_ones(tmp_path):
    profile = Profile("tiny", steps=1, n_train=1, n_test=1, seeds=(0,), size=24, datasets=("simple",), threads=1)
    first = run_benchmark(tmp_path, profile, rows=["multi-Otsu"], progress=False, isolate=False)
    otsu = [r for r in first if r["measured"]]
    assert [r["method"] for r in otsu] == ["multi-Otsu"]
    stored = json.loads((tmp_path / "results.json").read_text())
    stored["rows"][0]["seconds"] = 12345.0  # a mark a rerun would overwrite
    (tmp_path / "results.json").write_text(json.dumps(stored))
    rows = run_benchmark(tmp_path, profile, rows=["multi-Otsu", "k-means on intensity"], progress=False,
                         isolate=False, resume=True)
    measured = [r for r in rows if r["measured"]]
    assert [r["method"] for r in measured] == ["multi-Otsu", "k-means on intensity"]
    assert measured[0] == {**otsu[0], "seconds": 12345.0}  # carried over, not run again
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    # without resume the folder is started afresh
    again = run_benchmark(tmp_path, profile, rows=["k-means on intensity"], progress=False, isolate=False)
    assert [r["method"] for r in again if r["measured"]] == ["k-means on intensity"]
    other = Profile("tiny", steps=2, n_train=1, n_test=1, seeds=(0,), size=24, datasets=("simple",), threads=1)
    with pytest.raises(ResumeError, match="another profile"):
        run_benchmark(tmp_path, other, rows=["multi-Otsu"], progress=False, isolate=False, resume=True)


def test_a_dataset_highpass_and_configuration_reach_every_row(tmp_path):
    from hyperseg.data.io import read_labels, read_volume
    from hyperseg.data.preprocess import highpass

    profile = Profile("tiny", steps=1, n_train=1, n_test=1, seeds=(0,), size=24, datasets=("irregular",),
                      config=TINY, highpass={"irregular": 4.0},
                      dataset_config={"irregular": {"intensity_offset": 0.5}, "simple": {"intensity_offset": 9.0}},
                      threads=1)
    rows = run_benchmark(tmp_path, profile, rows=["k-means on intensity", FULL_MODEL], progress=False,
                         isolate=False)
    measured = {r["method"]: r for r in rows if r["measured"]}
    assert all(r["highpass_sigma"] == 4.0 for r in measured.values())
    # the classical row scored the high-passed image, not the raw one
    case = json.loads((tmp_path / "data" / "irregular" / "levels.json").read_text())["splits"]["test"][0]
    image = read_volume(tmp_path / "data" / "irregular" / "test" / f"{case}.nii.gz").array
    truth = read_labels(tmp_path / "data" / "irregular" / "test" / "labels" / f"{case}_level2.nii.gz")
    want = mean_dice(BASELINES["k-means on intensity"](highpass(image, 4.0), 4, seed=0), truth)
    raw = mean_dice(BASELINES["k-means on intensity"](image, 4, seed=0), truth)
    assert measured["k-means on intensity"]["dice"]["2"] == pytest.approx(want) and want != pytest.approx(raw)
    # the model row trained with it in its configuration
    run = next((tmp_path / "runs").glob("irregular_*seed0"))
    assert "highpass_sigma: 4.0" in (run / "config.yaml").read_text()
    # and with the dataset's own overrides (not another dataset's), recorded in the result row
    assert "intensity_offset: 0.5" in (run / "config.yaml").read_text()
    assert measured[FULL_MODEL]["config"]["intensity_offset"] == 0.5


def test_triplet_settings_reach_only_the_rows_with_a_triplet_loss(tmp_path):
    # the intensity offset shapes what the triplet loss can match; a row without that loss
    # trains without it (BENCHMARKS.md, "What was tried": offsets on rows without a triplet loss), while settings for every row reach both
    profile = Profile("tiny", steps=1, n_train=1, n_test=1, seeds=(0,), size=24, datasets=("irregular",),
                      config=TINY, dataset_config={"irregular": {"intensity_gain": 0.1}},
                      triplet_config={"irregular": {"intensity_offset": 0.7}}, threads=1)
    rows = run_benchmark(tmp_path, profile, rows=["Euclidean base", "Euclidean + triplet"], progress=False,
                         isolate=False)
    config = {r["method"]: r["config"] for r in rows if r["measured"]}
    assert config["Euclidean + triplet"]["intensity_offset"] == 0.7
    assert "intensity_offset" not in config["Euclidean base"]
    assert config["Euclidean base"]["intensity_gain"] == config["Euclidean + triplet"]["intensity_gain"] == 0.1
    trained = {p.name: p.joinpath("config.yaml").read_text() for p in (tmp_path / "runs").iterdir()}
    assert "intensity_offset: 0.7" in trained["irregular_Euclidean_and_triplet_seed0"]
    assert "intensity_offset: 0.0" in trained["irregular_Euclidean_base_seed0"]


def test_classical_row_in_a_fresh_process_through_the_cli(tmp_path, capsys, monkeypatch):
    import hyperseg.comparison.runner as runner

    tiny = Profile("quick", steps=1, n_train=1, n_test=1, seeds=(0,), size=24, datasets=("simple",), threads=1)
    monkeypatch.setitem(runner.PROFILES, "quick", tiny)
    assert main(["bench", "-o", str(tmp_path), "--rows", "k-means on intensity", "-q"]) == 0
    out = capsys.readouterr().out
    assert "| k-means on intensity |" in out and "paper: hyperbolic + gyroplane conv + triplet" in out
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["method"] == "k-means on intensity" and row["peak_mb"] > 50  # a fresh Python with numpy
