"""``hyperseg segment``: segment volumes with a trained model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .common import USER_ERRORS, add_common


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment volumes with a trained model")
    p.add_argument("-m", "--model", required=True, type=Path, help="run folder written by `hyperseg train`")
    p.add_argument("-i", "--input", required=True, type=Path, help="volume file or folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--levels", type=int, nargs="+", help="numbers of clusters, one label map each "
                   "(default: the configuration's levels)")
    p.add_argument("--patch-edge", type=int, help="edge of the patch embedded around each voxel (default 5)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--report", action="store_true", help="also write {case}_report.png with mid-slices")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ..data.io import find_volumes, read_volume, write_label_map
    from ..report import save_slices_png
    from ..segment import segment_array
    from ..train import load_model
    from ..utils import resolve_device

    model = load_model(args.model, resolve_device(args.device))
    if args.patch_edge:
        model.cfg = model.cfg.replace(embed_patch_edge=args.patch_edge)
    levels = args.levels or model.cfg.levels
    files = find_volumes(args.input)
    args.output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for f in tqdm(files, desc="segment", unit="case", disable=args.quiet):
        try:
            vol = read_volume(f)
            seg = segment_array(model, vol.array, levels, seed=args.seed, progress=not args.quiet)
            ext = ".npy" if f.name.endswith(".npy") else ".nii.gz"
            for k, lab in seg.labels.items():
                write_label_map(args.output / f"{vol.case}_k{k}{ext}", lab, vol)
            if args.report:
                save_slices_png(args.output / f"{vol.case}_report.png", vol.array[0], seg.labels, title=vol.case)
        except USER_ERRORS as err:
            failed += 1
            print(f"hyperseg: error: {err}", file=sys.stderr)
    print(f"segmented {len(files) - failed} of {len(files)} volumes into {args.output}")
    return 2 if failed else 0
