"""The dense pass and the smoothing of two source trees, timed alternately in one run (a regression check).

    python benchmarks/bench_dense_ab.py --trees OLD/src src [--edge 80] [--repeats 2]
                                        [--out benchmarks/results/dense_ab.json]

Each tree (a ``src`` folder holding ``hyperseg``, e.g. a ``git worktree`` of an older commit) runs in a
subprocess of its own that builds a default model (``Config()``, seed 0, untrained: speed, not quality),
embeds a random ``edge^3`` volume with :func:`hyperseg.embed.embed_volume` in bfloat16 and in float32
(after a small warm-up pass each), and smooths the embedding (``smooth_embedding``, sigma 2). The trees
alternate ``--repeats`` times, so that a machine whose speed drifts (shared cores) slows both alike:
compare the trees as ratios within this run, never against another file's seconds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _record

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import hyperseg
from hyperseg.config import Config
from hyperseg.embed import embed_volume
from hyperseg.model import HyperVAE
from hyperseg.smooth import smooth_embedding
assert hyperseg.__file__.startswith(sys.argv[1]), hyperseg.__file__
edge = int(sys.argv[2])
torch.set_num_threads(2)
torch.manual_seed(0)
model = HyperVAE(Config()).eval()
x = torch.randn(1, edge, edge, edge)
out = {}
for dtype in ("bfloat16", "float32"):
    embed_volume(model, x[:, :24, :24, :24], dtype=dtype)
    t = time.perf_counter()
    emb = embed_volume(model, x, dtype=dtype)
    out[f"embed_{dtype}_s"] = time.perf_counter() - t
t = time.perf_counter()
smooth_embedding(emb, 2.0)
out["smooth_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", nargs=2, type=Path, required=True, metavar="SRC", help="two src folders: A then B")
    ap.add_argument("--edge", type=int, default=80, help="edge of the random volume (voxels)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "dense_ab.json")
    args = ap.parse_args()
    trees = [str(t.resolve()) for t in args.trees]
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    for _ in range(args.repeats):
        for t in trees:
            res = subprocess.run([sys.executable, "-c", CHILD, t, str(args.edge)], capture_output=True, text=True,
                                 check=True)
            runs[t].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(t, runs[t][-1], flush=True)
    keys = ["embed_bfloat16_s", "embed_float32_s", "smooth_s"]
    rows = [{"tree": t, **{k: round(min(r[k] for r in runs[t]), 3) for k in keys}, "runs": runs[t]} for t in trees]
    a, b = rows
    lines = ["| tree | embed bfloat16 (s) | embed float32 (s) | smooth (s) |", "|---|---|---|---|"]
    lines += [f"| {r['tree']} | {r['embed_bfloat16_s']} | {r['embed_float32_s']} | {r['smooth_s']} |" for r in rows]
    lines.append("| A / B | " + " | ".join(f"{a[k] / b[k]:.2f}" for k in keys) + " |")
    md = "\n".join(lines) + f"\n\nBest of {args.repeats} per tree, trees alternating; volume {args.edge}^3."
    print(md)
    _record.write(args.out, __file__, md, rows, edge=args.edge, repeats=args.repeats)


if __name__ == "__main__":
    main()
