"""``hyperseg segment``: segment volumes with a trained model.

The command line resolves one :class:`~hyperseg.config.Config` (the run's,
with the segmentation options on top, validated once by
:meth:`Config.validate <hyperseg.config.Config.validate>`) and one
:class:`~hyperseg.pipeline.SegmentOptions`, and hands every case to
:func:`hyperseg.pipeline.segment_case`. Outputs, per case ``{case}`` of the
input (a file, or every case of a folder as :func:`hyperseg.data.io.find_cases`
groups them, nnU-Net channel files included), in the output folder, named by
:func:`hyperseg.pipeline.case_outputs`:

* ``{case}.ome.zarr/labels/k{K}`` for a Zarr / OME-Zarr input: NGFF label images,
  segmented chunk by chunk on Dask (:mod:`hyperseg.chunked`; ``--chunks``,
  ``--scheduler``, ``--zarr-level``) unless ``--in-memory``;
* ``{case}_k{K}{suffix}``: one label map per requested number of clusters
  ``K``, on the input's grid and geometry, in the input's format unless
  ``--output-format`` says otherwise;
* ``{case}_embedding.npy`` (``--save-embeddings``): the voxel embeddings that
  were clustered (after ``--smooth``), float32 ``(D, H, W, d)`` ball coordinates;
* ``{case}_report.png`` (``--report`` or ``--report png``): mid-slices with the labels
  overlaid and the embeddings in the Poincare disk (:func:`hyperseg.report.render_case_report`);
* ``{case}_report.html`` (``--report`` or ``--report html``): every slice on all three
  axes with an opacity slider, the disk and the cluster sizes, one self-contained file
  (:func:`hyperseg.report_html.render_html_report`).

Many volumes: ``--nproc N`` deals the sorted cases out to N processes (case
``i`` to worker ``i % N``); under ``torchrun`` each rank takes its share the
same way (see :mod:`hyperseg.cli.workers`). ``--skip-existing`` skips a case
whose every requested output exists, and writes only the missing outputs of a
case that was half done, so an interrupted run can simply be started again.
The model is loaded once per process: the command's own process loads it (a
missing or unusable checkpoint stops the run before any output is made) and
segments with it when it works alone; each spawned worker loads its own copy.

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
import dataclasses
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import CLUSTERINGS, COMPUTE_DTYPES, FOREGROUNDS, HIERARCHIES, POTTS_METHODS, REFINE_METHODS, TREE_HIERARCHIES, Config
from .common import OUTPUT_FORMAT_CHOICES, USER_ERRORS, UserError, add_common, add_nan_policy

if TYPE_CHECKING:  # imported where used: building the parser must not import torch
    from ..pipeline import SegmentOptions

#: What ``--report KIND ...`` can ask for; a bare ``--report`` asks for all of them.
REPORT_KINDS = ("png", "html")
#: Error messages longer than this are cut (a state-dict mismatch lists every tensor).
MAX_MESSAGE = 400
#: The :class:`Config` field each segmentation option sets (``Config.validate`` checks them).
OPTION_FIELDS = {"levels": "levels", "patch_edge": "embed_patch_edge", "hierarchy": "hierarchy",
                 "clustering": "clustering", "smooth": "smooth_sigma", "level_smooth": "level_smooth_sigma",
                 "level_clustering": "level_clustering", "intensity_weight": "intensity_weight",
                 "potts_beta": "potts_beta", "potts_method": "potts_method", "refine": "refine",
                 "embedding_weight": "embedding_weight", "foreground": "foreground", "embed_dtype": "embed_dtype",
                 "overcluster": "overcluster", "coherence_sigma": "coherence_sigma"}


def _level_value(kind: str, example: str, convert):
    """An argparse type for ``"K=VALUE"`` -> ``(K, convert(VALUE))``; the values are checked by ``Config``."""
    def parse(text: str) -> tuple[int, Any]:
        try:
            k, value = text.split("=")
            return int(k), convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected K={kind}, e.g. {example}, got {text!r}") from None

    return parse


def _format_name(text: str) -> str:
    """``".TIF"`` -> ``"tif"``: a label-map format as :class:`~hyperseg.pipeline.SegmentOptions` names it."""
    return text.lower().lstrip(".")


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
    p.add_argument("--embed-dtype", choices=list(COMPUTE_DTYPES),
                   help="what the encoder's convolutions run in: 'auto' (the default of new runs: bfloat16 where "
                        "the processor multiplies it natively, Intel AMX / AVX512-BF16 or CUDA, else float32), "
                        "'float32' or 'bfloat16'")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--hierarchy", choices=list(HIERARCHIES),
                   help="how the levels relate: 'foreground' (the default of new runs) splits foreground from "
                        "background at 2 clusters and clusters every finer level inside the foreground; "
                        "'independent' clusters each level on its own (the paper); 'divisive' / 'agglomerative' "
                        "cut every level from one k-means tree (no intensity term or Potts prior)")
    p.add_argument("--foreground", choices=list(FOREGROUNDS),
                   help="with --hierarchy foreground, where the foreground comes from: 'split' (the 2-cluster "
                        "level), 'threshold' (the automatic intensity mask, as ANTs' get_mask) or 'auto' (the "
                        "default of new runs: the mask, refined by FSL FAST's recipe, where it agrees with the "
                        "split, as for a brain in a T1 scan; else the split)")
    p.add_argument("--clustering", choices=list(CLUSTERINGS),
                   help="one method for every level: hyperbolic k-means (the paper), a mixture with a scale "
                        "per cluster, or k-medians (geometric-median centroids: large regions are not outvoted "
                        "by a small, distant one). Default: k-medians for 2 clusters, k-means otherwise")
    p.add_argument("--smooth", type=float, metavar="SIGMA",
                   help="Gaussian smoothing of the embedding field before clustering, in voxels "
                        "(default: the configuration's smooth_sigma, 2; 0 = off, as in the paper)")
    p.add_argument("--level-smooth", type=_level_value("SIGMA", "2=4", float), nargs="+", metavar="K=SIGMA",
                   help="a smoothing sigma for the level with K clusters, e.g. 2=4 (overrides --smooth "
                        "for that level; independent levels only)")
    p.add_argument("--level-clustering", type=_level_value("METHOD", "2=kmedians", str), nargs="+",
                   metavar="K=METHOD",
                   help="a clustering method for the level with K clusters, e.g. 2=kmedians (overrides "
                        "--clustering for that level; independent levels only)")
    p.add_argument("--intensity-weight", type=float, metavar="W",
                   help="weight of each voxel's own intensities next to its embedding (0 = off; default: the "
                        "configuration's, 6 for new runs)")
    p.add_argument("--potts-beta", type=float, metavar="BETA",
                   help="Potts prior coupling per disagreeing 6-neighbour pair (0 = off; default: the "
                        "configuration's, 4 for new runs)")
    p.add_argument("--potts-method", choices=list(POTTS_METHODS), help="how the Potts prior is applied")
    p.add_argument("--refine", choices=list(REFINE_METHODS),
                   help="'once': the clustering's log-likelihoods plus the intensity term, one Potts pass; "
                        "'hmrf_em': hidden-MRF EM of a Gaussian per cluster on embedding and intensities "
                        "(the 'mri' preset)")
    p.add_argument("--overcluster", type=int, metavar="N",
                   help="cluster each finer level of the foreground hierarchy into N times its clusters, then merge "
                        "the most interleaved pairs back (1 = off; default: the configuration's, 2 for new runs; "
                        "not with --refine hmrf_em or the masked stage)")
    p.add_argument("--coherence-sigma", type=float, metavar="SIGMA",
                   help="the finer levels' intensity term also reads the structure-tensor coherence of the "
                        "intensities at this integration scale in voxels (oriented against isotropic textures; "
                        "0 = off; default: the configuration's, 2 for new runs; foreground hierarchy with "
                        "--refine once only)")
    p.add_argument("--embedding-weight", type=float, metavar="W",
                   help="weight of the embedding in --refine hmrf_em (0 = intensities only)")
    p.add_argument("--output-format", type=_format_name, choices=OUTPUT_FORMAT_CHOICES, metavar="FORMAT",
                   help="format of the label maps, one of %(choices)s (default: the input's format)")
    p.add_argument("--mask", type=Path, help="foreground mask for intensity normalisation: one file for every "
                   "case, or a folder with one mask per case named like the case")
    add_nan_policy(p)
    p.add_argument("--save-embeddings", action="store_true",
                   help="also write {case}_embedding.npy: float32 (D, H, W, d) ball coordinates "
                        "of the points that were clustered (after smoothing)")
    p.add_argument("--report", nargs="*", choices=REPORT_KINDS, metavar="KIND",
                   help="also write {case}_report.png (mid-slices with labels, embeddings in the Poincare disk) "
                        "and {case}_report.html (every slice of every level, opacity slider, disk, cluster sizes; "
                        "one self-contained file); `--report png` or `--report html` writes one of them")
    p.add_argument("--nproc", type=int, default=1,
                   help="worker processes, each taking a disjoint share of the cases (default 1; "
                        "under torchrun, per rank)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip cases whose outputs all exist (to continue an interrupted run)")
    z = p.add_argument_group("Zarr / OME-Zarr inputs (written as OUT/{case}.ome.zarr/labels/k{K})")
    z.add_argument("--zarr-level", type=int, default=0, metavar="N",
                   help="multiscale level of an OME-Zarr image to segment (default 0, full resolution)")
    z.add_argument("--chunks", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="processing chunk of the chunk-by-chunk (Dask) segmentation (default: the store's chunks, "
                        "at least 32 voxels an edge); memory grows with the chunk, not the volume")
    z.add_argument("--scheduler", metavar="WHERE",
                   help="where Dask runs the chunks: threads (default), processes, synchronous, or the address of a "
                        "running dask.distributed scheduler, e.g. tcp://HOST:8786")
    z.add_argument("--in-memory", action="store_true",
                   help="read a Zarr input whole and segment it like any other volume (the full segmentation "
                        "stage, reports; needs the memory)")
    add_common(p)


# ----------------------------------------------------------------------------- the configuration
def segment_config(cfg: Config, args: argparse.Namespace) -> Config:
    """The run's configuration ``cfg`` with the segmentation options of ``args`` on top, validated once.

    ``--levels`` (duplicates dropped), ``--patch-edge``, ``--hierarchy``,
    ``--smooth`` and ``--level-smooth`` set their fields (:data:`OPTION_FIELDS`);
    ``--clustering`` sets every level's method (the per-level defaults
    included), and ``--level-clustering`` then overrides single levels. A
    rule of :meth:`Config.validate` that the result breaks is a
    :class:`UserError` naming the option that set the field.
    """
    levels = list(dict.fromkeys(int(k) for k in (args.levels or cfg.levels)))
    changes: dict[str, Any] = {"levels": levels}
    if args.patch_edge is not None:
        changes["embed_patch_edge"] = args.patch_edge
    if args.hierarchy is not None:
        changes["hierarchy"] = args.hierarchy
    if args.clustering is not None:
        changes.update(clustering=args.clustering, level_clustering={})
    if args.smooth is not None:
        changes["smooth_sigma"] = args.smooth
    for option in ("intensity_weight", "potts_beta", "potts_method", "refine", "embedding_weight", "foreground",
                   "embed_dtype", "overcluster", "coherence_sigma"):
        if getattr(args, option, None) is not None:
            changes[option] = getattr(args, option)
    if changes.get("hierarchy") in TREE_HIERARCHIES:
        # a k-means tree refines nothing: the run's intensity term and prior are dropped unless asked for
        changes.setdefault("intensity_weight", 0.0)
        changes.setdefault("potts_beta", 0.0)
        changes.setdefault("refine", "once")
    if changes.get("hierarchy", "foreground") != "foreground" or changes.get("refine", "once") != "once":
        changes.setdefault("overcluster", 1)  # nothing to merge: the run's over-clustering is dropped unless asked
        changes.setdefault("coherence_sigma", 0.0)  # and the finer levels' coherence channel with it
    if args.level_smooth:
        changes["level_smooth_sigma"] = {**cfg.level_smooth_sigma, **dict(args.level_smooth)}
    if args.level_clustering:
        changes["level_clustering"] = {**changes.get("level_clustering", cfg.level_clustering),
                                       **dict(args.level_clustering)}
    try:
        resolved = cfg.replace(**changes)
    except ValueError as err:
        raise UserError(_name_the_option(str(err), args)) from None
    # not a Config rule: nested levels ignore level_clustering (the default sets level 2), so only an
    # explicit request for per-level methods can be refused
    if args.level_clustering and resolved.hierarchy in TREE_HIERARCHIES:
        raise UserError("--level-clustering needs independent levels: nested levels are cut by one "
                        "method; drop --hierarchy or use --clustering")
    return resolved


def _name_the_option(message: str, args: argparse.Namespace) -> str:
    """``message`` (``"invalid configuration: FIELD ..."``) with the option that set ``FIELD`` named."""
    subject = re.match(r"invalid configuration: (\w+)", message)
    for option, name in OPTION_FIELDS.items():
        if subject and subject[1] == name and getattr(args, option, None) is not None:
            return f"{message} (set by --{option.replace('_', '-')})"
    return message


# ----------------------------------------------------------------------------- one worker
@dataclass
class CaseResult:
    """What happened to one case: ``status`` is ``"done"`` or ``"failed"`` (``message`` says why)."""

    case: str
    status: str
    message: str = ""
    written: list[str] = field(default_factory=list)
    #: how the case was segmented, for the user: e.g. which foreground ``foreground: auto`` chose
    note: str = ""


@dataclass
class _State:
    """What a worker loads once: the model (with the resolved configuration) and the masks."""

    model: Any
    mask_files: dict[str, Path] | None  # case name -> mask file, when --mask is a folder
    mask: np.ndarray | None  # the (D, H, W) bool mask, when --mask is one file


@dataclass
class SegmentJob:
    """Everything a worker needs to segment its cases (picklable, sent to spawned workers).

    ``run``: the run folder; ``cfg``: the resolved configuration
    (:func:`segment_config`), which replaces the loaded model's; ``loaded``:
    the model this process loaded already, used by :meth:`setup` instead of
    loading it again (``None`` in a job sent to spawned workers).
    """

    run: Path
    cfg: Config
    options: SegmentOptions
    mask: Path | None = None
    device: str = "cpu"
    loaded: Any = field(default=None, repr=False)

    def complete(self, case) -> bool:
        """Whether every requested output of ``case`` exists already (nothing is read)."""
        from ..pipeline import case_outputs

        return all(p.exists() for p in case_outputs(case, self.cfg.levels, self.options).values())

    # -- worker protocol (see hyperseg.cli.workers.Job) -----------------
    def setup(self, slot: int = 0) -> _State:
        """The model on this worker's device (GPU ``slot % count`` for a bare ``cuda``), and the masks."""
        import torch

        from ..checkpoint import load_model
        from ..data.io import find_cases
        from ..utils import resolve_device

        device = resolve_device(self.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", slot % max(torch.cuda.device_count(), 1))
        model = self.loaded if self.loaded is not None else load_model(self.run, device)
        model = model.to(device)
        model.cfg = self.cfg
        mask_files = mask = None
        if self.mask is not None:
            if self.mask.is_dir():
                mask_files = {c.name: c.files[0] for c in find_cases(self.mask)}
            else:
                mask = _read_mask(self.mask)
        return _State(model=model, mask_files=mask_files, mask=mask)

    def failed(self, case, message: str) -> CaseResult:
        return CaseResult(case=case.name, status="failed", message=_name_the_file(message, case))

    def run_case(self, state: _State, case) -> CaseResult:
        """Segment one case and write its outputs; never raises for a bad case (Ctrl-C still stops)."""
        from ..pipeline import segment_case

        info: dict = {}
        try:
            written = segment_case(state.model, case, self.options, mask=self._mask_for(state, case), info=info)
        except MemoryError as err:
            return self.failed(case, f"out of memory ({err}); use fewer --nproc workers or a larger machine")
        except (*USER_ERRORS, UserError, OSError) as err:
            return self.failed(case, str(err))
        except Exception as err:  # noqa: BLE001 - one broken case must not end a run over thousands
            return self.failed(case, f"internal error ({type(err).__name__}: {err}); please report this "
                                     "with the file if you can share it")
        return CaseResult(case=case.name, status="done", written=[str(p) for p in written], note=_foreground_note(info))

    def _mask_for(self, state: _State, case) -> np.ndarray | None:
        """The boolean foreground mask ``(D, H, W)`` for ``case`` (its grid is checked by the pipeline)."""
        if state.mask is not None:
            return state.mask
        if state.mask_files is None:
            return None
        where = state.mask_files.get(case.name)
        if where is None:
            raise UserError(f"{case.files[0]}: no mask named {case.name}.* in {self.mask}; "
                            "add one or leave out --mask")
        return _read_mask(where)


def _read_mask(path: Path) -> np.ndarray:
    """A foreground mask file as bool ``(D, H, W)`` (voxels > 0); an empty mask is an error."""
    from ..data.io import read_labels

    mask = read_labels(path) > 0
    if not mask.any():
        raise UserError(f"{path}: the mask is empty (no voxel > 0); give a foreground mask or leave out --mask")
    return mask


def _wants_report(args: argparse.Namespace, kind: str) -> bool:
    """Whether ``--report`` asks for ``kind``: a bare ``--report`` asks for every kind."""
    kinds = getattr(args, "report", None)
    return kinds is not None and (not kinds or kind in kinds)


def _one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line, cut at ``limit`` characters."""
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _name_the_file(message: str, case) -> str:
    """One line that starts by naming the case's file (unless the message already names one of them)."""
    message = _one_line(message)
    named = [*case.files, *([Path(case.files[0]).parent] if getattr(case, "dicom", False) else [])]
    if not any(str(f) in message for f in named):  # a DICOM series is named by its folder
        message = f"{named[-1] if getattr(case, 'dicom', False) else case.files[0]}: {message}"
    return message


def _foreground_note(info: dict) -> str:
    """One phrase on the foreground a case was clustered in (``info`` from :func:`hyperseg.pipeline.segment_case`)."""
    agreement = info.get("agreement")
    if info.get("foreground") == "mask":
        why = "" if agreement is None else (f", agreeing with the 2-cluster split (Dice {agreement:.3f} away from the "
                                            "mask's edge)")
        if info.get("inside_split"):
            why = (", which lies inside the 2-cluster split as a brain inside its head (they agree only to Dice "
                   f"{agreement:.3f})")
        return f"tissue classes inside the automatic intensity mask{why}"
    if info.get("foreground") == "split" and agreement is not None:
        return (f"classes inside the 2-cluster split (the intensity mask agrees only to Dice {agreement:.3f} away "
                "from its edge)")
    return ""


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


def run(args: argparse.Namespace) -> int:
    """Segment every case of ``args.input``; exit status 2 when any case failed."""
    import torch
    from tqdm.auto import tqdm

    from ..checkpoint import load_model
    from ..data.io import find_cases
    from ..distributed import env_world
    from ..pipeline import SegmentOptions
    from .workers import run_local, run_spawned, shard, threads_per_process

    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    if args.mask is not None and not args.mask.exists():
        raise UserError(f"{args.mask}: no such mask file or folder")
    ranks = env_world()
    try:  # a missing or foreign checkpoint stops here, before any work
        model = load_model(args.model, "cpu")
    except ValueError as err:  # e.g. a state dict that does not fit its configuration: many lines
        raise UserError(_one_line(str(err))) from None
    cfg = segment_config(model.cfg, args)
    options = SegmentOptions(output=args.output, output_format=args.output_format, nan_policy=args.nan_policy,
                             save_embeddings=args.save_embeddings, report=_wants_report(args, "png"),
                             report_html=_wants_report(args, "html"),
                             skip_existing=args.skip_existing, seed=args.seed, zarr_level=args.zarr_level,
                             chunked=False if args.in_memory else None,
                             chunks=tuple(args.chunks) if args.chunks else None, scheduler=args.scheduler)
    cases = find_cases(args.input)
    if args.input.is_dir() and args.input.resolve() == args.output.resolve():
        raise UserError(f"{args.output}: the output folder is the input folder; its label maps would be "
                        "read as cases next time; choose another -o folder")
    _prepare_output(args.output)
    job = SegmentJob(run=args.model, cfg=cfg, options=options, mask=args.mask, device=args.device)

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
            if result.note and not args.quiet:
                tqdm.write(f"{result.case}: {result.note}")

    try:
        if todo and nproc == 1:  # this process is the worker: it segments with the model it loaded
            local = dataclasses.replace(job, options=dataclasses.replace(options, progress=not args.quiet),
                                        loaded=model)
            previous = torch.get_num_threads()
            try:
                run_local(local, todo, on_result, threads, slot=ranks.local_rank)
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


__all__ = ["OPTION_FIELDS", "CaseResult", "SegmentJob", "add_parser", "run", "segment_config"]
