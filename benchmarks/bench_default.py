"""What each part of the default segmentation stage buys, against the peers, on synthetic volumes.

    python benchmarks/bench_default.py --runs RUN_SEED0 RUN_SEED1 RUN_SEED2 --data DATA/test \\
        [--cache DIR] [--peers] [--out FILE]

Every run (one trained model per seed, ``hyperseg train``) embeds every
volume of ``--data`` (a split folder of ``hyperseg synth`` with ``labels/``)
once, cached under ``--cache``; each *stage* of :data:`STAGES` (Config fields on
top of the run's) then segments that embedding with
:func:`hyperseg.segment.segment_embedding`, the step ``hyperseg segment``
runs after the encoder. The stages go from the paper's segmentation stage to
the current default one part at a time, then the ``mri`` preset. ``--peers``
adds the classical and peer rows of :mod:`hyperseg.comparison.peers` on the
same volumes (they do not depend on the seed; ANTs Atropos needs the
``[peers]`` extra). Scores: Hungarian-matched mean Dice per level, mean over
volumes, then mean +- standard deviation over the runs; CPU seconds per
volume of the segmentation stage (after the encoder). Writes ``--out``
(default ``benchmarks/results/default_stages_simple_test.json``). Choose on a
validation split; score the test split once per configuration.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import _record
from hyperseg.checkpoint import load_model
from hyperseg.config import MASKED_STAGE_FIELDS, PRESETS_DIR, Config
from hyperseg.data.io import read_labels, read_volume
from hyperseg.data.preprocess import normalize_for
from hyperseg.embed import embed_volume
from hyperseg.data.synthetic import LEVEL_CLASSES
from hyperseg.metrics import dice_iou
from hyperseg.segment import segment_embedding

LEVELS = {1: 2, 2: 4, 3: 6}  # truth level -> clusters
PAPER_STAGE = {"hierarchy": "independent", "clustering": "kmeans", "level_clustering": {}, "smooth_sigma": 0.0,
               "intensity_weight": 0.0, "potts_beta": 0.0, "refine": "once", "overcluster": 1, "kmeans_n_init": 4,
               "coherence_sigma": 0.0, "refine_passes": 1}
#: the stages before the coherence channel and the repeated refinement (coherence_sigma 0, refine_passes 1)
_NO_COH = {"coherence_sigma": 0.0, "refine_passes": 1}
#: name -> Config fields on top of the run's (``"preset"``: a shipped preset's fields first)
STAGES: dict[str, dict] = {
    "paper segmentation stage (k-means per level, no smoothing)": PAPER_STAGE,
    "+ smoothing sigma 2, k-medians at 2 clusters": {
        "hierarchy": "independent", "intensity_weight": 0.0, "potts_beta": 0.0, "refine": "once", "kmeans_n_init": 4,
        **_NO_COH},
    "+ finer levels inside the 2-cluster split": {"hierarchy": "foreground", "foreground": "split",
                                                  "intensity_weight": 0.0, "potts_beta": 0.0, "refine": "once",
                                                  "overcluster": 1, "kmeans_n_init": 4, **_NO_COH},
    "+ intensity term (weight 6)": {"hierarchy": "foreground", "foreground": "split", "intensity_weight": 6.0,
                                    "potts_beta": 0.0, "refine": "once", "overcluster": 1, "kmeans_n_init": 4,
                                    **_NO_COH},
    "+ Potts prior (beta 4, mean field)": {"hierarchy": "foreground", "foreground": "split", "intensity_weight": 6.0,
                                           "potts_beta": 4.0, "refine": "once", "overcluster": 1, "kmeans_n_init": 4,
                                           **_NO_COH},
    "+ intensity mask and FAST's recipe where it agrees with the split (foreground auto) (previous default)": {
        "overcluster": 1, "kmeans_n_init": 4, **_NO_COH},
    "+ finer levels over-clustered 2x, interleaved clusters merged (overcluster 2), 4 k-means starts": {
        "kmeans_n_init": 4, **_NO_COH},
    "+ 2 k-means starts instead of 4 (the default before the coherence channel)": dict(_NO_COH),
    "+ the structure-tensor coherence in the finer levels' intensity term (coherence_sigma 2)": {"refine_passes": 1},
    "+ three refinement passes (refine_passes 3) = default": {},
    "default without the coherence channel (three passes)": {"coherence_sigma": 0.0},
    "default, its masked stage intensity only": {"masked_stage": {**Config().masked_stage, "embedding_weight": 0.0}},
    "default without the intensity term": {"foreground": "split", "intensity_weight": 0.0, "potts_beta": 4.0,
                                           "refine": "once"},
    "default, independent levels": {"hierarchy": "independent", "intensity_weight": 6.0, "potts_beta": 4.0,
                                    "refine": "once"},
    "mri preset": {"preset": "mri"},
}


def _score(labels: np.ndarray, truth: np.ndarray, lvl: int) -> np.ndarray:
    """Per-class Dice ``(n_classes,)`` of level ``lvl`` after Hungarian matching (NaN: class absent)."""
    return dice_iou(np.asarray(labels), np.asarray(truth), n_classes=len(LEVEL_CLASSES[lvl]))["dice"]


def _summary(per_run: list[dict[int, list[np.ndarray]]], run_std: bool = True) -> dict:
    """Row fields from per-run, per-level lists of per-class Dice: the mean Dice per level (mean over volumes of
    the mean over present classes, then over runs), its std over runs, and each class's Dice (mean over the
    volumes holding it and the runs); ``run_std``: also the std over runs (hyperseg rows, one model per seed)."""
    out = {}
    for lvl in LEVELS:
        means = [float(np.mean([np.nanmean(d) for d in p[lvl]])) for p in per_run]
        out[f"dice_level{lvl}"] = round(float(np.mean(means)), 4)
        if run_std:
            out[f"dice_level{lvl}_run_std"] = round(float(np.std(means)), 4)
        cls = np.nanmean(np.stack([d for p in per_run for d in p[lvl]]), axis=0)
        out[f"class_dice_level{lvl}"] = {name: round(float(v), 4) for name, v in zip(LEVEL_CLASSES[lvl], cls)}
    return out


#: segmentation-stage fields a stage may set; the rest come from the run
STAGE_FIELDS = ("hierarchy", "foreground", "foreground_agreement", "masked_stage", "clustering", "level_clustering",
                "smooth_sigma", "level_smooth_sigma", "overcluster", "kmeans_n_init", "coherence_sigma",
                "refine_passes", *MASKED_STAGE_FIELDS)


def stage_config(run_cfg: Config, spec: dict) -> Config:
    """The run's configuration with the stage's fields on top (a preset's segmentation fields first)."""
    import yaml

    spec = dict(spec)
    fields: dict = {}
    if "preset" in spec:
        preset = yaml.safe_load((PRESETS_DIR / f"{spec.pop('preset')}.yaml").read_text())
        fields.update({k: v for k, v in preset.items() if k in STAGE_FIELDS})
    fields.update(spec)
    # a stage that does not name these gets the field defaults, not an old run's saved values
    base = {**run_cfg.to_dict(), **{k: getattr(Config(), k) for k in STAGE_FIELDS}}
    return Config.from_dict({**base, **fields})


def _embedding(model, f: Path, x: np.ndarray, cache: Path | None, tag: str) -> np.ndarray:
    path = cache / tag / f"{f.name[: -len('.nii.gz')]}_embedding.npy" if cache else None
    if path is not None and path.exists():
        return np.load(path)
    emb = embed_volume(model, torch.from_numpy(x)).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
    return emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders, one per seed")
    ap.add_argument("--data", type=Path, required=True, help="split folder with caseNNN.nii.gz and labels/")
    ap.add_argument("--cases", type=int, default=None, help="only the first N volumes")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the embeddings (read when there)")
    ap.add_argument("--stages", nargs="*", default=None, help=f"stages to run (default all): {list(STAGES)}")
    ap.add_argument("--stage", action="append", default=[], metavar="NAME=JSON",
                    help='an extra stage, Config fields as JSON, e.g. \'finer levels by the mixture={"clustering": '
                         '"mixture"}\' (repeatable; runs after --stages)')
    ap.add_argument("--paper-runs", type=Path, nargs="*", default=[],
                    help="runs trained with --preset paper: a row segmented with the paper's stage")
    ap.add_argument("--peers", action="store_true", help="also the peer rows (comparison/peers.py)")
    ap.add_argument("--out", type=Path, default=_record.RESULTS / "default_stages_simple_test.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(args.data.glob("case*.nii.gz"))[: args.cases]
    stages = list(STAGES) if args.stages is None else args.stages
    specs = dict(STAGES)  # the named stages and those of --stage
    for spec in args.stage:
        name, sep, fields = spec.partition("=")
        if not sep or not name.strip():
            ap.error(f"--stage {spec!r}: write NAME=JSON")
        try:
            specs[name.strip()] = json.loads(fields)
        except json.JSONDecodeError as err:
            ap.error(f"--stage {name!r}: its fields are not JSON ({err})")
        stages.append(name.strip())
    scores = {s: [] for s in stages}  # per run: {level: [dice per volume]}
    cpu = {s: 0.0 for s in stages}
    masked = {s: 0 for s in stages}  # volumes whose foreground was the intensity mask (foreground auto/threshold)
    agreements = {s: [] for s in stages}  # foreground auto: Dice of the intensity mask and the split, per volume
    truth = {f: {lvl: read_labels(args.data / "labels" / f"{f.name[:-7]}_level{lvl}.nii.gz") for lvl in LEVELS}
             for f in files}
    for i, run in enumerate(args.runs):
        model = load_model(run).eval()
        per = {s: {lvl: [] for lvl in LEVELS} for s in stages}
        for f in files:
            raw = read_volume(f).array
            x = normalize_for(model.cfg, raw, None)
            emb = _embedding(model, f, x, args.cache, f"run{i}")
            for s in stages:
                cfg = stage_config(model.cfg, specs[s])
                t = time.process_time()
                seg = segment_embedding(cfg, emb, x, list(LEVELS.values()), seed=0, array=raw)
                cpu[s] += time.process_time() - t
                masked[s] += seg.foreground == "mask"
                if seg.agreement is not None:
                    agreements[s].append(seg.agreement)
                for lvl, k in LEVELS.items():
                    per[s][lvl].append(_score(seg.labels[k], truth[f][lvl], lvl))
            print(f"run {i} {f.name} done", flush=True)
        for s in stages:
            scores[s].append(per[s])
    rows = []
    if args.paper_runs:
        per_run = []
        t = time.process_time()
        for i, run in enumerate(args.paper_runs):
            model = load_model(run).eval()
            cfg = stage_config(model.cfg, PAPER_STAGE)
            per = {lvl: [] for lvl in LEVELS}
            for f in files:
                raw = read_volume(f).array
                x = normalize_for(model.cfg, raw, None)
                emb = _embedding(model, f, x, args.cache, f"paper{i}")
                seg = segment_embedding(cfg, emb, x, list(LEVELS.values()), seed=0, array=raw)
                for lvl, k in LEVELS.items():
                    per[lvl].append(_score(seg.labels[k], truth[f][lvl], lvl))
            per_run.append(per)
        rows.append({"row": "paper preset (train --preset paper, paper segmentation stage)", "kind": "hyperseg",
                     "config": {"preset": "paper"}, "n_runs": len(args.paper_runs), "cases": len(files),
                     **_summary(per_run), "cpu_seconds_per_volume": None})
    for s in stages:
        rows.append({"row": s, "kind": "hyperseg", "config": specs[s], "n_runs": len(args.runs), "cases": len(files),
                     **_summary(scores[s]),
                     "cpu_seconds_per_volume": round(cpu[s] / (len(files) * len(args.runs)), 3),
                     "volumes_in_intensity_mask": masked[s], "volumes_scored": len(files) * len(args.runs),
                     **({"mask_split_agreement_min": round(min(agreements[s]), 4),
                         "mask_split_agreement_max": round(max(agreements[s]), 4)} if agreements[s] else {})})
    if args.peers:
        from hyperseg.comparison.peers import PEERS

        skipped: dict[str, str] = {}
        for name, peer in PEERS.items():
            per = {lvl: [] for lvl in LEVELS}
            t = time.process_time()
            try:
                for f in files:
                    img = read_volume(f).array[0]
                    for lvl, k in LEVELS.items():
                        per[lvl].append(_score(peer(img, k, (1.0, 1.0, 1.0), seed=0), truth[f][lvl], lvl))
            except (ImportError, RuntimeError) as err:  # not installed, or the peer failed on a volume
                print(f"{name}: skipped ({err})")
                skipped[name] = str(err).strip().splitlines()[-1]
                continue
            rows.append({"row": name, "kind": "peer", "cases": len(files), **_summary([per], run_std=False),
                         "cpu_seconds_per_volume": round((time.process_time() - t) / len(files), 3)})
            print(f"{name} done", flush=True)
    lines = ["| row | level 1 | level 2 | level 3 | CPU s / volume | volumes in the intensity mask |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for lvl in LEVELS:
            sd = r.get(f"dice_level{lvl}_run_std")
            cells.append(f"{r[f'dice_level{lvl}']:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
        mask = f"{r['volumes_in_intensity_mask']} / {r['volumes_scored']}" if "volumes_scored" in r else "-"
        lines.append(f"| {r['row']} | {' | '.join(cells)} | {r['cpu_seconds_per_volume'] or '-'} | {mask} |")
    for lvl in (2, 3):
        names = LEVEL_CLASSES[lvl]
        lines += ["", f"Dice per class, level {lvl}:", "", f"| row | {' | '.join(names)} |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {r['row']} | " + " | ".join(f"{r[f'class_dice_level{lvl}'][n]:.3f}" for n in names) + " |"
                  for r in rows]
    md = "\n".join(lines)
    print(md)
    _record.write(args.out, __file__, md, rows, runs=[str(r) for r in args.runs], data=str(args.data),
                  **({"skipped_peers": skipped} if args.peers and skipped else {}),
                  score="Hungarian-matched mean Dice per level (hyperseg.metrics.dice_iou), mean over volumes, "
                        "then mean ± std over runs (seeds); class_dice_level*: each class's matched Dice, mean "
                        "over the volumes holding it and the runs")


if __name__ == "__main__":
    main()
