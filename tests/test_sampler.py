"""Triplet sampler: shapes, exact resizing, triplet geometry, rejection, scales, determinism."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from hyperseg.data.sampler import TripletSampler, extract_patches


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_volume(*shape: int, seed: int = 0) -> torch.Tensor:
    # values in [0, 1): float32 grid coordinates then agree with F.interpolate to ~1e-6
    return torch.rand(*shape, generator=_gen(seed))


def test_output_shapes_and_dtype():
    vols = [_rand_volume(2, 32, 32, 32), _rand_volume(2, 40, 36, 50, seed=1), _rand_volume(2, 50, 50, 50, seed=2)]
    sampler = TripletSampler(vols, patch_edge=10)
    out = sampler.sample(16, _gen())
    assert len(out) == 3
    for t in out:
        assert t.shape == (16, 2, 10, 10, 10) and t.dtype == torch.float32
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("m", [10, 7])
def test_extract_patches_matches_interpolate(m):
    vol = _rand_volume(2, 50, 45, 40, seed=3)
    edges = [1, 2, 3, 5, 7, 10, 13, 21, 34, 40]
    starts = []
    for k, e in enumerate(edges):  # at the low corner, the high corner and in between
        hi = [s - e for s in vol.shape[1:]]
        starts.append([0, 0, 0] if k % 3 == 0 else hi if k % 3 == 1 else [h // 2 for h in hi])
    starts_t = torch.tensor(starts)
    edges_t = torch.tensor(edges)
    got = extract_patches(vol, starts_t, edges_t, m)
    assert got.shape == (len(edges), 2, m, m, m)
    for n, (s, e) in enumerate(zip(starts, edges)):
        crop = vol[None, :, s[0]:s[0] + e, s[1]:s[1] + e, s[2]:s[2] + e]
        ref = F.interpolate(crop, size=(m, m, m), mode="trilinear", align_corners=False)[0]
        torch.testing.assert_close(got[n], ref, atol=1e-5, rtol=0)


def test_extract_patches_validates_boxes():
    vol = _rand_volume(1, 20, 20, 20)
    with pytest.raises(ValueError, match="inside the volume"):
        extract_patches(vol, torch.tensor([[15, 0, 0]]), torch.tensor([6]), 10)
    with pytest.raises(ValueError, match="integer"):
        extract_patches(vol, torch.tensor([[0.0, 0, 0]]), torch.tensor([6]), 10)
    assert extract_patches(vol, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4).shape \
        == (0, 1, 4, 4, 4)


def _check_geometry(sampler, boxes, parent_range, child_range):
    shapes = sampler._shapes[boxes.volume]
    s, r, c = boxes.parent_start, boxes.parent_edge, boxes.child_edge
    pos, neg = boxes.positive_start, boxes.negative_start
    caps = sampler.parent_edge_caps[boxes.volume]
    assert ((r >= parent_range[0]) & (r <= torch.clamp(caps, max=parent_range[1]))).all()
    assert ((c >= child_range[0]) & (c <= child_range[1])).all()
    assert ((c <= r - 1) | (c == child_range[0])).all()
    # all boxes inside their volume
    for start in (s, pos, neg):
        edge = r if start is s else c
        assert (start >= 0).all() and (start + edge[:, None] <= shapes).all()
    # the positive is centred on the parent (to half a voxel) and lies inside it
    centre_gap = (2 * pos + c[:, None]) - (2 * s + r[:, None])  # twice the centre offset
    assert (centre_gap.abs() <= 1).all()
    assert (pos >= s).all() and (pos + c[:, None] <= s + r[:, None]).all()
    # the negative does not overlap the parent: separated along at least one axis
    separated = (neg + c[:, None] <= s) | (neg >= s + r[:, None])
    assert separated.any(dim=1).all()


@pytest.mark.parametrize("scale", ["uniform", "log"])
def test_triplet_geometry(scale):
    vols = [_rand_volume(1, 50, 50, 50), _rand_volume(1, 32, 40, 36, seed=1)]
    sampler = TripletSampler(vols, scale=scale)
    parent, positive, negative, boxes = sampler.sample(512, _gen(1), return_boxes=True)
    _check_geometry(sampler, boxes, (5, 34), (3, 14))
    assert set(boxes.volume.tolist()) == {0, 1}
    # the returned patches are the boxes' contents
    for k in range(0, 512, 97):
        v = vols[int(boxes.volume[k])]
        for patch, start, edge in ((parent, boxes.parent_start, boxes.parent_edge),
                                   (positive, boxes.positive_start, boxes.child_edge),
                                   (negative, boxes.negative_start, boxes.child_edge)):
            ref = extract_patches(v, start[k:k + 1], edge[k:k + 1], 10)[0]
            torch.testing.assert_close(patch[k], ref)


@pytest.mark.parametrize("negatives, edge, start, separated, low, high", [
    # anywhere the box does not overlap the parent: separated along at least one axis
    ("disjoint", 10, [2, 3, 1], any, 0.5, 1.6),
    # the released code's placement: outside the parent's range on all three axes (27 starts)
    ("all_axes", 12, [2, 3, 4], all, 0.7, 1.3),
])
def test_negative_is_uniform_over_valid_positions(negatives, edge, start, separated, low, high):
    vol = _rand_volume(1, edge, edge, edge)
    sampler = TripletSampler([vol], parent_range=(5, 5), child_range=(3, 3), negatives=negatives)
    n = 20000
    s = torch.tensor([start]).expand(n, 3)
    neg = sampler._negatives(torch.zeros(n, dtype=torch.long), torch.full((n,), 5), torch.full((n,), 3), s, _gen(5))
    valid = [p for p in itertools.product(range(edge - 2), repeat=3)
             if separated(p[a] + 3 <= start[a] or p[a] >= start[a] + 5 for a in range(3))]
    counts: dict[tuple[int, ...], int] = {}
    for p in map(tuple, neg.tolist()):
        counts[p] = counts.get(p, 0) + 1
    assert set(counts) == set(valid)  # every valid start is drawn, nothing else
    expected = n / len(valid)
    assert max(counts.values()) < high * expected and min(counts.values()) > low * expected


def test_all_axes_sampling_keeps_every_triplet_valid():
    vols = [_rand_volume(1, 50, 50, 50), _rand_volume(1, 32, 40, 36, seed=1)]
    sampler = TripletSampler(vols, negatives="all_axes")
    _, _, _, boxes = sampler.sample(512, _gen(4), return_boxes=True)
    _check_geometry(sampler, boxes, (5, 34), (3, 14))
    s, r, c, neg = boxes.parent_start, boxes.parent_edge, boxes.child_edge, boxes.negative_start
    assert ((neg + c[:, None] <= s) | (neg >= s + r[:, None])).all()  # separated along every axis
    with pytest.raises(ValueError, match="negatives must be one of"):
        TripletSampler(vols, negatives="far")


def test_constant_parents_are_rejected():
    vol = torch.zeros(1, 50, 50, 50)
    vol[0, 20:23, 30:33, 10:13] = 1.0
    sampler = TripletSampler([vol])
    parent, _, _, boxes = sampler.sample(64, _gen(2), return_boxes=True)
    lo = torch.tensor([20, 30, 10])
    hi = lo + 3
    s, r = boxes.parent_start, boxes.parent_edge
    overlaps = ((s < hi) & (s + r[:, None] > lo)).all(dim=1)
    assert overlaps.all()
    assert (parent.flatten(1).std(dim=1) > 0).all()


def test_small_volume_32():
    sampler = TripletSampler([_rand_volume(1, 32, 32, 32)])
    assert int(sampler.parent_edge_caps[0]) == 29  # 32 - child_lo, so a negative fits beside the parent
    out = sampler.sample(64, _gen(3), return_boxes=True)
    _check_geometry(sampler, out[3], (5, 34), (3, 14))
    assert out[0].shape == (64, 1, 10, 10, 10)


def test_too_small_and_invalid_arguments():
    with pytest.raises(ValueError, match=r"volume 1 with shape \(1, 6, 6, 6\)"):
        TripletSampler([_rand_volume(1, 32, 32, 32), _rand_volume(1, 6, 6, 6)])
    with pytest.raises(ValueError, match="constant"):
        TripletSampler([torch.zeros(1, 32, 32, 32)])
    vol = [_rand_volume(1, 32, 32, 32)]
    bad = [dict(patch_edge=0), dict(parent_range=(10, 5)), dict(child_range=(6, 14)), dict(scale="linear"),
           dict(min_std=-1.0), dict(max_tries=0)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            TripletSampler(vol, **kwargs)
    with pytest.raises(ValueError, match="dtype"):
        TripletSampler([torch.rand(1, 32, 32, 32, dtype=torch.float64)])
    with pytest.raises(ValueError):
        TripletSampler([])
    with pytest.raises(ValueError, match="batch_size"):
        TripletSampler(vol).sample(0, _gen())


def test_log_scale_skews_to_small_edges():
    vol = [_rand_volume(1, 50, 50, 50)]
    edges = {}
    for scale in ("uniform", "log"):
        _, _, _, boxes = TripletSampler(vol, scale=scale).sample(2000, _gen(4), return_boxes=True)
        edges[scale] = boxes.parent_edge.double()
    small = {k: (e <= 13).double().mean().item() for k, e in edges.items()}  # 13 ~ sqrt(5 * 34)
    assert small["log"] > 0.4 and small["uniform"] < 0.36
    assert edges["log"].median() < edges["uniform"].median()
    # uniform covers the whole range
    assert int(edges["uniform"].min()) == 5 and int(edges["uniform"].max()) == 34


def test_same_seed_same_batch():
    vols = [_rand_volume(1, 40, 40, 40), _rand_volume(1, 50, 50, 50, seed=1)]
    sampler = TripletSampler(vols)
    a = sampler.sample(32, _gen(9), return_boxes=True)
    b = sampler.sample(32, _gen(9), return_boxes=True)
    c = sampler.sample(32, _gen(10))
    for x, y in zip(a[:3], b[:3]):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert torch.equal(a[3].parent_start, b[3].parent_start) and torch.equal(a[3].negative_start, b[3].negative_start)
    assert not torch.equal(a[0], c[0])
