"""Dense voxel embedding vs one encoded patch per voxel, same weights, one run.

    python benchmarks/bench_embed.py [--size 50] [--patch-edges 10 5] [--subset 16384]
                                     [--out benchmarks/results/dense_embedding.json]

For each inference patch edge ``p``, times :func:`hyperseg.embed.embed_volume`
(one tiled fully-convolutional pass) on a ``size^3`` volume, and
:func:`hyperseg.embed.embed_patches` (cut, resize, encode each voxel's patch,
batched) on ``--subset`` voxels, extrapolated to the whole volume (said in
the output). Both run in this one process on the same weights, so their
ratio is one measurement. Wall time and process CPU time (all threads) are
both given; other jobs on the machine inflate the CPU time much less. Prints
a Markdown table with the machine and date, and writes it with the raw rows
to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch

import _record
from hyperseg.config import Config
from hyperseg.embed import embed_patches, embed_volume
from hyperseg.model import HyperVAE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=50)
    ap.add_argument("--patch-edges", type=int, nargs="+", default=[10, 5])
    ap.add_argument("--subset", type=int, default=16384, help="voxels encoded one patch each (extrapolated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(_record.RESULTS / "dense_embedding.json"), help="results file (JSON)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = HyperVAE(Config()).eval()
    n = args.size
    vol = torch.randn(1, n, n, n)
    g = torch.Generator().manual_seed(args.seed)
    voxels = torch.randint(0, n, (args.subset, 3), generator=g)
    cfg = model.cfg
    lines = [f"Command: `{_record.command(__file__)}`", "",
             f"Machine: {_record.machine()}; date {datetime.date.today()}", "",
             f"Volume {n}^3 = {n**3} voxels; default configuration (d = {cfg.latent_dim}, model input edge "
             f"m = {cfg.patch_edge}, embed_tile {cfg.embed_tile}), random weights; per-patch reference timed on "
             f"{args.subset} voxels and extrapolated to {n**3}", "",
             "| patch edge p | dense pass (s) | per-patch, extrapolated (s) | speed-up | dense CPU (s) "
             "| per-patch CPU, extrapolated (s) | speed-up by CPU time | max abs diff on subset |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    rows = []
    for p in args.patch_edges:
        embed_volume(model, vol[:, :12, :12, :12], patch_edge=p)  # warm-up
        t, c = time.perf_counter(), time.process_time()
        dense = embed_volume(model, vol, patch_edge=p)
        t_dense, c_dense = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        ref = embed_patches(model, vol, patch_edge=p, voxels=voxels)
        t_patch = (time.perf_counter() - t) * n**3 / args.subset
        c_patch = (time.process_time() - c) * n**3 / args.subset
        diff = (dense[voxels[:, 0], voxels[:, 1], voxels[:, 2]] - ref).abs().max().item()
        rows.append({"patch_edge": p, "dense_s": t_dense, "per_patch_extrapolated_s": t_patch,
                     "speed_up": t_patch / t_dense, "dense_cpu_s": c_dense,
                     "per_patch_cpu_extrapolated_s": c_patch, "speed_up_cpu": c_patch / c_dense, "max_abs_diff": diff, "embedding_shape": list(dense.shape)})
        lines.append(f"| {p} | {t_dense:.2f} | {t_patch:.1f} | {t_patch / t_dense:.1f}x | {c_dense:.2f} | {c_patch:.1f} "
                     f"| {c_patch / c_dense:.1f}x | {diff:.1e} |")
        print(lines[-1])
    _record.write(args.out, __file__, "\n".join(lines), rows)

if __name__ == "__main__":
    main()
