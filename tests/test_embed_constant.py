"""A constant background is embedded once: tiles that only see it take the embedding of a constant volume.

Specification (``hyperseg/embed.py``, "Constant background"): the skip changes no number beyond float rounding,
whatever the padding, the background value, the patch edge or the number of channels; the voxels it treats as
background are exactly those a naive scan of each voxel's neighbourhood finds.
"""
import itertools

import numpy as np
import pytest
import torch

from hyperseg.config import Config
from hyperseg.embed import constant_background, embed_volume, padding_for
from hyperseg.model import HyperVAE

TINY = dict(encoder_channels=[4, 4], decoder_channels=[4, 4], hidden=8, gyro_channels=8, patch_edge=6,
            embed_dtype="float32")


def naive_active(volume: np.ndarray, reach: int, pad_mode: str) -> np.ndarray:
    """Voxel by voxel: does any voxel within ``reach`` (each axis) differ from voxel (0, 0, 0) in any channel,
    or (zero padding, non-zero background) does the neighbourhood leave the volume?"""
    b = volume[:, 0, 0, 0]
    C, D, H, W = volume.shape
    out = np.zeros((D, H, W), bool)
    for z, y, x in itertools.product(range(D), range(H), range(W)):
        lo = [max(0, t - reach) for t in (z, y, x)]
        hi = [t + reach + 1 for t in (z, y, x)]
        nb = volume[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        leaves = any(t - reach < 0 or t + reach >= n for t, n in zip((z, y, x), (D, H, W)))
        out[z, y, x] = bool((nb != b[:, None, None, None]).any()) or (pad_mode == "zeros" and bool(b.any())
                                                                        and leaves)
    return out


def volume_with_background(b: tuple[float, ...], shape=(30, 26, 22), seed=0) -> torch.Tensor:
    """``(C, D, H, W)``: the constant ``b`` with a noisy block and two stray voxels, away from one corner."""
    g = torch.Generator().manual_seed(seed)
    vol = torch.tensor(b, dtype=torch.float32)[:, None, None, None].repeat(1, *shape)
    vol[:, 3:11, 4:12, 2:9] = torch.randn(len(b), 8, 8, 7, generator=g)
    D, H, W = shape
    vol[0, 2 * D // 3, 5, W - 5] += 1.0
    vol[-1, 9, H - 4, 3] -= 2.0
    return vol


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("b", [(0.0,), (0.4, -1.0)])
def test_constant_background_matches_naive_scan(pad_mode, b):
    vol = volume_with_background(b, shape=(24, 22, 20))
    found = constant_background(vol, 3, pad_mode)
    assert found is not None
    value, active = found
    assert torch.equal(value, torch.tensor(b))
    ref = naive_active(vol.numpy(), 3, pad_mode)
    assert np.array_equal(active, ref)
    assert 0 < active.sum() < active.size  # both kinds of voxel are present: the comparison means something


def test_noisy_background_is_not_constant():
    assert constant_background(torch.randn(1, 12, 12, 12), 4, "replicate") is None


@pytest.mark.parametrize("pad_mode", ["replicate", "reflect", "zeros"])
@pytest.mark.parametrize("b", [(0.0,), (0.3, -0.7)])
def test_skipping_the_background_changes_no_embedding(pad_mode, b):
    torch.manual_seed(0)
    cfg = Config(in_channels=len(b), pad_mode=pad_mode, **TINY)
    model = HyperVAE(cfg)
    vol = volume_with_background(b, shape=(40, 34, 30))
    tile = 6
    fast = embed_volume(model, vol, tile=tile)
    full = embed_volume(model, vol, tile=tile, skip_constant=False)
    assert fast.shape == full.shape == (40, 34, 30, cfg.latent_dim)
    # tiles were skipped, or this compares the full pass with itself
    _, active = constant_background(vol, padding_for(cfg.embed_patch_edge), pad_mode)
    corners = itertools.product(*[range(0, n, tile) for n in vol.shape[1:]])
    skipped = sum(not active[a:a + tile, c:c + tile, e:e + tile].any() for a, c, e in corners)
    assert skipped >= 10
    assert float((fast - full).abs().max()) < 1e-6
    # and the background's embedding is not some default: it differs from the foreground's
    assert float((full[33, 2, 20] - full[6, 8, 5]).abs().max()) > 1e-3


def test_native_scale_patch_and_a_constant_volume():
    torch.manual_seed(1)
    cfg = Config(embed_patch_edge=6, **TINY)
    model = HyperVAE(cfg)
    vol = volume_with_background((0.5,), shape=(24, 20, 18))
    assert float((embed_volume(model, vol, tile=5) - embed_volume(model, vol, tile=5, skip_constant=False))
                 .abs().max()) < 1e-6
    flat = torch.full((1, 15, 15, 15), -0.25)
    fast = embed_volume(model, flat, tile=5)
    assert float((fast - embed_volume(model, flat, tile=5, skip_constant=False)).abs().max()) < 1e-6
    assert float((fast - fast[7, 7, 7]).abs().max()) < 1e-6  # one value everywhere
