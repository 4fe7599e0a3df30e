"""Merging interleaved clusters (hyperseg.interleave): interface areas against a voxel-by-voxel count, the merge
against a naive one that recounts the grid after every step, and what it merges in a scene built for it."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from hyperseg.config import Config
from hyperseg.interleave import INTERLEAVE_EXPONENT, interface_areas, interleaving, merge_interleaved


def _naive_areas(lab: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n), dtype=np.int64)
    D, H, W = lab.shape
    for z in range(D):
        for y in range(H):
            for x in range(W):
                for dz, dy, dx in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
                    zz, yy, xx = z + dz, y + dy, x + dx
                    if zz < D and yy < H and xx < W:
                        a, b = lab[z, y, x], lab[zz, yy, xx]
                        out[a, b] += 1
                        if a != b:
                            out[b, a] += 1
    return out


def _naive_merge(lab: np.ndarray, n_keep: int) -> np.ndarray:
    """Recount the grid after every merge; the same rule and the same tie-break as merge_interleaved."""
    lab = lab.astype(np.int64).copy()
    while True:
        ids = [i for i in np.unique(lab) if i > 0]
        if len(ids) <= n_keep:
            break
        n = int(lab.max()) + 1
        sizes = np.bincount(lab.reshape(-1), minlength=n)
        s = interleaving(interface_areas(lab, n), sizes)
        dead = np.setdiff1d(np.arange(n), ids)
        s[dead, :] = -1.0
        s[:, dead] = -1.0
        i, j = sorted(np.unravel_index(int(np.argmax(s)), s.shape))
        lab[lab == j] = i
    kept = [i for i in np.unique(lab) if i > 0]
    rank = np.zeros(int(lab.max()) + 1, dtype=np.int64)
    rank[kept] = np.arange(1, len(kept) + 1)
    return rank[lab]


def _blobs(seed: int, shape=(14, 15, 16), n=7) -> np.ndarray:
    """Labels 0..n-1 as the argmax of smoothed noise: blobs of a few voxels, label 0 among them."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((n, *shape)), (0, 1.5, 1.5, 1.5))
    return field.argmax(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_interface_areas_count_every_pair_of_face_neighbours(seed):
    lab = np.random.default_rng(seed).integers(0, 5, (6, 7, 8))
    np.testing.assert_array_equal(interface_areas(lab), _naive_areas(lab, 5))
    np.testing.assert_array_equal(interface_areas(lab, 7)[:5, :5], _naive_areas(lab, 5))  # room for more labels


def test_a_cube_split_in_two_halves_meets_along_one_face():
    lab = np.ones((6, 6, 6), dtype=np.int64)
    lab[:, :, 3:] = 2
    a = interface_areas(lab)
    assert a[1, 2] == a[2, 1] == 36 and a[0].sum() == 0
    # each half is a 6 x 6 x 3 box: 36 x 2 inner faces along the split axis, 6 x 3 x 5 along each other axis
    assert a[1, 1] == a[2, 2] == 36 * 2 + 2 * (6 * 3 * 5)


def test_interleaving_is_the_interface_over_a_power_of_the_smaller_clusters_size():
    areas = np.array([[0, 0, 0], [0, 0, 120], [0, 120, 0]])
    sizes = np.array([5, 1000, 64])
    s = interleaving(areas, sizes)
    assert INTERLEAVE_EXPONENT == 0.5
    assert s[1, 2] == pytest.approx(120 / 8.0)  # 64 ** 0.5
    assert s[1, 2] == s[2, 1] and s[0, 0] == 0 and s[0, 1] == 0


def _scene():
    """32^3, 0 on a one-voxel frame. Inside: X (x < 16) and Y (x >= 16) meet along a 30 x 30 plane; an 8^3 cube
    in X is a checkerboard of 2-voxel blocks of Z and W (interleaved); a ball V of radius 4 sits in Y.
    Labels X 1, Y 2, Z 3, W 4, V 5."""
    n = 32
    lab = np.zeros((n, n, n), dtype=np.int64)
    lab[1:-1, 1:-1, 1:16] = 1
    lab[1:-1, 1:-1, 16:-1] = 2
    zz, yy, xx = np.indices((8, 8, 8)) // 2
    lab[4:12, 4:12, 4:12] = np.where((zz + yy + xx) % 2 == 0, 3, 4)
    r = np.sqrt(((np.indices((n, n, n)) - np.array([16, 16, 24])[:, None, None, None]) ** 2).sum(0))
    lab[r <= 4] = 5
    return lab


def test_the_interleaved_pair_is_merged_not_the_pair_with_the_largest_interface():
    lab = _scene()
    a = interface_areas(lab)
    assert a[1, 2] > a[3, 4]  # the plane is the larger interface: counting faces alone would merge X and Y
    out = merge_interleaved(lab, 4)
    expected = np.array([0, 1, 2, 3, 3, 4])[lab]  # Z and W become one; X, Y, V stay; 0 stays 0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_merge_equals_a_naive_one_that_recounts_the_grid(seed):
    lab = _blobs(seed)
    for n_keep in (1, 2, 3, 5):
        np.testing.assert_array_equal(merge_interleaved(lab, n_keep), _naive_merge(lab, n_keep), err_msg=str(n_keep))


def test_fewer_clusters_than_asked_are_only_renumbered():
    lab = np.zeros((4, 4, 4), dtype=np.int64)
    lab[1:3, 1:3, 1:3] = 7
    lab[0, 0, 0] = 3
    out = merge_interleaved(lab, 2)
    np.testing.assert_array_equal(out, np.select([lab == 3, lab == 7], [1, 2], 0))
    with pytest.raises(ValueError, match="n_keep"):
        merge_interleaved(lab, 0)


def test_the_finer_levels_are_overclustered_then_merged(clusters_asked):
    import hyperseg.segment as S

    rng = np.random.default_rng(0)
    shape = (20, 20, 20)
    region = np.zeros(shape, dtype=np.int64)
    region[3:-3, 3:-3, 3:-3] = 1
    region[6:10, 6:14, 6:14] = 2
    centres = np.array([[0.0, 0.0], [0.3, 0.05], [0.05, 0.3]])
    emb = (centres[region] + 0.02 * rng.standard_normal(shape + (2,))).astype(np.float32)
    raw = region[None].astype(np.float32)
    x = (raw - raw.mean()) / raw.std()
    asked = clusters_asked
    cfg = Config(latent_dim=2, kmeans_n_init=2, foreground="split")
    seg = S.segment_embedding(cfg, emb, x, [2, 4])
    assert asked == [2, 6]  # the split, then 2 x (4 - 1) inside it
    assert set(np.unique(seg.labels[4])) <= {0, 1, 2, 3} and (seg.labels[4][region == 0] == 0).all()
    asked.clear()
    S.segment_embedding(cfg.replace(overcluster=1), emb, x, [2, 4])
    assert asked == [2, 3]
    asked.clear()
    S.segment_embedding(cfg.replace(refine="hmrf_em", embedding_weight=1.0), emb, x, [2, 4])
    assert asked == [2, 3]  # the EM (the masked stage) does not over-cluster


@pytest.mark.parametrize("changes, words", [
    ({"overcluster": 0}, "integer >= 1"),
    ({"overcluster": 3, "hierarchy": "independent"}, "hierarchy 'foreground'"),
    ({"overcluster": 3, "refine": "hmrf_em"}, "refine 'once'"),
    ({"overcluster": 2, "levels": [2, 200]}, "below 256"),
])
def test_overcluster_is_validated(changes, words):
    with pytest.raises(ValueError, match=words):
        Config(**changes)


def test_the_default_overcluster_is_allowed_where_it_does_not_apply():
    assert Config(hierarchy="independent").overcluster == Config().overcluster == 2
    assert Config.from_preset("paper").overcluster == 1


def test_a_larger_overcluster_leaves_the_masked_stage_alone():
    cfg = Config(overcluster=3)  # the default masked stage is hidden-MRF EM, which over-clusters nothing
    assert cfg.overcluster == 3 and cfg.masked_config().overcluster == 1
