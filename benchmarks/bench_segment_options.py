"""Segmentation-stage options (after the encoder) against validation Dice, for one trained model.

    python benchmarks/bench_segment_options.py --run RUN --data DATA/val [--cases 20]
        [--cache DIR] [--smooth 2 1] [--intensity-weights 0 2] [--potts-betas 0 1]
        [--potts-methods mean_field icm] [--icm-betas 2] [--mask] [--out FILE]

Embeds the first ``--cases`` volumes of ``DATA`` (a split folder of ``hyperseg
synth``, with ``labels/``) with the model of ``RUN`` (cached under ``--cache``
as ``CASE_embedding.npy``, so a second run skips the encoder), smooths each
embedding field with each ``--smooth`` sigma, clusters it at 2 / 4 / 6
clusters with the run's clustering (:func:`hyperseg.segment.fit_level`) once,
and then scores every combination of

* ``intensity_weight`` (the voxel's own normalised intensity next to its
  embedding) and
* ``potts_beta`` / ``potts_method`` (a Potts prior on the clustering's
  log-likelihoods)

through :func:`hyperseg.segment.regularise_level`, the step ``segment_array``
runs. ``--mask`` adds a row that clusters ``K - 1`` classes inside the
automatic foreground mask of :func:`hyperseg.comparison.peers.auto_mask` and
labels 0 outside (``K = 2`` is the mask itself), as Atropos and FAST are run.
Prints the Hungarian-matched Dice per level (mean +- std over volumes) and the
CPU seconds per volume of the segmentation stage (smoothing, clustering,
regularisation; CPU time, which a shared machine inflates less than wall time),
and writes them to ``--out``. Use a validation split to choose: the test split
is for the final numbers.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

import _record
from hyperseg.checkpoint import load_model
from hyperseg.comparison.peers import auto_mask
from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import normalize_for
from hyperseg.embed import embed_volume
from hyperseg.metrics import mean_dice
from hyperseg.segment import fit_level, regularise_level
from hyperseg.smooth import smooth_embedding

LEVELS = {1: 2, 2: 4, 3: 6}  # truth level -> clusters


def _embedding(model, f: Path, x: np.ndarray, cache: Path | None) -> np.ndarray:
    path = cache / f"{f.name[: -len('.nii.gz')]}_embedding.npy" if cache else None
    if path is not None and path.exists():
        return np.load(path)
    emb = embed_volume(model, torch.from_numpy(x)).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
    return emb


def _masked_level(points: np.ndarray, mask: np.ndarray, k: int, cfg, seed: int = 0) -> np.ndarray:
    """``k`` labels: 0 outside ``mask`` (flat bool), ``1..k-1`` the clusters of the points inside."""
    out = np.zeros(mask.size, dtype=np.int64)
    if k == 2:
        out[mask] = 1
    else:
        out[mask] = fit_level(points[mask], k - 1, cfg, seed=seed).labels + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="split folder with caseNNN.nii.gz and labels/")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=None, help="folder for the embeddings (read when there)")
    ap.add_argument("--smooth", type=float, nargs="+", default=[None],
                    help="smoothing sigmas in voxels (default: the run's smooth_sigma)")
    ap.add_argument("--intensity-weights", type=float, nargs="+", default=[0.0])
    ap.add_argument("--potts-betas", type=float, nargs="+", default=[0.0])
    ap.add_argument("--potts-methods", nargs="+", choices=["mean_field", "icm"], default=["mean_field"])
    ap.add_argument("--icm-betas", type=float, nargs="*", default=[],
                    help="also ICM at these betas only (with every intensity weight), beside --potts-methods")
    ap.add_argument("--potts-iter", type=int, default=5)
    ap.add_argument("--mask", action="store_true", help="also the row clustering inside the automatic mask")
    ap.add_argument("--earlier-rows", type=Path, default=None,
                    help="a JSON list of rows of an earlier sweep (another case count) kept in --out as earlier_rows")
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "segment_options_simple_val.json")
    args = ap.parse_args()
    model = load_model(args.run)
    cfg = model.cfg
    files = sorted(args.data.glob("case*.nii.gz"))[: args.cases]
    sigmas = [cfg.smooth_sigma if s is None else s for s in args.smooth]
    combos = [(w, 0.0, "mean_field") for w in args.intensity_weights]
    combos += [(w, b, m) for w, b, m in itertools.product(args.intensity_weights, args.potts_betas,
                                                           args.potts_methods) if b > 0]
    combos += [(w, b, "icm") for w in args.intensity_weights for b in args.icm_betas
               if b > 0 and (w, b, "icm") not in combos]
    rows = [(s, *c) for s in sigmas for c in combos] + ([("mask", 0.0, 0.0, "")] if args.mask else [])
    scores = {r: {lvl: [] for lvl in LEVELS} for r in rows}
    cpu = {r: 0.0 for r in rows}
    for f in files:
        case = f.name[: -len(".nii.gz")]
        x = normalize_for(cfg, read_volume(f).array, None)
        emb = _embedding(model, f, x, args.cache)
        shape = emb.shape[:3]
        values = x.reshape(x.shape[0], -1).T
        truth = {lvl: read_labels(args.data / "labels" / f"{case}_level{lvl}.nii.gz") for lvl in LEVELS}
        for s in sigmas:
            t0 = time.process_time()
            points = smooth_embedding(emb, s, latent=cfg.latent, c=cfg.c).reshape(-1, emb.shape[-1])
            fits = {k: fit_level(points, k, cfg) for k in LEVELS.values()}
            base = time.process_time() - t0
            for w, b, m in combos:
                c2 = cfg.replace(intensity_weight=w, potts_beta=b, potts_method=m, potts_iter=args.potts_iter)
                t = time.process_time()
                labels = {k: regularise_level(points, fits[k], c2, shape, values) for k in LEVELS.values()}
                cpu[(s, w, b, m)] += base + time.process_time() - t
                for lvl, k in LEVELS.items():
                    scores[(s, w, b, m)][lvl].append(mean_dice(labels[k].reshape(shape), truth[lvl]))
        if args.mask:
            t = time.process_time()
            points = smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c).reshape(-1, emb.shape[-1])
            fg = auto_mask(x[0]).reshape(-1)
            for lvl, k in LEVELS.items():
                scores[rows[-1]][lvl].append(mean_dice(_masked_level(points, fg, k, cfg).reshape(shape), truth[lvl]))
            cpu[rows[-1]] += time.process_time() - t
        print(f"{case} done", flush=True)
    out, lines = [], ["| smooth | intensity_weight | potts_beta | potts_method | level 1 | level 2 | level 3 | CPU s |",
                      "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, w, b, m = r
        row = {"smooth_sigma": s, "intensity_weight": w, "potts_beta": b, "potts_method": m if b > 0 else None,
               "potts_iter": args.potts_iter if b > 0 else None, "cases": len(files),
               "cpu_seconds_per_volume": round(cpu[r] / len(files), 3)}
        if s == "mask":
            row.update(smooth_sigma=cfg.smooth_sigma, mask="auto (comparison.peers.auto_mask), label 0 outside")
        for lvl in LEVELS:
            v = np.asarray(scores[r][lvl])
            row[f"dice_level{lvl}"], row[f"dice_level{lvl}_std"] = round(float(v.mean()), 4), round(float(v.std()), 4)
        out.append(row)
        cells = " | ".join(f"{row[f'dice_level{lvl}']:.4f} ± {row[f'dice_level{lvl}_std']:.3f}" for lvl in LEVELS)
        lines.append(f"| {s} | {w} | {b} | {row['potts_method'] or '-'} | {cells} | {row['cpu_seconds_per_volume']} |")
    md = "\n".join(lines)
    print(md)
    earlier = json.loads(args.earlier_rows.read_text()) if args.earlier_rows else []
    _record.write(args.out, __file__, md, out, run=str(args.run), data=str(args.data), earlier_rows=earlier,
                  default=dict(smooth_sigma=cfg.smooth_sigma, clustering=cfg.clustering,
                               level_clustering=cfg.level_clustering))


if __name__ == "__main__":
    main()
