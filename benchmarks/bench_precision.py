"""What the dense pass's bfloat16 convolutions cost in Dice and buy in time, against float32, in one run.

    python benchmarks/bench_precision.py --runs RUN_SEED0 RUN_SEED1 RUN_SEED2 --data DATA/val \\
        [--mri-runs DIR ...] [--colin DIR] [--out benchmarks/results/embed_precision.json]

For every synthetic run (``hyperseg train``, one per seed) and every volume of
``--data`` (a split folder of ``hyperseg synth`` with ``labels/``), the volume is
embedded twice by :func:`hyperseg.embed.embed_volume`, with ``dtype="float32"``
and ``dtype="bfloat16"`` (the encoder's convolutions; heads and ``exp_0`` stay
float32 / float64), each timed, and each embedding segmented with the default
stage (:func:`hyperseg.segment.segment_embedding`, levels 2 / 4 / 6).
Reported: Hungarian-matched mean Dice per level for both, the share of voxels
whose label differs between the two, the largest and the mean
distance between the two embeddings in the ball, and the embedding time ratio.

``--mri-runs``: run folders of ``benchmarks/bench_mri.py`` (named
``ch2bet_{grid}mm_noise_{n}pct_bias_{b}pct``); each setting's degraded Colin27
volume is rebuilt from ``--colin`` exactly as bench_mri does and scored the same
way (level 3: background / grey matter / rest of brain; level 4: merged
three-tissue score). Validation volumes and Colin27 only: this decides a
default, so it never reads test volumes.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch

import _record
from bench_default import LEVELS, stage_config
from hyperseg.checkpoint import load_model
from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import normalize_for
from hyperseg.embed import embed_volume
from hyperseg.geometry import dist
from hyperseg.metrics import mean_dice
from hyperseg.nn.precision import cpu_has_native_bf16
from hyperseg.segment import segment_embedding

DTYPES = ("float32", "bfloat16")
SETTING = re.compile(r"ch2bet_(\d)mm_noise_([\d.]+)pct_bias_([\d.]+)pct$")


def _embed_both(model, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float]]:
    """Embeddings and seconds per dtype, and the ball distance between the two (max, mean)."""
    embs, secs = {}, {}
    for name in DTYPES:
        t = time.perf_counter()
        embs[name] = embed_volume(model, torch.from_numpy(x), dtype=name).numpy()
        secs[name] = time.perf_counter() - t
    a, b = (torch.from_numpy(embs[n]).reshape(-1, embs[n].shape[-1]) for n in DTYPES)
    if model.cfg.latent == "hyperbolic":
        d = dist(a, b, model.cfg.c)
    else:
        d = (a - b).norm(dim=-1)
    return embs, secs, {"max": float(d.max()), "mean": float(d.mean())}


def synthetic(runs: list[Path], data: Path, cases: int | None) -> dict:
    files = sorted(data.glob("case*.nii.gz"))[:cases]
    dice = {n: {lvl: [] for lvl in LEVELS} for n in DTYPES}
    changed, dmax, dmean, secs = [], [], [], {n: 0.0 for n in DTYPES}
    for run in runs:
        model = load_model(run).eval()
        cfg = stage_config(model.cfg, {})
        for f in files:
            raw = read_volume(f).array
            x = normalize_for(model.cfg, raw, None)
            embs, s, d = _embed_both(model, x)
            dmax.append(d["max"]), dmean.append(d["mean"])
            labels = {}
            for n in DTYPES:
                secs[n] += s[n]
                labels[n] = segment_embedding(cfg, embs[n], x, list(LEVELS.values()), seed=0, array=raw).labels
                for lvl, k in LEVELS.items():
                    truth = read_labels(data / "labels" / f"{f.name[:-7]}_level{lvl}.nii.gz")
                    dice[n][lvl].append(mean_dice(labels[n][k], truth))
            changed.append(float(np.mean([np.mean(labels["float32"][k] != labels["bfloat16"][k])
                                          for k in LEVELS.values()])))
            print(f"{run.name} {f.name}: float32 {[round(dice['float32'][l][-1], 3) for l in LEVELS]} "
                  f"bfloat16 {[round(dice['bfloat16'][l][-1], 3) for l in LEVELS]}", flush=True)
    return {"data": str(data), "runs": [str(r) for r in runs], "cases": len(files),
            **{f"dice_{n}": {str(l): round(float(np.mean(v)), 4) for l, v in dice[n].items()} for n in DTYPES},
            "labels_changed_fraction": round(float(np.mean(changed)), 5),
            "ball_distance_max": max(dmax), "ball_distance_mean": float(np.mean(dmean)),
            "embed_seconds": secs, "time_ratio_float32_over_bfloat16": secs["float32"] / secs["bfloat16"]}


def colin(runs: list[Path], data: Path) -> list[dict]:
    from bench_mri import degrade, load_colin, score

    x, truth = load_colin(data, "ch2bet")
    rows = []
    for run in runs:
        m = SETTING.search(run.name)
        if m is None:
            raise SystemExit(f"bench_precision.py: {run}: not a bench_mri run folder (ch2bet_Gmm_noise_Npct_bias_Bpct)")
        grid, noise, bias = int(m[1]), float(m[2]), float(m[3])
        img, t, _ = degrade(x, truth, grid, noise / 100, bias / 100, seed=0)
        model = load_model(run).eval()
        cfg = stage_config(model.cfg, {})
        xn = normalize_for(model.cfg, img[None], None)
        embs, secs, d = _embed_both(model, xn)
        row = {"setting": run.name, "shape": list(img.shape), "embed_seconds": secs,
               "time_ratio_float32_over_bfloat16": secs["float32"] / secs["bfloat16"], "ball_distance": d}
        labels = {}
        for n in DTYPES:
            labels[n] = segment_embedding(cfg, embs[n], xn, [2, 3, 4], seed=0, array=img[None],
                                          voxel_size=float(grid)).labels
            row[f"dice_{n}"] = {k: round(v, 4) for k, v in score(labels[n], t).items()}
        row["labels_changed_fraction"] = round(float(np.mean([np.mean(labels["float32"][k] != labels["bfloat16"][k])
                                                              for k in (2, 3, 4)])), 5)
        print(run.name, row["dice_float32"], row["dice_bfloat16"], flush=True)
        rows.append(row)
    return rows


def markdown(syn: dict | None, mri: list[dict]) -> str:
    lines = ["| data | float32 Dice | bfloat16 Dice | labels changed | embed time float32 / bfloat16 |",
             "|---|---|---|---|---|"]
    if syn:
        f = " / ".join(f"{syn['dice_float32'][str(l)]:.3f}" for l in LEVELS)
        b = " / ".join(f"{syn['dice_bfloat16'][str(l)]:.3f}" for l in LEVELS)
        lines.append(f"| {Path(syn['data']).name}, {len(syn['runs'])} runs x {syn['cases']} volumes (L1 / L2 / L3) "
                     f"| {f} | {b} | {100 * syn['labels_changed_fraction']:.2f} % "
                     f"| {syn['time_ratio_float32_over_bfloat16']:.2f} |")
    for r in mri:
        f = " / ".join(f"{r['dice_float32'][k]:.3f}" for k in ("3", "4"))
        b = " / ".join(f"{r['dice_bfloat16'][k]:.3f}" for k in ("3", "4"))
        lines.append(f"| {r['setting']} (L3 / L4) | {f} | {b} | {100 * r['labels_changed_fraction']:.2f} % "
                     f"| {r['time_ratio_float32_over_bfloat16']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="synthetic run folders, one per seed")
    ap.add_argument("--data", type=Path, default=None, help="synthetic split folder (validation)")
    ap.add_argument("--cases", type=int, default=None, help="only the first N volumes")
    ap.add_argument("--mri-runs", type=Path, nargs="*", default=[], help="bench_mri.py run folders")
    ap.add_argument("--colin", type=Path, default=Path("/usr/share/mricron/templates"),
                    help="folder with ch2bet.nii.gz and aal.nii.gz")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "embed_precision.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_has_native_bf16():
        print("bench_precision.py: this CPU lists no amx_bf16 / avx512_bf16 flag: bfloat16 is emulated here")
    syn = synthetic(args.runs, args.data, args.cases) if args.runs else None
    mri = colin(args.mri_runs, args.colin) if args.mri_runs else []
    md = markdown(syn, mri)
    print(md)
    _record.write(args.out, __file__, md, [r for r in [syn, *mri] if r],
                  native_bf16=cpu_has_native_bf16())


if __name__ == "__main__":
    main()
