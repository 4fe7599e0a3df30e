"""``hyperseg segment``: segment volumes with a trained model.

Outputs, per case ``{case}`` of the input (a file, or every case of a folder as
:func:`hyperseg.data.io.find_cases` groups them, nnU-Net channel files
included), in the output folder:

* ``{case}_k{K}{suffix}``: one label map per requested number of clusters
  ``K``, on the input's grid and geometry, in the input's format unless
  ``--output-format`` says otherwise;
* ``{case}_embedding.npy`` (``--save-embeddings``): the voxel embeddings that
  were clustered (after ``--smooth``), float32 ``(D, H, W, d)`` ball coordinates;
* ``{case}_report.png`` (``--report``): mid-slices with the labels overlaid and
  the embeddings in the Poincare disk (:func:`hyperseg.report.render_case_report`).

Many volumes: ``--nproc N`` deals the sorted cases out to N processes (case
``i`` to worker ``i % N``); under ``torchrun`` each rank takes its share the
same way (see :mod:`hyperseg.cli.workers`). ``--skip-existing`` skips a case
whose every requested output exists, and writes only the missing outputs of a
case that was half done, so an interrupted run can simply be started again.

Bad input: a case that cannot be segmented is reported as one line,
``hyperseg: error: {file}: {problem}``, on stderr; the other cases are still
processed and the exit status is 2. Everything is computed before anything is
written and every file is written atomically, so a failed case writes nothing
and no earlier output is ever replaced by a half-written file. A volume smaller
than the model's patch is padded (the configured ``pad_mode``) and segmented
like any other; it fails only when it has fewer voxels than the clusters asked for.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import CLUSTERINGS
from .common import USER_ERRORS, UserError, add_common

OUTPUT_FORMATS = ("nii.gz", "nii", "tif", "mrc", "npy")
NAN_POLICIES = ("error", "fill")
#: Largest number of clusters a uint8 label map can hold.
MAX_CLUSTERS = 256
#: Error messages longer than this are cut (a state-dict mismatch lists every tensor).
MAX_MESSAGE = 400


def _output_format(text: str) -> str:
    fmt = text.lower().lstrip(".")
    if fmt == "tiff":
        fmt = "tif"
    if fmt not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(f"unknown output format {text!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    return fmt


def _level_sigma(text: str) -> tuple[int, float]:
    """``"K=SIGMA"`` -> ``(K, SIGMA)`` for ``--level-smooth``."""
    import argparse

    try:
        k, sigma = text.split("=")
        k_int, s_float = int(k), float(sigma)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K=SIGMA, e.g. 2=4, got {text!r}") from None
    if k_int < 1 or not s_float >= 0:
        raise argparse.ArgumentTypeError(f"K must be >= 1 and SIGMA >= 0, got {text!r}")
    return k_int, s_float


def _level_method(text: str) -> tuple[int, str]:
    """``"K=METHOD"`` -> ``(K, METHOD)`` for ``--level-clustering``."""
    import argparse

    try:
        k, method = text.split("=")
        k_int = int(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K=METHOD, e.g. 2=kmedians, got {text!r}") from None
    if k_int < 1 or method not in CLUSTERINGS:
        raise argparse.ArgumentTypeError(f"K must be >= 1 and METHOD one of {', '.join(CLUSTERINGS)}, got {text!r}")
    return k_int, method


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment volumes with a trained model",
        description="Segment a volume, or every case of a folder, into one label map per number of clusters. "
                    "A bad case is reported as one line on stderr and the others are still done (exit status 2). "
                    "A volume smaller than the model's patch is padded and segmented.")
    p.add_argument("-m", "--model", required=True, type=Path, help="run folder written by `hyperseg train`")
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="volume file or folder (nnU-Net channel files {case}_0000.ext, ... are grouped)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--levels", type=int, nargs="+", help="numbers of clusters, one label map each "
                   "(default: the configuration's levels)")
    p.add_argument("--patch-edge", type=int,
                   help="edge of the patch embedded around each voxel (default: the configuration's, 5)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--hierarchy", choices=["independent", "divisive", "agglomerative"],
                   help="independent k-means per level (the paper; default), or nested levels: every cluster "
                        "of a finer level inside one of each coarser level")
    p.add_argument("--clustering", choices=list(CLUSTERINGS),
                   help="one method for every level: hyperbolic k-means (the paper), a mixture with a scale "
                        "per cluster, or k-medians (geometric-median centroids: large regions are not outvoted "
                        "by a small, distant one). Default: k-medians for 2 clusters, k-means otherwise")
    p.add_argument("--smooth", type=float, metavar="SIGMA",
                   help="Gaussian smoothing of the embedding field before clustering, in voxels "
                        "(default: the configuration's smooth_sigma, 2; 0 = off, as in the paper)")
    p.add_argument("--level-smooth", type=_level_sigma, nargs="+", metavar="K=SIGMA",
                   help="a smoothing sigma for the level with K clusters, e.g. 2=4 (overrides --smooth "
                        "for that level; independent levels only)")
    p.add_argument("--level-clustering", type=_level_method, nargs="+", metavar="K=METHOD",
                   help="a clustering method for the level with K clusters, e.g. 2=kmedians (overrides "
                        "--clustering for that level; independent levels only)")
    p.add_argument("--output-format", type=_output_format, metavar="{" + ",".join(OUTPUT_FORMATS) + "}",
                   help="format of the label maps (default: the input's format)")
    p.add_argument("--mask", type=Path, help="foreground mask for intensity normalisation: one file for every "
                   "case, or a folder with one mask per case named like the case")
    p.add_argument("--nan-policy", choices=NAN_POLICIES, default="error",
                   help="NaN/Inf voxels: 'error' (default) or 'fill' with the channel's median")
    p.add_argument("--save-embeddings", action="store_true",
                   help="also write {case}_embedding.npy: float32 (D, H, W, d) ball coordinates "
                        "of the points that were clustered (after smoothing)")
    p.add_argument("--report", action="store_true",
                   help="also write {case}_report.png: mid-slices with labels, embeddings in the Poincare disk")
    p.add_argument("--nproc", type=int, default=1,
                   help="worker processes, each taking a disjoint share of the cases (default 1; "
                        "under torchrun, per rank)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip cases whose outputs all exist (to continue an interrupted run)")
    add_common(p)


# ----------------------------------------------------------------------------- one case
@dataclass
class CaseResult:
    """What happened to one case: ``status`` is ``"done"`` or ``"failed"`` (``message`` says why)."""

    case: str
    status: str
    message: str = ""
    written: list[str] = field(default_factory=list)


@dataclass
class _State:
    """What a worker loads once: the model, its levels, the masks."""

    model: Any
    levels: list[int]
    mask_files: dict[str, Path] | None  # case name -> mask file, when --mask is a folder
    mask: np.ndarray | None  # the (D, H, W) bool mask, when --mask is one file


@dataclass
class SegmentJob:
    """Everything a worker needs to segment its cases (picklable, sent to spawned workers)."""

    model: Path
    output: Path
    levels: list[int]
    patch_edge: int | None = None
    hierarchy: str | None = None
    clustering: str | None = None
    smooth: float | None = None
    level_smooth: dict[int, float] | None = None
    level_clustering: dict[int, str] | None = None
    seed: int = 0
    output_format: str | None = None
    nan_policy: str = "error"
    mask: Path | None = None
    save_embeddings: bool = False
    report: bool = False
    skip_existing: bool = False
    device: str = "cpu"
    progress: bool = False

    # -- outputs --------------------------------------------------------
    def outputs(self, case_name: str, suffix: str) -> dict[str, Path]:
        """The files this job writes for a case, by role: ``k{K}``, ``embedding``, ``report``."""
        out = {f"k{k}": self.output / f"{case_name}_k{k}{suffix}" for k in self.levels}
        if self.save_embeddings:
            out["embedding"] = self.output / f"{case_name}_embedding.npy"
        if self.report:
            out["report"] = self.output / f"{case_name}_report.png"
        return out

    def label_suffix(self, case) -> str:
        """The label map suffix for a case, from its first file's name alone (nothing is read)."""
        from ..data.io import Volume, output_suffix

        return output_suffix(Volume(array=np.empty((1, 1, 1, 1), np.float32), path=case.files[0]),
                             self.output_format)

    def complete(self, case) -> bool:
        """Whether every requested output of ``case`` exists already."""
        return all(p.exists() for p in self.outputs(case.name, self.label_suffix(case)).values())

    # -- worker protocol (see hyperseg.cli.workers.Job) -----------------
    def setup(self, slot: int = 0) -> _State:
        """Load the model on this worker's device (GPU ``slot % count`` for a bare ``cuda``) and the masks."""
        import torch

        from ..data.io import find_cases
        from ..checkpoint import load_model
        from ..utils import resolve_device

        device = resolve_device(self.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", slot % max(torch.cuda.device_count(), 1))
        model = load_model(self.model, device)
        if self.patch_edge:
            model.cfg = model.cfg.replace(embed_patch_edge=self.patch_edge)
        if self.hierarchy:
            model.cfg = model.cfg.replace(hierarchy=self.hierarchy)
        if self.clustering:  # every level, the per-level defaults included; --level-clustering then overrides
            model.cfg = model.cfg.replace(clustering=self.clustering, level_clustering={})
        if self.smooth is not None:
            model.cfg = model.cfg.replace(smooth_sigma=self.smooth)
        if self.level_smooth:
            model.cfg = model.cfg.replace(level_smooth_sigma={**model.cfg.level_smooth_sigma, **self.level_smooth})
        if self.level_clustering:
            model.cfg = model.cfg.replace(level_clustering={**model.cfg.level_clustering, **self.level_clustering})
        mask_files = mask = None
        if self.mask is not None:
            if self.mask.is_dir():
                mask_files = {c.name: c.files[0] for c in find_cases(self.mask)}
            else:
                mask = _read_mask(self.mask)
        return _State(model=model, levels=list(self.levels), mask_files=mask_files, mask=mask)

    def failed(self, case, message: str) -> CaseResult:
        return CaseResult(case=case.name, status="failed", message=_name_the_file(message, case))

    def run_case(self, state: _State, case) -> CaseResult:
        """Segment one case and write its outputs; never raises for a bad case (Ctrl-C still stops)."""
        try:
            return self._run_case(state, case)
        except MemoryError as err:
            return self.failed(case, f"out of memory ({err}); use fewer --nproc workers or a larger machine")
        except (*USER_ERRORS, UserError, OSError) as err:
            return self.failed(case, str(err))
        except Exception as err:  # noqa: BLE001 - one broken case must not end a run over thousands
            return self.failed(case, f"internal error ({type(err).__name__}: {err}); please report this "
                                     "with the file if you can share it")

    def _run_case(self, state: _State, case) -> CaseResult:
        from ..data.io import output_suffix, read_case, write_label_map
        from ..pipeline import segment_volume
        from ..report import render_case_report, write_png

        first = case.files[0]
        vol = read_case(case, nan_policy=self.nan_policy)
        cfg = state.model.cfg
        channels = vol.array.shape[0]
        if channels != cfg.in_channels:
            raise UserError(f"{first}: has {channels} channel(s) but the model in {self.model} was trained on "
                            f"{cfg.in_channels}; segment it with a model trained on {channels}-channel data")
        _check_segmentable(vol.array, first, max(state.levels))
        mask = self._mask_for(state, case, vol)
        outputs = self.outputs(case.name, output_suffix(vol, self.output_format))
        if self.skip_existing:
            outputs = {role: p for role, p in outputs.items() if not p.exists()}
        seg = segment_volume(state.model, vol, state.levels, seed=self.seed, progress=self.progress, mask=mask)
        # everything is computed before anything is written: a failure above leaves no file behind
        png = None
        if "report" in outputs:
            png = render_case_report(vol.array[0], seg.labels, seg.embedding,
                                     c=cfg.c if cfg.latent == "hyperbolic" else None,
                                     spacing=vol.spacing, title=case.name, seed=self.seed)
        written = []
        for k in state.levels:
            path = outputs.get(f"k{k}")
            if path is not None:
                written.append(str(write_label_map(path, seg.labels[k], vol)))
        if "embedding" in outputs:
            emb = np.ascontiguousarray(seg.embedding, dtype=np.float32)
            written.append(str(_save_npy(outputs["embedding"], emb)))
        if png is not None:
            written.append(str(write_png(outputs["report"], png)))
        return CaseResult(case=case.name, status="done", written=written)

    def _mask_for(self, state: _State, case, vol) -> np.ndarray | None:
        """The boolean foreground mask ``(D, H, W)`` for ``case``, or ``None`` without ``--mask``."""
        if state.mask is not None:
            mask, where = state.mask, self.mask
        elif state.mask_files is not None:
            where = state.mask_files.get(case.name)
            if where is None:
                raise UserError(f"{case.files[0]}: no mask named {case.name}.* in {self.mask}; "
                                "add one or leave out --mask")
            mask = _read_mask(where)
        else:
            return None
        if mask.shape != tuple(vol.array.shape[1:]):
            raise UserError(f"{case.files[0]}: the mask {where} has shape {mask.shape} but the volume has "
                            f"{tuple(vol.array.shape[1:])}; give a mask on the volume's grid")
        return mask


def _read_mask(path: Path) -> np.ndarray:
    """A foreground mask file as bool ``(D, H, W)`` (voxels > 0); an empty mask is an error."""
    from ..data.io import read_labels

    mask = read_labels(path) > 0
    if not mask.any():
        raise UserError(f"{path}: the mask is empty (no voxel > 0); give a foreground mask or leave out --mask")
    return mask


def _check_segmentable(array: np.ndarray, file: Path, n_clusters: int) -> None:
    """Refuse a volume with fewer voxels than clusters (constant volumes are refused by ``read_case``)."""
    n_voxels = int(np.prod(array.shape[1:]))
    if n_voxels < n_clusters:
        raise UserError(f"{file}: has only {n_voxels} voxel(s), fewer than the {n_clusters} clusters asked for; "
                        "ask for fewer with --levels")


def _save_npy(path: Path, array: np.ndarray) -> Path:
    from ..utils import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)
    return path


def _one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line, cut at ``limit`` characters."""
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _name_the_file(message: str, case) -> str:
    """One line that starts by naming the case's file (unless the message already names one of them)."""
    message = _one_line(message)
    if not any(str(f) in message for f in case.files):
        message = f"{case.files[0]}: {message}"
    return message


# ----------------------------------------------------------------------------- the command
def _prepare_output(out: Path) -> None:
    """Create the output folder and check that files can be written there (one clear error if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hyperseg-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{out}: cannot write to the output folder ({err.strerror or err}); "
                        "choose another -o folder or fix its permissions") from None


def _check_args(args: argparse.Namespace) -> None:
    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    if args.patch_edge is not None and args.patch_edge < 1:
        raise UserError(f"--patch-edge must be >= 1, got {args.patch_edge}")
    if args.level_smooth and args.hierarchy not in (None, "independent"):
        raise UserError("--level-smooth needs independent levels: nested levels are cut from one "
                        "embedding field; drop --hierarchy or use --smooth")
    if args.level_clustering and args.hierarchy not in (None, "independent"):
        raise UserError("--level-clustering needs independent levels: nested levels are cut by one "
                        "method; drop --hierarchy or use --clustering")
    if args.smooth is not None and not args.smooth >= 0:
        raise UserError(f"--smooth must be >= 0 voxels (0 turns smoothing off), got {args.smooth}")
    for k in args.levels or []:
        if not 1 <= k <= MAX_CLUSTERS:
            raise UserError(f"--levels: {k} clusters is out of range; use 1 to {MAX_CLUSTERS}")
    if args.mask is not None and not args.mask.exists():
        raise UserError(f"{args.mask}: no such mask file or folder")


def run(args: argparse.Namespace) -> int:
    """Segment every case of ``args.input``; exit status 2 when any case failed."""
    import torch
    from tqdm.auto import tqdm

    from ..data.io import find_cases
    from ..checkpoint import load_model
    from ..distributed import env_world
    from .workers import run_local, run_spawned, shard, threads_per_process

    _check_args(args)
    ranks = env_world()
    try:  # a missing or foreign checkpoint stops here, before any work
        cfg = load_model(args.model, "cpu").cfg
    except ValueError as err:  # e.g. a state dict that does not fit its configuration: many lines
        raise UserError(_one_line(str(err))) from None
    levels = [int(k) for k in (args.levels or cfg.levels)]
    levels = sorted(set(levels), key=levels.index)
    cases = find_cases(args.input)
    if args.input.is_dir() and args.input.resolve() == args.output.resolve():
        raise UserError(f"{args.output}: the output folder is the input folder; its label maps would be "
                        "read as cases next time; choose another -o folder")
    _prepare_output(args.output)
    job = SegmentJob(model=args.model, output=args.output, levels=levels, patch_edge=args.patch_edge,
                     hierarchy=args.hierarchy, clustering=args.clustering, smooth=args.smooth,
                     level_smooth=dict(args.level_smooth) if args.level_smooth else None,
                     level_clustering=dict(args.level_clustering) if args.level_clustering else None,
                     seed=args.seed, output_format=args.output_format, nan_policy=args.nan_policy,
                     mask=args.mask, save_embeddings=args.save_embeddings, report=args.report,
                     skip_existing=args.skip_existing, device=args.device, progress=False)

    failed: list[CaseResult] = []
    done = 0
    mine = shard(cases, ranks.rank, ranks.size)
    todo = [c for c in mine if not (args.skip_existing and job.complete(c))]
    skipped = len(mine) - len(todo)

    nproc = max(1, min(args.nproc, len(todo)))
    threads = threads_per_process(ranks.local_size * nproc)
    where = f" (rank {ranks.rank} of {ranks.size})" if ranks.size > 1 else ""
    bar = tqdm(total=len(todo), desc=f"segment{where}", unit="case", disable=args.quiet)

    def on_result(result: CaseResult) -> None:
        nonlocal done
        bar.update(1)
        if result.status == "failed":
            failed.append(result)
            tqdm.write(f"hyperseg: error: {result.message}", file=sys.stderr)
        else:
            done += 1

    try:
        if todo and nproc == 1:
            job.progress = not args.quiet
            previous = torch.get_num_threads()
            try:
                run_local(job, todo, on_result, threads, slot=ranks.local_rank)
            finally:
                torch.set_num_threads(previous)
        elif todo:
            run_spawned(job, [shard(todo, j, nproc) for j in range(nproc)], on_result, threads,
                        slot0=ranks.local_rank * nproc)
    finally:
        bar.close()
    parts = [f"segmented {done} of {len(mine)} cases{where} into {args.output}"]
    if skipped:
        parts.append(f"{skipped} skipped (outputs exist)")
    if failed:
        parts.append(f"{len(failed)} failed (see the errors above)")
    print("; ".join(parts))
    return 2 if failed else 0


__all__ = ["OUTPUT_FORMATS", "CaseResult", "SegmentJob", "add_parser", "run"]
