"""The masked stage's settings on real brains: each variant of ``Config.masked_stage`` on the embeddings that
``bench_mri.py --runs RUNS`` trained and cached, scored as ``bench_mri.py`` scores its rows.

For each (image, grid, noise, bias) setting the degraded volume is rebuilt exactly as ``bench_mri.py`` builds it
(same seed), the setting's model and its cached embedding (``RUNS/{setting}/embedding_{dtype}.npy``, written by
the hyperseg rows of ``bench_mri.py``) are loaded, and :func:`hyperseg.segment.segment_embedding` runs the
default stage with each variant's ``masked_stage`` fields on top of the default's. No model is trained here.

Results: ``--out``, resumable (a (setting, variant) already there is skipped)::

    OMP_NUM_THREADS=1 python benchmarks/bench_masked_stage.py --image mni152 --runs RUNS \\
        --settings 3/20 3/40 9/20 9/40 --variant 'w0.1={"embedding_weight": 0.1}' --out FILE
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mri  # noqa: E402
from _record import RESULTS, machine  # noqa: E402


def setting_key(image: str, grid: int, noise: float, bias: float) -> str:
    """The setting's name in ``bench_mri.py`` (its run folder is this with ``_`` and ``pct``)."""
    return f"{image} {grid}mm noise {noise:g}% bias {bias:g}%"


def run_setting(image: str, x: np.ndarray, truth: np.ndarray, grid: int, noise: float, bias: float, runs: Path,
                variants: dict[str, dict], seed: int = 0) -> dict[str, dict]:
    """Dice of every variant on one setting: ``{variant: {"dice": ..., "seconds": ...}}``."""
    import torch

    from bench_default import stage_config
    from hyperseg.checkpoint import load_model
    from hyperseg.config import Config
    from hyperseg.data.preprocess import normalize_for
    from hyperseg.nn.precision import resolve_dtype
    from hyperseg.segment import segment_embedding

    torch.set_num_threads(1)
    key = setting_key(image, grid, noise, bias)
    run = runs / key.replace(" ", "_").replace("%", "pct")
    img, t, _ = bench_mri.degrade(x, truth, grid, noise / 100, bias / 100, seed=seed)
    model = load_model(run).eval()
    dtype = str(resolve_dtype(model.cfg.embed_dtype)).removeprefix("torch.")
    cache = run / f"embedding_{dtype}.npy"
    if not cache.exists():
        raise SystemExit(f"{cache}: no cached embedding; run bench_mri.py --runs {runs} with the hyperseg default row "
                         "on this setting first")
    emb = np.load(cache)
    xn = normalize_for(model.cfg, img[None], None)
    out = {}
    for name, fields in variants.items():
        spec = {"masked_stage": {**Config().masked_stage, **fields}}
        t0 = time.perf_counter()
        seg = segment_embedding(stage_config(model.cfg, spec), emb, xn, list(bench_mri.LEVELS), seed=seed,
                                array=img[None], voxel_size=float(grid))
        labels = {k: np.asarray(v, dtype=np.int64) for k, v in seg.labels.items()}
        out[name] = {"dice": bench_mri.score(labels, t), "seconds": time.perf_counter() - t0,
                     "masked_stage": spec["masked_stage"], "foreground": seg.foreground}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", choices=["ch2bet", "ch2", "mni152"], required=True)
    ap.add_argument("--data", type=Path, default=None, help="as bench_mri.py's --data")
    ap.add_argument("--runs", type=Path, required=True, help="bench_mri.py's --runs folder")
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=["3/20", "3/40", "9/20", "9/40"], metavar="NOISE/BIAS",
                    help="noise and bias in %% (default: the four 2 mm settings of bench_mri.py's tables)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="masked_stage fields on top of the default's, e.g. 'w0.1={\"embedding_weight\": 0.1}'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "masked_stage_variants.json")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    variants = {"default": {}}
    for v in args.variant:
        name, _, spec = v.partition("=")
        variants[name] = json.loads(spec)
    if args.image == "mni152":
        x, truth = bench_mri.load_mni152(args.data)
    else:
        x, truth = bench_mri.load_colin(args.data if args.data is not None else bench_mri.DEBIAN, args.image)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("command", " ".join(["python", "benchmarks/bench_masked_stage.py", *(argv or sys.argv[1:])]))
    results.setdefault("settings", {})
    for s in args.settings:
        noise, bias = (float(v) for v in s.split("/"))
        key = setting_key(args.image, args.grid, noise, bias)
        done = results["settings"].get(key, {})
        todo = {n: f for n, f in variants.items() if n not in done}
        if not todo:
            continue
        done = dict(done)
        done.update(run_setting(args.image, x, truth, args.grid, noise, bias, args.runs, todo, seed=args.seed))
        results["settings"][key] = done
        results.update(machine=machine(), date=time.strftime("%Y-%m-%d"))
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)
        for n in todo:
            d = done[n]["dice"]
            print(f"{key} | {n} | L3 {d['3']:.3f} L4 {d['4']:.3f}" + (f" 4t {d['4t']:.3f}" if "4t" in d else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
