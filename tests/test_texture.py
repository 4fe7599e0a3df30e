"""The structure tensor and its coherence (hyperseg.texture), and the finer levels' coherence channel."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from hyperseg.config import Config
from hyperseg.metrics import dice_iou
from hyperseg.segment import coherence_channel, refined_levels
from hyperseg.texture import COMPONENTS, coherence, structure_tensor, symmetric_eigenvalues


def _components(A: np.ndarray) -> np.ndarray:
    """(n, 3, 3) symmetric matrices -> (6, n) in the order of COMPONENTS."""
    return np.stack([A[:, a, b] for a, b in COMPONENTS])


def _grid(n: int) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij"))  # (3, n, n, n)


def _stripes(n: int, direction, freq: float = 0.25, phase: float = 0.3) -> np.ndarray:
    u = np.asarray(direction, dtype=np.float64)
    u = u / np.linalg.norm(u)
    return np.cos(2 * np.pi * freq * np.tensordot(u, _grid(n), axes=1) + phase)


def _granules(n: int, sigma: float = 0.8, seed: int = 0) -> np.ndarray:
    g = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(n, n, n)), sigma)
    return (g - g.mean()) / g.std()


# --- eigenvalues against numpy ---------------------------------------------------------------------

def test_eigenvalues_match_numpy_on_random_symmetric_matrices():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(2000, 3, 3))
    A = M @ np.swapaxes(M, 1, 2)  # positive semi-definite, as a structure tensor
    A[:500] = M[:500] + np.swapaxes(M[:500], 1, 2)  # and indefinite ones
    got = symmetric_eigenvalues(_components(A))
    want = np.linalg.eigvalsh(A)[:, ::-1].T  # decreasing
    np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("A", [
    np.zeros((3, 3)),  # p = 0: the guard
    2.5 * np.eye(3),  # p = 0 with q > 0
    np.diag([4.0, 1.0, 1.0]),  # a double eigenvalue (r = 1)
    np.diag([1.0, 1.0, 0.0]),  # a double eigenvalue (r = -1)
    np.outer([1.0, 2.0, 2.0], [1.0, 2.0, 2.0]),  # rank one
])
def test_eigenvalues_of_degenerate_matrices(A):
    got = symmetric_eigenvalues(_components(A[None]))[:, 0]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np.linalg.eigvalsh(A)[::-1], atol=1e-12)


# --- the structure tensor ----------------------------------------------------------------------------

def test_structure_tensor_of_a_ramp_is_the_outer_product_of_its_slope():
    """x = a . r has the gradient a everywhere: J = a a^T away from the faces (whatever rho)."""
    a = np.array([0.3, -0.2, 0.5])
    vol = np.tensordot(a, _grid(24), axes=1)
    J = structure_tensor(vol, integration_sigma=1.5)
    inner = J[:, 10:14, 10:14, 10:14].reshape(6, -1)
    want = np.array([a[i] * a[j] for i, j in COMPONENTS])
    np.testing.assert_allclose(inner, np.repeat(want[:, None], inner.shape[1], 1), rtol=1e-3, atol=1e-4)  # float32


def test_structure_tensor_adds_the_channels():
    v = _granules(16)
    w = _stripes(16, (1, 2, 0))
    both = structure_tensor(np.stack([v, w]), 2.0)
    np.testing.assert_allclose(both, structure_tensor(v, 2.0) + structure_tensor(w, 2.0), rtol=1e-5, atol=1e-6)


def test_structure_tensor_refuses_bad_input():
    with pytest.raises(ValueError, match="scales must be > 0"):
        structure_tensor(np.zeros((4, 4, 4)), 0.0)
    with pytest.raises(ValueError, match="expected a"):
        structure_tensor(np.zeros((4, 4)), 1.0)


# --- coherence -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [(1, 0, 0), (0, 0, 1), (1, 1, 0), (1, 2, 3)])
def test_planar_stripes_are_coherent_in_any_direction(direction):
    c = coherence(_stripes(32, direction), integration_sigma=2.0)
    inner = c[8:-8, 8:-8, 8:-8]
    assert inner.min() > 0.85, inner.min()


def test_isotropic_granules_are_not_coherent():
    c = coherence(_granules(32), integration_sigma=2.0)[6:-6, 6:-6, 6:-6]
    assert c.mean() < 0.35, c.mean()
    assert np.percentile(c, 95) < 0.6


def test_stripes_and_granules_are_told_apart_by_coherence_alone():
    """The case it is for: one brightness and contrast, two textures; every stripe voxel above every granule
    voxel's median away from the shared face."""
    n = 32
    vol = _granules(n)
    vol[:, :, n // 2:] = _stripes(n, (1, 1, 1))[:, :, n // 2:] / np.sqrt(0.5)  # unit variance, as the granules
    c = coherence(vol, 2.0)
    stripes, granules = c[4:-4, 4:-4, n // 2 + 4:-4], c[4:-4, 4:-4, 4:n // 2 - 4]
    assert stripes.min() > np.median(granules) + 0.3


def test_coherence_of_a_flat_volume_is_zero_and_finite():
    for vol in (np.zeros((8, 8, 8)), np.full((8, 8, 8), 3.0)):
        c = coherence(vol, 2.0)
        assert np.all(np.isfinite(c)) and np.all(c == 0.0)


def test_coherence_does_not_depend_on_scale_or_offset():
    vol = _granules(20) + _stripes(20, (0, 1, 1))
    np.testing.assert_allclose(coherence(5.0 * vol - 2.0, 2.0), coherence(vol, 2.0), atol=1e-5)


def test_coherence_in_slabs_equals_one_pass(monkeypatch):
    import hyperseg.texture as texture

    vol = _granules(20, seed=3) + 0.5 * _stripes(20, (2, 1, 0))
    whole = coherence(vol, 2.0)
    monkeypatch.setattr(texture, "_SLAB_VOXELS", 777)  # slabs that end inside rows
    np.testing.assert_array_equal(texture.coherence(vol, 2.0), whole)


# --- the finer levels' channel ------------------------------------------------------------------------

def test_coherence_channel_is_the_foreground_standardised():
    vol = _granules(16)
    fg = np.zeros(16 ** 3, dtype=bool)
    fg[::3] = True
    got = coherence_channel(vol.reshape(-1, 1), (16, 16, 16), fg, 2.0)
    c = coherence(vol, 2.0).reshape(-1)[fg].astype(np.float64)
    assert got.shape == (int(fg.sum()), 1)
    np.testing.assert_allclose(got[:, 0], (c - c.mean()) / c.std(), atol=1e-6)


def _two_textures(n: int = 24, signal: float = 0.3):
    """Left half isotropic granules, right half planar stripes, of one mean and standard deviation; an embedding
    (d = 2) whose first coordinate tells the halves apart only weakly (means 0.3 of a noise sd apart), as the
    embedding of a 5^3 patch tells stripes from granules."""
    vol = _granules(n, seed=1)
    vol[:, :, n // 2:] = _stripes(n, (1, 2, 1))[:, :, n // 2:] / np.sqrt(0.5)
    truth = np.zeros((n, n, n), dtype=np.int64)
    truth[:, :, n // 2:] = 1
    emb = np.random.default_rng(2).normal(scale=0.05, size=(n ** 3, 2))
    emb[:, 0] += signal * 0.05 * truth.reshape(-1)
    return vol, truth, emb


def test_finer_levels_tell_textures_apart_only_with_the_coherence_channel():
    n = 24
    vol, truth, emb = _two_textures(n)
    fg = np.ones(n ** 3, dtype=bool)
    values = vol.reshape(-1, 1)
    scores = {}
    for sigma in (0.0, 2.0):
        cfg = Config(coherence_sigma=sigma, overcluster=1, refine_passes=1)  # one cluster per class, one pass
        lab = refined_levels({3: emb}, values, cfg, (n, n, n), foreground=fg)[3].reshape(n, n, n) - 1
        scores[sigma] = dice_iou(lab, truth, n_classes=2)["mean_dice"]
    assert scores[2.0] > 0.95, scores
    assert scores[0.0] < 0.9, scores


def test_the_masked_stage_and_the_paper_preset_read_no_coherence():
    assert Config().masked_config().coherence_sigma == 0.0
    assert Config.from_preset("paper").coherence_sigma == 0.0
    assert Config.from_preset("paper").refine_passes == 1


def test_coherence_sigma_is_validated():
    with pytest.raises(ValueError, match="coherence_sigma must be >= 0"):
        Config(coherence_sigma=-1.0)
    with pytest.raises(ValueError, match="coherence_sigma 3.0 adds a channel"):
        Config(coherence_sigma=3.0, hierarchy="independent")
    Config(coherence_sigma=0.0, hierarchy="independent")  # off: any hierarchy


def test_an_empty_foreground_is_refused_as_before_not_warned_about():
    """The coherence channel is not standardised over no voxels (a mean of an empty slice): the finer level
    refuses the empty foreground with its own message."""
    n = 8
    vol = _granules(n)
    cfg = Config()
    with pytest.raises(ValueError, match="fewer than the 3 clusters"):
        refined_levels({4: np.zeros((n ** 3, 2))}, vol.reshape(-1, 1), cfg, (n, n, n),
                       foreground=np.zeros(n ** 3, dtype=bool))


def test_more_refinement_passes_let_the_coherence_move_what_the_clustering_missed():
    """An embedding that barely separates the textures (means 0.05 of a noise sd apart): one pass starts from
    its poor clusters; each further pass refits the coherence's Gaussians on the last pass's labels."""
    n = 24
    vol, truth, emb = _two_textures(n, signal=0.05)
    fg = np.ones(n ** 3, dtype=bool)
    scores = {}
    for passes in (1, 3):
        cfg = Config(overcluster=1, refine_passes=passes)
        lab = refined_levels({3: emb}, vol.reshape(-1, 1), cfg, (n, n, n), foreground=fg)[3].reshape(n, n, n) - 1
        scores[passes] = dice_iou(lab, truth, n_classes=2)["mean_dice"]
    assert scores[3] > 0.95, scores
    assert scores[1] < 0.9, scores


def test_a_pass_is_the_one_pass_refinement_from_the_last_pass_labels():
    """refine_passes 2 == regularise_level (one pass) applied to its own result."""
    from dataclasses import replace

    from hyperseg.segment import fit_level, regularise_level

    n = 12
    vol, _, emb = _two_textures(n, signal=0.5)
    values = np.concatenate([vol.reshape(-1, 1), coherence_channel(vol.reshape(-1, 1), (n, n, n),
                                                                   np.ones(n ** 3, bool), 2.0)], 1)
    cfg1 = Config(refine_passes=1)
    fit = fit_level(emb, 3, cfg1)
    once = regularise_level(emb, fit, cfg1, (n, n, n), values)
    twice_by_hand = regularise_level(emb, replace(fit, labels=once), cfg1, (n, n, n), values)
    twice = regularise_level(emb, fit, Config(refine_passes=2), (n, n, n), values)
    np.testing.assert_array_equal(twice, twice_by_hand)
    assert not np.array_equal(once, twice)  # the second pass moved voxels, so the comparison is not vacuous


def test_refine_passes_is_validated():
    with pytest.raises(ValueError, match="refine_passes must be an integer >= 1"):
        Config(refine_passes=0)


def test_the_passes_stop_at_a_fixed_point(monkeypatch):
    """Two clean regions and an embedding that tells them apart: the first pass keeps the clustering's labels,
    so no second pass is run (it would fit the same terms and return the same labels)."""
    import hyperseg.segment as S

    n = 12
    vol, truth, _ = _two_textures(n)
    emb = np.zeros((n ** 3, 2))
    emb[:, 0] = 0.5 * truth.reshape(-1)
    calls = []
    real = S.potts_labels
    monkeypatch.setattr(S, "potts_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = Config(refine_passes=3)
    fit = S.fit_level(emb, 2, cfg)
    labels = S.regularise_level(emb, fit, cfg, (n, n, n), vol.reshape(-1, 1))
    assert len(calls) == 1
    assert dice_iou(labels.reshape(n, n, n), truth, n_classes=2)["mean_dice"] == 1.0
