"""Out-of-core segmentation on Dask: the overlaps each step needs, and equal answers to the in-memory path.

The chunked stage (:mod:`hyperseg.chunked`) must give, chunk by chunk, exactly what the whole-volume functions give
(``embed_volume``, ``smooth_embedding``, ``potts.mean_field``) with the same fitted parameters. Chunks here are
smaller than the volume along every axis, of unequal sizes, and start at odd and even positions, so that a missing
overlap voxel, a wrong chunk offset or the checkerboard colours of the chunk instead of the volume show.
"""
import dask.array as da
import numpy as np
import pytest
import torch
from conftest import TINY, tiny_yaml

from hyperseg import chunked, potts
from hyperseg.config import Config
from hyperseg.data.preprocess import normalize_for
from hyperseg.data.zarr_io import LabelsWriter, read_label_image, write_ome_zarr_image
from hyperseg.embed import embed_volume
from hyperseg.model import HyperVAE
from hyperseg.smooth import smooth_embedding

#: chunk edges (D, H, W): none divides the volume evenly, so chunks start at odd and even positions
CHUNKS = (11, 12, 13)
SHAPE = (26, 28, 30)


def cells(shape=SHAPE, seed=0):
    """``(1, D, H, W)``: two bright spheres with a dark core, one centred on a chunk corner, in noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    vol = np.zeros(shape, np.float32)
    for (cz, cy, cx), r in (((11, 12, 13), 8.5), ((19, 7, 21), 5.0)):
        dist = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
        vol[dist < r] = 2.0
        vol[dist < r / 3] = 0.7
    return (vol + rng.normal(0, 0.35, shape)).astype(np.float32)[None]


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    return HyperVAE(Config(**TINY)).eval()


def whole_field(model, vol, cfg):
    """The smoothed embedding of the whole volume, ``(d, D, H, W)``: the in-memory path's."""
    x = normalize_for(cfg, vol)
    emb = embed_volume(model, torch.from_numpy(x), patch_edge=cfg.embed_patch_edge)
    return np.moveaxis(smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c), -1, 0)


# ----------------------------------------------------------------------------- the overlaps
@pytest.mark.parametrize("patch_edge", [5, 10])
def test_embed_radius_is_the_receptive_field(model, patch_edge):
    """Changing one voxel changes the embeddings within embed_radius of it, and one at exactly that distance."""
    cfg = model.cfg
    vol = torch.from_numpy(cells((21, 21, 21))[0][None].copy())
    base = embed_volume(model, vol, patch_edge=patch_edge)
    vol[0, 10, 10, 10] += 5.0
    moved = (embed_volume(model, vol, patch_edge=patch_edge) - base).abs().amax(-1) > 0
    dist = np.abs(np.argwhere(moved.numpy()) - 10).max(1)
    assert dist.max() == chunked.embed_radius(patch_edge, cfg.patch_edge)


def test_halos_of_the_default_stage():
    h = chunked.halos(Config())
    assert (h.embed, h.smooth, h.potts) == (3, 8, 10)  # 5^3 patches resampled 2x, sigma 2 (radius 8), 5 sweeps
    assert chunked.halos(Config(embed_patch_edge=10, smooth_sigma=0.0, potts_beta=0.0)) == chunked.Halo(5, 0, 0)


def test_processing_chunks_merge_a_short_last_chunk():
    assert chunked.processing_chunks((30, 40, 64), (13, 16, 32), least=5) == ((13, 17), (16, 16, 8), (32, 32))
    assert chunked.processing_chunks((30, 40, 64), (13, 16, 32), least=9) == ((13, 17), (16, 24), (32, 32))
    assert chunked.processing_chunks((8, 40, 64), (64, 16, 70), least=9) == ((8,), (16, 24), (64,))


@pytest.mark.parametrize("patch_edge", [5, 10])
def test_chunked_embedding_field_equals_the_whole_volume(model, patch_edge):
    cfg = model.cfg.replace(embed_patch_edge=patch_edge)
    vol = cells()
    norm = chunked.fit_normalisation(vol, cfg)
    field = chunked.embedding_field(model, vol, norm, cfg, CHUNKS)
    np.testing.assert_allclose(field, whole_field(model, vol, cfg), rtol=0, atol=1e-12)


def test_one_voxel_less_overlap_changes_the_embedding(model):
    """The overlaps are not larger than needed: one voxel less of either gives other numbers."""
    cfg = model.cfg
    vol = cells()
    norm = chunked.fit_normalisation(vol, cfg)
    whole = whole_field(model, vol, cfg)
    h = chunked.halos(cfg)
    for short in (chunked.Halo(h.embed - 1, h.smooth, 0), chunked.Halo(h.embed, h.smooth - 1, 0)):
        field = chunked.embedding_field(model, vol, norm, cfg, CHUNKS, short)
        assert np.abs(field - whole).max() > 1e-9


@pytest.mark.parametrize("n_iter", [1, 3])
def test_chunked_mean_field_needs_two_voxels_per_sweep(n_iter):
    rng = np.random.default_rng(1)
    L = rng.normal(0, 1.0, (3, 23, 25, 27))
    whole = potts.mean_field(L, 1.5, n_iter=n_iter)
    np.testing.assert_array_equal(chunked.chunked_mean_field(L, 1.5, n_iter, (7, 8, 9)), whole)
    short = chunked.chunked_mean_field(L, 1.5, n_iter, (7, 8, 9), depth=2 * n_iter - 1)
    assert np.abs(short - whole).max() > 1e-6


def test_mean_field_block_takes_the_colours_of_the_volume():
    """A block that starts at an odd d + h + w updates its voxels in the volume's order, not its own."""
    rng = np.random.default_rng(2)
    L = rng.normal(0, 1.0, (2, 9, 9, 9))
    whole = potts.mean_field(L, 2.0, n_iter=1)
    inner = (slice(None), slice(1, 9), slice(0, 9), slice(0, 9))  # first voxel at (1, 0, 0): odd
    q = chunked.mean_field_block(L[inner], 2.0, 1, parity=1)
    # voxels 2 away from the cut face (one sweep) are exact
    np.testing.assert_array_equal(q[:, 2:], whole[:, 3:])
    assert np.abs(chunked.mean_field_block(L[inner], 2.0, 1, parity=0)[:, 2:] - whole[:, 3:]).max() > 1e-6


@pytest.mark.parametrize("density", [0.45, 0.6, 0.75])
def test_holes_are_filled_across_chunks_as_in_memory(density):
    """Background components that reach the volume's faces only through other chunks stay background; enclosed
    ones (within one chunk or across several) become foreground, as ``ndi.binary_fill_holes`` decides."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(int(density * 100))
    two = (rng.random((23, 25, 27)) < density).astype(np.uint8)  # 1: the foreground cluster, 0: background
    two[4:19, 5:20, 6:21] = 1
    two[6:17, 7:18, 8:19] = 0  # a cavity spanning 2 x 2 x 2 chunks
    two[6:17, 12, 3:8] = 0  # ... and a tunnel from its wall that stays inside the shell
    fg = chunked.filled_foreground(da.from_array(two, chunks=(7, 8, 9)), 0, scheduler="synchronous")
    np.testing.assert_array_equal(fg.compute(), ndi.binary_fill_holes(two != 0).astype(np.uint8))
    flipped = chunked.filled_foreground(da.from_array(1 - two, chunks=(7, 8, 9)), 1, scheduler="synchronous")
    np.testing.assert_array_equal(flipped.compute(), ndi.binary_fill_holes(two != 0).astype(np.uint8))


def test_normalisation_from_every_voxel_is_normalize_for():
    cfg = Config(**TINY)
    floor = np.zeros((1, 12, 13, 14), np.float32)
    floor[0, 3:9, 3:10, 2:12] = np.random.default_rng(0).gamma(2.0, 1.0, (6, 7, 10))  # a skull-stripped-like floor
    for vol in (cells(), floor):
        norm = chunked.fit_normalisation(vol, cfg)
        np.testing.assert_array_equal(chunked.normalise_block(vol, norm), normalize_for(cfg, vol))
    assert chunked.fit_normalisation(floor, cfg).floor == 0.0  # the mask of the floor's volume was used


def _coordinate_field(tmp_path, shape=SHAPE):
    """A Zarr ``(2, D, H, W)`` float64 field whose rows name their voxel (flat index, and its negative), in
    chunks CHUNKS, and a Zarr mask ``(D, H, W)`` uint8 holding a sphere."""
    import zarr

    flat = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    group = zarr.open_group(str(tmp_path / "scratch.zarr"), mode="w", zarr_format=2)
    field = group.create_array("field", shape=(2, *shape), chunks=(2, *CHUNKS), dtype=np.float64)
    field[...] = np.stack([flat, -flat])
    z, y, x = np.indices(shape)
    inside = (z - 10) ** 2 + (y - 12) ** 2 + (x - 14) ** 2 < 9.5 ** 2
    mask = group.create_array("mask", shape=shape, chunks=CHUNKS, dtype="uint8")
    mask[...] = inside.astype(np.uint8)
    grid = chunked.processing_chunks(shape, CHUNKS, 1)
    return field, mask, inside, grid


def test_the_sample_is_drawn_inside_the_mask_from_every_chunk_in_proportion(tmp_path):
    """Each row is one masked voxel's values, no voxel twice, each chunk's share its fraction of that chunk's
    masked voxels (rounded), and the draw depends on the seed only, not on the scheduler."""
    field, mask, inside, grid = _coordinate_field(tmp_path)
    total = int(inside.sum())
    rows = chunked._sample(field, mask, grid, total, 300, seed=3, client=None, scheduler="threads")
    idx = rows[:, 0].astype(np.int64)
    np.testing.assert_array_equal(rows[:, 1], -rows[:, 0])
    assert len(np.unique(idx)) == len(idx)
    assert inside.reshape(-1)[idx].all()
    fraction = 300 / total
    for index in np.ndindex(*(len(g) for g in grid)):
        lo, hi, _, _ = chunked._region(grid, index, 0, SHAPE)
        box = np.zeros(SHAPE, bool)
        box[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        assert box.reshape(-1)[idx].sum() == round(fraction * (inside & box).sum())
    again = chunked._sample(field, mask, grid, total, 300, seed=3, client=None, scheduler="synchronous")
    np.testing.assert_array_equal(again, rows)
    other = chunked._sample(field, mask, grid, total, 300, seed=4, client=None, scheduler="threads")
    assert not np.array_equal(np.sort(other[:, 0]), np.sort(rows[:, 0]))
    every = chunked._sample(field, None, grid, int(np.prod(SHAPE)), 10**9, seed=0, client=None, scheduler=None)
    np.testing.assert_array_equal(np.sort(every[:, 0]), np.arange(np.prod(SHAPE)))


def test_the_smooth_pass_smooths_the_embedding_and_keeps_the_values(model):
    """The smooth pass's function: the d embedding channels become smooth_embedding's, the rest are untouched."""
    cfg = model.cfg
    d = cfg.latent_dim
    x = normalize_for(cfg, cells((14, 15, 16)))
    emb = embed_volume(model, torch.from_numpy(x), patch_edge=cfg.embed_patch_edge).numpy()
    block = np.concatenate([np.moveaxis(emb, -1, 0), x]).astype(np.float64)
    want = np.moveaxis(smooth_embedding(emb, cfg.smooth_sigma, latent=cfg.latent, c=cfg.c), -1, 0)
    out = chunked._smooth_values(block.copy(), None, (0, 0, 0), cfg, d)
    np.testing.assert_allclose(out[:d], want, rtol=1e-12, atol=1e-15)  # summation order: last bits only
    assert np.abs(out[:d] - block[:d]).max() > 1e-3  # smoothed, not passed through
    np.testing.assert_array_equal(out[d:], x)


# ----------------------------------------------------------------------------- equal answers
def run_chunked(model, vol, levels, tmp_path, cfg=None, **kw):
    cfg = cfg or model.cfg
    w = LabelsWriter(tmp_path / "out.ome.zarr", vol.shape[1:], (1.0, 1.0, 1.0))
    res = chunked.segment_chunked(model, da.from_array(vol, chunks=(1, *CHUNKS)), levels, w, chunks=CHUNKS,
                                  scheduler="threads", cfg=cfg, **kw)
    root = w.finish()
    return res, {k: read_label_image(root, k)[0] for k in levels}


@pytest.mark.parametrize("hierarchy", ["foreground", "independent"])
def test_chunked_labels_equal_in_memory_labels_given_the_fit(model, tmp_path, hierarchy):
    cfg = model.cfg.replace(hierarchy=hierarchy)
    vol = cells()
    res, labels = run_chunked(model, vol, [2, 3, 4], tmp_path, cfg=cfg)
    assert res.chunks == ((11, 15), (12, 16), (13, 17))  # every axis cut, each at a different place
    whole = chunked.segment_in_memory(model, vol, res.fit, [2, 3, 4], cfg=cfg)
    for k in (2, 3, 4):
        assert len(np.unique(labels[k])) == k  # a real segmentation, not a constant map
        np.testing.assert_array_equal(labels[k], whole[k])
    if hierarchy == "foreground":
        fg = labels[2] > 0
        assert ((labels[3] > 0) == fg).all() and res.fit.levels[3].inside


def test_given_parameters_are_used_and_stored(model, tmp_path):
    """The fitted parameters are stored with the labels; given back, they are used instead of a new fit."""
    import zarr

    vol = cells()
    res, labels = run_chunked(model, vol, [2, 3], tmp_path / "a")
    stored = zarr.open_group(store=str(tmp_path / "a" / "out.ome.zarr"), mode="r").attrs["hyperseg"]["fit"]
    fit = chunked.fit_from_dict(stored)
    np.testing.assert_array_equal(fit.levels[3].centres, res.fit.levels[3].centres)
    other = cells(seed=5)
    _, again = run_chunked(model, other, [2, 3], tmp_path / "b", fit=fit)
    whole = chunked.segment_in_memory(model, other, fit, [2, 3])
    for k in (2, 3):
        np.testing.assert_array_equal(again[k], whole[k])


def test_python_api_predict_zarr(model, tmp_path):
    from hyperseg.api import HyperbolicSegmenter

    seg = HyperbolicSegmenter()
    seg.model_, seg.config_ = model, model.cfg
    vol = cells()
    src = write_ome_zarr_image(tmp_path / "in.ome.zarr", vol[0], spacing=(3.0, 3.0, 3.0), chunks=CHUNKS)
    res = seg.predict_zarr(src, tmp_path / "out.ome.zarr", levels=(2, 3), scheduler="synchronous")
    whole = chunked.segment_in_memory(model, vol, res.fit, [2, 3])
    for k in (2, 3):
        np.testing.assert_array_equal(read_label_image(tmp_path / "out.ome.zarr", k)[0], whole[k])


def test_settings_the_chunked_stage_cannot_run_are_refused():
    with pytest.raises(ValueError, match="refine 'hmrf_em'.*potts_method 'icm'.*--in-memory"):
        chunked.check_config(Config(refine="hmrf_em", potts_method="icm"))
    checked = chunked.check_config(Config())
    assert checked.foreground == "split"  # auto: the split, the mask needs a component
    assert checked.overcluster == 1 and checked.coherence_sigma == 0.0  # both read the whole volume
    assert checked.refine_passes == 1  # the chunked stage refines once


# ----------------------------------------------------------------------------- a cluster on loopback
@pytest.mark.slow
def test_local_cluster_of_two_processes_gives_the_in_memory_labels(tmp_path):
    """CI bar of issue 19: `hyperseg segment --scheduler tcp://...` on a LocalCluster of 2 worker processes."""
    import zarr
    from distributed import LocalCluster

    from hyperseg.checkpoint import load_model
    from hyperseg.cli import main

    (tmp_path / "tiny.yaml").write_text(tiny_yaml(levels="[2, 3]"))
    train = tmp_path / "train"
    train.mkdir()
    np.save(train / "t0.npy", cells(seed=3)[0])
    run = tmp_path / "run"
    assert main(["train", "-i", str(train), "-o", str(run), "--config", str(tmp_path / "tiny.yaml"),
                 "--steps", "3", "-q"]) == 0
    vol = cells()
    src = write_ome_zarr_image(tmp_path / "cells.ome.zarr", vol[0], spacing=(2.0, 2.0, 2.0), unit="nm",
                               chunks=CHUNKS)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert main(["segment", "-m", str(run), "-i", str(src), "-o", str(tmp_path / "out"), "--levels", "2", "3",
                     "--chunks", *map(str, CHUNKS), "--scheduler", cluster.scheduler_address, "-q"]) == 0
    root = tmp_path / "out" / "cells.ome.zarr"
    fit = chunked.fit_from_dict(zarr.open_group(store=str(root), mode="r").attrs["hyperseg"]["fit"])
    whole = chunked.segment_in_memory(load_model(run, "cpu"), vol, fit, [2, 3])
    for k in (2, 3):
        labels, attrs = read_label_image(root, k)
        np.testing.assert_array_equal(labels, whole[k])
        assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 2.0, 2.0]
