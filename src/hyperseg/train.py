"""Training loop, checkpoints, resuming and model loading.

A run folder holds ``config.yaml`` (the resolved configuration),
``model.pt`` (the latest checkpoint: weights, optimiser, step, RNG states,
configuration), ``log.jsonl`` (one JSON object per logged or skipped step)
and ``run.json`` (resolved configuration, package versions, command line,
world size, steps done and skipped, timing, one entry per session).
``config.yaml``, ``model.pt`` and ``run.json`` are written atomically
(temporary file, then rename), and ``log.jsonl`` grows by whole lines (one
``write`` call per flush, see :func:`read_log`), so a run killed at any
moment leaves every file loadable under its final name.

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
the same steps and stop at the same step. Only rank 0 writes files and shows
progress; at a checkpoint it gathers every rank's RNG states so that a
resumed run continues each rank's own stream.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as hdist
from .checkpoint import (CHECKPOINT, CONFIG_FILE, LOG_FILE, RUN_FILE, config_changes, load_model,
                         read_checkpoint, read_log, rng_state, save_checkpoint, set_rng_state, versions)
from .config import Config
from .data.augment import jitter_intensity
from .data.preprocess import normalize_for
from .data.sampler import TripletSampler
from .model import HyperVAE
from .utils import atomic_write, atomic_write_text

#: Default for ``Config.max_bad_steps`` (kept for callers of the old constant).
MAX_BAD_STEPS = 20
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

    Under an initialised process group (see :mod:`hyperseg.distributed`)
    every rank calls this with the same arguments; the module docstring says
    what each rank does. Raises ``FloatingPointError`` after
    ``cfg.max_bad_steps`` non-finite steps in a row.
    """
    run_dir = Path(run_dir)
    device = torch.device(device)
    world = hdist.current()
    main = world.is_main
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")

    state: dict[str, Any] | None = None
    if resume:
        state = hdist.run_on_main(lambda: read_checkpoint(run_dir))  # only rank 0 may see run_dir
        changes = config_changes(state["config"], cfg)
        if changes:
            raise ValueError(f"{run_dir / CHECKPOINT} was trained with another configuration "
                             f"({'; '.join(changes)}); resume without --config/--seed or train a new run")
    steps = (state["config"].steps if state is not None else cfg.steps) if steps is None else steps
    if state is not None and steps < int(state["step"]):
        raise ValueError(f"{run_dir / CHECKPOINT} is already at step {state['step']}; ask for more steps "
                         f"than that (got {steps}) to train further")
    cfg = cfg.replace(steps=steps)

    torch.manual_seed(cfg.seed)
    model = HyperVAE(cfg).to(device)
    gen = torch.Generator().manual_seed(rank_seed(cfg.seed, world.rank))
    if world.rank:
        torch.manual_seed(rank_seed(cfg.seed, world.rank))  # posterior samples differ across ranks too
    volumes = prepare_volumes(arrays, cfg)
    sampler = TripletSampler(volumes, patch_edge=cfg.patch_edge, parent_range=tuple(cfg.parent_range),
                             child_range=tuple(cfg.child_range), scale=cfg.patch_scale, negatives=cfg.negatives)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    step = skipped = 0
    seconds_before = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        skipped = int(state.get("skipped_steps", 0))
        seconds_before = float(state.get("seconds", 0.0))
        rngs = state.get("rng") or []
        if world.rank < len(rngs) and rngs[world.rank] is not None:
            set_rng_state(rngs[world.rank], gen, device)
        elif world.rank == 0 and state.get("generator") is not None:
            gen.set_state(state["generator"])
        else:  # a rank the checkpoint has no state for (more processes than before): a fresh stream
            fresh = int(np.random.SeedSequence([cfg.seed, world.rank, step]).generate_state(1, np.uint64)[0] >> 1)
            gen.manual_seed(fresh)
            torch.manual_seed(fresh)

    objective: nn.Module = _Objective(model)
    if world.distributed:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)

    log_path = run_dir / LOG_FILE
    history: list[dict[str, Any]] = []
    session: dict[str, Any] = {
        "command": shlex.join(command) if command is not None else shlex.join(sys.argv),
        "argv": list(sys.argv), "world_size": world.size, "device": device.type,
        "from_step": step, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(run_dir)
        cfg.save(run_dir / CONFIG_FILE)
        if state is not None:
            _truncate_log(log_path, step)
            history = _previous_sessions(run_dir / RUN_FILE)
        else:
            atomic_write_text(log_path, "")  # a new run starts a new log

    def write_run_json(status: str, seconds: float) -> None:
        info = {
            "status": status,
            "config_file": CONFIG_FILE, "config": cfg.to_dict(),
            "versions": versions(), "command": session["command"], "argv": session["argv"],
            "input": str(Path(input_path).resolve()) if input_path is not None else None,
            "world_size": world.size, "device": device.type, "n_volumes": len(arrays),
            "steps_done": step, "skipped_steps": skipped, "seconds": round(seconds, 1),
            "sessions": history + [dict(session, to_step=step, status=status,
                                        seconds=round(seconds - seconds_before, 1))],
        }
        atomic_write_text(run_dir / RUN_FILE, json.dumps(info, indent=2))

    started = time.time()
    deadline = started + 60 * minutes if minutes else math.inf
    if main:
        write_run_json("running", seconds_before)

    def checkpoint(gather: bool = True) -> None:
        mine = rng_state(gen, device)
        rngs = hdist.all_gather_object(mine) if gather else [mine]
        if main:
            save_checkpoint(run_dir, model, optimizer, step, gen, rng=rngs, extra={
                "skipped_steps": skipped, "world_size": world.size,
                "seconds": seconds_before + time.time() - started})

    log_lines: list[str] = []
    bad = 0
    status = "interrupted"
    keys: list[str] | None = None
    bar = tqdm(total=None if steps >= UNLIMITED_STEPS else steps, initial=min(step, steps), desc="train",
               unit="step", disable=not (progress and main))
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        stop = step >= steps
        while not stop:
            triplet = jitter_intensity(sampler.sample(cfg.batch_size, gen), cfg.intensity_offset,
                                       cfg.intensity_gain, gen)
            parent, pos, neg = (t.to(device) for t in triplet)
            loss, stats = objective(parent, pos, neg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
            stats["grad_norm"] = float(grad_norm)
            keys = keys or list(stats)
            local_bad = not (math.isfinite(loss.item()) and math.isfinite(stats["grad_norm"]))
            shared = torch.tensor([float(local_bad), float(time.time() >= deadline)]
                                  + [stats[k] for k in keys], dtype=torch.float64, device=device)
            shared = hdist.all_reduce(shared).cpu().tolist()
            stop = shared[1] > 0
            if shared[0] > 0:  # non-finite on some rank: skip the update everywhere
                optimizer.zero_grad(set_to_none=True)
                bad += 1
                skipped += 1
                log_lines.append(json.dumps({"step": step + 1, "skipped": True, "bad_in_a_row": bad,
                                             "skipped_steps": skipped, "ranks_non_finite": int(shared[0])}))
                if bad >= cfg.max_bad_steps:
                    status = "stopped: non-finite"
                    raise FloatingPointError(
                        f"{run_dir}: training stopped after {bad} non-finite steps in a row (max_bad_steps) at "
                        f"step {step}; the finite weights of step {step} are saved; lower lr (now {cfg.lr:g}) "
                        "or check the input volumes for NaN/Inf")
                continue
            bad = 0
            optimizer.step()
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == 1:
                mean = {k: v / world.size for k, v in zip(keys, shared[2:])}
                bar.set_postfix({k: f"{mean[k]:.3g}" for k in ("loss", "nll", "kl", "triplet") if k in mean})
                log_lines.append(json.dumps({"step": step, "seconds": round(seconds_before + time.time() - started, 2), **mean}))
            if step % cfg.checkpoint_every == 0:
                checkpoint()
                if main:
                    _flush_log(log_path, log_lines)
            elif main and step % LOG_FLUSH_EVERY == 0:
                _flush_log(log_path, log_lines)
            stop = stop or step >= steps
        status = "finished" if step >= steps else "time limit"
        checkpoint()
    except BaseException:
        # the other ranks may be elsewhere: save this rank's view without a collective
        checkpoint(gather=False)
        raise
    finally:
        bar.close()
        if main:
            _flush_log(log_path, log_lines)
            write_run_json(status, seconds_before + time.time() - started)
    return model.eval()


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


def _previous_sessions(path: Path) -> list[dict[str, Any]]:
    """The ``sessions`` list of an existing ``run.json`` (empty if absent or unreadable)."""
    try:
        sessions = json.loads(path.read_text()).get("sessions", [])
        return [s for s in sessions if isinstance(s, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files that a killed atomic write of this run left behind."""
    for name in (CHECKPOINT, CONFIG_FILE, LOG_FILE, RUN_FILE):
        for tmp in run_dir.glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)
