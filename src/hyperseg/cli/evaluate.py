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
    p.add_argument("--report", action="store_true",
                   help="also draw every scored case beside its truth, clusters in their matched classes' colours: "
                        "{case}_evaluation.png and .html (with the Dice table) in the predictions folder")
    p.add_argument("--images", type=Path, help="the segmented volumes, for --report (default: the folder above "
                   "the truth folder, as `hyperseg synth` lays them out)")
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_folder, format_table

    summary = evaluate_folder(args.predictions, args.truth)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    if args.report:
        from ..evaluate import write_reports

        written = write_reports(args.predictions, args.truth, args.images or args.truth.parent)
        if not args.json:
            print(f"wrote {len(written)} report files into {args.predictions}")
    return 0
