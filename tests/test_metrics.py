import itertools

import numpy as np
import pytest

from hyperseg.metrics import (
    confusion_matrix,
    dice_iou,
    match_clusters,
    mean_dice,
    mean_iou,
    summarise,
)


def naive_dice_iou_matrices(pred, target):
    """Dice and IoU of every (cluster, class) pair, one boolean mask at a time."""
    kp, kt = pred.max() + 1, target.max() + 1
    dice = np.zeros((kp, kt))
    iou = np.zeros((kp, kt))
    for k in range(kp):
        for j in range(kt):
            a, b = pred == k, target == j
            inter, union = np.sum(a & b), np.sum(a | b)
            if a.sum() + b.sum():
                dice[k, j] = 2 * inter / (a.sum() + b.sum())
            if union:
                iou[k, j] = inter / union
    return dice, iou


def brute_force_best(pred, target):
    """Best mean Dice over all one-to-one cluster->class matchings (unmatched classes score 0)."""
    dice, _ = naive_dice_iou_matrices(pred, target)
    present = np.unique(target)
    kp = dice.shape[0]
    best = -1.0
    n = min(kp, len(present))
    for classes in itertools.permutations(present, n):
        for clusters in itertools.permutations(range(kp), n):
            best = max(best, sum(dice[k, j] for k, j in zip(clusters, classes)) / len(present))
    return best


def test_permuted_labels_score_one():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(6, 7, 8))
    perm = np.array([2, 0, 3, 1])
    res = dice_iou(perm[target], target)
    np.testing.assert_allclose(res["dice"], 1.0)
    np.testing.assert_allclose(res["iou"], 1.0)
    assert res["mean_dice"] == pytest.approx(1.0) and res["mean_iou"] == pytest.approx(1.0)
    assert res["matching"] == {int(perm[j]): j for j in range(4)}


def test_hand_computed_example():
    target = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([1, 1, 0, 0, 0, 2])
    # cluster 1 = {0, 1} vs class 0 = {0, 1, 2}: Dice 2*2/(2+3) = 0.8, IoU 2/3
    # cluster 0 = {2, 3, 4} vs class 1 = {3, 4}: Dice 2*2/(3+2) = 0.8, IoU 2/3
    # cluster 2 = {5} vs class 2 = {5}: Dice 1, IoU 1
    res = dice_iou(pred, target)
    assert res["matching"] == {1: 0, 0: 1, 2: 2}
    np.testing.assert_allclose(res["dice"], [0.8, 0.8, 1.0])
    np.testing.assert_allclose(res["iou"], [2 / 3, 2 / 3, 1.0])
    assert res["mean_dice"] == pytest.approx(2.6 / 3)
    assert res["mean_iou"] == pytest.approx(7 / 9)
    assert mean_dice(pred, target) == pytest.approx(2.6 / 3)
    assert mean_iou(pred, target) == pytest.approx(7 / 9)
    assert match_clusters(pred, target) == {1: 0, 0: 1, 2: 2}
    np.testing.assert_array_equal(res["confusion"], [[1, 2, 0], [2, 0, 0], [0, 0, 1]])


def test_hungarian_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(40):
        kp, kt = rng.integers(1, 5), rng.integers(1, 5)
        target = rng.integers(0, kt, 40)
        # correlated prediction: a random relabelling with noise
        pred = np.where(rng.random(40) < 0.6, rng.permutation(max(kp, kt))[target] % kp, rng.integers(0, kp, 40))
        res = dice_iou(pred, target)
        assert res["mean_dice"] == pytest.approx(brute_force_best(pred, target), abs=1e-12)
        # the matching is one-to-one and its Dice values are the reported ones
        assert len(set(res["matching"].values())) == len(res["matching"])
        dice, iou = naive_dice_iou_matrices(pred, target)
        for k, j in res["matching"].items():
            assert res["dice"][j] == pytest.approx(dice[k, j])
            assert res["iou"][j] == pytest.approx(iou[k, j])


def test_fewer_clusters_than_classes_score_zero_for_the_unmatched():
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])
    res = dice_iou(pred, target)
    # cluster 0 -> class 0 (Dice 1); cluster 1 = {2..5} -> class 1 or 2 (Dice 2*2/(4+2) = 2/3); one class gets 0
    assert sorted(res["dice"].tolist()) == pytest.approx([0.0, 2 / 3, 1.0])
    assert res["mean_dice"] == pytest.approx((1 + 2 / 3) / 3)
    assert len(res["matching"]) == 2


def test_extra_clusters_are_ignored():
    target = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 2, 1, 1, 1])
    res = dice_iou(pred, target)
    assert res["matching"] == {0: 0, 1: 1}
    np.testing.assert_allclose(res["dice"], [0.8, 1.0])


def test_naive_loop_agrees_with_confusion_matrix():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 5, (9, 9, 9))
    target = rng.integers(0, 3, (9, 9, 9))
    cm = confusion_matrix(pred, target)
    loops = np.array([[np.sum((pred == k) & (target == j)) for j in range(3)] for k in range(5)])
    np.testing.assert_array_equal(cm, loops)
    dice, iou = naive_dice_iou_matrices(pred, target)
    res = dice_iou(pred, target)
    for k, j in res["matching"].items():
        assert res["dice"][j] == pytest.approx(dice[k, j])
        assert res["iou"][j] == pytest.approx(iou[k, j])


def test_absent_class_is_nan_and_left_out_of_the_mean():
    target = np.array([0, 0, 2, 2])
    pred = np.array([1, 1, 0, 0])
    res = dice_iou(pred, target, n_classes=4)
    assert res["dice"].shape == (4,)
    assert np.isnan(res["dice"][1]) and np.isnan(res["dice"][3])
    assert res["mean_dice"] == pytest.approx(1.0)


def test_input_validation():
    with pytest.raises(ValueError, match="same shape"):
        dice_iou(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="integer"):
        dice_iou(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="negative"):
        dice_iou(np.array([0, -1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="n_classes"):
        dice_iou(np.array([0, 1]), np.array([0, 3]), n_classes=2)


def test_summarise_mean_and_std_over_volumes():
    a = dice_iou(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))  # 1.0
    b = dice_iou(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]))  # (0.8 + 2/3) / 2
    s = summarise([a, b])
    mb = (0.8 + 2 / 3) / 2
    assert s["n_volumes"] == 2
    assert s["mean_dice"] == pytest.approx((1 + mb) / 2)
    assert s["mean_dice_std"] == pytest.approx(np.std([1, mb]))
    np.testing.assert_allclose(s["dice"], [(1 + 0.8) / 2, (1 + 2 / 3) / 2])
    with pytest.raises(ValueError):
        summarise([])
