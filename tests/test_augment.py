"""Intensity jitter of triplet patches (data/augment.py): the formula, checked against a loop."""
from __future__ import annotations

import math

import pytest
import torch

from hyperseg.config import Config
from hyperseg.data.augment import jitter_intensity


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
