"""Run folders: their layout, data-only checkpoints, the loss log and model loading.

Nothing here trains: the segmentation path (``segment``, the pipeline, the
API's ``load``/``predict`` and ``hyperseg segment``) loads models through
this module without importing :mod:`hyperseg.train`.

Layout of a run folder
----------------------
``config.yaml``
    the resolved configuration (:meth:`Config.save`; read with ``yaml.safe_load``).
``model.safetensors``
    the weights of the latest checkpoint, ``{state_dict key: tensor}``; all
    that inference reads, besides ``config.yaml``.
``resume.safetensors``
    what resuming needs: the weights again, the optimiser's state tensors,
    every rank's random states as ``uint8`` tensors (numpy's Mersenne-Twister
    keys as ``int64``), and one JSON document in the file's metadata for the
    plain values (step, skipped steps, seconds, world size, the optimiser's
    hyper-parameters, numpy's ``pos``/``has_gauss``/``cached_gaussian``,
    the configuration, package versions).
``log.jsonl``
    one JSON object per logged or skipped step (:func:`read_log`).
``run.json``
    resolved configuration, package versions, command line, world size, steps
    done and skipped, timing, and ``invocations``: one record per call of
    :func:`hyperseg.train.train` on this folder (:func:`read_run_info`).

Every file is data: safetensors, YAML read with ``safe_load``, JSON. No
pickle is ever loaded; a folder holding only a pickled ``model.pt`` (the
legacy checkpoint format) is refused with :class:`CheckpointError`, whose
message names ``hyperseg convert-checkpoint``.

Order of writes (a kill at any moment leaves a loadable run)
------------------------------------------------------------
Each file is replaced atomically (:func:`hyperseg.utils.atomic_write`).
``config.yaml`` is written when training starts, before any weights. A
checkpoint writes ``model.safetensors`` first and ``resume.safetensors``
last: the rename of ``resume.safetensors`` is the commit point of the
training state. Killed between the two, the folder holds the new weights
for inference and the previous, self-consistent resume state (it carries
its own copy of the weights), from which resuming redoes the same steps.
Killed during the very first checkpoint, after the weights, the run can be
segmented but not resumed (as a run killed before any checkpoint).
"""
from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .config import Config
from .model import HyperVAE
from .utils import atomic_write

WEIGHTS_FILE = "model.safetensors"
RESUME_FILE = "resume.safetensors"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
RUN_FILE = "run.json"
#: The file whose presence marks a folder as holding a trained model.
CHECKPOINT = WEIGHTS_FILE
#: The legacy pickled checkpoint: never loaded, except by ``hyperseg convert-checkpoint``.
LEGACY_CHECKPOINT = "model.pt"
#: Every file hyperseg writes into a run folder.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, RESUME_FILE, LOG_FILE, RUN_FILE)
#: Configuration fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("steps",)
#: ``format`` entries of the safetensors metadata, checked on reading.
WEIGHTS_FORMAT = "hyperseg.weights/1"
RESUME_FORMAT = "hyperseg.resume/1"
#: What reading a damaged or foreign file may raise.
_UNREADABLE = (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError, yaml.YAMLError)


class CheckpointError(ValueError):
    """A run folder's file cannot be used; the message names the file and what to do."""


def legacy_error(path: Path) -> CheckpointError:
    """The refusal of a pickled ``model.pt`` (loading a pickle can run any code)."""
    run = path.parent
    return CheckpointError(
        f"{path}: a pickled checkpoint, which hyperseg does not load because unpickling can run code; "
        f"if you made it yourself, convert it with `hyperseg convert-checkpoint {run}`")


def versions() -> dict[str, str]:
    """Versions of hyperseg, torch, geoopt, numpy and python."""
    import geoopt

    return {"hyperseg": __version__, "torch": torch.__version__, "geoopt": geoopt.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


# ----------------------------------------------------------------------------- random states
def rng_state(generator: torch.Generator | None, device: torch.device | None = None) -> dict[str, Any]:
    """This process's random state: sampler generator, torch (CPU and CUDA) and numpy.

    ``{"generator": uint8 tensor | None, "torch": uint8 tensor, "numpy": np.random.get_state(),
    "cuda": uint8 tensor | None}``.
    """
    state: dict[str, Any] = {"generator": generator.get_state() if generator is not None else None,
                             "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "cuda": None}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (each entry that is present and not ``None``)."""
    if state.get("generator") is not None:
        generator.set_state(state["generator"])
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"])
    if state.get("numpy") is not None:
        np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


_TENSOR_RNG = ("generator", "torch", "cuda")


def _rng_to_safe(rngs: Sequence[Mapping[str, Any] | None]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Per-rank random states as tensors ``rng.{rank}.{name}`` plus JSON-able records.

    numpy's legacy state ``(name, keys uint32[624], pos, has_gauss, cached_gaussian)``
    becomes the tensor ``rng.{rank}.numpy_keys`` (int64) and ``{"name", "pos",
    "has_gauss", "cached_gaussian"}`` (a Python float repr round-trips exactly).
    """
    tensors: dict[str, torch.Tensor] = {}
    records: list[Any] = []
    for rank, rng in enumerate(rngs):
        if rng is None:
            records.append(None)
            continue
        record: dict[str, Any] = {"tensors": []}
        for name in _TENSOR_RNG:
            if rng.get(name) is not None:
                tensors[f"rng.{rank}.{name}"] = torch.as_tensor(rng[name], dtype=torch.uint8).clone()
                record["tensors"].append(name)
        if rng.get("numpy") is not None:
            name, keys, pos, has_gauss, cached = rng["numpy"]
            tensors[f"rng.{rank}.numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
            record["numpy"] = {"name": str(name), "pos": int(pos), "has_gauss": int(has_gauss),
                               "cached_gaussian": float(cached)}
        records.append(record)
    return tensors, records


def _rng_from_safe(tensors: Mapping[str, torch.Tensor], records: list[Any]) -> list[dict[str, Any] | None]:
    """Inverse of :func:`_rng_to_safe`: the :func:`rng_state` dictionaries, one per rank."""
    out: list[dict[str, Any] | None] = []
    for rank, record in enumerate(records):
        if record is None:
            out.append(None)
            continue
        rng: dict[str, Any] = {name: None for name in _TENSOR_RNG}
        for name in record["tensors"]:
            if name not in _TENSOR_RNG:
                raise KeyError(f"unknown random state {name!r}")
            rng[name] = tensors[f"rng.{rank}.{name}"]
        rng["numpy"] = None
        if record.get("numpy") is not None:
            n = record["numpy"]
            keys = tensors[f"rng.{rank}.numpy_keys"].numpy().astype(np.uint32)
            rng["numpy"] = (str(n["name"]), keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"]))
        out.append(rng)
    return out


# ----------------------------------------------------------------------------- optimiser state
def _optimizer_to_safe(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as tensors ``optimizer.{param}.{key}`` and a JSON-able record.

    Tensor entries of ``state`` become tensors; the others (and ``param_groups``,
    whose tuples, e.g. Adam's ``betas``, become lists) go into the record.
    """
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param, entries in state["state"].items():
        plain[str(param)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain[str(param)][key] = value
    return tensors, {"state": plain, "param_groups": [dict(g) for g in state["param_groups"]]}


def _optimizer_from_safe(tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_optimizer_to_safe` (lists in ``param_groups`` other than ``params`` become tuples)."""
    state: dict[int, dict[str, Any]] = {int(p): dict(v) for p, v in record["state"].items()}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, param, key = name.split(".", 2)
            state.setdefault(int(param), {})[key] = tensor
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in record["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- writing
def _weights(model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as separate, contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}


def save_model(run_dir: str | Path, model: HyperVAE, step: int = 0) -> Path:
    """Write what inference needs: ``config.yaml``, then ``model.safetensors``; returns the folder."""
    run_dir = Path(run_dir)
    model.cfg.save(run_dir / CONFIG_FILE)
    metadata = {"format": WEIGHTS_FORMAT, "step": str(int(step))}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(_weights(model.state_dict()), tmp, metadata))
    return run_dir


def save_checkpoint(run_dir: str | Path, model: HyperVAE, optimizer: torch.optim.Optimizer | None, step: int,
                    *, rng: Sequence[Mapping[str, Any] | None] | None = None, skipped_steps: int = 0,
                    world_size: int = 1, seconds: float = 0.0) -> Path:
    """Write a checkpoint: :func:`save_model`, then ``resume.safetensors`` (the commit point); returns its path.

    ``rng``: one :func:`rng_state` per rank (index = rank).
    """
    run_dir = Path(run_dir)
    save_model(run_dir, model, step)
    return write_resume_state(run_dir, model.cfg, model.state_dict(),
                              optimizer.state_dict() if optimizer is not None else None, step, rng=rng,
                              skipped_steps=skipped_steps, world_size=world_size, seconds=seconds)


def write_resume_state(run_dir: Path, cfg: Config, model_state: Mapping[str, torch.Tensor],
                       optimizer_state: Mapping[str, Any] | None, step: int, *,
                       rng: Sequence[Mapping[str, Any] | None] | None = None, skipped_steps: int = 0,
                       world_size: int = 1, seconds: float = 0.0) -> Path:
    """Write ``run_dir/resume.safetensors`` atomically from plain states; returns its path."""
    tensors = {f"model.{k}": v for k, v in _weights(model_state).items()}
    optimizer = None
    if optimizer_state is not None:
        opt_tensors, optimizer = _optimizer_to_safe(optimizer_state)
        tensors.update(opt_tensors)
    rng_tensors, rng_records = _rng_to_safe(list(rng or []))
    tensors.update(rng_tensors)
    record = {"step": int(step), "skipped_steps": int(skipped_steps), "world_size": int(world_size),
              "seconds": float(seconds), "optimizer": optimizer, "rng": rng_records,
              "config": cfg.to_dict(), "versions": versions()}
    metadata = {"format": RESUME_FORMAT, "state": json.dumps(record)}
    path = Path(run_dir) / RESUME_FILE
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata))
    return path


# ----------------------------------------------------------------------------- reading
def _run_folder(run: str | Path) -> Path:
    """The run folder of ``run``: ``run`` itself, or the folder of a run file given by path."""
    run = Path(run)
    is_file = run.is_file() or run.name in (*RUN_FILES, LEGACY_CHECKPOINT)
    return run.parent if is_file else run


def _read_safetensors(path: Path, fmt: str, prefix: str | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file whose metadata says ``format: fmt``."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != fmt:
            raise ValueError(f"format {metadata.get('format')!r}, expected {fmt!r}")
        tensors = {k: f.get_tensor(k) for k in f.keys() if prefix is None or k.startswith(prefix)}
    return tensors, metadata


def read_config(run: str | Path) -> Config:
    """The configuration ``config.yaml`` of a run folder (``yaml.safe_load``, then :meth:`Config.from_dict`)."""
    path = _run_folder(run) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; a run folder written by `hyperseg train` holds one")
    try:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a YAML mapping of field: value")
        return Config.from_dict(data)
    except _UNREADABLE as err:
        raise CheckpointError(f"{path}: not a usable hyperseg configuration ({error_line(err)}); "
                              "restore the run's own config.yaml") from None


def error_line(err: BaseException) -> str:
    """``err`` as one short line (a YAML error as its problem and position)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{err.problem}{where}"
    return " ".join(str(err).split())[:300]


def load_model(run: str | Path, device: str | torch.device = "cpu") -> HyperVAE:
    """The model of a run folder (or of its ``model.safetensors``) for inference.

    Reads ``config.yaml`` and ``model.safetensors`` only. Raises
    :class:`CheckpointError` (a ``ValueError``) for a damaged or foreign file,
    or a legacy pickled ``model.pt``, and ``FileNotFoundError``
    for a folder without a trained model.
    """
    folder = _run_folder(run)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        if (folder / LEGACY_CHECKPOINT).is_file():
            raise legacy_error(folder / LEGACY_CHECKPOINT)
        raise FileNotFoundError(f"{folder}: no trained model ({WEIGHTS_FILE}); "
                                f"train one with `hyperseg train -i IN -o {folder}`")
    cfg = read_config(folder)
    try:
        weights, _ = _read_safetensors(path, WEIGHTS_FORMAT)
        model = HyperVAE(cfg)
        model.load_state_dict(weights)
    except _UNREADABLE as err:
        raise CheckpointError(f"{path}: not a usable hyperseg checkpoint ({error_line(err)}); "
                              f"train the model again or restore the run folder") from None
    return model.to(device).eval()


def resume_state_path(run: str | Path) -> Path:
    """``RUN/resume.safetensors``, or the error that says why the run cannot be resumed.

    :class:`CheckpointError` for a folder holding only a pickled ``model.pt``;
    ``FileNotFoundError`` for a folder with no checkpoint (or weights only).
    """
    folder = _run_folder(run)
    path = folder / RESUME_FILE
    if path.is_file():
        return path
    if (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no resume state ({RESUME_FILE}); the model can segment, but to train "
                                "further start a new run with `hyperseg train -i IN -o NEW_RUN`")
    if (folder / LEGACY_CHECKPOINT).is_file():
        raise legacy_error(folder / LEGACY_CHECKPOINT)
    raise FileNotFoundError(f"{folder}: no checkpoint ({RESUME_FILE}); "
                            f"train one with `hyperseg train -i IN -o {folder}`")


def read_checkpoint(run: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The resume state of a run folder, read from ``resume.safetensors`` alone.

    ``{"config": Config, "model": state dict, "optimizer": optimiser state dict
    or None, "step", "skipped_steps", "world_size", "seconds", "rng": [one
    rng_state per rank], "versions"}``.
    """
    path = resume_state_path(run)
    try:
        tensors, metadata = _read_safetensors(path, RESUME_FORMAT)
        record = json.loads(metadata["state"])
        if not isinstance(record, dict):
            raise ValueError("the state is not a JSON object")
        model = {k[len("model."):]: v.to(map_location) for k, v in tensors.items() if k.startswith("model.")}
        optimizer = (_optimizer_from_safe(tensors, record["optimizer"]) if record.get("optimizer") is not None
                     else None)
        state = {"config": Config.from_dict(record["config"]), "model": model, "optimizer": optimizer,
                 "step": int(record["step"]), "skipped_steps": int(record.get("skipped_steps", 0)),
                 "world_size": int(record.get("world_size", 1)), "seconds": float(record.get("seconds", 0.0)),
                 "rng": _rng_from_safe(tensors, list(record.get("rng") or [])),
                 "versions": dict(record.get("versions") or {})}
    except _UNREADABLE as err:
        raise CheckpointError(f"{path}: not a usable hyperseg resume state ({error_line(err)}); "
                              "resume from an intact copy of the run or train a new one") from None
    return state


def config_changes(old: Config, new: Config, ignore: Sequence[str] = RESUMABLE_CHANGES) -> list[str]:
    """``["field: old -> new", ...]`` for the fields (other than ``ignore``) where two configurations differ."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


def read_run_info(run: str | Path) -> dict[str, Any]:
    """The JSON object ``run.json`` of a run folder (``{}`` when there is none).

    Checked as data: the file must hold a JSON object whose ``input`` is a
    string or null and whose ``invocations`` (``[]`` when absent, as in run
    folders of the pickled format, whose list under another key is not read) is a
    list of objects.
    """
    path = _run_folder(run) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        if not isinstance(info.get("input"), (str, type(None))):
            raise ValueError("'input' is not a path")
        invocations = info.get("invocations", [])
        if not isinstance(invocations, list) or not all(isinstance(i, dict) for i in invocations):
            raise ValueError("'invocations' is not a list of objects")
        info["invocations"] = invocations
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a usable run record ({error_line(err)}); "
                              "restore the run's own run.json, or delete it and give -i INPUT") from None
    return info


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
