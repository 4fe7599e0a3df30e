"""Training with DistributedDataParallel over 2 CPU processes (gloo), on a tiny model.

The worker below is what one rank runs: it joins the group from the
RANK/WORLD_SIZE/MASTER_* environment, exactly as under torchrun, and calls
``train``. Ranks get different run folders only so that the test can see
which rank wrote files; in real use they share ``-o``.
"""
import faulthandler
import gc
import json
import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY

from hyperseg import distributed
from hyperseg.cli import main
from hyperseg.config import Config
from hyperseg.data.synthetic import generate_volume
from hyperseg.train import load_model, read_checkpoint, read_log

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")



def fixed_problem() -> np.ndarray:
    """A 24^3 volume offset from zero (not normalised): the loss has a long way down."""
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    return image[None] + 3.0


def _live_ddp_wrappers() -> int:
    return sum(type(o) is torch.nn.parallel.DistributedDataParallel for o in gc.get_objects())


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    gc.disable()  # the worst case: no collection happens to run before the interpreter's teardown
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    faulthandler.enable()  # a crash inside torch's C++ (SIGABRT, SIGSEGV) prints where Python was
    torch.set_num_threads(1)
    from hyperseg.data.sampler import TripletSampler
    from hyperseg.train import train

    first_batch: list[torch.Tensor] = []
    sample = TripletSampler.sample

    def recording_sample(self, *args, **kwargs):
        batch = sample(self, *args, **kwargs)
        if not first_batch:
            first_batch.append(batch[0].clone())
        return batch

    TripletSampler.sample = recording_sample
    steps_taken = [0]
    adam_step = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        steps_taken[0] += 1
        return adam_step(self, *args, **kwargs)

    torch.optim.Adam.step = counting_step
    distributed.init("cpu", timeout=timedelta(seconds=60))
    try:
        cfg = Config(**TINY, lr=1e-2, normalize=False, checkpoint_every=10)
        model = train(cfg, [fixed_problem()], f"{out}/run{rank}", steps=STEPS, progress=False, log_every=1)
        fixed = steps_taken[0]
        # a time limit: every rank must stop at the same step (or the other would hang, then time out)
        train(cfg, [fixed_problem()], f"{out}/timed{rank}", steps=10**6, minutes=0.02, progress=False)
        torch.save({"state": model.state_dict(), "first_batch": first_batch[0], "fixed_steps": fixed,
                    "timed_steps": steps_taken[0] - fixed}, f"{out}/rank{rank}.pt")
        distributed.barrier()  # as `hyperseg train` does: nobody leaves the group while a peer still talks
    finally:
        distributed.cleanup()
    # a DistributedDataParallel wrapper that train() left in a reference cycle is freed by cleanup(), before the
    # group goes: freed at the interpreter's teardown instead, its reducer (holding the group and autograd hooks)
    # can abort the process (SIGABRT) after a run that succeeded
    assert _live_ddp_wrappers() == 0


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results. No retry: a worker that crashes (a signal) or fails fails the tests. The one
    gloo abort at exit seen in CI ("terminate called without an active exception") fits a
    DistributedDataParallel wrapper left for the interpreter's teardown, which distributed.cleanup now
    frees first (the worker checks it)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, distributed.free_port(), str(out)), nprocs=2, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("env, expected", [
    ({}, distributed.World(0, 1, 0, 1)),  # no torchrun: one process
    ({"RANK": "0", "WORLD_SIZE": "1"}, distributed.World(0, 1, 0, 1)),
    # one machine: LOCAL_WORLD_SIZE defaults to WORLD_SIZE and LOCAL_RANK to RANK
    ({"RANK": "3", "WORLD_SIZE": "4"}, distributed.World(3, 4, 3, 4)),
    # two machines of two: LOCAL_RANK defaults to RANK mod LOCAL_WORLD_SIZE
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, distributed.World(3, 4, 1, 2)),
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, distributed.World(2, 4, 0, 2)),
    # what torchrun sets is taken as it is
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, distributed.World(3, 4, 0, 1)),
    ({"RANK": "", "WORLD_SIZE": "", "LOCAL_RANK": ""}, distributed.World(0, 1, 0, 1)),  # empty is unset
])
def test_the_launch_environment_has_one_reader_with_one_machine_defaults(env, expected):
    world = distributed.env_world(env)
    assert world == expected
    assert (world.rank, world.size, world.local_rank, world.local_size) == (
        expected.rank, expected.size, expected.local_rank, expected.local_size)


@pytest.mark.parametrize("env, words", [
    ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK=4 WORLD_SIZE=4"),
    ({"RANK": "-1", "WORLD_SIZE": "4"}, "RANK=-1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2 LOCAL_WORLD_SIZE=2"),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE=3"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be an integer"),
])
def test_an_inconsistent_launch_environment_is_refused_by_name(env, words):
    with pytest.raises(ValueError, match=words):
        distributed.env_world(env)


def test_a_world_without_a_local_size_is_on_one_machine():
    assert distributed.World(1, 3, 1).local_size == 3 and distributed.World().local_size == 1


@pytest.mark.slow
def test_ranks_keep_identical_weights(two_ranks):
    out, (r0, r1) = two_ranks
    assert r0["state"].keys() == r1["state"].keys()
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    saved = load_model(out / "run0").state_dict()
    assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)
    assert all(torch.isfinite(v).all() for v in saved.values())


@pytest.mark.slow
def test_ranks_draw_different_patches(two_ranks):
    _, (r0, r1) = two_ranks
    assert r0["first_batch"].shape == r1["first_batch"].shape
    assert not torch.equal(r0["first_batch"], r1["first_batch"])


@pytest.mark.slow
def test_loss_falls(two_ranks):
    out, _ = two_ranks
    losses = [r["loss"] for r in read_log(out / "run0" / "log.jsonl")]
    assert len(losses) == STEPS  # log_every=1, no skipped step
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


@pytest.mark.slow
def test_only_rank_0_writes_and_the_run_records_the_world_size(two_ranks):
    out, _ = two_ranks
    assert not (out / "run1").exists() and not (out / "timed1").exists()
    info = json.loads((out / "run0" / "run.json").read_text())
    assert info["world_size"] == 2 and info["steps_done"] == STEPS and info["status"] == "finished"
    state = read_checkpoint(out / "run0")
    assert state["world_size"] == 2 and state["step"] == STEPS
    assert len(state["rng"]) == 2  # every rank's random state, to resume each stream


@pytest.mark.slow
def test_time_limit_stops_every_rank_at_the_same_step(two_ranks):
    out, (r0, r1) = two_ranks
    assert r0["fixed_steps"] == r1["fixed_steps"] == STEPS
    assert r0["timed_steps"] == r1["timed_steps"] > 0
    info = json.loads((out / "timed0" / "run.json").read_text())
    assert info["status"] == "time limit" and info["steps_done"] == r0["timed_steps"]


TINY_YAML = "".join(f"{k}: {v}\n" for k, v in TINY.items()) + "checkpoint_every: 2\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_cli")
    (root / "data").mkdir()
    for i in range(2):
        image, _ = generate_volume(np.random.default_rng(i), (24, 24, 24))
        np.save(root / "data" / f"v{i}.npy", image[None])
    (root / "tiny.yaml").write_text(TINY_YAML)
    return root


@pytest.mark.slow
def test_nproc_launches_a_two_process_run(data_dir):
    run = data_dir / "run"
    assert main(["train", "-i", str(data_dir / "data"), "-o", str(run), "--config", str(data_dir / "tiny.yaml"),
                 "--steps", "2", "--nproc", "2", "-q"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["steps_done"] == 2
    assert "--nproc 2" in info["command"]
    assert load_model(run).cfg.encoder_channels == [4, 4, 4, 4]


@pytest.mark.slow
def test_launch_returns_the_workers_status_and_prints_their_error_once(capfd):
    # an invalid subcommand: every worker exits with status 2 before importing torch
    assert distributed.launch(["no-such-subcommand"], 2) == 2
    err = capfd.readouterr().err
    assert err.count("invalid choice") == 1
    assert distributed.launch(["--version"], 2) == 0
