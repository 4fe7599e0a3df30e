"""Run folders: their layout, checkpoints, the loss log and model loading.

Nothing here trains: the segmentation path (``segment``, the pipeline, the
API's ``load``/``predict`` and ``hyperseg segment``) loads models through
this module without importing :mod:`hyperseg.train`.

A run folder holds ``config.yaml`` (the resolved configuration),
``model.pt`` (the latest checkpoint: weights, optimiser, step, RNG states,
configuration), ``log.jsonl`` (one JSON object per logged or skipped step)
and ``run.json`` (resolved configuration, package versions, command line,
world size, steps done and skipped, timing, one record per invocation).
"""
from __future__ import annotations

import json
import pickle
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import Config
from .model import HyperVAE
from .utils import atomic_write

CHECKPOINT = "model.pt"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
RUN_FILE = "run.json"
#: What ``torch.load`` of a damaged or foreign file may raise.
_UNREADABLE = (RuntimeError, KeyError, ValueError, EOFError, OSError, TypeError, AttributeError,
               pickle.UnpicklingError)
#: Configuration fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("steps",)


def versions() -> dict[str, str]:
    """Versions of hyperseg, torch, geoopt, numpy and python."""
    import geoopt

    return {"hyperseg": __version__, "torch": torch.__version__, "geoopt": geoopt.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def rng_state(generator: torch.Generator | None, device: torch.device | None = None) -> dict[str, Any]:
    """This process's random state: sampler generator, torch (CPU and CUDA) and numpy."""
    state: dict[str, Any] = {"generator": generator.get_state() if generator is not None else None,
                             "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "cuda": None}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    if state.get("generator") is not None:
        generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(run_dir: Path, model: HyperVAE, optimizer: torch.optim.Optimizer | None, step: int,
                    generator: torch.Generator | None = None, *, rng: list[dict[str, Any]] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/model.pt`` atomically; returns its path.

    ``rng``: one :func:`rng_state` per rank (index = rank); ``extra``: more
    entries for the checkpoint (``skipped_steps``, ``world_size``, ...).
    """
    state = {
        "config": model.cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "generator": generator.get_state() if generator is not None else None,
        "rng": rng,
        "versions": versions(),
        **(extra or {}),
    }
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def read_checkpoint(run: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The full checkpoint dictionary of a run folder (or a checkpoint file)."""
    run = Path(run)
    path = run / CHECKPOINT if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no checkpoint {CHECKPOINT}; train one with `hyperseg train -i IN -o {run}`")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(state, dict) or "config" not in state or "model" not in state:
            raise KeyError("config/model")
        # checkpoints written before the "likelihood" field existed all used the unit-variance
        # decoder; the default has since become "scale", so say so explicitly
        state["config"] = Config.from_dict({"likelihood": "unit", **state["config"]})
    except _UNREADABLE as err:
        raise ValueError(f"{path}: not a usable hyperseg checkpoint ({err})") from err
    return state


def load_model(run: str | Path, device: str | torch.device = "cpu") -> HyperVAE:
    """Load the model of a run folder (or a checkpoint file) for inference."""
    run = Path(run)
    state = read_checkpoint(run, map_location=device)
    model = HyperVAE(state["config"])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        path = run / CHECKPOINT if run.is_dir() else run
        raise ValueError(f"{path}: not a usable hyperseg checkpoint ({err})") from err
    return model.to(device).eval()


def config_changes(old: Config, new: Config, ignore: Sequence[str] = RESUMABLE_CHANGES) -> list[str]:
    """``["field: old -> new", ...]`` for the fields (other than ``ignore``) where two configurations differ."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


def read_log(path: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``; a torn last line (no newline: a killed write) is ignored.

    ``strict=False`` also skips complete lines that are not JSON objects
    (which hyperseg never writes) instead of raising ``ValueError``.
    """
    text = Path(path).read_text() if Path(path).is_file() else ""
    complete = text.split("\n")[:-1]  # the part after the last newline is empty or torn
    records = []
    for line in complete:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if strict:
                raise ValueError(f"{path}: line {line[:40]!r} is not a JSON object") from None
            continue
        records.append(record)
    return records
