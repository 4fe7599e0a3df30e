"""``hyperseg train``: train a model, on one or several processes, or resume a run.

Several processes: ``hyperseg train --nproc N ...`` starts N workers on this
machine (:func:`hyperseg.distributed.launch`); ``torchrun --nproc_per_node N
-m hyperseg train ...`` (also over several machines) does the same through
torchrun. Each worker runs this module with ``RANK``/``WORLD_SIZE`` set and
joins the process group before training (see :mod:`hyperseg.train`).
"""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from tqdm.auto import tqdm

from .common import UserError, add_common, add_nan_policy

#: Environment variable through which ``--nproc`` hands the user's command line to its workers.
COMMAND_ENV = "HYPERSEG_COMMAND"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a volume or a folder of volumes")
    p.add_argument("-i", "--input", type=Path, help="volume file or folder (.nii, .nii.gz, .tif, .mrc, .npy; "
                   "nnU-Net channel files {case}_0000... are grouped); with --resume, defaults to the run's input")
    add_nan_policy(p)
    p.add_argument("-o", "--output", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the run in RUN from its last checkpoint (appends to its log)")
    p.add_argument("--preset", metavar="NAME",
                   help="start from a shipped configuration instead of the defaults: 'paper' is the "
                        "configuration of Hsu et al. 2021 (d = 2, unit-variance decoder, k-means on every "
                        "level, no smoothing, no intensity term or Potts prior); 'mri' the default model with "
                        "FAST's recipe for brain MRI after it (tissue classes inside an intensity mask, "
                        "hidden-MRF EM on embedding and intensity); --config fields apply on top")
    p.add_argument("--config", type=Path, help="YAML file with configuration fields to override "
                   "(with --resume it must match the run's configuration)")
    p.add_argument("--steps", type=int, help="optimiser steps in total (default: the configuration's, "
                   "or no step limit when --minutes is given; with --resume, the run's target)")
    p.add_argument("--minutes", type=float, help="stop cleanly and save after this much wall time")
    p.add_argument("--seed", type=int, help="random seed (default: the configuration's)")
    p.add_argument("--highpass", type=float, metavar="SIGMA",
                   help="remove a smooth bias field (uneven illumination, MRI bias) before training and "
                        "segmenting: subtract each volume's Gaussian-smoothed copy, SIGMA in voxels, larger "
                        "than the structures to keep (default: the configuration's highpass_sigma, 0 = off)")
    p.add_argument("--nproc", type=int, default=1,
                   help="train with N processes on this machine (DistributedDataParallel; one per GPU "
                        "with --device cuda); under torchrun leave it out")
    add_common(p)


def _load_arrays(path: Path, quiet: bool, nan_policy: str = "error") -> list:
    """Every case under ``path`` (a file, or a folder incl. nnU-Net channel files) as ``(C, D, H, W)``."""
    from ..data.io import find_cases, read_case

    cases = find_cases(path)
    return [read_case(c, nan_policy=nan_policy).array for c in tqdm(cases, desc="read", disable=quiet, leave=False)]


def _check_args(args: argparse.Namespace) -> None:
    """Argument checks that need no data (done once, before any worker starts)."""
    from ..checkpoint import CHECKPOINT, LEGACY_CHECKPOINT, RESUME_FILE

    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    if args.preset is not None:
        from ..config import presets

        if args.preset not in presets():
            raise UserError(f"--preset: unknown preset {args.preset!r}; choose one of {', '.join(presets())}")
        if args.resume is not None:
            raise UserError("--preset starts a new run; a resumed run keeps its own configuration: drop --preset")
    if args.steps is not None and args.steps < 0:
        raise UserError(f"--steps must be >= 0, got {args.steps}")
    if args.minutes is not None and args.minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {args.minutes}")
    if args.highpass is not None and not args.highpass >= 0:
        raise UserError(f"--highpass must be >= 0 voxels (0 = off), got {args.highpass}")
    if args.resume is None:
        if args.input is None or args.output is None:
            raise UserError("train needs -i INPUT and -o RUN (or --resume RUN to continue a run)")
        held = [name for name in (CHECKPOINT, RESUME_FILE, LEGACY_CHECKPOINT) if (args.output / name).exists()]
        if held:
            raise UserError(f"{args.output} already holds a trained run ({held[0]}); continue it with "
                            f"`hyperseg train --resume {args.output}` or choose another -o")
    elif args.output is not None and args.output.resolve() != args.resume.resolve():
        raise UserError(f"--resume {args.resume} continues that run in place; drop -o {args.output}")


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The ``hyperseg`` arguments that repeat this command in a worker (without ``--nproc``)."""
    out = ["train"]
    for flag, value in (("-i", args.input), ("-o", args.output), ("--resume", args.resume),
                        ("--preset", args.preset), ("--config", args.config), ("--steps", args.steps),
                        ("--minutes", args.minutes), ("--seed", args.seed), ("--highpass", args.highpass)):
        if value is not None:
            out += [flag, str(value)]
    out += ["--device", args.device, "--nan-policy", args.nan_policy] + (["-q"] if args.quiet else [])
    return out


def _resume_config(args: argparse.Namespace):
    """``(run's Config, run's input path or None)``, read by rank 0 and shared with every rank.

    Reads ``config.yaml`` and ``run.json`` (data only); the checkpoint itself is
    read once, by :func:`hyperseg.train.train`, after its presence is checked here.
    """
    from ..checkpoint import read_config, read_run_info, resume_state_path
    from ..distributed import run_on_main

    def read():
        resume_state_path(args.resume)  # fail before reading any volume: no checkpoint, or a legacy pickle
        return read_config(args.resume), read_run_info(args.resume).get("input")

    return run_on_main(read)


def _resolve(args: argparse.Namespace, n_channels_of):
    """``(cfg, input, steps)`` for a new run or a resumed one; ``n_channels_of(input)`` loads the data."""
    import yaml

    from ..checkpoint import config_changes, error_line
    from ..config import Config
    from ..train import UNLIMITED_STEPS

    def load(path: Path) -> Config:
        try:
            return Config.load(path)
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not a YAML mapping of field: value ({error_line(err)})") from None

    if args.resume is None:
        cfg = load(args.config) if args.config else Config()
        if args.preset:  # the preset, then the file's own fields on top
            fields = yaml.safe_load(args.config.read_text()) if args.config else {}
            cfg = Config.from_preset(args.preset, **fields)
        if args.seed is not None:
            cfg = cfg.replace(seed=args.seed)
        if args.highpass is not None:
            cfg = cfg.replace(highpass_sigma=args.highpass)
        cfg = cfg.replace(in_channels=n_channels_of(args.input))
        steps = args.steps
        if steps is None and args.minutes:
            steps = UNLIMITED_STEPS  # --minutes alone: the time limit decides
        return cfg, args.input, steps

    cfg, recorded = _resume_config(args)
    if args.config is not None or args.seed is not None:
        asked = load(args.config) if args.config else cfg
        file_sets_seed = args.config is not None and "seed" in (yaml.safe_load(args.config.read_text()) or {})
        seed = args.seed if args.seed is not None else (asked.seed if file_sets_seed else cfg.seed)
        changes = config_changes(cfg, asked.replace(seed=seed, in_channels=cfg.in_channels))
        if changes:
            raise UserError(f"{args.resume}: the run was trained with another configuration "
                            f"({'; '.join(changes)}); resume without --config/--seed or train a new run")
    if args.highpass is not None and args.highpass != cfg.highpass_sigma:
        raise UserError(f"{args.resume}: the run was trained with highpass_sigma {cfg.highpass_sigma}, not "
                        f"--highpass {args.highpass}; resume without --highpass or train a new run")
    source = args.input if args.input is not None else (Path(recorded) if recorded else None)
    if source is None:
        raise UserError(f"{args.resume}: run.json records no input; give it with -i INPUT")
    channels = n_channels_of(source)
    if channels != cfg.in_channels:
        raise UserError(f"{source}: volumes have {channels} channels but the run {args.resume} was trained "
                        f"on {cfg.in_channels}")
    steps = args.steps
    if steps is None and args.minutes is None and cfg.steps >= UNLIMITED_STEPS:
        raise UserError(f"{args.resume} has no step limit (it was started with --minutes alone); "
                        "give --steps or --minutes")
    return cfg, source, steps


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..train import train
    from ..utils import resolve_device

    _check_args(args)
    command = os.environ.get(COMMAND_ENV) or shlex.join(["hyperseg", *_worker_args(args)]
                                                        + (["--nproc", str(args.nproc)] if args.nproc > 1 else []))
    if args.nproc > 1:
        if distributed.is_launched():
            raise UserError("--nproc cannot be used inside torchrun (which already started the processes); "
                            "drop --nproc")
        device = resolve_device(args.device)
        if device.type == "cuda":
            import torch

            if args.nproc > torch.cuda.device_count():
                raise UserError(f"--nproc {args.nproc} with --device cuda needs {args.nproc} GPUs; "
                                f"this machine has {torch.cuda.device_count()}")
        return distributed.launch(_worker_args(args), args.nproc, env=dict(os.environ, **{COMMAND_ENV: command}))

    world, device = distributed.init(resolve_device(args.device))
    try:
        arrays: list = []

        def n_channels_of(path: Path) -> int:
            arrays[:] = _load_arrays(path, args.quiet or not world.is_main, args.nan_policy)
            channels = {a.shape[0] for a in arrays}
            if len(channels) != 1:
                raise UserError(f"{path}: volumes have different numbers of channels {sorted(channels)}")
            return channels.pop()

        cfg, source, steps = _resolve(args, n_channels_of)
        run_dir = args.resume if args.resume is not None else args.output
        train(cfg, arrays, run_dir, steps=steps, minutes=args.minutes, progress=not args.quiet, device=device,
              resume=args.resume is not None, command=shlex.split(command), input_path=source)
        if world.is_main:
            print(f"saved the model to {run_dir}")
        distributed.barrier()  # every rank done before any leaves the group
        return 0
    finally:
        distributed.cleanup()
