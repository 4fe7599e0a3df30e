"""``hyperseg evaluate``: score label maps against ground truth."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice and IoU of label maps against ground truth")
    p.add_argument("-p", "--predictions", required=True, type=Path, help="folder of {case}_k{K} label maps")
    p.add_argument("-t", "--truth", required=True, type=Path, help="folder of {case}_level{L} ground truth")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_folder, format_table

    summary = evaluate_folder(args.predictions, args.truth)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0
