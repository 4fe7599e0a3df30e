"""``hyperseg demo``: the main job, small."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="synthesise, train a few minutes, segment, evaluate, draw")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"))
    p.add_argument("--minutes", type=float, default=4.0,
                   help="training time limit (default 4); training stops earlier after the default number of steps")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    """The main job, small: synthesise, train, segment the test volumes, score, draw."""
    from ..config import Config
    from ..data.io import find_cases, find_volumes, read_case, read_labels, read_volume
    from ..data.synthetic import write_benchmark
    from ..evaluate import evaluate_folder, find_levels_json, format_table
    from ..pipeline import SegmentOptions, case_outputs, segment_case
    from ..report import save_slices_png
    from ..report_html import save_html_report
    from ..train import train
    from ..utils import atomic_write_text, resolve_device

    out: Path = args.output
    quiet = args.quiet
    t0 = time.time()
    data = out / "data"
    print(f"[1/4] synthesising {args.n_train} training and {args.n_test} test volumes into {data}")
    write_benchmark(data, seed=args.seed, n_train=args.n_train, n_val=0, n_test=args.n_test, progress=not quiet)
    levels = find_levels_json(data)
    ks = [levels[lvl] for lvl in sorted(levels)]
    cfg = Config(seed=args.seed, levels=ks)  # the default number of steps, or --minutes if that comes first
    arrays = [read_volume(f).array for f in find_volumes(data / "train")]
    print(f"[2/4] training for {cfg.steps} steps or {args.minutes:g} minutes on the CPU, whichever comes first")
    model = train(cfg, arrays, out / "run", minutes=args.minutes, progress=not quiet,
                  device=resolve_device(args.device))
    print(f"[3/4] segmenting the test volumes into {ks} clusters")
    # {case}_k{K}.nii.gz as segment writes them, and the embeddings for the first case's HTML report
    options = SegmentOptions(output=out / "segmentations", seed=args.seed, save_embeddings=True)
    cases = find_cases(data / "test")
    for case in tqdm(cases, desc="segment", unit="case", disable=quiet):
        segment_case(model, case, options)
    print("[4/4] scoring against the ground truth")
    summary = evaluate_folder(options.output, data / "test" / "labels")
    atomic_write_text(out / "scores.json", json.dumps(summary, indent=2))
    print(format_table(summary))
    if cases:  # the first case's label maps as written, beside its ground truth, clusters in their classes' colours
        case = cases[0]
        written = case_outputs(case, ks, options)
        maps = {int(role[1:]): read_labels(path) for role, path in written.items() if role.startswith("k")}
        truth = {lvl: read_labels(data / "test" / "labels" / f"{case.name}_level{lvl}.nii.gz") for lvl in levels}
        volume = read_case(case)
        png = save_slices_png(out / "demo.png", volume.array[0], maps, truth, title=f"{case.name}: hyperseg demo")
        embedding = np.load(written["embedding"], allow_pickle=False)
        page = save_html_report(out / "demo_report.html", volume.array[0], maps, embedding,
                                c=cfg.c if cfg.latent == "hyperbolic" else None, spacing=volume.spacing,
                                title=f"{case.name}: hyperseg demo", truth=truth, seed=args.seed)
        print(f"wrote {png} and {page}")
    print(f"done in {time.time() - t0:.0f} s; outputs in {out}")
    return 0
