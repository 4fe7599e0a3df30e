"""``hyperseg train``: train a model."""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from .common import UserError, add_common


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a volume or a folder of volumes")
    p.add_argument("-i", "--input", required=True, type=Path, help="volume file or folder (.nii, .nii.gz, .npy)")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder to create")
    p.add_argument("--config", type=Path, help="YAML file with configuration fields to override")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the configuration's, "
                   "or no step limit when --minutes is given)")
    p.add_argument("--minutes", type=float, help="stop cleanly and save after this much wall time")
    p.add_argument("--seed", type=int, help="random seed (default: the configuration's)")
    add_common(p)


def _load_arrays(path: Path, quiet: bool) -> list:
    from ..data.io import find_volumes, read_volume

    files = find_volumes(path)
    return [read_volume(f).array for f in tqdm(files, desc="read", disable=quiet, leave=False)]


def run(args: argparse.Namespace) -> int:
    from ..config import Config
    from ..train import UNLIMITED_STEPS, train
    from ..utils import resolve_device

    cfg = Config.load(args.config) if args.config else Config()
    if args.seed is not None:
        cfg = cfg.replace(seed=args.seed)
    arrays = _load_arrays(args.input, args.quiet)
    channels = {a.shape[0] for a in arrays}
    if len(channels) != 1:
        raise UserError(f"{args.input}: volumes have different numbers of channels {sorted(channels)}")
    cfg = cfg.replace(in_channels=channels.pop())
    steps = args.steps
    if steps is None and args.minutes:
        steps = UNLIMITED_STEPS  # --minutes alone: the time limit decides
    train(cfg, arrays, args.output, steps=steps, minutes=args.minutes, progress=not args.quiet,
          device=resolve_device(args.device))
    print(f"saved the model to {args.output}")
    return 0
