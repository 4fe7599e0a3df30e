"""Resuming a run: after SIGKILL, from a clean stop, and refusing a changed configuration."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

from hyperseg.cli import main
from hyperseg.config import Config
from hyperseg.data.synthetic import generate_volume
from hyperseg.checkpoint import load_model, read_checkpoint, read_log
from hyperseg.segment import segment_array
from hyperseg.train import train

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "data").mkdir()
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    np.save(root / "data" / "v0.npy", image[None])
    (root / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY, checkpoint_every=2)))
    return root


def _wait_for_checkpoint(run, proc, min_step: int, timeout_s: float = 180.0) -> int:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"training exited early with status {proc.returncode}"
        if (run / "resume.safetensors").exists():
            step = read_checkpoint(run)["step"]
            if step >= min_step:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step >= {min_step} within {timeout_s} s")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_loadable_files_and_resumes_to_the_end(bench):
    run = bench / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "hyperseg", "train", "-i", str(bench / "data"), "-o", str(run),
                             "--config", str(bench / "tiny.yaml"), "--steps", "100000", "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = _wait_for_checkpoint(run, proc, min_step=6)
        _wait_for_checkpoint(run, proc, min_step=first + 4)  # a few more steps (and checkpoint writes)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # every file under its final name is whole
    final = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    assert final == ["config.yaml", "log.jsonl", "model.safetensors", "resume.safetensors", "run.json"]
    killed_at = read_checkpoint(run)["step"]
    assert all(torch.isfinite(v).all() for v in load_model(run).state_dict().values())
    assert Config.load(run / "config.yaml").encoder_channels == [4, 4, 4, 4]
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    lines = (run / "log.jsonl").read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)

    target = killed_at + 5
    assert main(["train", "--resume", str(run), "--steps", str(target), "-q"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["steps_done"] == target
    assert [s["from_step"] for s in info["invocations"]] == [0, killed_at]
    assert read_checkpoint(run)["step"] == target
    steps = [r["step"] for r in read_log(run / "log.jsonl")]
    assert steps == sorted(set(steps)) and steps[0] == 1  # appended, no step logged twice
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # stale temporaries removed


def _cfg(**kw) -> Config:
    return Config(**TINY, checkpoint_every=100, **kw)


def test_resuming_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path):
    image, _ = generate_volume(np.random.default_rng(1), (24, 24, 24))
    straight = train(_cfg(), [image[None]], tmp_path / "straight", steps=6, progress=False)
    train(_cfg(), [image[None]], tmp_path / "split", steps=3, progress=False)
    resumed = train(_cfg(), [image[None]], tmp_path / "split", steps=6, progress=False, resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in ("exp_avg", "exp_avg_sq", "step"))
    assert torch.equal(sa["rng"][0]["generator"], sb["rng"][0]["generator"])  # the sampler stream continues
    assert json.loads((tmp_path / "split" / "run.json").read_text())["steps_done"] == 6
    # the saved models (what `hyperseg segment` loads) give the same label maps, bit for bit
    crop = image[None, :16, :16, :16]
    la, lb = (segment_array(load_model(tmp_path / n), crop, [2, 3], seed=0).labels for n in ("straight", "split"))
    assert all(np.array_equal(la[k], lb[k]) for k in (2, 3))


def test_a_kill_between_the_weights_and_the_resume_state_resumes_to_the_same_run(tmp_path):
    """The order of writes: model.safetensors first, resume.safetensors (the commit point) last."""
    image, _ = generate_volume(np.random.default_rng(1), (24, 24, 24))
    cfg = Config(**TINY, checkpoint_every=2)
    straight = train(cfg, [image[None]], tmp_path / "straight", steps=4, progress=False)
    run = tmp_path / "killed"
    train(cfg, [image[None]], run, steps=2, progress=False)
    step2 = (run / "resume.safetensors").read_bytes()
    train(cfg, [image[None]], run, steps=4, progress=False, resume=True)
    (run / "resume.safetensors").write_bytes(step2)  # as if killed after the step-4 weights were renamed
    assert read_checkpoint(run)["step"] == 2
    assert all(torch.equal(v, straight.state_dict()[k]) for k, v in load_model(run).state_dict().items())
    resumed = train(cfg, [image[None]], run, steps=4, progress=False, resume=True)
    assert all(torch.equal(v, straight.state_dict()[k]) for k, v in resumed.state_dict().items())
    assert read_checkpoint(run)["step"] == 4


def test_a_torn_log_line_is_dropped_on_resume(tmp_path):
    image, _ = generate_volume(np.random.default_rng(1), (24, 24, 24))
    run = tmp_path / "run"
    train(_cfg(), [image[None]], run, steps=2, progress=False, log_every=1)
    with open(run / "log.jsonl", "a") as fh:
        fh.write('{"step": 3, "nll": 12')  # what a kill in the middle of a write would leave
    assert [r["step"] for r in read_log(run / "log.jsonl")] == [1, 2]
    train(_cfg(), [image[None]], run, steps=4, progress=False, log_every=1, resume=True)
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_refuses_another_configuration_and_leaves_the_run_untouched(bench, capsys):
    run = bench / "done"
    assert main(["train", "-i", str(bench / "data"), "-o", str(run), "--config", str(bench / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    before = {name: (run / name).read_bytes() for name in ("model.safetensors", "resume.safetensors", "config.yaml")}
    other = bench / "other.yaml"
    other.write_text(yaml.safe_dump(dict(TINY, checkpoint_every=2, lr=0.5)))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--config", str(other), "--steps", "4", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperseg: error:") and "lr" in err and str(run) in err and "\n" not in err
    assert main(["train", "--resume", str(run), "--seed", "7", "-q"]) == 2
    assert "seed" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in before} == before
    # the run's own configuration file is accepted
    assert main(["train", "--resume", str(run), "--config", str(bench / "tiny.yaml"), "--steps", "3", "-q"]) == 0
    assert read_checkpoint(run)["step"] == 3


def test_training_into_an_existing_run_points_to_resume(bench, capsys):
    run = bench / "existing"
    args = ["train", "-i", str(bench / "data"), "-o", str(run), "--config", str(bench / "tiny.yaml"), "--steps", "1",
            "-q"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
