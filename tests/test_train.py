"""The training loop's pieces: seeds per rank, the log, checkpoints, configuration checks, process plumbing."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY

from hyperseg import distributed
from hyperseg.config import Config
from hyperseg.data.synthetic import generate_volume
from hyperseg.checkpoint import (
    CheckpointError,
    config_changes,
    load_model,
    read_checkpoint,
    read_log,
    save_checkpoint,
)
from hyperseg.train import _flush_log, rank_seed, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rank_0_keeps_the_seed_and_other_ranks_get_distinct_ones():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(7, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(7, 1) == rank_seed(7, 1) != rank_seed(8, 1)


def test_the_log_is_appended_in_whole_lines_and_a_torn_tail_is_ignored(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": 1}), json.dumps({"step": 2})]
    _flush_log(path, lines)
    assert lines == []  # flushed lines are consumed
    _flush_log(path, [json.dumps({"step": 3})])
    assert path.read_text().endswith("\n")
    assert [r["step"] for r in read_log(path)] == [1, 2, 3]
    with open(path, "a") as fh:
        fh.write('{"step": 4, "lo')
    assert [r["step"] for r in read_log(path)] == [1, 2, 3]
    assert read_log(tmp_path / "absent.jsonl") == []


def test_a_checkpoint_holds_what_resuming_needs(tmp_path):
    from hyperseg.model import HyperVAE

    cfg = Config(**TINY)
    model = HyperVAE(cfg)
    opt = torch.optim.Adam(model.parameters())
    model.loss(*(torch.randn(2, 1, 10, 10, 10) for _ in range(3)))[0].backward()
    opt.step()  # an optimiser state with tensors (exp_avg, exp_avg_sq) and a step
    gen = torch.Generator().manual_seed(1)
    np.random.seed(5)
    np.random.standard_normal()  # a cached Gaussian: numpy's state has has_gauss=1 and a float
    rngs = [{"generator": gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "cuda": None}, None, {"generator": torch.Generator().manual_seed(2).get_state()}]
    save_checkpoint(tmp_path, model, opt, 12, rng=rngs, skipped_steps=3, world_size=3, seconds=1.5)
    state = read_checkpoint(tmp_path)
    assert state["config"] == cfg and state["step"] == 12 and state["skipped_steps"] == 3
    assert state["world_size"] == 3 and state["seconds"] == 1.5
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    saved, want = state["optimizer"], opt.state_dict()
    assert saved["param_groups"] == want["param_groups"] and set(saved["state"]) == set(want["state"])
    for i, entries in want["state"].items():
        assert set(saved["state"][i]) == set(entries)
        assert all(torch.equal(saved["state"][i][k], v) and saved["state"][i][k].dtype == v.dtype
                   for k, v in entries.items())
    mine, _, other = state["rng"]
    assert torch.equal(mine["generator"], gen.get_state()) and torch.equal(mine["torch"], rngs[0]["torch"])
    name, keys, pos, has_gauss, cached = mine["numpy"]
    assert (name, pos, has_gauss, cached) == rngs[0]["numpy"][:1] + rngs[0]["numpy"][2:] and has_gauss == 1
    assert keys.dtype == np.uint32 and np.array_equal(keys, rngs[0]["numpy"][1])
    assert state["rng"][1] is None and other["torch"] is None and other["numpy"] is None
    assert set(state["versions"]) == {"hyperseg", "torch", "geoopt", "numpy", "python"}
    loaded = load_model(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # restoring the state continues the same streams
    np.random.set_state(mine["numpy"])
    again = np.random.standard_normal(3)
    np.random.set_state(rngs[0]["numpy"])
    assert np.array_equal(again, np.random.standard_normal(3))


def test_a_checkpoint_is_data_only_files(tmp_path):
    from safetensors.torch import load_file

    from hyperseg.model import HyperVAE

    model = HyperVAE(Config(**TINY))
    save_checkpoint(tmp_path, model, torch.optim.Adam(model.parameters()), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.safetensors", "resume.safetensors"]
    weights = load_file(tmp_path / "model.safetensors")  # weights only: what inference needs
    assert set(weights) == set(model.state_dict())


def test_an_unreadable_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    from hyperseg.model import HyperVAE

    HyperVAE(Config(**TINY)).cfg.save(tmp_path / "config.yaml")
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="model.safetensors: not a usable hyperseg checkpoint"):
        load_model(tmp_path)
    (tmp_path / "resume.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match="resume.safetensors: not a usable hyperseg resume state"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="hyperseg train"):
        read_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="hyperseg train"):
        load_model(tmp_path / "nowhere")


def test_config_changes_name_the_fields_and_ignore_the_step_budget():
    a = Config(**TINY)
    assert config_changes(a, a.replace(steps=5)) == []
    assert config_changes(a, a.replace(lr=0.5, seed=2)) == ["lr: 0.001 -> 0.5", "seed: 0 -> 2"]


def test_resuming_with_another_configuration_is_refused(tmp_path):
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    train(Config(**TINY), [image[None]], tmp_path, steps=1, progress=False)
    with pytest.raises(ValueError, match="another configuration.*batch_size"):
        train(Config(**dict(TINY, batch_size=2)), [image[None]], tmp_path, steps=2, progress=False, resume=True)
    assert read_checkpoint(tmp_path)["step"] == 1


def test_a_single_process_needs_no_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    world, device = distributed.init("cpu")
    assert world == distributed.World(0, 1, 0) and world.is_main and not world.distributed
    assert device == torch.device("cpu") and not torch.distributed.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
    assert distributed.run_on_main(lambda: 5) == 5
    assert distributed.is_main() and not distributed.is_launched()
    distributed.cleanup()  # harmless without a group


def test_the_launch_environment_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_world() == distributed.World(3, 4, 1) and distributed.is_launched()
    assert not distributed.current().distributed  # no group joined yet: this process is on its own
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 WORLD_SIZE=4"):
        distributed.env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK"):
        distributed.env_world()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.init("cpu")


def test_nproc_inside_torchrun_is_refused(monkeypatch, tmp_path, capsys):
    from hyperseg.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "-i", str(tmp_path), "-o", str(tmp_path / "run"), "--nproc", "2", "-q"]) == 2
    assert "torchrun" in capsys.readouterr().err


def test_intensity_jitter_changes_what_is_trained_and_stays_reproducible(tmp_path):
    image = generate_volume(np.random.default_rng(0), shape=(16, 16, 16))[0][None]

    def weights(name: str, **extra) -> dict[str, torch.Tensor]:
        model = train(Config(**TINY, **extra), [image], tmp_path / name, steps=3, progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain = weights("plain")
    jitter = weights("jitter", intensity_offset=1.0, intensity_gain=0.3)
    again = weights("again", intensity_offset=1.0, intensity_gain=0.3)
    assert all(torch.equal(jitter[k], again[k]) for k in jitter)
    assert any(not torch.equal(jitter[k], plain[k]) for k in plain if plain[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in jitter.values() if v.is_floating_point())


def test_patch_symmetry_turns_the_triplets_the_loss_sees(tmp_path, monkeypatch):
    # the sampled triplets go through random_symmetry, and only when asked for
    import hyperseg.train as train_module

    image = generate_volume(np.random.default_rng(0), shape=(16, 16, 16))[0][None]
    calls = []
    real = train_module.random_symmetry

    def spy(patches, generator):
        out = real(patches, generator)
        calls.append([(p.shape, o.shape, torch.equal(p, o)) for p, o in zip(patches, out)])
        return out

    monkeypatch.setattr(train_module, "random_symmetry", spy)
    train(Config(**TINY), [image], tmp_path / "plain", steps=2, progress=False)
    assert calls == []
    model = train(Config(**TINY, patch_symmetry=True), [image], tmp_path / "turned", steps=2, progress=False)
    assert len(calls) == 2 and all(len(step) == 3 for step in calls)  # parents, positives, negatives, every step
    assert all(shape_in == shape_out for step in calls for shape_in, shape_out, _ in step)
    assert not all(unchanged for step in calls for _, _, unchanged in step)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("setting", [{"negatives": "all_axes"}, {"triplet_distance": "squared"}])
def test_released_code_triplet_settings_reach_training(tmp_path, setting):
    # each of the released code's triplet choices (paper.md 1.4) changes what is trained
    image = generate_volume(np.random.default_rng(0), shape=(24, 24, 24))[0][None]

    def weights(name: str, **extra) -> dict[str, torch.Tensor]:
        model = train(Config(**TINY, **extra), [image], tmp_path / name, steps=3, progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain, changed = weights("plain"), weights("changed", **setting)
    assert any(not torch.equal(changed[k], plain[k]) for k in plain if plain[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in changed.values() if v.is_floating_point())


def test_on_step_reports_every_step_and_stops_the_run_when_it_returns_true(tmp_path):
    vol = generate_volume(np.random.default_rng(0), (20, 20, 20))[0][None].astype(np.float32)
    seen = []

    def on_step(step, total):
        seen.append((step, total))
        return step == 3  # "Cancel" pressed after the third step

    model = train(Config(**TINY, steps=10), [vol], tmp_path / "run", progress=False, on_step=on_step)
    assert seen == [(1, 10), (2, 10), (3, 10)]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "stopped" and info["steps_done"] == 3
    assert read_checkpoint(tmp_path / "run")["step"] == 3  # the last step is saved
    assert model is not None
