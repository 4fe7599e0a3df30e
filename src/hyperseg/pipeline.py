"""One case in, label maps on its own grid out: the segmentation pipeline.

:func:`segment_volume` is what every caller runs on a volume (``hyperseg
segment``, ``hyperseg demo``, ``hyperseg bench`` and the Python API):

1. the volume is checked against the model (``(C, D, H, W)`` with the
   model's ``C`` channels, a mask on its grid, at least as many voxels as
   clusters);
2. an anisotropic volume (voxel size not equal along ``D, H, W``) is
   resampled trilinearly to cubic voxels of its finest spacing
   (:mod:`hyperseg.data.resample`), and a given foreground mask with it
   (nearest neighbour);
3. :func:`hyperseg.segment.segment_array` normalises each channel
   (:func:`hyperseg.data.preprocess.normalize_for`, the function training
   uses, robust and inside the mask), embeds every voxel, smooths the
   embedding field and clusters it at each level of ``model.cfg``;
4. label maps and embeddings are brought back to the input grid by nearest
   neighbour.

:func:`segment_case` does that for a case on disk and writes its outputs,
named by :func:`case_outputs` (the names ``--skip-existing`` looks for):

* ``{case}.ome.zarr/labels/k{K}`` for a Zarr / OME-Zarr case (NGFF label images,
  :mod:`hyperseg.data.zarr_io`), segmented chunk by chunk on Dask unless
  :attr:`SegmentOptions.chunked` is ``False`` (:mod:`hyperseg.chunked`);
* ``{case}_k{K}{suffix}`` per number of clusters ``K``, in the input's format
  (``suffix`` = its :data:`~hyperseg.data.io.OUTPUT_SUFFIXES` entry) unless
  :attr:`SegmentOptions.output_format` names another;
* ``{case}_embedding.npy``: float32 ``(D, H, W, d)`` ball coordinates of the
  points that were clustered (``save_embeddings``);
* ``{case}_report.png``: mid-slices and the Poincare disk (``report``);
* ``{case}_report.html``: every slice of every level, the disk, cluster sizes,
  one self-contained file (``report_html``, :mod:`hyperseg.report_html`).

Everything is computed before anything is written, and each file is written
atomically, so a case that fails writes nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.io import OUTPUT_SUFFIXES, Case, Volume, VolumeError, in_unit, read_case, volume_suffix, write_label_map
from .data.preprocess import normalize_for
from .data.resample import isotropic_shape, resample_image, resample_nearest
from .embed import embed_volume
from .model import HyperVAE
from .segment import Segmentation, segment_array
from .utils import atomic_write

#: Format of the label maps of an input whose own format cannot be written.
DEFAULT_SUFFIX = ".nii.gz"


# ----------------------------------------------------------------------------- one volume
def _model_grid(model: HyperVAE, volume: Volume, mask: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int]]:
    """Check ``volume`` against the model; return its array and mask on the isotropic grid, and that grid."""
    name = str(volume.path) if volume.path is not None else volume.case
    array = volume.array
    if array.ndim != 4:
        raise VolumeError(f"{name}: expected a (C, D, H, W) volume, got shape {tuple(array.shape)}; "
                          "add a channel axis")
    if array.shape[0] != model.cfg.in_channels:
        raise VolumeError(f"{name}: has {array.shape[0]} channels but the model was trained on "
                          f"{model.cfg.in_channels}; give volumes with the training data's channels")
    shape = volume.spatial_shape
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != shape:
            raise VolumeError(f"{name}: foreground mask shape {mask.shape} differs from the volume's {shape}; "
                              "give a mask on the volume's grid")
    iso = isotropic_shape(shape, volume.spacing)  # type: ignore[arg-type]
    x = resample_image(array, iso)
    m = resample_nearest(mask, iso) if mask is not None else None
    return x, m, iso


def voxel_edge_mm(volume: Volume) -> float:
    """The isotropic grid's voxel edge (``min(spacing)``, :func:`isotropic_shape`) in mm; a spacing of unknown
    unit is read as mm (a NIfTI without units, NumPy arrays)."""
    return min(float(v) for v in in_unit(tuple(volume.spacing), volume.unit, "mm"))


def segment_volume(
    model: HyperVAE,
    volume: Volume,
    levels: Sequence[int],
    seed: int = 0,
    progress: bool = False,
    mask: np.ndarray | None = None,
) -> Segmentation:
    """Segment ``volume`` (raw intensities, ``(C, D, H, W)``) at each number of clusters in ``levels``.

    ``mask``: optional boolean ``(D, H, W)`` foreground for the normalisation
    statistics. Returns label maps ``{K: (D, H, W) uint8}`` and the embedding
    ``(D, H, W, d)``, both on the input grid. A volume with fewer voxels than
    ``max(levels)`` is refused (:class:`~hyperseg.data.io.VolumeError`).
    """
    shape = volume.spatial_shape
    x, m, _ = _model_grid(model, volume, mask)
    ks = [int(k) for k in levels]
    n_voxels = int(np.prod(shape))
    if ks and n_voxels < max(ks):
        name = str(volume.path) if volume.path is not None else volume.case
        raise VolumeError(f"{name}: has only {n_voxels} voxel(s), fewer than the {max(ks)} clusters asked for; "
                          "ask for fewer clusters (levels)")
    voxel_size = voxel_edge_mm(volume)
    seg = segment_array(model, x, ks, seed=seed, progress=progress, mask=m, voxel_size=voxel_size)
    labels = {k: resample_nearest(v, shape) for k, v in seg.labels.items()}
    return Segmentation(labels=labels, embedding=resample_nearest(seg.embedding, shape), foreground=seg.foreground,
                        agreement=seg.agreement, inside_split=seg.inside_split)


def embed_volume_on_grid(model: HyperVAE, volume: Volume, mask: np.ndarray | None = None,
                         progress: bool = False) -> np.ndarray:
    """Voxel embeddings of ``volume`` ``(C, D, H, W)`` on its own grid: ``(D, H, W, d)``.

    The same steps as :func:`segment_volume` without the clustering.
    """
    x, m, _ = _model_grid(model, volume, mask)
    x = normalize_for(model.cfg, x, m)
    emb = embed_volume(model, torch.from_numpy(x), progress=progress).numpy()
    return resample_nearest(emb, volume.spatial_shape)


# ----------------------------------------------------------------------------- one case on disk
@dataclass(frozen=True)
class SegmentOptions:
    """How a case is read and what is written for it (``model.cfg`` says how it is segmented).

    ``output``: the folder the outputs go to; ``output_format``: the label
    maps' format, an :data:`~hyperseg.data.io.OUTPUT_SUFFIXES` entry without
    its dot (``"nii.gz"``, ``"tif"``, ...), or ``None`` for the input's own;
    ``nan_policy``: what :func:`~hyperseg.data.io.read_case` does with NaN/Inf
    voxels; ``save_embeddings`` / ``report`` / ``report_html``: also write those files;
    ``skip_existing``: leave outputs that exist alone and write only the
    missing ones; ``seed``: the clustering seed; ``progress``: a progress bar
    for the embedding pass.
    """

    output: Path
    output_format: str | None = None
    nan_policy: str = "error"
    save_embeddings: bool = False
    report: bool = False
    report_html: bool = False
    skip_existing: bool = False
    seed: int = 0
    progress: bool = False
    #: Zarr inputs (:mod:`hyperseg.data.zarr_io`): the OME-Zarr level read; ``chunked``: segment them chunk by
    #: chunk on Dask (:mod:`hyperseg.chunked`; ``None``: yes), with processing ``chunks`` ``(D, H, W)`` (default:
    #: the store's), on ``client`` (a ``dask.distributed.Client``) or ``scheduler`` (``"threads"``,
    #: ``"processes"``, ``"synchronous"`` or a scheduler address ``"tcp://HOST:PORT"``)
    zarr_level: int = 0
    chunked: bool | None = None
    chunks: tuple[int, int, int] | None = None
    scheduler: str | None = None
    client: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", Path(self.output))
        if self.output_format is not None:
            fmt = self.output_format.lower().lstrip(".")
            if "." + fmt not in OUTPUT_SUFFIXES:
                raise ValueError(f"unknown output format {self.output_format!r}; use one of "
                                 f"{', '.join(s.lstrip('.') for s in OUTPUT_SUFFIXES)}")
            object.__setattr__(self, "output_format", fmt)


def label_suffix(source: str | Path, output_format: str | None = None) -> str:
    """The suffix of the label maps of an input file: ``"." + output_format``, else the file's own format
    (``.nii.gz`` where that cannot be written). Reads nothing."""
    if output_format is not None:
        return "." + output_format
    own = volume_suffix(source)
    return own if own in OUTPUT_SUFFIXES else DEFAULT_SUFFIX


def case_outputs(case: Case, levels: Sequence[int], options: SegmentOptions) -> dict[str, Path]:
    """The files :func:`segment_case` writes for ``case``, by role: ``"k{K}"`` per level, ``"embedding"``,
    ``"report"``, ``"report_html"`` (the last three only when ``options`` asks for them). Reads nothing."""
    if getattr(case, "zarr", False):  # one OME-Zarr group per case, a label image per level in its labels/
        root = zarr_output(case, options)
        out = {f"k{int(k)}": root / "labels" / f"k{int(k)}" for k in levels}
    else:
        suffix = label_suffix(case.files[0], options.output_format)
        out = {f"k{int(k)}": options.output / f"{case.name}_k{int(k)}{suffix}" for k in levels}
    if options.save_embeddings:
        out["embedding"] = options.output / f"{case.name}_embedding.npy"
    if options.report:
        out["report"] = options.output / f"{case.name}_report.png"
    if options.report_html:
        out["report_html"] = options.output / f"{case.name}_report.html"
    return out


def zarr_output(case: Case, options: SegmentOptions) -> Path:
    """``{output}/{case}.ome.zarr``: the OME-Zarr group whose ``labels/k{K}`` hold a Zarr case's label maps."""
    return options.output / f"{case.name}.ome.zarr"


def missing_outputs(case: Case, levels: Sequence[int], options: SegmentOptions) -> dict[str, Path]:
    """The outputs of ``case`` still to write: all of them, or (``skip_existing``) those that do not exist."""
    outputs = case_outputs(case, levels, options)
    if options.skip_existing:
        outputs = {role: p for role, p in outputs.items() if not p.exists()}
    return outputs


def _save_npy(path: Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)
    return path


def segment_case(model: HyperVAE, case: Case, options: SegmentOptions,
                 mask: np.ndarray | None = None, info: dict | None = None) -> list[Path]:
    """Read ``case``, segment it at every level of ``model.cfg`` and write its outputs; returns the files
    written, in the order label maps (by level), embedding, report, HTML report.

    ``mask``: optional boolean ``(D, H, W)`` foreground on the case's grid. ``info``, when given, receives
    ``"foreground"``, ``"agreement"`` and ``"inside_split"`` (:class:`~hyperseg.segment.Segmentation`'s: which foreground the
    levels were clustered in, and for ``foreground: auto`` the Dice that chose it).
    Nothing is written when any step fails; with ``options.skip_existing`` a
    case whose outputs all exist is not even read.
    """
    from .report import render_case_report, write_png

    cfg = model.cfg
    levels = list(dict.fromkeys(int(k) for k in cfg.levels))
    outputs = missing_outputs(case, levels, options)
    if not outputs:
        return []
    zarr_case = getattr(case, "zarr", False)
    if zarr_case and options.chunked is not False:
        from .chunked import segment_zarr_case

        return segment_zarr_case(model, case, options, levels, mask=mask)
    vol = read_case(case, nan_policy=options.nan_policy, zarr_level=options.zarr_level)
    seg = segment_volume(model, vol, levels, seed=options.seed, progress=options.progress, mask=mask)
    if info is not None:
        info.update(foreground=seg.foreground, agreement=seg.agreement, inside_split=seg.inside_split)
    png = None  # rendered before anything is written: a failure leaves no file behind
    if "report" in outputs:
        png = render_case_report(vol.array[0], seg.labels, seg.embedding,
                                 c=cfg.c if cfg.latent == "hyperbolic" else None,
                                 spacing=vol.spacing, title=case.name, seed=options.seed)
    page = None
    if "report_html" in outputs:
        from .report_html import render_html_report

        page = render_html_report(vol.array[0], seg.labels, seg.embedding,
                                  c=cfg.c if cfg.latent == "hyperbolic" else None,
                                  spacing=vol.spacing, title=case.name, seed=options.seed)
    if zarr_case:  # every level into {case}.ome.zarr/labels, renamed into place together
        from .data.zarr_io import write_ome_zarr_labels

        root = write_ome_zarr_labels(zarr_output(case, options), seg.labels, vol.spacing, tuple(vol.affine[:3, 3]),
                                     vol.unit, like=vol.header, source=str(case.files[0]))
        written = [root / "labels" / f"k{k}" for k in levels]
    else:
        written = [write_label_map(outputs[f"k{k}"], seg.labels[k], vol) for k in levels if f"k{k}" in outputs]
    if "embedding" in outputs:
        written.append(_save_npy(outputs["embedding"], np.ascontiguousarray(seg.embedding, dtype=np.float32)))
    if png is not None:
        written.append(write_png(outputs["report"], png))
    if page is not None:
        from .report_html import write_html

        written.append(write_html(outputs["report_html"], page))
    return written


__all__ = ["SegmentOptions", "case_outputs", "embed_volume_on_grid", "label_suffix", "missing_outputs",
           "segment_case", "segment_volume", "zarr_output"]
