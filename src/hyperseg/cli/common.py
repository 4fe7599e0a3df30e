"""Pieces shared by the subcommands."""
from __future__ import annotations

import argparse

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, FloatingPointError)


class UserError(Exception):
    """An error whose message is enough for the user."""


def add_common(p: argparse.ArgumentParser) -> None:
    """``-q`` and ``--device``, which every long-running subcommand takes."""
    p.add_argument("-q", "--quiet", action="store_true", help="hide progress bars")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
