"""Same seed and configuration -> same checkpoint and same label maps (CPU, one process)."""
import json
import platform

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

from hyperseg import __version__
from hyperseg.cli import main
from hyperseg.config import Config
from hyperseg.data.synthetic import generate_volume
from hyperseg.segment import segment_array
from hyperseg.checkpoint import load_model, read_checkpoint
from hyperseg.train import train

TINY = {**TINY, "kmeans_max_iter": 20, "checkpoint_every": 100}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs with seed 3 and one with seed 4, on the same 24^3 volume."""
    root = tmp_path_factory.mktemp("repro")
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    for name, seed in (("a", 3), ("b", 3), ("other", 4)):
        train(Config(**TINY, seed=seed), [image[None]], root / name, steps=4, progress=False)
    return root, image


def test_same_seed_gives_a_bitwise_identical_checkpoint(runs):
    root, _ = runs
    a, b, other = (read_checkpoint(root / n) for n in ("a", "b", "other"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][key], sb[i][key]) for i in sa for key in ("exp_avg", "exp_avg_sq"))
    assert all(torch.equal(a["rng"][0][k], b["rng"][0][k]) for k in ("generator", "torch"))
    assert not all(torch.equal(a["model"][k], other["model"][k]) for k in a["model"])  # the seed matters


def test_same_model_gives_identical_label_maps(runs):
    root, image = runs
    small = image[None, :16, :16, :16]
    segs = [segment_array(load_model(root / n), small, [2, 3], seed=0) for n in ("a", "b")]
    for k in (2, 3):
        assert segs[0].labels[k].shape == (16, 16, 16)
        assert np.array_equal(segs[0].labels[k], segs[1].labels[k])
    assert np.array_equal(segs[0].embedding, segs[1].embedding)


def test_the_run_records_configuration_versions_and_command_line(tmp_path, capsys):
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    np.save(tmp_path / "v.npy", image[None])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    assert main(["train", "-i", str(tmp_path / "v.npy"), "-o", str(run), "--config", str(tmp_path / "c.yaml"),
                 "--steps", "2", "--seed", "5", "-q"]) == 0
    info = json.loads((run / "run.json").read_text())
    saved = Config.load(run / info["config_file"])
    assert Config.from_dict(info["config"]) == saved
    assert saved.seed == 5 and saved.steps == 2 and saved.encoder_channels == [4, 4, 4, 4]
    assert info["versions"]["hyperseg"] == __version__ and info["versions"]["torch"] == torch.__version__
    assert info["versions"]["numpy"] == np.__version__ and info["versions"]["python"] == platform.python_version()
    assert "geoopt" in info["versions"]
    assert info["command"].startswith("hyperseg train ") and "--seed 5" in info["command"]
    assert info["input"] == str((tmp_path / "v.npy").resolve())
    assert info["world_size"] == 1 and info["steps_done"] == 2 and info["skipped_steps"] == 0
