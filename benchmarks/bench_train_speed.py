"""Training throughput: triplets per second of the training step, float32 against bfloat16, in one run.

    python benchmarks/bench_train_speed.py [--settings 32:4 128:8] [--steps 30] [--warmup 5]
                                           [--out benchmarks/results/train_speed.json]

Each setting ``B:K`` (triplets per step, posterior samples per patch) trains a
default model (``Config()``, 1 channel) on 8 synthetic 50^3 volumes of
``hyperseg synth`` (generated here) through :func:`hyperseg.train.train`, the
loop ``hyperseg train`` runs, once with ``train_dtype: float32`` and once with
``bfloat16``, each in its own subprocess. Throughput is ``B x steps`` over the
wall time of the steps after ``--warmup``: a run of ``warmup`` steps is
subtracted from one of ``warmup + steps`` (same seed, same setting), which
removes start-up, model building and the first slow steps. ``32:4`` is the default; ``128:8`` is the released
code's setting (``-b 128``, K = 8), which issue 19 compares against 70
triplets / s measured for the released code on this machine class.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _record


def run_one(batch: int, samples: int, steps: int, dtype: str, threads: int) -> float:
    """Seconds of ``steps`` training steps in this process (volumes made and the model built before the clock)."""
    import torch

    from hyperseg.config import Config
    import numpy as np

    from hyperseg.data.synthetic import generate_volume
    from hyperseg.train import train

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    vols = [generate_volume(rng)[0][None] for _ in range(8)]
    cfg = Config(batch_size=batch, n_samples=samples, train_dtype=dtype, checkpoint_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train(cfg, vols, Path(tmp) / "run", steps=steps, progress=False)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=["32:4", "128:8"], help="B:K per setting")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "train_speed.json")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        b, k, steps, dtype = args.child
        print(json.dumps(run_one(int(b), int(k), int(steps), dtype, args.threads)))
        return
    rows = []
    for spec in args.settings:
        b, k = (int(v) for v in spec.split(":"))
        for dtype in args.dtypes:
            secs = {}
            for n in (args.warmup, args.warmup + args.steps):
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", str(b), str(k), str(n),
                       dtype]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                secs[n] = json.loads(out.strip().splitlines()[-1])
            tps = b * args.steps / (secs[args.warmup + args.steps] - secs[args.warmup])
            rows.append({"batch": b, "samples": k, "train_dtype": dtype, "steps": args.steps,
                         "seconds": secs, "triplets_per_s": round(tps, 1)})
            print(rows[-1], flush=True)
    lines = ["| B | K | train_dtype | triplets / s |", "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['samples']} | {r['train_dtype']} | {r['triplets_per_s']:.0f} |" for r in rows]
    md = "\n".join(lines)
    print(md)
    _record.write(args.out, __file__, md, rows)


if __name__ == "__main__":
    main()
