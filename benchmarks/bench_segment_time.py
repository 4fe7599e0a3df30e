"""Wall and CPU time to segment one 50^3 volume at three levels, for segmentation stages of one model.

    python benchmarks/bench_segment_time.py --run RUN --volume data/test/case100.nii.gz [--repeats 3]

Runs :func:`hyperseg.pipeline.segment_volume` (normalise, embed, smooth, cluster, refine) at levels
2 / 4 / 6 with the run's model and each stage of ``bench_default.STAGES`` named in ``--stages``
(default: the default with its dense pass in float32, the default, whose ``embed_dtype: auto`` runs it in
bfloat16 on processors with native bfloat16, and the previous default), ``--repeats`` times each in
turn (interleaved, so that a change in the machine's load affects every stage alike); reports the
best and median wall and CPU seconds, and each stage's median wall time as a ratio to the first
stage's. Writes ``--out`` (default ``benchmarks/results/segment_time_50.json``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import _record
from bench_default import STAGES, stage_config
from hyperseg.checkpoint import load_model
from hyperseg.data.io import read_volume
from hyperseg.pipeline import segment_volume

DEFAULT = "+ three refinement passes (refine_passes 3) = default"
COH = "+ the structure-tensor coherence in the finer levels' intensity term (coherence_sigma 2)"
NO_COH = "+ 2 k-means starts instead of 4 (the default before the coherence channel)"
OVER4 = "+ finer levels over-clustered 2x, interleaved clusters merged (overcluster 2), 4 k-means starts"
PREVIOUS = "+ intensity mask and FAST's recipe where it agrees with the split (foreground auto) (previous default)"
#: stages of this benchmark beside bench_default's: the default with its dense pass in float32 (``embed_dtype``)
EXTRA = {"default, dense pass in float32": {"embed_dtype": "float32"}}
DEFAULT_STAGES = ["default, dense pass in float32", DEFAULT, COH, NO_COH, PREVIOUS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--volume", type=Path, required=True)
    ap.add_argument("--stages", nargs="+", default=DEFAULT_STAGES, help=f"from {[*EXTRA, *STAGES]}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "segment_time_50.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.run).eval()
    vol = read_volume(args.volume)
    base = model.cfg
    wall = {s: [] for s in args.stages}
    cpu = {s: [] for s in args.stages}
    stages = {**STAGES, **EXTRA}
    model.cfg = stage_config(base, stages[args.stages[0]])
    segment_volume(model, vol, [2, 4, 6])  # warm-up: imports, allocator
    for _ in range(args.repeats):
        for s in args.stages:
            model.cfg = stage_config(base, stages[s])
            t, c = time.perf_counter(), time.process_time()
            segment_volume(model, vol, [2, 4, 6])
            wall[s].append(time.perf_counter() - t)
            cpu[s].append(time.process_time() - c)
    first = float(np.median(wall[args.stages[0]]))
    rows, lines = [], ["| stage | wall s (best / median) | CPU s (median) | median wall / first stage |", "|---|---|---|---|"]
    for s in args.stages:
        r = {"stage": s, "wall_best": round(min(wall[s]), 3), "wall_median": round(float(np.median(wall[s])), 3),
             "cpu_median": round(float(np.median(cpu[s])), 3),
             "ratio_to_first": round(float(np.median(wall[s])) / first, 3), "shape": list(vol.spatial_shape)}
        rows.append(r)
        lines.append(f"| {s} | {r['wall_best']} / {r['wall_median']} | {r['cpu_median']} | {r['ratio_to_first']} |")
    md = "\n".join(lines)
    print(md)
    _record.write(args.out, __file__, md, rows, run=str(args.run), volume=str(args.volume), threads=args.threads)


if __name__ == "__main__":
    main()
