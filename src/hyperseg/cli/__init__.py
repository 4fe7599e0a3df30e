"""The ``hyperseg`` command line: synth, train, segment, evaluate, demo, bench.

One module per subcommand; each has ``add_parser(subparsers)`` and
``run(args) -> int``. Errors a user can fix (missing files, bad shapes, bad
configuration) are printed as one line, ``hyperseg: error: ...``, with exit
status 2.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import bench, convert_checkpoint, demo, evaluate, segment, synth, train
from .common import USER_ERRORS, UserError

SUBCOMMANDS = {"synth": synth, "train": train, "segment": segment, "evaluate": evaluate, "demo": demo,
               "bench": bench, "convert-checkpoint": convert_checkpoint}

__all__ = ["main", "build_parser", "UserError", "USER_ERRORS"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperseg",
        description="Unsupervised hierarchical segmentation of 3D volumes with hyperbolic representations "
                    "(Hsu et al., NeurIPS 2021).")
    parser.add_argument("--version", action="version", version=f"hyperseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except (UserError, *USER_ERRORS) as err:
        print(f"hyperseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperseg: interrupted", file=sys.stderr)
        return 130
