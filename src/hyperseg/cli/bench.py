"""``hyperseg bench``: the paper's tables, every row measured here."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="reproduce the paper's tables on the synthetic benchmarks, with baselines",
                       description="Trains and evaluates every row (the paper's ablations, a 3D conv autoencoder, "
                                   "classical baselines) on the simple and irregular synthetic benchmarks; writes "
                                   "DIR/results.json and DIR/table.md and prints the table. The classical rows "
                                   "need `pip install 'hyperseg[bench]'`.")
    p.add_argument("--profile", choices=["quick", "full"], default="quick",
                   help="quick: about 37 min on 2 CPU cores; full: about 6 hours (default quick; BENCHMARKS.md)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--rows", nargs="+", metavar="METHOD", help="only these rows (by method name)")
    p.add_argument("--datasets", nargs="+", choices=["simple", "irregular"], help="only these datasets")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows an interrupted run of the same profile left in DIR/results.json "
                        "and run only the missing ones")
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..comparison.runner import PROFILES, ResumeError, run_benchmark
    from ..comparison.table import format_table
    from .common import UserError

    profile = PROFILES[args.profile]
    if args.datasets:
        profile = dataclasses.replace(profile, datasets=tuple(args.datasets))
    try:
        rows = run_benchmark(args.output, profile, rows=args.rows, progress=not args.quiet, resume=args.resume)
    except ResumeError as e:
        raise UserError(str(e)) from e
    print(format_table(rows))
    print(f"wrote {args.output / 'results.json'} and {args.output / 'table.md'}")
    return 0
