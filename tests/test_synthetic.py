"""The simple synthetic benchmark: determinism, label nesting, classes, noise, files on disk."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from hyperseg.data.synthetic import (
    LEVEL_CLASSES,
    generate_volume,
    pink_noise,
    write_benchmark,
)

N_CLASSES = {1: 2, 2: 4, 3: 6}


@pytest.fixture(scope="module")
def volumes():
    return [generate_volume(np.random.default_rng(seed)) for seed in range(3)]


def test_deterministic_per_seed():
    a_img, a_lab = generate_volume(np.random.default_rng(7), (32, 32, 32))
    b_img, b_lab = generate_volume(np.random.default_rng(7), (32, 32, 32))
    c_img, _ = generate_volume(np.random.default_rng(8), (32, 32, 32))
    np.testing.assert_array_equal(a_img, b_img)
    for level in (1, 2, 3):
        np.testing.assert_array_equal(a_lab[level], b_lab[level])
    assert not np.array_equal(a_img, c_img)


def test_shapes_dtypes_and_classes(volumes):
    assert {k: len(v) for k, v in LEVEL_CLASSES.items()} == N_CLASSES
    for image, labels in volumes:
        assert image.shape == (50, 50, 50) and image.dtype == np.float32
        assert np.isfinite(image).all()
        assert set(labels) == {1, 2, 3}
        for level, lab in labels.items():
            assert lab.shape == (50, 50, 50) and lab.dtype == np.uint8
            # every class of the level is present (background, cell, both organelles, both inclusions)
            assert set(np.unique(lab).tolist()) == set(range(N_CLASSES[level]))


def test_label_nesting(volumes):
    for _, lab in volumes:
        l1, l2, l3 = lab[1], lab[2], lab[3]
        np.testing.assert_array_equal(l1, (l2 > 0).astype(np.uint8))
        np.testing.assert_array_equal(l2 > 0, l3 > 0)
        # levels agree wherever level 3 adds nothing
        np.testing.assert_array_equal(l3[l3 <= 3], l2[l3 <= 3])
        # level-3 objects lie in the right organelle
        assert np.all(l2[l3 == 4] == 2) and np.all(l2[l3 == 5] == 3)
        # "entirely inside" with a margin: one voxel of dilation stays inside the parent
        organelles = (l2 == 2) | (l2 == 3)
        assert np.all(l1[ndimage.binary_dilation(organelles)] == 1)
        assert np.all(l2[ndimage.binary_dilation(l3 == 4)] == 2)
        assert np.all(l2[ndimage.binary_dilation(l3 == 5)] == 3)


def test_object_counts(volumes):
    for _, lab in volumes:
        n_ves = ndimage.label(lab[2] == 2)[1]
        n_mito = ndimage.label(lab[2] == 3)[1]
        assert 1 <= n_ves <= 4 and 1 <= n_mito <= 2
        for parent_label, child_label in ((2, 4), (3, 5)):
            parents, n_parents = ndimage.label(lab[2] == parent_label)
            for p in range(1, n_parents + 1):
                n_children = ndimage.label((lab[3] == child_label) & (parents == p))[1]
                assert 1 <= n_children <= 3


def test_pink_noise_generator():
    noise = pink_noise(np.random.default_rng(0), (64, 64, 64), 0.25)
    assert noise.std() == pytest.approx(0.25, rel=1e-9)
    assert abs(noise.mean()) < 1e-9
    # radially averaged power ~ 1/|f|^2 (amplitude ~ 1/|f|)
    power = np.abs(np.fft.fftn(noise)) ** 2
    freq = np.sqrt(sum(g ** 2 for g in np.meshgrid(*[np.fft.fftfreq(64)] * 3, indexing="ij")))
    bins = np.linspace(0.05, 0.45, 17)
    which = np.digitize(freq.ravel(), bins)
    p = [power.ravel()[which == i].mean() for i in range(1, len(bins))]
    f = [freq.ravel()[which == i].mean() for i in range(1, len(bins))]
    slope = np.polyfit(np.log(f), np.log(p), 1)[0]
    assert slope == pytest.approx(-2.0, abs=0.15)


def test_background_is_noise_only(volumes):
    for image, lab in volumes:
        bg = image[lab[1] == 0]
        assert bg.size > 1000
        assert abs(bg.mean()) < 0.15
        assert 0.15 < bg.std() < 0.35


def test_other_shape_and_bad_variant():
    image, lab = generate_volume(np.random.default_rng(1), (32, 32, 32))
    assert image.shape == (32, 32, 32)
    assert set(np.unique(lab[3]).tolist()) == set(range(6))
    with pytest.raises(ValueError, match="irregular"):
        generate_volume(np.random.default_rng(0), variant="wobbly")


# -- irregular variant ----------------------------------------------------------------
@pytest.fixture(scope="module")
def irregular():
    return [generate_volume(np.random.default_rng(s), variant="irregular") for s in range(4)]


def test_irregular_levels_still_nest(irregular):
    for _, lab in irregular:
        assert set(np.unique(lab[2][lab[1] == 0]).tolist()) == {0}
        parent_of = {0: 0, 1: 1, 2: 2, 3: 3, 4: 2, 5: 3}  # level-3 class -> level-2 class
        for c3, c2 in parent_of.items():
            assert np.all(lab[2][lab[3] == c3] == c2)


def test_irregular_shapes_are_not_convex(irregular):
    """A deformed sphere or cuboid leaves holes in its own convex hull; the simple ones do not."""
    from scipy.spatial import ConvexHull, Delaunay

    def hull_deficit(mask: np.ndarray) -> float:
        """Fraction of the largest component's convex hull (voxel grid) that it leaves empty."""
        comp, n = ndimage.label(mask)
        mask = comp == 1 + np.argmax(np.bincount(comp.ravel())[1:])
        pts = np.argwhere(mask).astype(float)
        hull = Delaunay(pts[ConvexHull(pts).vertices])
        lo, hi = pts.min(0).astype(int), pts.max(0).astype(int) + 1
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
        inside = hull.find_simplex(grid) >= 0
        return 1.0 - mask.sum() / inside.sum()

    irregular_deficit = [hull_deficit(lab[2] == 3) for _, lab in irregular]  # mitochondria
    simple_deficit = [hull_deficit(lab[2] == 3) for _, lab in
                      (generate_volume(np.random.default_rng(s)) for s in range(4))]
    assert max(simple_deficit) < 0.05  # a voxelised cuboid fills its hull
    assert np.median(irregular_deficit) > 0.1


def test_irregular_intensity_alone_does_not_separate_background(irregular):
    """The bias field shifts the background so its range covers much of the cell's."""
    for image, lab in irregular:
        bg, cell = image[lab[1] == 0], image[lab[1] == 1]
        lo, hi = np.percentile(cell, [5, 95])
        assert np.mean((bg > lo) & (bg < hi)) > 0.5
        assert bg.std() > 0.3  # the simple variant's background is only the noise (std 0.25)


def test_irregular_keeps_the_scene_of_the_simple_case():
    simple = generate_volume(np.random.default_rng(7))[1]
    irregular = generate_volume(np.random.default_rng(7), variant="irregular")[1]
    for level in (2, 3):
        assert sorted(np.unique(simple[level]).tolist()) == sorted(np.unique(irregular[level]).tolist())
    assert 0.8 < irregular[1].mean() / simple[1].mean() < 1.25


def test_write_benchmark_roundtrip(tmp_path):
    out = write_benchmark(tmp_path / "bench", seed=3, n_train=2, n_val=1, n_test=1, shape=(32, 32, 32),
                          progress=False)
    names = {"train": ["case000", "case001"], "val": ["case002"], "test": ["case003"]}
    expected = {"levels.json"}
    for split, cases in names.items():
        for name in cases:
            expected.add(f"{split}/{name}.nii.gz")
            expected.update(f"{split}/labels/{name}_level{k}.nii.gz" for k in (1, 2, 3))
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == expected  # no temporary files left behind

    meta = json.loads((out / "levels.json").read_text())
    assert meta["seed"] == 3 and meta["variant"] == "simple" and meta["shape"] == [32, 32, 32]
    assert meta["splits"] == names
    for level in (1, 2, 3):
        entry = meta["levels"][str(level)]
        assert entry["n_classes"] == N_CLASSES[level]
        assert entry["classes"] == list(LEVEL_CLASSES[level])

    split_seeds = np.random.SeedSequence(3).spawn(3)
    for k, (split, cases) in enumerate(names.items()):
        children = split_seeds[k].spawn(len(cases))  # spawn() is stateful: call it once per split
        for j, name in enumerate(cases):
            image, labels = generate_volume(np.random.default_rng(children[j]), (32, 32, 32))
            img = nib.load(out / split / f"{name}.nii.gz")
            np.testing.assert_array_equal(img.affine, np.eye(4))
            data = np.asanyarray(img.dataobj)
            assert data.dtype == np.float32
            np.testing.assert_array_equal(data, image)
            for level in (1, 2, 3):
                lab = np.asanyarray(nib.load(out / split / "labels" / f"{name}_level{level}.nii.gz").dataobj)
                assert lab.dtype == np.uint8
                np.testing.assert_array_equal(lab, labels[level])


def test_case_seed_does_not_depend_on_split_sizes():
    a = np.random.SeedSequence(0).spawn(3)[1].spawn(1)[0]
    b = np.random.SeedSequence(0).spawn(3)[1].spawn(20)[0]
    np.testing.assert_array_equal(generate_volume(np.random.default_rng(a), (16, 16, 16))[0],
                                  generate_volume(np.random.default_rng(b), (16, 16, 16))[0])


def test_write_benchmark_with_progress(tmp_path):
    out = write_benchmark(tmp_path, seed=0, n_train=1, n_val=0, n_test=0, shape=(16, 16, 16), progress=True)
    assert (out / "train" / "case000.nii.gz").is_file()
    assert json.loads((out / "levels.json").read_text())["splits"] == {"train": ["case000"], "val": [], "test": []}
