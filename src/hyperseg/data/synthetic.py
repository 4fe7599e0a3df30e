"""The simple "biologically-inspired" synthetic benchmark (Hsu et al. 2021, paper.md 2.1).

Written from the paper's recipe (numpy + ``scipy.ndimage``); the published volumes
are not used. Every choice the paper leaves open is listed here.

Scene (sizes are given for the paper's 50^3 volume, in voxels)
---------------------------------------------------------------
All sizes and the cell-centre jitter are multiplied by ``s = min(shape) / 50``, so
``s = 1`` (the paper) for 50^3 and a smaller volume (e.g. 32^3 in the tests) looks
like a shrunken copy of a 50^3 one. Coordinates are voxel indices; a voxel belongs
to a shape when its *centre* does (spheres: ``|x - c| <= r``; cuboids: axis-aligned,
``|x_i - c_i| <= h_i`` for every axis).

* Level 1 -- one **cell**: a sphere of radius ``N(25, 1)``, centred at the volume
  centre ``(n - 1) / 2`` plus a jitter ``U(-2, 2)`` per axis. It may be clipped by the
  volume border (with radius ~25 it almost always is); the corners stay background.
* Level 2 -- **vesicles** (spheres, radius ``N(8, 0.5)``) and **mitochondria**
  (axis-aligned cuboids, each of the three sides drawn independently as
  ``2 * N(8, 0.5)``, i.e. about 16). Target counts per cell: 2-4 vesicles and 1-2
  mitochondria (uniform integers). Every organelle lies entirely inside the cell
  sphere with a margin of 1 voxel and entirely inside the volume, and organelles are
  at least 1 voxel apart from each other (no overlap, no touching). The recipe is
  tight: a 16^3 cube only fits inside a radius-24 sphere with its centre within ~10
  voxels of the cell centre, and a second cube then leaves almost no room for
  vesicles, hence at most 2 mitochondria.
* Level 3 -- inside every vesicle 1-3 **small spheres** (radius ``N(2, 0.2)``) and
  inside every mitochondrion 1-3 **small cuboids** ("protein aggregates", sides
  ``2 * N(3, 0.15)`` each), each entirely inside its parent with a 1-voxel margin
  and at least 1 voxel apart from its siblings.
* Normal-distributed sizes are clipped below at 0.5 voxel (never reached at 50^3).

Placement is rejection sampling with a bounded number of tries: for each object its
size is drawn once, then ``N_CANDIDATES = 256`` candidate centres are drawn at once,
uniformly in the box where the object could fit inside its parent and the volume.
A level-3 object takes the first candidate meeting every constraint. An organelle
takes the valid candidate *farthest from the cell centre* ("outward packing"):
with plain first-fit a centrally placed mitochondrion leaves no room for vesicles
(measured at 50^3 over 200 cells: 2.1 vesicles on average and 4.5% of cells
without any, against 2.5 and none with outward packing). If no candidate is valid the
object is dropped, so a cell can hold fewer objects than its target. The first
mitochondrion and the first vesicle are placed before the others (the rest follow in
random order), so both kinds are present whenever they fit at all. Realised counts
at 50^3 (200 cells): vesicles 1-4 (mostly 2-4), mitochondria 1-2 (mostly 1),
level-3 objects 1-3 per organelle. Generation always terminates and is a pure
function of the ``rng`` state.

Ground truth, one ``uint8`` map per level (classes per level: 2 / 4 / 6)
----------------------------------------------------------------------
* level 1: 0 background, 1 cell
* level 2: 0 background, 1 cytoplasm (cell minus organelles), 2 vesicle, 3 mitochondrion
* level 3: 0 background, 1 cytoplasm, 2 vesicle body (minus its small spheres),
  3 mitochondrion body (minus its small cuboids), 4 small sphere, 5 small cuboid

The names are in :data:`LEVEL_CLASSES`. Nesting is exact: a child lies inside its
parent in continuous space, so its voxels are a subset of the parent's voxels.

Intensity
---------
Every instance (the cell, each organelle, each level-3 object) gets its own colour
``mu ~ N(0, 1)`` (the paper: colour drawn from a standard normal) plus its own
texture ``a * T(x)``, where ``T`` is normalised to zero mean and unit standard
deviation over the instance's voxels and ``a ~ U(0.4, 0.8)``. The *type* of texture
depends on the class, its parameters are drawn per instance, so colour alone does not
separate the classes but texture, size and shape do:

=================  ===============================  ====================================
class              texture type                     per-instance parameters
=================  ===============================  ====================================
cell / cytoplasm   granules: Gaussian-filtered      sigma ~ U(0.6, 1.0) voxels
                   white noise
vesicle            concentric rings                 cos(2 pi f |x - c| + phi),
                                                    f ~ U(0.15, 0.25) cycles/voxel
mitochondrion      oriented planar stripes          cos(2 pi f u.x + phi), u uniform on
                   (cristae-like)                   the sphere, f ~ U(0.2, 0.3)
small sphere       dense core: radial profile       exp(-|x - c|^2 / (2 w^2)),
                                                    w ~ U(0.8, 1.5) voxels
small cuboid       3-D lattice                      prod_i cos(2 pi f x_i + phi_i),
                                                    f ~ U(0.3, 0.4)
=================  ===============================  ====================================

(Texture frequencies are in voxel units and are *not* scaled with ``s``.) Each
object overwrites its parent's intensity inside its own voxels. Background is 0.

Every texture varies on a scale of a few voxels, so that a 5^3 patch (the
paper's inference patch) can see it. A first version gave the cytoplasm smooth
blobs of sigma 1.5-3 voxels: inside a 5^3 patch they look like a change of
colour, and every method, ours included, then split the cell into bright and
dark regions instead of separating it from the background.

Noise: pink noise of magnitude 0.25 is added to the whole volume:
:func:`pink_noise` draws white Gaussian noise, multiplies its spectrum by
``1/|f|`` (the DC term set to 0), transforms back and rescales to standard deviation
exactly 1, then multiplies by 0.25. The image is returned as float32.

Irregular variant (``variant="irregular"``)
-------------------------------------------
The paper mentions "a more challenging irregular synthetic dataset" but does not
describe it (paper.md 2.2), so this one is ours. The scene is drawn exactly as
above (same hierarchy, classes, textures, and the same random stream up to this
point, so case ``j`` of both variants has the same objects), then:

* **deformed shapes**: one smooth random displacement field (std 3 voxels per
  axis, correlation length ~5 voxels) warps image and labels together, so
  spheres and cuboids become lumpy, non-convex blobs while the nesting of the
  levels is kept exactly;
* **overlapping intensities**: every instance's colour is drawn from the same
  ``N(0, 1)`` whatever its level, as in the simple variant, and
* **a smooth bias field**: a multiplicative gain ``exp(0.3 g)`` and an additive
  offset ``0.6 o`` (``g, o`` smooth unit-variance fields, correlation length
  ~12 voxels) shift intensities across the volume, so that no intensity
  threshold separates the levels;

then the same pink noise. Constants ``WARP_*`` and ``BIAS_*``.

On disk (:func:`write_benchmark`)
---------------------------------
``out_dir/{train,val,test}/caseNNN.nii.gz`` (float32 image) and
``out_dir/{split}/labels/caseNNN_level{1,2,3}.nii.gz`` (uint8), identity affine.
Case numbers are unique across splits and continue from one split to the next:
with the default 80/20/20, ``case000``-``case079`` are train, ``case080``-``case099``
val and ``case100``-``case119`` test. A case's *content* does not depend on the split
sizes: its generator is seeded by ``SeedSequence(seed).spawn(3)[split].spawn(n)[j]``
(``split`` = 0/1/2 for train/val/test, ``j`` = its index within the split), which
is the same child for every ``n > j``. ``out_dir/levels.json`` (written last) holds
the class names per level, the seed, variant, shape and the case names per split.
Every file is written to a temporary name in its folder and renamed into place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..utils import atomic_write, atomic_write_text

__all__ = [
    "VARIANTS",
    "LEVEL_CLASSES",
    "SPLITS",
    "pink_noise",
    "generate_volume",
    "write_benchmark",
]

VARIANTS = ("simple", "irregular")
SPLITS = ("train", "val", "test")

LEVEL_CLASSES: dict[int, tuple[str, ...]] = {
    1: ("background", "cell"),
    2: ("background", "cytoplasm", "vesicle", "mitochondrion"),
    3: ("background", "cytoplasm", "vesicle_body", "mitochondrion_body", "small_sphere", "small_cuboid"),
}

# --- recipe constants (voxels, for a 50^3 volume; scaled by min(shape) / 50) ---------
REFERENCE_EDGE = 50.0
CELL_RADIUS = (25.0, 1.0)  # paper: r ~ N(25, 1)
CELL_CENTRE_JITTER = 2.0  # centre = volume centre + U(-2, 2) per axis
VESICLE_RADIUS = (8.0, 0.5)  # paper: r ~ N(8, 0.5)
MITO_HALF_SIDE = (8.0, 0.5)  # paper: side ~ 2 N(8, 0.5)
SMALL_SPHERE_RADIUS = (2.0, 0.2)  # paper: r ~ N(2, 0.2)
SMALL_CUBOID_HALF_SIDE = (3.0, 0.15)  # paper: side ~ 2 N(3, 0.15)
N_VESICLES = (2, 4)  # inclusive target range per cell
N_MITOCHONDRIA = (1, 2)
N_CHILDREN = (1, 3)  # level-3 objects per organelle
MARGIN = 1.0  # a child stays this far inside its parent
GAP = 1.0  # siblings stay this far apart
N_CANDIDATES = 256  # candidate centres per object (bounded rejection sampling)
MIN_SIZE = 0.5
NOISE_MAGNITUDE = 0.25  # paper: pink noise of magnitude 0.25
TEXTURE_AMPLITUDE = (0.4, 0.8)
# irregular variant (module docstring); lengths in voxels at 50^3, scaled by s
WARP_AMPLITUDE = 3.0  # std of each component of the smooth displacement field
WARP_SMOOTHNESS = 5.0  # Gaussian sigma of the displacement field (correlation length)
BIAS_SMOOTHNESS = 12.0  # Gaussian sigma of the bias fields
BIAS_GAIN = 0.3  # std of the log of the multiplicative bias field
BIAS_OFFSET = 0.6  # std of the additive bias field (as large as the instance colours' spread)

# labels written by each kind of object at levels 2 and 3
_LABELS = {"cell": (1, 1), "vesicle": (2, 2), "mitochondrion": (3, 3),
           "small_sphere": (2, 4), "small_cuboid": (3, 5)}


@dataclass
class _Object:
    kind: str  # key of _LABELS
    shape: str  # "sphere" | "box"
    centre: np.ndarray  # (3,) float, voxel index coordinates
    half: np.ndarray  # (3,) half extents; a sphere has its radius three times
    level: int


# --- noise ---------------------------------------------------------------------------
def pink_noise(rng: np.random.Generator, shape: Sequence[int], magnitude: float = NOISE_MAGNITUDE) -> np.ndarray:
    """Pink (1/f) noise: spectrum amplitude ``~ 1/|f|``, zero mean, std exactly ``magnitude``.

    White Gaussian noise is transformed with ``rfftn``, multiplied by ``1/|f|``
    (``|f|`` in cycles per voxel, the DC term zeroed), transformed back, rescaled to
    unit standard deviation and multiplied by ``magnitude``. Returns float64.
    """
    shape = tuple(int(n) for n in shape)
    white = rng.standard_normal(shape)
    spectrum = np.fft.rfftn(white)
    axes = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    freq = np.sqrt(sum(g ** 2 for g in grids))
    freq[(0,) * len(shape)] = np.inf  # no DC component
    noise = np.fft.irfftn(spectrum / freq, s=shape, axes=tuple(range(len(shape))))
    noise -= noise.mean()
    std = noise.std()
    if std > 0:
        noise /= std
    return magnitude * noise


# --- geometry helpers (vectorised over K candidate centres) --------------------------
def _inside(shape: str, centres: np.ndarray, half: np.ndarray, parent: _Object, margin: float) -> np.ndarray:
    """(K,) bool: the object (``shape``, ``half``) at each centre lies inside ``parent``."""
    d = np.abs(centres - parent.centre)  # (K, 3)
    if parent.shape == "sphere":
        radius = parent.half[0] - margin
        if shape == "sphere":
            return np.linalg.norm(d, axis=1) + half[0] <= radius
        return np.linalg.norm(d + half, axis=1) <= radius  # farthest corner
    # parent box: the child's axis-aligned extent (a sphere's is its radius) must fit
    return np.all(d + half <= parent.half - margin, axis=1)


def _apart(shape: str, centres: np.ndarray, half: np.ndarray, other: _Object, gap: float) -> np.ndarray:
    """(K,) bool: the object at each centre stays at least ``gap`` away from ``other``."""
    d = np.abs(centres - other.centre)
    if shape == "sphere" and other.shape == "sphere":
        return np.linalg.norm(d, axis=1) >= half[0] + other.half[0] + gap
    if shape == "box" and other.shape == "box":
        return np.any(d >= half + other.half + gap, axis=1)
    # sphere vs box: distance from the sphere centre to the box
    r, box_half = (half[0], other.half) if shape == "sphere" else (other.half[0], half)
    return np.linalg.norm(np.maximum(d - box_half, 0.0), axis=1) >= r + gap


def _place(rng: np.random.Generator, shape: str, half: np.ndarray, parent: _Object,
           siblings: list[_Object], vol_shape: np.ndarray, outward: bool = False) -> np.ndarray | None:
    """Centre for a new object inside ``parent`` and the volume, apart from ``siblings``.

    ``None`` when none of the ``N_CANDIDATES`` candidates fits. ``outward`` picks the
    valid candidate farthest from the parent's centre instead of the first one.
    """
    lo = np.maximum(parent.centre - parent.half + half + MARGIN, half)
    hi = np.minimum(parent.centre + parent.half - half - MARGIN, vol_shape - 1 - half)
    # always draw the same number of values so the rng stream does not depend on geometry
    u = rng.random((N_CANDIDATES, 3))
    if np.any(lo > hi):
        return None
    centres = lo + u * (hi - lo)
    ok = _inside(shape, centres, half, parent, MARGIN)
    for other in siblings:
        ok &= _apart(shape, centres, half, other, GAP)
    idx = np.flatnonzero(ok)
    if not idx.size:
        return None
    if outward:  # the valid candidate farthest from the parent's centre
        dist = np.linalg.norm(centres[idx] - parent.centre, axis=1)
        return centres[idx[np.argmax(dist)]]
    return centres[idx[0]]  # plain rejection sampling: the first valid candidate


def _size(rng: np.random.Generator, mean_sd: tuple[float, float], scale: float, n: int) -> np.ndarray:
    mean, sd = mean_sd
    return np.maximum(rng.normal(mean * scale, sd * scale, size=n), MIN_SIZE)


def _sample_scene(rng: np.random.Generator, vol_shape: np.ndarray) -> list[_Object]:
    s = float(vol_shape.min()) / REFERENCE_EDGE
    centre = (vol_shape - 1) / 2.0 + rng.uniform(-CELL_CENTRE_JITTER, CELL_CENTRE_JITTER, 3) * s
    cell = _Object("cell", "sphere", centre, np.repeat(_size(rng, CELL_RADIUS, s, 1), 3), 1)
    objects = [cell]

    n_ves = int(rng.integers(N_VESICLES[0], N_VESICLES[1] + 1))
    n_mito = int(rng.integers(N_MITOCHONDRIA[0], N_MITOCHONDRIA[1] + 1))
    rest = ["vesicle"] * (n_ves - 1) + ["mitochondrion"] * (n_mito - 1)
    order = ["mitochondrion", "vesicle"] + [rest[i] for i in rng.permutation(len(rest))]
    organelles: list[_Object] = []
    for kind in order:
        if kind == "vesicle":
            shape, half = "sphere", np.repeat(_size(rng, VESICLE_RADIUS, s, 1), 3)
        else:
            shape, half = "box", _size(rng, MITO_HALF_SIDE, s, 3)
        c = _place(rng, shape, half, cell, organelles, vol_shape, outward=True)
        if c is not None:
            organelles.append(_Object(kind, shape, c, half, 2))
    objects += organelles

    for parent in organelles:
        n_child = int(rng.integers(N_CHILDREN[0], N_CHILDREN[1] + 1))
        children: list[_Object] = []
        for _ in range(n_child):
            if parent.kind == "vesicle":
                kind, shape, half = "small_sphere", "sphere", np.repeat(_size(rng, SMALL_SPHERE_RADIUS, s, 1), 3)
            else:
                kind, shape, half = "small_cuboid", "box", _size(rng, SMALL_CUBOID_HALF_SIDE, s, 3)
            c = _place(rng, shape, half, parent, children, vol_shape)
            if c is not None:
                children.append(_Object(kind, shape, c, half, 3))
        objects += children
    return objects


def _support(obj: _Object, vol_shape: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray], np.ndarray]:
    """Bounding-box slices, open coordinate grids (relative to the centre), voxel mask."""
    lo = np.clip(np.floor(obj.centre - obj.half), 0, vol_shape).astype(int)
    hi = np.clip(np.ceil(obj.centre + obj.half) + 1, 0, vol_shape).astype(int)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.ogrid[sl]
    rel = [g - c for g, c in zip(grids, obj.centre)]
    if obj.shape == "sphere":
        mask = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 <= obj.half[0] ** 2
    else:
        mask = (np.abs(rel[0]) <= obj.half[0]) & (np.abs(rel[1]) <= obj.half[1]) & (np.abs(rel[2]) <= obj.half[2])
    return sl, rel, mask


def _texture(rng: np.random.Generator, kind: str, rel: list[np.ndarray], box_shape: tuple[int, ...]) -> np.ndarray:
    """Un-normalised texture of one instance on its bounding box (see module docstring)."""
    if kind == "cell":  # granules: filtered white noise
        sigma = rng.uniform(0.6, 1.0)
        return ndimage.gaussian_filter(rng.standard_normal(box_shape), sigma, mode="reflect")
    if kind == "small_sphere":  # dense core
        w = rng.uniform(0.8, 1.5)
        return np.exp(-(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) / (2 * w * w))
    phase = rng.uniform(0.0, 2 * np.pi)
    if kind == "vesicle":  # concentric rings
        f = rng.uniform(0.15, 0.25)
        rho = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
        return np.cos(2 * np.pi * f * rho + phase)
    if kind == "mitochondrion":  # oriented planar stripes
        f = rng.uniform(0.2, 0.3)
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        return np.cos(2 * np.pi * f * (u[0] * rel[0] + u[1] * rel[1] + u[2] * rel[2]) + phase)
    # small cuboid: 3-D lattice
    f = rng.uniform(0.3, 0.4)
    phases = rng.uniform(0.0, 2 * np.pi, 2)
    return (np.cos(2 * np.pi * f * rel[0] + phase) * np.cos(2 * np.pi * f * rel[1] + phases[0])
            * np.cos(2 * np.pi * f * rel[2] + phases[1]))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


def _deform(rng: np.random.Generator, image: np.ndarray, labels: dict[int, np.ndarray],
            s: float) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Irregular variant: warp the scene, then apply a smooth gain and offset.

    One smooth random displacement ``u(x)`` (each component Gaussian-filtered
    white noise with sigma ``WARP_SMOOTHNESS * s`` and std ``WARP_AMPLITUDE * s``)
    resamples the image (trilinear) and every level's labels (nearest) at
    ``x + u(x)``. All levels are read at the same source point, so nesting is
    kept exactly; spheres and cuboids become lumpy, non-convex shapes. Then
    ``image * exp(BIAS_GAIN g(x)) + BIAS_OFFSET o(x)`` with smooth unit fields
    ``g, o`` (sigma ``BIAS_SMOOTHNESS * s``): an intensity that means "background"
    in one corner means "cell" in another.
    """
    shape = image.shape
    coords = np.indices(shape, dtype=np.float64)
    for axis in range(3):
        coords[axis] += WARP_AMPLITUDE * s * _smooth_field(rng, shape, WARP_SMOOTHNESS * s)
    image = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
    labels = {lvl: ndimage.map_coordinates(lab, coords, order=0, mode="nearest") for lvl, lab in labels.items()}
    gain = np.exp(BIAS_GAIN * _smooth_field(rng, shape, BIAS_SMOOTHNESS * s))
    offset = BIAS_OFFSET * _smooth_field(rng, shape, BIAS_SMOOTHNESS * s)
    return image * gain + offset, labels


def generate_volume(rng: np.random.Generator, shape: Sequence[int] = (50, 50, 50),
                    variant: str = "simple") -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One synthetic volume and its ground truth at the three hierarchy levels.

    Returns ``(image, labels)``: ``image`` is float32 of ``shape`` (D, H, W);
    ``labels`` maps level 1/2/3 to a uint8 map of the same shape with 2/4/6 classes
    (names in :data:`LEVEL_CLASSES`). Deterministic given the state of ``rng``.
    See the module docstring for the recipe.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}: choose one of {VARIANTS}")
    vol_shape = np.asarray(tuple(shape), dtype=int)
    if vol_shape.shape != (3,) or np.any(vol_shape < 8):
        raise ValueError(f"shape must be three edges >= 8 voxels, got {tuple(shape)}")
    objects = _sample_scene(rng, vol_shape)

    dims = tuple(int(n) for n in vol_shape)
    image = np.zeros(dims, dtype=np.float64)
    labels = {level: np.zeros(dims, dtype=np.uint8) for level in (1, 2, 3)}
    for obj in objects:  # parents come before their children, so children overwrite
        sl, rel, mask = _support(obj, vol_shape)
        box_shape = mask.shape
        colour = rng.standard_normal()
        amplitude = rng.uniform(*TEXTURE_AMPLITUDE)
        tex = np.broadcast_to(_texture(rng, obj.kind, rel, box_shape), box_shape)
        if mask.any():
            vals = tex[mask]
            vals = vals - vals.mean()
            sd = vals.std()
            if sd > 1e-12:
                vals = vals / sd
            image[sl][mask] = colour + amplitude * vals
        lab2, lab3 = _LABELS[obj.kind]
        if obj.level == 1:
            labels[1][sl][mask] = 1
        if obj.level <= 2:
            labels[2][sl][mask] = lab2
        labels[3][sl][mask] = lab3

    if variant == "irregular":
        image, labels = _deform(rng, image, labels, float(vol_shape.min()) / REFERENCE_EDGE)
    image += pink_noise(rng, dims, NOISE_MAGNITUDE)
    return image.astype(np.float32), labels


# --- writing a benchmark -------------------------------------------------------------
def _save_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.eye(4))
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def write_benchmark(out_dir: str | Path, seed: int = 0, n_train: int = 80, n_val: int = 20, n_test: int = 20,
                    shape: Sequence[int] = (50, 50, 50), variant: str = "simple", progress: bool = True) -> Path:
    """Generate and write the benchmark under ``out_dir``; returns ``Path(out_dir)``.

    Layout, numbering and seeding are described in the module docstring. Existing
    files of the same names are replaced.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}: choose one of {VARIANTS}")
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")
    shape = tuple(int(n) for n in shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    split_seeds = np.random.SeedSequence(seed).spawn(len(SPLITS))
    jobs = []  # (split, name, SeedSequence)
    number = 0
    names: dict[str, list[str]] = {}
    for split, split_ss in zip(SPLITS, split_seeds):
        names[split] = []
        for child in split_ss.spawn(counts[split]):
            name = f"case{number:03d}"
            jobs.append((split, name, child))
            names[split].append(name)
            number += 1

    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="synthetic benchmark", unit="vol")
    for split, name, child in iterator:
        image, labels = generate_volume(np.random.default_rng(child), shape, variant)
        _save_nifti(out / split / f"{name}.nii.gz", image)
        for level, lab in labels.items():
            _save_nifti(out / split / "labels" / f"{name}_level{level}.nii.gz", lab)

    meta = {
        "levels": {str(level): {"n_classes": len(cls), "classes": list(cls)} for level, cls in LEVEL_CLASSES.items()},
        "seed": int(seed),
        "variant": variant,
        "shape": list(shape),
        "splits": names,
        "numbering": "case numbers are unique and continue across splits (train, then val, then test)",
        "seeding": "case j of split k uses SeedSequence(seed).spawn(3)[k].spawn(n)[j]",
    }
    atomic_write_text(out / "levels.json", json.dumps(meta, indent=2) + "\n")
    return out
