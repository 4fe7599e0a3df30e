"""Pieces shared by the subcommands.

Building the parser imports nothing heavy (no torch, no nibabel): lists that
live in such modules (:data:`hyperseg.data.io.NAN_POLICIES`, the label-map
formats) reach argparse through :class:`LazyChoices`, read the first time
argparse checks a value or formats the help.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, FloatingPointError)


class UserError(Exception):
    """An error whose message is enough for the user."""


class LazyChoices(Sequence):
    """The strings ``convert(module.name)``, read on first use, as argparse ``choices``."""

    def __init__(self, module: str, name: str, convert: Callable[[str], str] = str) -> None:
        self._where = (module, name)
        self._convert = convert
        self._items: tuple[str, ...] | None = None

    def _load(self) -> tuple[str, ...]:
        if self._items is None:
            module, name = self._where
            self._items = tuple(self._convert(v) for v in getattr(importlib.import_module(module), name))
        return self._items

    def __getitem__(self, index):
        return self._load()[index]

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"LazyChoices({'.'.join(self._where)})"


#: ``--nan-policy`` values: :data:`hyperseg.data.io.NAN_POLICIES`.
NAN_POLICY_CHOICES = LazyChoices("hyperseg.data.io", "NAN_POLICIES")
#: ``--output-format`` values: :data:`hyperseg.data.io.OUTPUT_SUFFIXES` without their dot.
OUTPUT_FORMAT_CHOICES = LazyChoices("hyperseg.data.io", "OUTPUT_SUFFIXES", lambda s: s.lstrip("."))


def add_common(p: argparse.ArgumentParser, device: bool = True) -> None:
    """``-q`` (every subcommand) and ``--device`` (the subcommands that run a model, ``device=True``)."""
    p.add_argument("-q", "--quiet", action="store_true", help="hide progress bars")
    if device:
        p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")


def add_nan_policy(p: argparse.ArgumentParser) -> None:
    """``--nan-policy`` (default ``error``), for the subcommands that read volumes."""
    p.add_argument("--nan-policy", choices=NAN_POLICY_CHOICES, default="error", metavar="POLICY",
                   help="NaN/Inf voxels, one of %(choices)s: 'error' (default) stops at such a volume, "
                        "'fill' replaces them with the channel's median")


__all__ = ["LazyChoices", "NAN_POLICY_CHOICES", "OUTPUT_FORMAT_CHOICES", "USER_ERRORS", "UserError",
           "add_common", "add_nan_policy"]
