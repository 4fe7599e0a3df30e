"""Results files of the measurement scripts: one JSON per run under ``benchmarks/results/``.

Every script in ``benchmarks/`` prints a Markdown table and also writes it, with the
command that produced it, the machine, the date and the raw rows, to ``--out`` (a JSON
file). BENCHMARKS.md cites these files; a number there without one is not kept.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line naming the CPU, the core count, the OS and the torch build, e.g. ``x86_64, 2 CPUs, Linux ...``."""
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def command(script: str) -> str:
    """The command line as a user would type it: ``python benchmarks/SCRIPT ARGS``."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *sys.argv[1:]])


def write(path: str | Path, script: str, markdown: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    """Write ``{"command", "machine", "date", "load_average", "rows", "markdown", **extra}`` to ``path``.

    The file is written whole to a temporary name and renamed, so a killed run leaves the
    previous file in place. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    payload = {"command": command(script), "machine": machine(), "date": str(datetime.date.today()),
               "python": platform.python_version(), "load_average_at_end": [round(x, 2) for x in load],
               **extra, "rows": rows, "markdown": markdown}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    print(f"\nwrote {path}")
    return path


class _Tee(io.TextIOBase):
    """A text stream that writes to ``sys.__stdout__``-like ``out`` and keeps a copy."""

    def __init__(self, out):
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        return self.kept.write(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def tee():
    """Print as usual inside the block and keep a copy: ``with tee() as kept: ...; kept.getvalue()``.

    For scripts whose tables are printed as they are computed; the copy becomes the
    results file's ``markdown``.
    """
    stream = _Tee(sys.stdout)
    old, sys.stdout = sys.stdout, stream
    try:
        yield stream.kept
    finally:
        sys.stdout = old
