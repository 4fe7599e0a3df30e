"""``hyperseg convert-checkpoint RUN``: rewrite a run's pickled ``model.pt`` as data-only files.

``model.pt`` is the legacy checkpoint format, a pickle; unpickling can run
any code the file's author chose, so hyperseg reads such files nowhere
except here, and only because the user asked for this one.
The conversion writes ``config.yaml`` and ``model.safetensors`` (and
``resume.safetensors`` when the checkpoint holds an optimiser state, so that
``hyperseg train --resume RUN`` continues exactly where the pickled run stopped;
see :mod:`hyperseg.checkpoint`). ``model.pt`` is left in place and is not
read again.

UNSAFE for files you did not make: convert only a ``model.pt`` that you (or
someone you trust with your account) wrote; ask the sender of any other run
to convert it and send you the safetensors files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UserError

HELP = ("convert the legacy pickled model.pt of a run folder into data-only files "
        "(UNSAFE for files you did not make: loading a pickle can run any code)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert-checkpoint", help=HELP,
        description="Read RUN/model.pt, the legacy pickled checkpoint, and write "
                    "config.yaml, model.safetensors and (when it holds an optimiser state) resume.safetensors "
                    "beside it, which hyperseg reads without unpickling anything. UNSAFE for files you did "
                    "not make: unpickling model.pt runs whatever code its author put in it, as you. Convert "
                    "only checkpoints that you made yourself; ask whoever sent you a run to convert it.")
    p.add_argument("run", type=Path, metavar="RUN", help="run folder holding model.pt (or the model.pt file)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import (LEGACY_CHECKPOINT, RESUME_FILE, WEIGHTS_FILE, save_model,
                              write_resume_state)
    from ..config import Config
    from ..model import HyperVAE

    path = args.run if args.run.name == LEGACY_CHECKPOINT else args.run / LEGACY_CHECKPOINT
    folder = path.parent
    if not path.is_file():
        raise UserError(f"{path}: no such file; convert-checkpoint reads the legacy model.pt of a run folder")
    if (folder / WEIGHTS_FILE).exists():
        raise UserError(f"{folder / WEIGHTS_FILE}: the run already has data-only files; nothing to convert "
                        f"(delete {WEIGHTS_FILE} and {RESUME_FILE} to convert {path} again)")
    try:
        # the one place where hyperseg unpickles: the user asked for this file to be trusted
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "config" not in state or "model" not in state:
            raise KeyError("no config/model entries")
        # a model.pt whose configuration has no "likelihood" entry holds a unit-variance decoder
        cfg = Config.from_dict({"likelihood": "unit", **state["config"]})
        model = HyperVAE(cfg)
        model.load_state_dict(state["model"])
    except Exception as err:  # a foreign pickle can raise anything
        raise UserError(f"{path}: not a hyperseg checkpoint ({' '.join(str(err).split())[:300]})") from None
    step = int(state.get("step") or 0)
    save_model(folder, model, step)
    written = ["config.yaml", WEIGHTS_FILE]
    if state.get("optimizer") is not None:
        rng = state.get("rng") or ([{"generator": state["generator"]}] if state.get("generator") is not None
                                   else [])
        write_resume_state(folder, cfg, model.state_dict(), state["optimizer"], step, rng=rng,
                           skipped_steps=int(state.get("skipped_steps", 0)),
                           world_size=int(state.get("world_size", 1)), seconds=float(state.get("seconds", 0.0)))
        written.append(RESUME_FILE)
    if not args.quiet:
        print(f"converted {path} (step {step}) into {', '.join(written)} in {folder}; "
              f"hyperseg does not read {LEGACY_CHECKPOINT}, which can be deleted")
    return 0
