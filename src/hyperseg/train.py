"""Training loop, checkpoints and model loading.

A run folder holds ``config.yaml`` (the resolved configuration),
``model.pt`` (the latest checkpoint: weights, optimiser, step, RNG state,
configuration), ``log.jsonl`` (one line of losses per logged step) and
``run.json`` (versions, command line, timing). Every file is written
atomically, so a run killed at any moment leaves a loadable checkpoint.
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import Config
from .data.preprocess import zscore
from .data.sampler import TripletSampler
from .model import HyperVAE
from .utils import atomic_write, atomic_write_text

CHECKPOINT = "model.pt"
#: Non-finite losses in a row after which training stops.
MAX_BAD_STEPS = 20
#: Step budget meaning "no step limit" (``--minutes`` alone decides).
UNLIMITED_STEPS = 10**9
#: Steps between writes of the loss log.
LOG_FLUSH_EVERY = 50


def versions() -> dict[str, str]:
    import geoopt

    return {"hyperseg": __version__, "torch": torch.__version__, "geoopt": geoopt.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def save_checkpoint(run_dir: Path, model: HyperVAE, optimizer: torch.optim.Optimizer | None, step: int,
                    generator: torch.Generator | None = None) -> Path:
    state = {
        "config": model.cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "generator": generator.get_state() if generator is not None else None,
        "versions": versions(),
    }
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_model(run: str | Path, device: str | torch.device = "cpu") -> HyperVAE:
    """Load the model of a run folder (or a checkpoint file) for inference."""
    run = Path(run)
    path = run / CHECKPOINT if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no checkpoint {CHECKPOINT}; train one with `hyperseg train -i IN -o {run}`")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        cfg = Config.from_dict(state["config"])
        model = HyperVAE(cfg)
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a usable hyperseg checkpoint ({err})") from err
    return model.to(device).eval()


def prepare_volumes(arrays: Sequence[np.ndarray], cfg: Config) -> list[torch.Tensor]:
    """Normalise ``(C, D, H, W)`` arrays as configured and turn them into tensors."""
    out = []
    for a in arrays:
        if a.shape[0] != cfg.in_channels:
            raise ValueError(f"volume has {a.shape[0]} channels but the configuration says "
                             f"in_channels={cfg.in_channels}")
        out.append(torch.from_numpy(zscore(a) if cfg.normalize else np.asarray(a, np.float32)))
    return out


def train(
    cfg: Config,
    arrays: Sequence[np.ndarray],
    run_dir: str | Path,
    steps: int | None = None,
    minutes: float | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> HyperVAE:
    """Train a model on volumes ``(C, D, H, W)`` and save it into ``run_dir``.

    Stops after ``steps`` optimiser steps (``cfg.steps`` by default) or
    ``minutes`` of wall time, whichever comes first, and always leaves a
    checkpoint of the last step.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = cfg.steps if steps is None else steps
    cfg = cfg.replace(steps=steps)
    cfg.save(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    volumes = prepare_volumes(arrays, cfg)
    sampler = TripletSampler(volumes, patch_edge=cfg.patch_edge, parent_range=tuple(cfg.parent_range),
                             child_range=tuple(cfg.child_range), scale=cfg.patch_scale)
    model = HyperVAE(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    started = time.time()
    deadline = started + 60 * minutes if minutes else math.inf
    log_path = run_dir / "log.jsonl"
    log_lines: list[str] = []
    bad = 0
    step = 0
    bar = tqdm(total=None if steps >= UNLIMITED_STEPS else steps, desc="train", unit="step",
               disable=not progress)
    try:
        while step < steps and time.time() < deadline:
            parent, pos, neg = (t.to(device) for t in sampler.sample(cfg.batch_size, gen))
            loss, stats = model.loss(parent, pos, neg)
            if not torch.isfinite(loss):
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                if bad >= MAX_BAD_STEPS:
                    raise FloatingPointError(f"{bad} non-finite losses in a row at step {step}; "
                                             "lower lr or check the input volumes")
                continue
            bad = 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == 1:
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()})
                log_lines.append(json.dumps({"step": step, "seconds": round(time.time() - started, 2), **stats}))
            if step % LOG_FLUSH_EVERY == 0:
                _flush_log(log_path, log_lines)
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(run_dir, model, optimizer, step, gen)
                _flush_log(log_path, log_lines)
    finally:
        bar.close()
        save_checkpoint(run_dir, model, optimizer, step, gen)
        _flush_log(log_path, log_lines)
        info = {"versions": versions(), "argv": sys.argv, "steps_done": step,
                "seconds": round(time.time() - started, 1), "n_volumes": len(arrays)}
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
    return model.eval()


def _flush_log(path: Path, lines: list[str]) -> None:
    if lines:
        with open(path, "a") as fh:
            fh.write("\n".join(lines) + "\n")
        lines.clear()
