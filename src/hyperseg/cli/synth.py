"""``hyperseg synth``: write the synthetic benchmark."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write the synthetic hierarchical benchmark")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=80)
    p.add_argument("--n-val", type=int, default=20)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--size", type=int, default=50, help="edge of each cubic volume (default 50)")
    p.add_argument("--variant", default="simple", choices=["simple", "irregular"],
                   help="simple (the paper's recipe) or irregular (deformed shapes, bias field)")
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_benchmark

    size = (args.size,) * 3
    out = write_benchmark(args.output, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                          n_test=args.n_test, shape=size, variant=args.variant, progress=not args.quiet)
    print(f"wrote the {args.variant} benchmark to {out}")
    return 0
