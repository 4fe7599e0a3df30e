"""``foreground: auto`` on a scan that keeps skull and scalp: the intensity mask (the brain) lies inside the
2-cluster split (the head), and is taken although the two disagree (foreground.nesting,
mask_inside_split, choose_mask)."""
import numpy as np
import pytest

from hyperseg.config import Config
from hyperseg.data.masks import auto_mask
from hyperseg.foreground import INSIDE_DEPTH, mask_inside_split, nesting, split_depth
from hyperseg.segment import segment_embedding


def _sphere(shape, centre, radius):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def _naive_enclosed(mask, split):
    """Share of the mask's surface voxels (a 6-neighbour inside the grid and outside the mask) whose nearest
    voxel outside the split, by brute force over all of them, is farther than INSIDE_DEPTH."""
    shape = mask.shape
    outside = np.argwhere(~split)
    scores = []
    for p in np.argwhere(mask):
        nbrs = [p + d for d in np.concatenate([np.eye(3, dtype=int), -np.eye(3, dtype=int)])]
        if all(not ((q >= 0).all() and (q < shape).all()) or mask[tuple(q)] for q in nbrs):
            continue  # not on the surface (the volume's faces do not count)
        d = np.sqrt(((outside - p) ** 2).sum(1)).min() if len(outside) else np.inf
        scores.append(d > INSIDE_DEPTH)
    return float(np.mean(scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nesting_matches_counts_and_a_brute_force_distance(seed):
    rng = np.random.default_rng(seed)
    shape = (18, 17, 16)
    split = _sphere(shape, rng.uniform(6, 11, 3), rng.uniform(5, 8))
    mask = _sphere(shape, rng.uniform(6, 11, 3), rng.uniform(3, 6))
    n = nesting(mask.ravel(), split.ravel(), shape)
    assert n.contained == pytest.approx((mask & split).sum() / mask.sum())
    assert n.size == pytest.approx(mask.sum() / split.sum())
    assert n.enclosed == pytest.approx(_naive_enclosed(mask, split))
    assert nesting(mask, split, shape, split_depth(split, shape)) == n  # the split's distances, computed once


def test_nesting_does_not_count_the_volume_faces_as_outside():
    shape = (12, 12, 12)
    split = np.ones(shape, bool)
    split[:, :, -3:] = False  # the split fills the grid but for a 3-voxel slab on one side
    mask = np.zeros(shape, bool)
    mask[:, :, :5] = True  # a slab on the other side, touching five faces
    n = nesting(mask, split, shape)
    assert n.contained == 1.0 and n.enclosed == 1.0  # its only surface faces the slab, 4 voxels away
    assert nesting(np.zeros(shape, bool), split, shape).enclosed == 0.0
    # both cut by a face: the mask's voxels on that face are not its surface (the brute force agrees)
    shape = (16, 16, 16)
    split, mask = _sphere(shape, (0, 8, 8), 8), _sphere(shape, (0, 8, 8), 6)  # 2 voxels apart but on the face
    assert nesting(mask, split, shape).enclosed == pytest.approx(_naive_enclosed(mask, split))


def test_a_brain_inside_its_head_passes_and_other_nestings_do_not():
    shape = (40, 40, 40)
    head = _sphere(shape, (20, 20, 20), 15)
    assert mask_inside_split(_sphere(shape, (20, 20, 20), 10), head, shape)
    # a mask that reaches the split's edge is not enclosed (a bright region of the object itself)
    assert not mask_inside_split(_sphere(shape, (20, 20, 25), 10), head, shape)
    # a small bright part enclosed in the object (an organelle in its cell) is too small
    assert not mask_inside_split(_sphere(shape, (20, 20, 20), 4), head, shape)
    # a mask partly outside the split
    assert not mask_inside_split(_sphere(shape, (20, 20, 31), 6), head, shape)


def _head_scene(scalp: bool, shape=(40, 40, 40), seed=0):
    """A head: brain (core r < 5 darker than its shell r < 9), dark skull, a 2-voxel bright scalp (with ``scalp``;
    else background), air. Returns raw ``(1, D, H, W)`` and a stand-in embedding whose 2-cluster split is the head."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    region = np.select([r < 5, r < 9, r < 12, r < 14], [4, 3, 2, 1], 0)  # 4 core, 3 shell, 2 skull, 1 scalp
    levels = np.array([0.0, 2.5 if scalp else 0.0, 0.2, 3.0, 2.0])
    raw = levels[region] + 0.1 * rng.standard_normal(shape)
    centres = np.array([[0.0, 0.0], [0.3, 0.0], [0.3, 0.1], [0.1, 0.3], [0.15, 0.35]])
    head = region > 0 if scalp else region >= 2
    emb = np.where(head[..., None], centres[region], centres[0]) + 0.02 * rng.standard_normal(shape + (2,))
    return raw[None].astype(np.float32), emb.astype(np.float32), region


def test_a_head_is_segmented_inside_its_brain_mask_with_the_masked_stage():
    raw, emb, region = _head_scene(scalp=True)
    cfg = Config(latent_dim=2, kmeans_n_init=2)
    x = (raw - raw.mean()) / raw.std()
    seg = segment_embedding(cfg, emb, x, [2, 3], array=raw)
    mask = auto_mask(raw[0].astype(np.float64))
    assert seg.agreement < cfg.foreground_agreement  # the split is the head, the mask the brain
    assert seg.foreground == "mask" and seg.inside_split
    np.testing.assert_array_equal(seg.labels[2] > 0, mask)
    assert ((seg.labels[2] > 0) == (region >= 3)).mean() > 0.99
    by_hand = segment_embedding(cfg.replace(foreground="threshold", **cfg.masked_stage), emb, x, [2, 3], array=raw)
    for k in (2, 3):
        np.testing.assert_array_equal(seg.labels[k], by_hand.labels[k])
    # the brain's two tissues are found
    for k in (3, 4):
        counts = np.unique(seg.labels[3][region == k], return_counts=True)[1]
        assert counts.max() / counts.sum() > 0.9


def test_a_skull_stripped_brain_is_still_taken_by_agreement():
    raw, emb, _ = _head_scene(scalp=False)
    seg = segment_embedding(Config(latent_dim=2, kmeans_n_init=2), emb, (raw - raw.mean()) / raw.std(), [2, 3],
                            array=raw)
    assert seg.foreground == "mask" and not seg.inside_split


def test_the_command_line_says_why_the_mask_was_taken():
    from hyperseg.cli.segment import _foreground_note

    inside = _foreground_note({"foreground": "mask", "agreement": 0.548, "inside_split": True})
    assert "inside the 2-cluster split" in inside and "0.548" in inside
    agreed = _foreground_note({"foreground": "mask", "agreement": 0.97, "inside_split": False})
    assert "agreeing with the 2-cluster split" in agreed and "inside the 2-cluster split" not in agreed


def _bridged_head(shape=(54, 54, 54), seed=0):
    """A head whose 7-voxel scalp is joined to the brain by two rods of radius 3.2 across a 3-voxel skull: the
    mask of ``ants.get_mask``'s opening (radius 2) keeps the rods and so the whole head; radius 4 cuts them."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    region = np.select([r < 9, r < 15, r < 18, r < 25], [4, 3, 2, 1], 0)  # 4 core, 3 shell, 2 skull, 1 scalp
    rods = (np.sqrt(yy ** 2 + zz ** 2) < 3.2) & (r >= 14) & (r < 19)
    levels = np.array([0.0, 2.5, 0.2, 3.0, 2.0])
    raw = np.where(rods, 3.0, levels[region]) + 0.1 * rng.standard_normal(shape)
    centres = np.array([[0.0, 0.0], [0.3, 0.0], [0.3, 0.1], [0.1, 0.3], [0.15, 0.35]])
    emb = centres[region] + 0.02 * rng.standard_normal(shape + (2,))
    return raw[None].astype(np.float32), emb.astype(np.float32), region


def test_a_scalp_the_standard_opening_leaves_attached_is_cut_by_the_wider_one():
    from hyperseg.foreground import MASK_CLEANUPS, choose_mask, mask_agreement, split_reach

    raw, emb, region = _bridged_head()
    image = raw[0].astype(np.float64)
    head = (region > 0).ravel()
    brain = (region >= 3).ravel()
    narrow, wide = (auto_mask(image, cleanup=r).ravel() for r in MASK_CLEANUPS)
    cfg = Config(latent_dim=2, kmeans_n_init=2)
    # the narrow opening keeps the scalp: its mask is the head and "agrees" with the split
    assert mask_agreement(narrow, head, image.shape, band=split_reach(cfg)) >= cfg.foreground_agreement
    assert (wide == brain).mean() > 0.99
    choice = choose_mask(image, head, cfg)
    assert choice.inside_split and choice.cleanup == 4
    np.testing.assert_array_equal(choice.mask, wide)
    seg = segment_embedding(cfg, emb, (raw - raw.mean()) / raw.std(), [2, 3], array=raw)
    assert seg.foreground == "mask" and seg.inside_split
    assert ((seg.labels[2] > 0).ravel() == brain).mean() > 0.99


def test_choose_mask_prefers_agreement_only_when_no_mask_lies_inside():
    from hyperseg.foreground import choose_mask

    raw, emb, region = _head_scene(scalp=False)  # skull-stripped: both openings give the brain, which agrees
    image = raw[0].astype(np.float64)
    choice = choose_mask(image, (region >= 2).ravel(), Config())
    assert choice.mask is not None and not choice.inside_split and choice.cleanup == 2
    # a split the mask neither agrees with nor lies inside (the mask reaches past it): no mask
    none = choose_mask(image, (region == 4).ravel(), Config())
    assert none.mask is None and none.agreement < 0.9
