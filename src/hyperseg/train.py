"""The training loop (single process or DDP) and resuming.

:func:`train` reads as the algorithm::

    run = _setup(...)                     # model, sampler, optimiser; the checkpoint restored on resume
    while run.step < run.cfg.steps:
        outcome = _train_step(run)        # one optimiser step, or one skipped (non-finite) try
        if the step counts: log it, _checkpoint(run) every cfg.checkpoint_every steps
        if outcome.time_up: stop          # the time limit, agreed by every rank
    _checkpoint(run)

The run folder's files and the order in which they are written (so that a
run killed at any moment stays loadable) are described in
:mod:`hyperseg.checkpoint`; ``log.jsonl`` grows by whole lines (one ``write``
call per flush, see :func:`~hyperseg.checkpoint.read_log`).

Several processes
-----------------
When a process group is initialised (:mod:`hyperseg.distributed`), the model
is wrapped in ``DistributedDataParallel``: every rank draws its own triplets
(its sampler generator is seeded with :func:`rank_seed`), gradients are
averaged over the ranks (the effective batch is ``batch_size * world_size``)
and all ranks take the same optimiser steps, so their weights stay
identical. Once per step the ranks exchange one small tensor: whether the
step was non-finite anywhere, whether the time limit is up anywhere, and
the losses, which are logged averaged over the ranks. Hence all ranks skip
the same steps and stop at the same step. Only rank 0 reads and writes the
run folder and shows progress; at a checkpoint it gathers every rank's RNG
states so that a resumed run continues each rank's own stream.

Numerical safety
----------------
A step whose loss or gradient is not finite on any rank is skipped (no
optimiser update, so no NaN ever reaches the weights), counted in
``skipped_steps`` and logged; after ``cfg.max_bad_steps`` such steps in a row
training stops with :class:`FloatingPointError` (the checkpoint of the last
good step is kept). The model has no parameter on the ball: gyroplane
offsets are stored as tangent vectors and mapped with ``exp_0`` (which
projects), so no projection step after the optimiser is needed.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as hdist
from .checkpoint import (CHECKPOINT, CONFIG_FILE, LEGACY_CHECKPOINT, LOG_FILE, RESUME_FILE, RUN_FILE, RUN_FILES,
                         WEIGHTS_FILE, config_changes, load_model, read_checkpoint, read_log, read_run_info,
                         rng_state, save_checkpoint, set_rng_state, versions)
from .config import Config
from .data.augment import jitter_intensity, random_symmetry
from .data.preprocess import normalize_for
from .data.sampler import TripletSampler
from .model import HyperVAE
from .nn.precision import TRAIN_MEMORY_FORMAT, resolve_dtype
from .utils import atomic_write_text

__all__ = ["train", "rank_seed", "prepare_volumes", "UNLIMITED_STEPS", "CHECKPOINT", "load_model",
           "read_checkpoint", "read_log", "config_changes", "save_checkpoint", "versions"]

#: Step budget meaning "no step limit" (``--minutes`` alone decides).
UNLIMITED_STEPS = 10**9
#: Steps between writes of the loss log.
LOG_FLUSH_EVERY = 50


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s patch sampler: ``seed`` itself for rank 0, a mixed 63-bit seed otherwise."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def prepare_volumes(arrays: Sequence[np.ndarray], cfg: Config) -> list[torch.Tensor]:
    """Normalise ``(C, D, H, W)`` arrays as configured and turn them into tensors."""
    out = []
    for a in arrays:
        if a.shape[0] != cfg.in_channels:
            raise ValueError(f"volume has {a.shape[0]} channels but the configuration says "
                             f"in_channels={cfg.in_channels}")
        out.append(torch.from_numpy(normalize_for(cfg, a)))
    return out


class _Objective(nn.Module):
    """``forward = model.loss``, so that DistributedDataParallel sees the training pass."""

    def __init__(self, model: HyperVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, parent: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(parent, positive, negative)


# ----------------------------------------------------------------------------- state of a run
@dataclass
class _Resumed:
    """What resuming reads, once, on rank 0: the checkpoint and the earlier invocations of ``run.json``."""

    state: dict[str, Any]
    invocations: list[dict[str, Any]]


@dataclass
class _Run:
    """Everything the loop uses; ``step``, ``skipped``, ``bad``, ``keys``, ``status`` change as it goes."""

    cfg: Config
    run_dir: Path
    device: torch.device
    world: hdist.World
    model: HyperVAE
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: TripletSampler
    gen: torch.Generator
    params: list[torch.nn.Parameter]
    invocation: dict[str, Any]
    earlier: list[dict[str, Any]]
    input_path: str | None
    n_volumes: int
    step: int = 0
    skipped: int = 0
    bad: int = 0  # non-finite tries in a row
    seconds_before: float = 0.0  # wall time of earlier invocations
    started: float = 0.0
    deadline: float = math.inf
    keys: list[str] | None = None  # the loss statistics, in the order the ranks exchange them
    status: str = "interrupted"
    log_lines: list[str] = field(default_factory=list)

    def seconds(self) -> float:
        """Wall time of the run so far, earlier invocations included."""
        return self.seconds_before + time.time() - self.started


@dataclass
class _Outcome:
    """One try of :func:`_train_step`: taken (``finite``) or skipped, and the ranks' shared values."""

    finite: bool
    time_up: bool
    ranks_non_finite: int
    mean: dict[str, float]


# ----------------------------------------------------------------------------- the loop
def train(
    cfg: Config,
    arrays: Sequence[np.ndarray],
    run_dir: str | Path,
    steps: int | None = None,
    minutes: float | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    *,
    resume: bool = False,
    log_every: int = 10,
    command: Sequence[str] | None = None,
    input_path: str | Path | None = None,
    on_step: Callable[[int, int], bool | None] | None = None,
) -> HyperVAE:
    """Train a model on volumes ``(C, D, H, W)`` and save it into ``run_dir``.

    Stops after ``steps`` optimiser steps in total (``cfg.steps`` by default)
    or ``minutes`` of wall time in this call, whichever comes first, and
    always leaves a checkpoint of the last step. Skipped (non-finite) steps
    do not count as steps.

    Args:
        resume: continue the run in ``run_dir`` from its checkpoint (weights,
            optimiser, step, every rank's RNG states); ``cfg`` must equal the
            run's configuration except ``steps`` (``ValueError`` otherwise).
            New log lines are appended to ``log.jsonl`` (lines past the
            checkpoint's step, written before a crash, are dropped first).
        log_every: steps between log lines (step 1 is always logged).
        command: the command line to record in ``run.json`` (default ``sys.argv``).
        input_path: where the volumes came from, recorded in ``run.json``.
        on_step: called after every step taken as ``on_step(step, total_steps)``
            (a progress bar, a Cancel button: the napari widget); when it
            returns ``True`` training stops there like at the time limit
            (checkpoint written, status ``"stopped"``). Single process only.

    Under an initialised process group (see :mod:`hyperseg.distributed`)
    every rank calls this with the same arguments; the module docstring says
    what each rank does. Raises ``FloatingPointError`` after
    ``cfg.max_bad_steps`` non-finite steps in a row.
    """
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    run_dir, device = Path(run_dir), torch.device(device)
    resumed = hdist.run_on_main(lambda: _read_resume(run_dir, cfg)) if resume else None
    cfg = cfg.replace(steps=_target_steps(run_dir, cfg, steps, resumed))
    run = _setup(cfg, arrays, run_dir, device, resumed, command, input_path, minutes)
    main = run.world.is_main
    if on_step is not None and run.world.size > 1:
        raise ValueError("on_step stops one process only; leave it out under torchrun")
    stopped = False
    bar = tqdm(total=None if cfg.steps >= UNLIMITED_STEPS else cfg.steps, initial=min(run.step, cfg.steps),
               desc="train", unit="step", disable=not (progress and main))
    try:
        while run.step < cfg.steps:
            outcome = _train_step(run)
            if not outcome.finite:
                _record_skip(run, outcome)
            else:
                _record_step(run, outcome, bar, log_every)
                if run.step % cfg.checkpoint_every == 0:
                    _checkpoint(run)
                    if main:
                        _flush_log(run_dir / LOG_FILE, run.log_lines)
                elif main and run.step % LOG_FLUSH_EVERY == 0:
                    _flush_log(run_dir / LOG_FILE, run.log_lines)
                if on_step is not None and on_step(run.step, cfg.steps):
                    stopped = True
                    break
            if outcome.time_up:
                break
        run.status = "finished" if run.step >= cfg.steps else "stopped" if stopped else "time limit"
        _checkpoint(run)
    except BaseException:
        # the other ranks may be elsewhere: save this rank's view without a collective
        _checkpoint(run, gather=False)
        raise
    finally:
        bar.close()
        if main:
            _flush_log(run_dir / LOG_FILE, run.log_lines)
            _write_run_json(run, run.status, run.seconds())
    # back to the default layout, so that the returned model is the one load_model gives (the dense pass makes
    # its own channels-last copy: precision.inference_copy)
    return run.model.to(memory_format=torch.contiguous_format).eval()


def _read_resume(run_dir: Path, cfg: Config) -> _Resumed:
    """The checkpoint and earlier invocations of the run in ``run_dir``; ``cfg`` must match (except ``steps``)."""
    state = read_checkpoint(run_dir)
    changes = config_changes(state["config"], cfg)
    if changes:
        raise ValueError(f"{run_dir / RESUME_FILE} was trained with another configuration "
                         f"({'; '.join(changes)}); resume without --config/--seed or train a new run")
    return _Resumed(state, read_run_info(run_dir).get("invocations", []))


def _target_steps(run_dir: Path, cfg: Config, steps: int | None, resumed: _Resumed | None) -> int:
    """The step budget: ``steps``, else the run's (on resume) or ``cfg``'s; never below a resumed step."""
    if resumed is None:
        return cfg.steps if steps is None else steps
    done = int(resumed.state["step"])
    target = resumed.state["config"].steps if steps is None else steps
    if target < done:
        raise ValueError(f"{run_dir / RESUME_FILE} is already at step {done}; ask for more steps "
                         f"than that (got {target}) to train further")
    return target


def _setup(cfg: Config, arrays: Sequence[np.ndarray], run_dir: Path, device: torch.device,
           resumed: _Resumed | None, command: Sequence[str] | None, input_path: str | Path | None,
           minutes: float | None) -> _Run:
    """Model, sampler and optimiser (restored from ``resumed``), the run folder prepared, the clock started.

    The order of the seeding calls is part of the numerics: model weights from
    ``torch.manual_seed(cfg.seed)``, then the sampler generator from
    :func:`rank_seed`, then (ranks > 0) the global torch stream re-seeded.
    """
    world = hdist.current()
    torch.manual_seed(cfg.seed)
    model = HyperVAE(cfg).to(device, memory_format=TRAIN_MEMORY_FORMAT)
    gen = torch.Generator().manual_seed(rank_seed(cfg.seed, world.rank))
    if world.rank:
        torch.manual_seed(rank_seed(cfg.seed, world.rank))  # posterior samples differ across ranks too
    volumes = prepare_volumes(arrays, cfg)
    sampler = TripletSampler(volumes, patch_edge=cfg.patch_edge, parent_range=tuple(cfg.parent_range),
                             child_range=tuple(cfg.child_range), scale=cfg.patch_scale, negatives=cfg.negatives)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _Run(cfg=cfg, run_dir=run_dir, device=device, world=world, model=model, objective=_Objective(model),
               optimizer=optimizer, sampler=sampler, gen=gen,
               params=[p for p in model.parameters() if p.requires_grad],
               invocation={}, earlier=resumed.invocations if resumed is not None else [],
               input_path=str(Path(input_path).resolve()) if input_path is not None else None,
               n_volumes=len(arrays))
    if resumed is not None:
        _restore(run, resumed.state)
    if world.distributed:
        run.objective = nn.parallel.DistributedDataParallel(
            run.objective, device_ids=[device.index] if device.type == "cuda" else None)
    run.invocation = {
        "command": shlex.join(command) if command is not None else shlex.join(sys.argv),
        "argv": list(sys.argv), "world_size": world.size, "device": device.type,
        "from_step": run.step, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if world.is_main:
        _prepare_folder(run_dir, cfg, run.step if resumed is not None else None)
    run.started = time.time()
    run.deadline = run.started + 60 * minutes if minutes else math.inf
    if world.is_main:
        _write_run_json(run, "running", run.seconds_before)
    return run


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Weights, optimiser, counters and this rank's random states from a checkpoint."""
    run.model.load_state_dict(state["model"])
    if state.get("optimizer") is not None:
        run.optimizer.load_state_dict(state["optimizer"])
    run.step = int(state["step"])
    run.skipped = int(state.get("skipped_steps", 0))
    run.seconds_before = float(state.get("seconds", 0.0))
    rngs = state.get("rng") or []
    rank = run.world.rank
    if rank < len(rngs) and rngs[rank] is not None:
        set_rng_state(rngs[rank], run.gen, run.device)
    else:  # a rank the checkpoint has no state for (more processes than before): a fresh stream
        fresh = int(np.random.SeedSequence([run.cfg.seed, rank, run.step]).generate_state(1, np.uint64)[0] >> 1)
        run.gen.manual_seed(fresh)
        torch.manual_seed(fresh)


def _prepare_folder(run_dir: Path, cfg: Config, resumed_step: int | None) -> None:
    """Rank 0: the folder, its configuration, and the log (cut back to ``resumed_step``, or a new one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(run_dir)
    if resumed_step is None:  # a new run: no weights of another run may sit beside its configuration
        for name in (WEIGHTS_FILE, RESUME_FILE):
            (run_dir / name).unlink(missing_ok=True)
    cfg.save(run_dir / CONFIG_FILE)
    if resumed_step is not None:
        _truncate_log(run_dir / LOG_FILE, resumed_step)
    else:
        atomic_write_text(run_dir / LOG_FILE, "")  # a new run starts a new log


def _train_step(run: _Run) -> _Outcome:
    """One try: sample triplets, loss, gradient; the ranks agree; the optimiser steps if all were finite.

    Shared over the ranks (summed): ``[non-finite?, time up?, *loss statistics]``.
    """
    cfg = run.cfg
    triplet = jitter_intensity(run.sampler.sample(cfg.batch_size, run.gen), cfg.intensity_offset,
                               cfg.intensity_gain, run.gen)
    if cfg.patch_symmetry:
        triplet = random_symmetry(triplet, run.gen)
    parent, pos, neg = (t.to(run.device, memory_format=TRAIN_MEMORY_FORMAT) for t in triplet)
    compute = resolve_dtype(cfg.train_dtype, run.device)
    with torch.autocast(run.device.type, dtype=compute, enabled=compute != torch.float32):
        loss, stats = run.objective(parent, pos, neg)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip or math.inf)
    stats["grad_norm"] = float(grad_norm)
    run.keys = run.keys or list(stats)
    local_bad = not (math.isfinite(loss.item()) and math.isfinite(stats["grad_norm"]))
    shared = torch.tensor([float(local_bad), float(time.time() >= run.deadline)]
                          + [stats[k] for k in run.keys], dtype=torch.float64, device=run.device)
    shared = hdist.all_reduce(shared).cpu().tolist()
    outcome = _Outcome(finite=not shared[0] > 0, time_up=shared[1] > 0, ranks_non_finite=int(shared[0]),
                       mean={k: v / run.world.size for k, v in zip(run.keys, shared[2:])})
    if outcome.finite:
        run.bad = 0
        run.optimizer.step()
        run.step += 1
    else:  # non-finite on some rank: skip the update everywhere
        run.optimizer.zero_grad(set_to_none=True)
    return outcome


def _record_step(run: _Run, outcome: _Outcome, bar: tqdm, log_every: int) -> None:
    """Progress bar and, every ``log_every`` steps (and at step 1), a log line of the rank-averaged losses."""
    bar.update(1)
    if run.step % log_every == 0 or run.step == 1:
        mean = outcome.mean
        bar.set_postfix({k: f"{mean[k]:.3g}" for k in ("loss", "nll", "kl", "triplet") if k in mean})
        run.log_lines.append(json.dumps({"step": run.step, "seconds": round(run.seconds(), 2), **mean}))


def _record_skip(run: _Run, outcome: _Outcome) -> None:
    """Count and log a skipped try; the stop rule for ``cfg.max_bad_steps`` of them in a row."""
    run.bad += 1
    run.skipped += 1
    run.log_lines.append(json.dumps({"step": run.step + 1, "skipped": True, "bad_in_a_row": run.bad,
                                     "skipped_steps": run.skipped, "ranks_non_finite": outcome.ranks_non_finite}))
    if run.bad >= run.cfg.max_bad_steps:
        run.status = "stopped: non-finite"
        raise FloatingPointError(
            f"{run.run_dir}: training stopped after {run.bad} non-finite steps in a row (max_bad_steps) at "
            f"step {run.step}; the finite weights of step {run.step} are saved; lower lr (now {run.cfg.lr:g}) "
            "or check the input volumes for NaN/Inf")


def _checkpoint(run: _Run, gather: bool = True) -> None:
    """Every rank's random states to rank 0 (``gather``), which writes the checkpoint."""
    mine = rng_state(run.gen, run.device)
    rngs = hdist.all_gather_object(mine) if gather else [mine]
    if run.world.is_main:
        save_checkpoint(run.run_dir, run.model, run.optimizer, run.step, rng=rngs, skipped_steps=run.skipped,
                        world_size=run.world.size, seconds=run.seconds())


def _write_run_json(run: _Run, status: str, seconds: float) -> None:
    """``run.json``: the run's configuration, versions, input, counters and one record per invocation."""
    info = {
        "status": status,
        "config_file": CONFIG_FILE, "config": run.cfg.to_dict(),
        "versions": versions(), "command": run.invocation["command"], "argv": run.invocation["argv"],
        "input": run.input_path, "world_size": run.world.size, "device": run.device.type,
        "n_volumes": run.n_volumes, "steps_done": run.step, "skipped_steps": run.skipped,
        "seconds": round(seconds, 1),
        "invocations": run.earlier + [dict(run.invocation, to_step=run.step, status=status,
                                           seconds=round(seconds - run.seconds_before, 1))],
    }
    atomic_write_text(run.run_dir / RUN_FILE, json.dumps(info, indent=2))


def _flush_log(path: Path, lines: list[str]) -> None:
    """Append whole lines with one ``write`` call, so a kill leaves no partial line in practice."""
    if lines:
        data = ("\n".join(lines) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        lines.clear()


def _truncate_log(path: Path, step: int) -> None:
    """Keep the complete records of steps ``<= step`` (those of the checkpoint being resumed)."""
    if path.is_file():
        kept = [r for r in read_log(path, strict=False) if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files that a killed atomic write of this run left behind."""
    for name in (*RUN_FILES, LEGACY_CHECKPOINT):
        for tmp in run_dir.glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)
