"""Profiles and the benchmark loop: data, one fresh process per row, results.json, table.md.

Protocol (paper.md 1.7): every model is trained self-supervised on the
dataset's training split, then each test volume is embedded (5^3 patches) and
clustered on its own into as many clusters as its level has classes (2, 4, 6),
by :func:`hyperseg.pipeline.segment_volume` as ``hyperseg segment`` does (a
nested row re-clusters that embedding with :func:`hyperseg.segment.cluster_levels`);
Dice is Hungarian-matched per volume (:func:`hyperseg.metrics.mean_dice`).
A row's Dice is the mean and standard deviation over all (seed, test volume)
pairs; ``dice_seed_std`` is the spread of the per-seed means. ``seconds`` is the
row's wall time (all seeds: training, embedding, clustering); ``peak_mb`` is
the peak resident memory of the row's process (each row runs in a fresh
process, so rows do not inherit each other's memory).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from tqdm.auto import tqdm

from ..utils import atomic_write_text
from .rows import Row, find_rows
from .table import format_table, quoted_rows

if TYPE_CHECKING:
    from ..data.io import Volume


@dataclass(frozen=True)
class Profile:
    """How big a benchmark run is.

    ``steps``: optimiser steps per trained model; ``seeds``: training seeds per
    model row; ``n_train``/``n_test``: volumes per split of each synthetic
    dataset (``hyperseg synth --seed 0``); ``config``: configuration overrides
    applied to every model row; ``highpass``: ``{dataset: sigma}``, a bias-field
    high-pass (:func:`hyperseg.data.preprocess.highpass`) applied to *every*
    row's input on that dataset, the classical rows included, so that all rows
    see the same images; ``dataset_config``: ``{dataset: overrides}``, applied
    on top of ``config`` to every model row of that dataset (the ablations
    included, so that they stay comparable); ``triplet_config``: ``{dataset:
    overrides}`` applied on top of those only to the model rows *with* a triplet
    loss: settings such as ``intensity_offset`` exist to shape what the triplet
    loss can match, and without that loss they only add noise to the
    reconstruction target (the Euclidean base drops from 0.761 / 0.444 / 0.297 to
    0.680 / 0.348 / 0.224 with the offsets: benchmarks/results/
    full_profile_irregular_euclidean_base*.json), so each row
    gets the setting its objective uses; ``threads``: torch threads per row
    process.
    """

    name: str
    steps: int
    n_train: int
    n_test: int
    seeds: tuple[int, ...] = (0, 1, 2)
    datasets: tuple[str, ...] = ("simple", "irregular")
    size: int = 50
    config: dict[str, Any] = field(default_factory=dict)
    highpass: dict[str, float] = field(default_factory=dict)
    dataset_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    triplet_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int = 2


PROFILES = {
    # 7 model rows x 3 seeds x 2 datasets = 42 models of 150 steps: about 37 minutes on 2 cores
    # (the row seconds of benchmarks/results/quick_profile_no_offsets.json)
    # The irregular variant's bias field is removed (sigma 6 voxels) from every row's input, as a user
    # would (chosen on its validation volumes, BENCHMARKS.md); the simple one is used as the paper did.
    # On the irregular variant the rows with a triplet loss also give every triplet patch a random
    # intensity offset (sigma 1), chosen on its validation volumes (BENCHMARKS.md, "The irregular bar");
    # rows without one train without them (they only hurt a row without a triplet loss,
    # BENCHMARKS.md), and the simple variant keeps the default.
    "quick": Profile("quick", steps=150, n_train=40, n_test=4, config={"kmeans_n_init": 2},
                     highpass={"irregular": 6.0}, triplet_config={"irregular": {"intensity_offset": 1.0}}),
    # 42 models of 1500 steps (the default) and 20 test volumes: about 8 minutes per model with its
    # scoring on 2 cores, about 6 hours in all (benchmarks/results/full_profile_simple.json, BENCHMARKS.md)
    "full": Profile("full", steps=1500, n_train=80, n_test=20, highpass={"irregular": 6.0},
                    triplet_config={"irregular": {"intensity_offset": 1.0}}),
}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def peak_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ``ru_maxrss`` in KB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if platform.system() != "Darwin" else rss / 2**20


def prepare_data(root: Path, profile: Profile, dataset: str, progress: bool) -> Path:
    """Write (or reuse) ``root/data/{dataset}``: the synthetic benchmark with seed 0."""
    from ..data.synthetic import write_benchmark

    out = root / "data" / dataset
    meta = out / "levels.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if (m.get("variant") == dataset and m.get("shape") == [profile.size] * 3 and
                len(m["splits"]["train"]) == profile.n_train and len(m["splits"]["test"]) == profile.n_test):
            return out
    return write_benchmark(out, seed=0, n_train=profile.n_train, n_val=0, n_test=profile.n_test,
                           shape=(profile.size,) * 3, variant=dataset, progress=progress)


def _load_split(data: Path, split: str) -> tuple[list[str], list[Volume], dict[int, list[np.ndarray]]]:
    """Case names, volumes ``(1, D, H, W)`` and ground truth ``{level: [(D, H, W)]}`` of a split."""
    from ..data.io import read_labels, read_volume
    from ..evaluate import find_levels_json

    names = json.loads((data / "levels.json").read_text())["splits"][split]
    volumes = [read_volume(data / split / f"{n}.nii.gz") for n in names]
    truth = {lvl: [read_labels(data / split / "labels" / f"{n}_level{lvl}.nii.gz") for n in names]
             for lvl in find_levels_json(data)}
    return names, volumes, truth


def _summary(scores: dict[int, list[list[float]]]) -> tuple[dict, dict, dict]:
    """``scores[level][seed][volume]`` -> Dice mean, std over all pairs, std of the seed means."""
    mean, std, seed_std = {}, {}, {}
    for lvl, per_seed in scores.items():
        flat = np.array([d for s in per_seed for d in s], dtype=np.float64)
        mean[str(lvl)] = float(np.nanmean(flat))
        std[str(lvl)] = float(np.nanstd(flat))
        seed_std[str(lvl)] = float(np.std([np.nanmean(s) for s in per_seed])) if len(per_seed) > 1 else None
    return mean, std, seed_std


def run_row(row: Row, dataset: str, data: Path, work: Path, profile: Profile) -> list[dict]:
    """Train and/or apply one row's method on one dataset; returns its result rows."""
    import torch

    from ..evaluate import find_levels_json
    from ..metrics import mean_dice

    torch.set_num_threads(profile.threads)
    started = time.time()
    _, volumes, truth = _load_split(data, "test")
    images = [v.array for v in volumes]
    levels = find_levels_json(data)  # {level: number of classes}, from the data's levels.json
    ks = list(levels.values())
    sigma = profile.highpass.get(dataset, 0.0)
    base = {"method": row.method, "dataset": dataset, "measured": True, "n_test_volumes": len(images),
            "highpass_sigma": sigma}
    if row.kind == "classical":
        from ..data.preprocess import highpass
        from .baselines import BASELINES

        fn: Callable = BASELINES[row.baseline]  # type: ignore[index]
        if sigma > 0:  # the same images the model rows see (they high-pass through their config)
            images = [highpass(img, sigma, mask="auto") for img in images]
        scores = {lvl: [[mean_dice(fn(img, k, seed=0), truth[lvl][i]) for i, img in enumerate(images)]]
                  for lvl, k in levels.items()}
        mean, std, _ = _summary(scores)
        return [{**base, "dice": mean, "dice_std": std, "dice_seed_std": None, "n_seeds": 0,
                 "seconds": round(time.time() - started, 1), "peak_mb": round(peak_mb(), 1)}]

    from ..config import Config
    from ..pipeline import segment_volume
    from ..segment import cluster_levels
    from ..train import train

    _, train_volumes, _ = _load_split(data, "train")
    train_images = [v.array for v in train_volumes]
    variants = ["independent", *row.nested]
    shared = {**profile.config, **profile.dataset_config.get(dataset, {})}
    # the row's own objective decides whether the triplet settings apply; its overrides win
    has_triplet = Config(**{**shared, **row.overrides}).triplet
    overrides = {**shared, **(profile.triplet_config.get(dataset, {}) if has_triplet else {}), **row.overrides}
    scores: dict[str, dict[int, list[list[float]]]] = {v: {lvl: [] for lvl in levels} for v in variants}
    cluster_seconds = {v: 0.0 for v in variants}
    for seed in profile.seeds:
        cfg = Config(**{**overrides, "seed": seed, "levels": ks, "steps": profile.steps,
                        "highpass_sigma": sigma})
        run_dir = work / f"{dataset}_{row.method.replace(' ', '_').replace('+', 'and')}_seed{seed}"
        model = train(cfg, train_images, run_dir, steps=profile.steps, progress=False)
        per = {v: {lvl: [] for lvl in levels} for v in variants}
        for i, volume in enumerate(volumes):
            t = time.time()
            seg = segment_volume(model, volume, ks, seed=seed)
            cluster_seconds["independent"] += time.time() - t
            for lvl, k in levels.items():
                per["independent"][lvl].append(mean_dice(seg.labels[k], truth[lvl][i]))
            flat = seg.embedding.reshape(-1, seg.embedding.shape[-1])
            for v in row.nested:
                t = time.time()
                maps = cluster_levels(flat, ks, cfg.replace(hierarchy=v, intensity_weight=0.0, potts_beta=0.0),
                                      seed=seed)
                cluster_seconds[v] += time.time() - t
                for lvl, k in levels.items():
                    per[v][lvl].append(mean_dice(maps[k].reshape(truth[lvl][i].shape), truth[lvl][i]))
        for v in variants:
            for lvl in levels:
                scores[v][lvl].append(per[v][lvl])
    total = time.time() - started
    out = []
    for v in variants:
        mean, std, seed_std = _summary(scores[v])
        name = row.method if v == "independent" else f"{row.method}, nested ({v})"
        # a nested row shares training and embedding; its clustering replaces the independent one
        seconds = total - cluster_seconds["independent"] + cluster_seconds[v] if v != "independent" else total
        out.append({**base, "method": name, "dice": mean, "dice_std": std, "dice_seed_std": seed_std,
                    "n_seeds": len(profile.seeds), "steps": profile.steps,
                    "config": {**overrides, **({"hierarchy": v} if v != "independent" else {})},
                    "seconds": round(seconds, 1), "peak_mb": round(peak_mb(), 1)})
    return out


def _in_fresh_process(fn: Callable, *args) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


class ResumeError(ValueError):
    """``resume`` cannot continue the results found in the output folder."""


def _measured_before(out: Path, prof: Profile) -> list[dict]:
    """The measured rows that a run of the same profile left in ``out`` (for ``resume``)."""
    path = out / "results.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ResumeError(f"{path} is not valid JSON ({e}); delete it or choose another output folder") from e
    if old.get("profile") != json.loads(json.dumps(asdict(prof))):
        raise ResumeError(f"{path} was written by another profile ({old.get('profile', {}).get('name')!r} with "
                         f"other settings); resume it with the same --profile and --datasets, or choose another "
                         f"output folder")
    return [r for r in old.get("rows", []) if r.get("measured")]


def run_benchmark(out: str | Path, profile: Profile | str = "quick", rows: list[str] | None = None,
                  progress: bool = True, isolate: bool = True, resume: bool = False) -> list[dict]:
    """Run every row on every dataset of ``profile``; write ``out/results.json`` and ``out/table.md``.

    ``results.json`` is rewritten after each row, so an interrupted run keeps
    what it measured. With ``resume``, the rows an interrupted run of the same
    profile left in ``out/results.json`` are kept and not run again (a row is
    done when its method has a result for that dataset). ``isolate=False``
    runs rows in this process (tests); then ``peak_mb`` is this process's
    peak so far.
    """
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    chosen = find_rows(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = _measured_before(out, prof) if resume else []
    done = {(r["dataset"], r["method"]) for r in results}
    header = {"profile": asdict(prof), "machine": machine(),
              "date": datetime.date.today().isoformat(), "python": platform.python_version()}

    def save() -> None:
        all_rows = results + quoted_rows()
        atomic_write_text(out / "results.json", json.dumps({**header, "rows": all_rows}, indent=2) + "\n")
        atomic_write_text(out / "table.md", format_table(all_rows))

    jobs = [(row, ds) for ds in prof.datasets for row in chosen if (ds, row.method) not in done]
    bar = tqdm(jobs, desc=f"bench ({prof.name})", unit="row", disable=not progress)
    for row, ds in bar:
        bar.set_postfix_str(f"{ds}: {row.method}")
        data = prepare_data(out, prof, ds, progress=False)
        args = (row, ds, data, out / "runs", prof)
        results += _in_fresh_process(run_row, *args) if isolate else run_row(*args)
        save()
    save()
    return results + quoted_rows()


__all__ = ["Profile", "PROFILES", "ResumeError", "run_benchmark", "run_row"]
