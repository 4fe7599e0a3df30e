"""Segmenting an OME-Zarr tomogram chunk by chunk: peak memory against volume size, time per voxel.

    python benchmarks/bench_zarr.py [--shape 256 512 512] [--chunks 64 128 128] [--crop 2]
                                    [--levels 2 3] [--patch-edge 10] [--train-steps 10]
                                    [--scheduler threads] [--out benchmarks/results/zarr_memory.json]

A synthetic uint8 tomogram (vesicles: dark-rimmed spheres of random radius on a
noisy grey background, generated chunk by chunk, so no step holds the volume) is
written as a one-level NGFF 0.4 OME-Zarr image with chunks ``--chunks``, and a crop
of ``1 / crop`` of its edge along every axis (``crop^3`` times fewer voxels) beside it.
Each is segmented by the command a user runs,
``hyperseg segment -m RUN -i IN.ome.zarr -o OUT --levels 2 3 --patch-edge P -q``, in a
subprocess of its own whose peak resident memory (``ru_maxrss`` of the finished child,
threads scheduler: one process) and wall time are recorded. The model has the default
configuration after ``--train-steps`` optimiser steps on a 48^3 crop (speed and memory,
not quality). The bar of issue 19: peak RSS at most 2 GB and at most 1.25x the crop's.
Prints a Markdown table and writes it with the rows to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _record

#: Vesicles per million voxels of the full volume.
DENSITY = 12


def vesicles(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``(n, 4)`` centres (z, y, x) and radii of the synthetic vesicles."""
    rng = np.random.default_rng(seed)
    n = max(4, int(DENSITY * np.prod(shape) / 1e6))
    centres = rng.uniform(0, 1, (n, 3)) * np.asarray(shape)
    radii = rng.uniform(6, 20, (n, 1))
    return np.concatenate([centres, radii], axis=1)


def tomogram_block(ves: np.ndarray, seed: int, block_info=None) -> np.ndarray:
    """One chunk of the tomogram, from its global position: background 120 +- noise, vesicle lumen 150,
    membrane (2 voxels) 60; uint8."""
    loc = block_info[None]["array-location"]
    shape = tuple(b - a for a, b in loc)
    z, y, x = np.ogrid[tuple(slice(a, b) for a, b in loc)]
    out = np.full(shape, 120.0, dtype=np.float32)
    for cz, cy, cx, r in ves:
        if any(c + r + 3 < a or c - r - 3 > b for c, (a, b) in zip((cz, cy, cx), loc)):
            continue
        dist = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
        out[dist < r] = 150.0
        out[np.abs(dist - r) < 1.0] = 60.0
    rng = np.random.default_rng([seed, *(a for a, _ in loc)])
    out += rng.normal(0, 12, shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_tomogram(path: Path, shape, chunks, seed: int = 0) -> Path:
    import dask.array as da

    from hyperseg.data.zarr_io import write_ome_zarr_image

    ves = vesicles(shape, seed)
    lazy = da.map_blocks(tomogram_block, ves, seed, dtype=np.uint8,
                         chunks=tuple(tuple(min(c, n - i) for i in range(0, n, c)) for n, c in zip(shape, chunks)))
    return write_ome_zarr_image(path, lazy, spacing=(1.0, 1.0, 1.0), unit="nm", chunks=tuple(chunks))


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` in a child; its wall time and peak RSS (``ru_maxrss`` of the finished child, in MiB)."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
             "print('RESULT', r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    if not line or line[-1].split()[1] != "0":
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    _, rc, wall, rss = line[-1].split()
    return {"wall_s": float(wall), "peak_rss_mib": int(rss) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 512, 512])
    ap.add_argument("--chunks", type=int, nargs=3, default=[64, 128, 128])
    ap.add_argument("--crop", type=int, default=2, help="the crop is shape / crop along every axis")
    ap.add_argument("--levels", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--patch-edge", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--scheduler", default="threads")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "zarr_memory.json")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_zarr_"))
    work.mkdir(parents=True, exist_ok=True)
    hyperseg = [sys.executable, "-m", "hyperseg"]
    try:
        train = work / "train"
        train.mkdir(exist_ok=True)
        small = tomogram_block(vesicles((48, 48, 48), 1), 1, {None: {"array-location": [(0, 48)] * 3}})
        np.save(train / "t0.npy", small.astype(np.float32))
        run = work / "run"
        if not (run / "model.safetensors").exists():
            subprocess.run([*hyperseg, "train", "-i", str(train), "-o", str(run), "--steps", str(args.train_steps),
                            "-q"], check=True)
        full_shape = tuple(args.shape)
        crop_shape = tuple(n // args.crop for n in full_shape)
        rows = []
        for name, shape in (("crop", crop_shape), ("full", full_shape)):
            src = work / f"{name}.ome.zarr"
            t0 = time.perf_counter()
            make_tomogram(src, shape, args.chunks)
            made = time.perf_counter() - t0
            out = work / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [*hyperseg, "segment", "-m", str(run), "-i", str(src), "-o", str(out), "--levels",
                   *map(str, args.levels), "--patch-edge", str(args.patch_edge), "--scheduler", args.scheduler, "-q"]
            res = measure(cmd)
            labels = out / f"{name}.ome.zarr" / "labels"
            written = json.loads((labels / ".zattrs").read_text())["labels"]
            voxels = int(np.prod(shape))
            rows.append({"volume": name, "shape": list(shape), "chunks": list(args.chunks), "voxels": voxels,
                         "write_input_s": round(made, 1), "wall_s": round(res["wall_s"], 1),
                         "us_per_voxel": round(1e6 * res["wall_s"] / voxels, 2),
                         "peak_rss_mib": round(res["peak_rss_mib"], 1), "labels_written": written})
            print(rows[-1], flush=True)
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        lines = ["| volume | shape | voxels | wall (s) | us / voxel | peak RSS (MiB) |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['volume']} | {' x '.join(map(str, r['shape']))} | {r['voxels']:,} | {r['wall_s']} | "
                         f"{r['us_per_voxel']} | {r['peak_rss_mib']} |")
        lines.append(f"\nPeak RSS ratio full / crop: {ratio:.2f} (chunks {' x '.join(map(str, args.chunks))}, "
                     f"--patch-edge {args.patch_edge}, scheduler {args.scheduler}, levels {args.levels}).")
        md = "\n".join(lines)
        print(md)
        _record.write(args.out, __file__, md, rows, rss_ratio=round(ratio, 3),
                      bar="peak RSS <= 2 GB and <= 1.25x the crop's (issue 19)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
