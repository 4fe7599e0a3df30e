"""The ``hyperseg`` command line: synth, train, segment, evaluate, demo.

Errors a user can fix (missing files, bad shapes, bad configuration) are
printed as one line, ``hyperseg: error: ...``, with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import __version__

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, FloatingPointError)


class UserError(Exception):
    """An error whose message is enough for the user."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="hide progress bars")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperseg",
        description="Unsupervised hierarchical segmentation of 3D volumes with hyperbolic representations "
                    "(Hsu et al., NeurIPS 2021).")
    parser.add_argument("--version", action="version", version=f"hyperseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic hierarchical benchmark")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=80)
    p.add_argument("--n-val", type=int, default=20)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--size", type=int, default=50, help="edge of each cubic volume (default 50)")
    p.add_argument("--variant", default="simple")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("train", help="train a model on a volume or a folder of volumes")
    p.add_argument("-i", "--input", required=True, type=Path, help="volume file or folder (.nii, .nii.gz, .npy)")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder to create")
    p.add_argument("--config", type=Path, help="YAML file with configuration fields to override")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the configuration's, "
                   "or no step limit when --minutes is given)")
    p.add_argument("--minutes", type=float, help="stop cleanly and save after this much wall time")
    p.add_argument("--seed", type=int, help="random seed (default: the configuration's)")
    _add_common(p)

    p = sub.add_parser("segment", help="segment volumes with a trained model")
    p.add_argument("-m", "--model", required=True, type=Path, help="run folder written by `hyperseg train`")
    p.add_argument("-i", "--input", required=True, type=Path, help="volume file or folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--levels", type=int, nargs="+", help="numbers of clusters, one label map each "
                   "(default: the configuration's levels)")
    p.add_argument("--patch-edge", type=int, help="edge of the patch embedded around each voxel (default 5)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--report", action="store_true", help="also write {case}_report.png with mid-slices")
    _add_common(p)

    p = sub.add_parser("evaluate", help="Dice and IoU of label maps against ground truth")
    p.add_argument("-p", "--predictions", required=True, type=Path, help="folder of {case}_k{K} label maps")
    p.add_argument("-t", "--truth", required=True, type=Path, help="folder of {case}_level{L} ground truth")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("demo", help="synthesise, train a few minutes, segment, evaluate, draw")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"))
    p.add_argument("--minutes", type=float, default=4.0, help="training time (default 4)")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)
    return parser


# ----------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import write_benchmark

    size = (args.size,) * 3
    out = write_benchmark(args.output, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                          n_test=args.n_test, shape=size, variant=args.variant, progress=not args.quiet)
    print(f"wrote the {args.variant} benchmark to {out}")
    return 0


def _load_arrays(path: Path, quiet: bool) -> list:
    from .data.io import find_volumes, read_volume

    files = find_volumes(path)
    return [read_volume(f).array for f in tqdm(files, desc="read", disable=quiet, leave=False)]


def cmd_train(args: argparse.Namespace) -> int:
    from .config import Config
    from .train import UNLIMITED_STEPS, train
    from .utils import resolve_device

    cfg = Config.load(args.config) if args.config else Config()
    if args.seed is not None:
        cfg = cfg.replace(seed=args.seed)
    arrays = _load_arrays(args.input, args.quiet)
    channels = {a.shape[0] for a in arrays}
    if len(channels) != 1:
        raise UserError(f"{args.input}: volumes have different numbers of channels {sorted(channels)}")
    cfg = cfg.replace(in_channels=channels.pop())
    steps = args.steps
    if steps is None and args.minutes:
        steps = UNLIMITED_STEPS  # --minutes alone: the time limit decides
    train(cfg, arrays, args.output, steps=steps, minutes=args.minutes, progress=not args.quiet,
          device=resolve_device(args.device))
    print(f"saved the model to {args.output}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .data.io import find_volumes, read_volume, write_label_map
    from .report import save_slices_png
    from .segment import segment_array
    from .train import load_model
    from .utils import resolve_device

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder, format_table

    summary = evaluate_folder(args.predictions, args.truth)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job, small: synthesise, train, segment the test volumes, score, draw."""
    from .config import Config
    from .data.io import find_volumes, read_labels, read_volume, write_label_map
    from .data.synthetic import write_benchmark
    from .evaluate import evaluate_folder, find_levels_json, format_table
    from .report import save_slices_png
    from .segment import segment_array
    from .train import UNLIMITED_STEPS, train
    from .utils import atomic_write_text, resolve_device

    out: Path = args.output
    quiet = args.quiet
    t0 = time.time()
    data = out / "data"
    print(f"[1/4] synthesising {args.n_train} training and {args.n_test} test volumes into {data}")
    write_benchmark(data, seed=args.seed, n_train=args.n_train, n_val=0, n_test=args.n_test, progress=not quiet)
    levels = find_levels_json(data)
    ks = [levels[lvl] for lvl in sorted(levels)]
    cfg = Config(seed=args.seed, levels=ks, steps=UNLIMITED_STEPS)
    arrays = [read_volume(f).array for f in find_volumes(data / "train")]
    print(f"[2/4] training for {args.minutes:g} minutes on the CPU")
    model = train(cfg, arrays, out / "run", minutes=args.minutes, progress=not quiet,
                  device=resolve_device(args.device))
    print(f"[3/4] segmenting the test volumes into {ks} clusters")
    seg_dir = out / "segmentations"
    first = None
    for f in tqdm(find_volumes(data / "test"), desc="segment", unit="case", disable=quiet):
        vol = read_volume(f)
        seg = segment_array(model, vol.array, ks, seed=args.seed)
        for k, lab in seg.labels.items():
            write_label_map(seg_dir / f"{vol.case}_k{k}.nii.gz", lab, vol)
        if first is None:
            first = (vol, seg)
    print("[4/4] scoring against the ground truth")
    summary = evaluate_folder(seg_dir, data / "test" / "labels")
    atomic_write_text(out / "scores.json", json.dumps(summary, indent=2))
    print(format_table(summary))
    if first is not None:
        vol, seg = first
        truth = {lvl: read_labels(data / "test" / "labels" / f"{vol.case}_level{lvl}.nii.gz") for lvl in levels}
        png = save_slices_png(out / "demo.png", vol.array[0], seg.labels, truth, title=f"{vol.case}: hyperseg demo")
        print(f"wrote {png}")
    print(f"done in {time.time() - t0:.0f} s; outputs in {out}")
    return 0


COMMANDS = {"synth": cmd_synth, "train": cmd_train, "segment": cmd_segment,
            "evaluate": cmd_evaluate, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, *USER_ERRORS) as err:
        print(f"hyperseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperseg: interrupted", file=sys.stderr)
        return 130
