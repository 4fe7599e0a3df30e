"""Intensity jitter of triplet patches (data/augment.py): the formula, checked against a loop."""
from __future__ import annotations

import math

import pytest
import torch

from hyperseg.config import Config
from hyperseg.data.augment import CUBE_SYMMETRIES, apply_symmetry, jitter_intensity, random_symmetry


def _patches(seed: int = 0, b: int = 6, c: int = 2, m: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, c + 1, dtype=torch.float32).view(1, c, 1, 1, 1) * 2.0  # channels differ in spread
    return tuple(torch.randn(b, c, m, m, m, generator=g) * scale + 3.0 for _ in range(3))


def _naive(patches, offset, gain, gen):
    """The module docstring's formula, one patch and one channel at a time, same draw order."""
    c = patches[0].shape[1]
    unit = [patches[0][:, k].flatten().std().item() for k in range(c)]
    out = []
    for p in patches:
        eta = torch.randn(p.shape[0], c, generator=gen) if gain > 0 else torch.zeros(p.shape[0], c)
        eps = torch.randn(p.shape[0], c, generator=gen) if offset > 0 else torch.zeros(p.shape[0], c)
        q = torch.empty_like(p)
        for b in range(p.shape[0]):
            for k in range(c):
                x = p[b, k]
                mean = x.mean()
                q[b, k] = mean + math.exp(gain * eta[b, k].item()) * (x - mean) + offset * unit[k] * eps[b, k].item()
        out.append(q)
    return out


@pytest.mark.parametrize("offset,gain", [(1.0, 0.0), (0.0, 0.3), (0.7, 0.4)])
def test_matches_the_formula_patch_by_patch(offset, gain):
    patches = _patches()
    fast = jitter_intensity(patches, offset, gain, torch.Generator().manual_seed(5))
    slow = _naive(patches, offset, gain, torch.Generator().manual_seed(5))
    for f, s, p in zip(fast, slow, patches):
        assert f.shape == p.shape and f.dtype == p.dtype
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-5)


def test_off_returns_the_patches_and_leaves_the_generator_alone():
    patches = _patches()
    gen = torch.Generator().manual_seed(3)
    out = jitter_intensity(patches, 0.0, 0.0, gen)
    assert all(o is p for o, p in zip(out, patches))
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(3).get_state())


def test_offset_moves_means_and_keeps_contrast():
    patches = _patches(b=4000, c=1, m=3)
    out = jitter_intensity(patches, 0.5, 0.0, torch.Generator().manual_seed(0))
    unit = patches[0].std().item()
    for o, p in zip(out, patches):
        torch.testing.assert_close(o.std(dim=(2, 3, 4)), p.std(dim=(2, 3, 4)), rtol=1e-4, atol=1e-4)
        shift = (o - p).mean(dim=(1, 2, 3, 4))
        assert abs(shift.std().item() / (0.5 * unit) - 1.0) < 0.05  # 4000 draws: ~1% standard error
        assert abs(shift.mean().item()) < 0.05 * unit


def test_gain_scales_contrast_about_the_patch_mean():
    patches = _patches(b=4000, c=1, m=3)
    out = jitter_intensity(patches, 0.0, 0.3, torch.Generator().manual_seed(0))
    for o, p in zip(out, patches):
        torch.testing.assert_close(o.mean(dim=(2, 3, 4)), p.mean(dim=(2, 3, 4)), rtol=1e-4, atol=1e-4)
        log_ratio = torch.log(o.std(dim=(2, 3, 4)) / p.std(dim=(2, 3, 4)))
        assert abs(log_ratio.std().item() / 0.3 - 1.0) < 0.05
        assert abs(log_ratio.mean().item()) < 0.03


def test_every_patch_gets_its_own_draw():
    same = torch.ones(8, 1, 2, 2, 2)
    varied = torch.randn(8, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    a, b, c = jitter_intensity((varied, same, same), 1.0, 0.0, torch.Generator().manual_seed(1))
    # two identical inputs get different offsets, and so does every patch within a tensor
    assert not torch.allclose(b, c)
    assert len(torch.unique(b.flatten(1)[:, 0])) == 8
    assert not torch.allclose(a[:, :, 0, 0, 0] - varied[:, :, 0, 0, 0], b[:, :, 0, 0, 0] - 1.0)


def test_negative_values_are_refused():
    with pytest.raises(ValueError, match="must be >= 0"):
        jitter_intensity(_patches(), -1.0, 0.0, torch.Generator())
    with pytest.raises(ValueError, match="intensity_offset and intensity_gain"):
        Config(intensity_gain=-0.1)


# ----------------------------------------------------------------------------- symmetries of the cube
def _naive_symmetry(patch: torch.Tensor, perm, flips) -> torch.Tensor:
    """Voxel by voxel: axis ``a`` of the result is axis ``perm[a]`` of the input, read backwards where flipped."""
    m = patch.shape[-1]
    out = torch.empty_like(patch)
    for i in range(m):
        for j in range(m):
            for k in range(m):
                dst = [i, j, k]
                read = [m - 1 - dst[a] if flips[a] else dst[a] for a in range(3)]
                src = [0, 0, 0]
                for a in range(3):
                    src[perm[a]] = read[a]
                out[..., i, j, k] = patch[..., src[0], src[1], src[2]]
    return out


def test_every_symmetry_matches_a_voxel_by_voxel_loop():
    patch = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for index, (perm, flips) in enumerate(CUBE_SYMMETRIES):
        torch.testing.assert_close(apply_symmetry(patch, index), _naive_symmetry(patch, perm, flips), rtol=0, atol=0)


def test_the_48_symmetries_are_distinct_and_form_a_group():
    patch = torch.randn(1, 1, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    images = torch.stack([apply_symmetry(patch, i).flatten() for i in range(len(CUBE_SYMMETRIES))])
    assert len(CUBE_SYMMETRIES) == 48 and CUBE_SYMMETRIES[0] == ((0, 1, 2), (False, False, False))
    assert torch.unique(images, dim=0).shape[0] == 48  # a generic cube has 48 different turned copies
    for i in range(48):  # closed under composition: every turned copy of a turned copy is one of the 48
        for j in range(48):
            twice = apply_symmetry(apply_symmetry(patch, i), j).flatten()
            assert (images == twice).all(dim=1).any()


def test_random_symmetry_draws_each_patch_its_own_turn_uniformly():
    one = torch.randn(1, 1, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    batch = one.expand(4800, 1, 3, 3, 3).contiguous()
    (out,) = random_symmetry([batch], torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    images = torch.stack([apply_symmetry(one, i).flatten() for i in range(48)])
    which = (out.flatten(1)[:, None, :] == images[None]).all(dim=2).float().argmax(dim=1)
    counts = torch.bincount(which, minlength=48)
    assert counts.sum() == 4800 and counts.min() > 50 and counts.max() < 150  # about 100 each
    # every patch keeps its own values: only their places change
    torch.testing.assert_close(out.flatten(1).sort(dim=1).values, batch.flatten(1).sort(dim=1).values)


def test_random_symmetry_is_reproducible_and_independent_per_tensor():
    patches = _patches(b=64, c=2, m=4)
    a = random_symmetry(patches, torch.Generator().manual_seed(7))
    b = random_symmetry(patches, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    same = (_patches(b=64, c=2, m=4)[0],) * 2  # one tensor twice: the two draws must differ
    x, y = random_symmetry(same, torch.Generator().manual_seed(7))
    assert not torch.equal(x, y)


def test_random_symmetry_refuses_non_cubic_patches():
    with pytest.raises(ValueError, match="cubic"):
        random_symmetry([torch.zeros(2, 1, 4, 4, 5)], torch.Generator().manual_seed(0))


def test_patch_symmetry_must_be_a_bool():
    with pytest.raises(ValueError, match="patch_symmetry"):
        Config(patch_symmetry="yes")
