"""``foreground: auto``: the intensity mask and FAST's recipe where the mask agrees with the 2-cluster split,
the split and the configuration's own refinement where it does not."""
import numpy as np
import pytest

from hyperseg.config import Config
from hyperseg.foreground import mask_agreement
from hyperseg.segment import segment_embedding


def _ball_scene(object_brighter: bool, shape=(28, 28, 28), seed=0):
    """A ball of two tissues (inner core, outer shell) in a background that touches every face.

    Returns raw intensities ``(1, D, H, W)`` and a stand-in embedding ``(D, H, W, 2)`` in the ball: a point per
    region (background, shell, core) plus noise, so the 2-cluster split is the ball whatever the intensities.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    region = np.where(r < 6, 2, np.where(r < 10, 1, 0))
    levels = np.array([0.0, 2.0, 3.0]) if object_brighter else np.array([3.0, 0.0, 1.0])
    raw = levels[region] + 0.15 * rng.standard_normal(shape)
    centres = np.array([[0.0, 0.0], [0.35, 0.1], [0.1, 0.35]])
    emb = centres[region] + 0.03 * rng.standard_normal(shape + (2,))
    return raw[None].astype(np.float32), emb.astype(np.float32), region


def _segment(cfg, raw, emb, levels=(2, 3)):
    x = (raw - raw.mean()) / raw.std()
    return segment_embedding(cfg, emb, x, list(levels), array=raw)


def test_mask_agreement_is_the_dice_of_the_two_foregrounds():
    rng = np.random.default_rng(1)
    a, b = rng.random(500) < 0.3, rng.random(500) < 0.5
    naive = 2 * sum(1 for i in range(500) if a[i] and b[i]) / (sum(a) + sum(b))
    assert mask_agreement(a, b) == pytest.approx(naive)
    assert mask_agreement(a, a) == 1.0 and mask_agreement(a, ~a) == 0.0
    assert mask_agreement(np.zeros(5, bool), np.zeros(5, bool)) == 1.0


def _sphere(shape, centre, radius):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_mask_agreement_leaves_out_a_band_around_the_mask_surface():
    from scipy import ndimage as ndi

    from hyperseg.foreground import split_reach

    shape = (40, 40, 40)
    mask = _sphere(shape, (20, 20, 20), 10)
    # the split as the embedding draws it on a zero background: the object dilated by 3 voxels
    blurred = ndi.binary_dilation(mask, iterations=3)
    assert mask_agreement(mask.ravel(), blurred.ravel()) < 0.8  # plain Dice: they "disagree"
    assert mask_agreement(mask.ravel(), blurred.ravel(), shape, band=3) == 1.0
    # a band is no excuse for a split that is another object: an offset sphere still disagrees
    other = _sphere(shape, (20, 20, 30), 10)
    assert mask_agreement(mask.ravel(), other.ravel(), shape, band=3) < 0.6
    # counted outside the band, by hand
    keep = ~(ndi.binary_dilation(mask, iterations=2) & ~ndi.binary_erosion(mask, iterations=2))
    a, b = mask[keep], other[keep]
    assert mask_agreement(mask.ravel(), other.ravel(), shape, band=2) == pytest.approx(
        2 * (a & b).sum() / (a.sum() + b.sum()))
    # a mask the band swallows whole falls back to the plain Dice instead of agreeing by default
    speck = _sphere(shape, (5, 5, 5), 1)
    far = _sphere(shape, (6, 6, 6), 1)
    assert mask_agreement(speck.ravel(), far.ravel(), shape, band=4) == mask_agreement(speck.ravel(), far.ravel())
    with pytest.raises(ValueError, match="needs the grid's shape"):
        mask_agreement(mask.ravel(), blurred.ravel(), band=2)
    # the band is the embedding's reach: half a patch plus the smoothing
    assert split_reach(Config()) == 4 and split_reach(Config(embed_patch_edge=7, smooth_sigma=0.0)) == 3
    # the split is the 2-cluster level, smoothed with that level's own sigma where one is set
    assert split_reach(Config(level_smooth_sigma={2: 4.0, 4: 1.0})) == 6


def test_a_bright_object_on_a_dark_background_is_segmented_inside_the_mask_with_the_masked_stage():
    raw, emb, region = _ball_scene(object_brighter=True)
    cfg = Config(latent_dim=2, kmeans_n_init=2)
    assert cfg.foreground == "auto"
    seg = _segment(cfg, raw, emb)
    assert seg.foreground == "mask" and seg.agreement >= cfg.foreground_agreement
    # the same labels as the intensity mask with the masked stage's fields, set by hand
    by_hand = _segment(cfg.replace(foreground="threshold", **cfg.masked_stage), raw, emb)
    for k in (2, 3):
        np.testing.assert_array_equal(seg.labels[k], by_hand.labels[k])
    # and the masked stage is what refines: the mask with the configuration's own refinement is another answer
    own = _segment(cfg.replace(foreground="threshold"), raw, emb)
    assert own.foreground == "mask" and (own.labels[3] != seg.labels[3]).any()
    # the two tissues are found: every region one label, up to the partial-volume rim of the mask
    inner = region > 0
    lab3 = seg.labels[3]
    for k in (1, 2):
        vals, counts = np.unique(lab3[region == k], return_counts=True)
        assert counts.max() / counts.sum() > 0.9
    assert (seg.labels[2][inner] == 1).mean() > 0.97


def test_where_the_mask_is_something_else_the_split_and_the_default_refinement_are_kept():
    raw, emb, region = _ball_scene(object_brighter=False)  # the background is the brightest region
    cfg = Config(latent_dim=2, kmeans_n_init=2)
    seg = _segment(cfg, raw, emb)
    assert seg.foreground == "split" and seg.agreement < cfg.foreground_agreement
    split = _segment(cfg.replace(foreground="split"), raw, emb)
    assert split.foreground == "split" and split.agreement is None
    for k in (2, 3):
        np.testing.assert_array_equal(seg.labels[k], split.labels[k])
    assert (seg.labels[2] == (region > 0)).mean() > 0.97


def test_the_agreement_threshold_decides():
    raw, emb, _ = _ball_scene(object_brighter=True)
    # no band (a 1-voxel patch, no smoothing): the two differ at the rim, so the agreement is below 1
    base = Config(latent_dim=2, kmeans_n_init=2, embed_patch_edge=1, smooth_sigma=0.0)
    seg = _segment(base, raw, emb)
    assert seg.agreement < 1.0
    assert _segment(base.replace(foreground_agreement=seg.agreement), raw, emb).foreground == "mask"
    assert _segment(base.replace(foreground_agreement=min(1.0, seg.agreement + 1e-6)), raw, emb).foreground == "split"


def test_other_hierarchies_report_no_foreground():
    raw, emb, _ = _ball_scene(object_brighter=True)
    seg = _segment(Config(latent_dim=2, kmeans_n_init=2, hierarchy="independent"), raw, emb)
    assert seg.foreground is None and seg.agreement is None


@pytest.mark.parametrize("changes, words", [
    ({"foreground_agreement": 1.5}, "foreground_agreement"),
    ({"masked_stage": {"smooth_sigma": 1.0}}, "masked_stage may set only"),
    ({"masked_stage": {"potts_beta": -1.0}}, "masked_stage"),
    ({"masked_stage": {"refine": "gibbs"}}, "refine must be one of"),
    ({"foreground": "brightest"}, "foreground must be one of"),
])
def test_the_masked_stage_is_validated_with_the_configuration(changes, words):
    with pytest.raises(ValueError, match=words):
        Config(**changes)


def test_a_tree_hierarchy_does_not_check_a_masked_stage_it_never_runs():
    cfg = Config(hierarchy="divisive", intensity_weight=0.0, potts_beta=0.0)
    assert cfg.masked_stage["refine"] == "hmrf_em"


def test_the_masked_stage_round_trips_through_yaml(tmp_path):
    cfg = Config(masked_stage={"refine": "hmrf_em", "embedding_weight": 0.0, "intensity_weight": 1.0})
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg
    assert cfg.masked_config().foreground == "threshold" and cfg.masked_config().embedding_weight == 0.0


@pytest.mark.parametrize("choice", ["split", "threshold", "auto"])
def test_segment_foreground_option_sets_the_field(choice):
    from hyperseg.cli import build_parser
    from hyperseg.cli.segment import segment_config

    args = build_parser().parse_args(["segment", "-m", "RUN", "-i", "IN", "-o", "OUT", "--foreground", choice])
    assert segment_config(Config(foreground="split"), args).foreground == choice
    args = build_parser().parse_args(["segment", "-m", "RUN", "-i", "IN", "-o", "OUT"])
    assert segment_config(Config(foreground="split"), args).foreground == "split"  # a run keeps its own


def test_intensity_kmeans_finds_separated_intensity_classes_in_order():
    from hyperseg.regularize import intensity_kmeans

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 3000)
    v = np.array([-2.0, 0.5, 3.0])[truth] + 0.2 * rng.standard_normal(3000)
    lab = intensity_kmeans(v, 3)
    np.testing.assert_array_equal(lab, truth)  # one channel: labels in increasing intensity
    two = np.stack([v, -v + 0.1 * rng.standard_normal(3000)], 1)
    lab2 = intensity_kmeans(two, 3)
    assert dice_iou_matched(lab2, truth) > 0.99  # several channels: the same partition, in any order
    with pytest.raises(ValueError, match="M >= 4"):
        intensity_kmeans(v[:3], 4)


def dice_iou_matched(pred, truth):
    from hyperseg.metrics import dice_iou

    return dice_iou(np.asarray(pred, np.int64), np.asarray(truth, np.int64))["mean_dice"]


def test_hmrf_em_starts_where_refine_init_says():
    from hyperseg.regularize import hmrf_em, intensity_kmeans
    from hyperseg.segment import fit_level, regularise_level

    raw, emb, region = _ball_scene(object_brighter=True)
    shape = region.shape
    values = ((raw - raw.mean()) / raw.std()).reshape(1, -1).T
    points = emb.reshape(-1, 2).astype(np.float64)
    cfg = Config(latent_dim=2, kmeans_n_init=2, refine="hmrf_em", embedding_weight=0.2, intensity_weight=1.0,
                 refine_iter=1)
    fit = fit_level(points, 3, cfg)
    wants = []
    for init, start in (("clusters", fit.labels), ("intensity", intensity_kmeans(values, 3))):
        got = regularise_level(points, fit, cfg.replace(refine_init=init), shape, values)
        want = hmrf_em(points, values, start, 3, shape, cfg.potts_beta, embedding_weight=0.2, intensity_weight=1.0,
                       n_iter=1, latent="hyperbolic", c=1.0)
        np.testing.assert_array_equal(got, want)
        wants.append(want)
    assert (wants[0] != wants[1]).any()  # the two starts lead to different labels here (cluster numbers differ)
    with pytest.raises(ValueError, match="refine_init must be one of"):
        Config(refine_init="random")


def test_the_embedding_weight_of_the_em_follows_the_voxel_edge():
    from hyperseg.segment import hmrf_embedding_weight

    cfg = Config(refine="hmrf_em", embedding_weight=0.15, embedding_weight_mm=2.0)
    # full weight at and above 2 mm, in proportion to the voxel edge below
    for voxel, want in ((4.0, 0.15), (2.0, 0.15), (1.0, 0.075), (0.5, 0.0375)):
        assert hmrf_embedding_weight(cfg, voxel) == pytest.approx(want, rel=1e-12), voxel
    # 0 mm: the same weight at every voxel size (the field's default; the masked stage sets 2 mm)
    assert Config().embedding_weight_mm == 0.0 and Config().masked_config().embedding_weight_mm == 2.0
    for voxel in (0.3, 1.0, 5.0):
        assert hmrf_embedding_weight(cfg.replace(embedding_weight_mm=0.0), voxel) == 0.15


def test_the_em_gets_the_weight_of_its_voxel_edge(monkeypatch):
    import hyperseg.segment as S

    raw, emb, region = _ball_scene(object_brighter=True)
    values = ((raw - raw.mean()) / raw.std()).reshape(1, -1).T
    points = emb.reshape(-1, 2).astype(np.float64)
    seen = []

    def spy(*args, embedding_weight, **kwargs):
        seen.append(embedding_weight)
        return np.zeros(len(points), np.int64)

    monkeypatch.setattr(S, "hmrf_em", spy)
    cfg = Config(latent_dim=2, kmeans_n_init=2, refine="hmrf_em", embedding_weight=0.2, embedding_weight_mm=2.0,
                 intensity_weight=1.0, refine_iter=1)
    fit = S.fit_level(points, 3, cfg)
    for init in ("clusters", "intensity"):  # both starts of the EM
        S.regularise_level(points, fit, cfg.replace(refine_init=init), region.shape, values, voxel_size=1.0)
        S.regularise_level(points, fit, cfg.replace(refine_init=init), region.shape, values, voxel_size=3.0)
    assert seen == pytest.approx([0.1, 0.2, 0.1, 0.2])


def test_the_mri_preset_is_the_masked_stage_on_every_volume():
    mri, masked = Config.from_preset("mri"), Config().masked_config()
    for name in ("hierarchy", "foreground", *Config().masked_stage):
        assert getattr(mri, name) == getattr(masked, name), name


def test_hmrf_from_intensity_fits_no_clustering_of_the_embedding(monkeypatch):
    import hyperseg.segment as S

    raw, emb, region = _ball_scene(object_brighter=True)
    values = ((raw - raw.mean()) / raw.std()).reshape(1, -1).T
    points = emb.reshape(-1, 2).astype(np.float64)
    cfg = Config(latent_dim=2, kmeans_n_init=2, refine="hmrf_em", refine_init="intensity", intensity_weight=1.0,
                 embedding_weight=0.15, refine_iter=2)
    with_fit = S.regularise_level(points, S.fit_level(points, 3, cfg), cfg, region.shape, values)

    def no_fit(*args, **kwargs):
        raise AssertionError("the embedding was clustered for nothing")

    monkeypatch.setattr(S, "fit_level", no_fit)
    np.testing.assert_array_equal(S.level_labels(points, 3, cfg, region.shape, values), with_fit)
    with pytest.raises(AssertionError, match="for nothing"):  # the other start does need it
        S.level_labels(points, 3, cfg.replace(refine_init="clusters"), region.shape, values)
