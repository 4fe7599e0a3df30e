"""Dense voxel embeddings are the per-patch embeddings, computed once."""
import pytest
import torch

from hyperseg.config import Config
from hyperseg.embed import embed_patches, embed_volume, window_starts
from hyperseg.model import HyperVAE

# float32 convolutions: these tests hold the dense pass to the per-patch reference (test_precision.py: bfloat16)
TINY = dict(encoder_channels=[4, 4], decoder_channels=[4, 4], hidden=8, gyro_channels=8, patch_edge=6,
            embed_dtype="float32")


@pytest.mark.parametrize("latent,decoder", [("hyperbolic", "gyroplane"), ("euclidean", "linear")])
@pytest.mark.parametrize("tile", [4, 32])
def test_dense_equals_per_patch_at_native_scale(latent, decoder, tile):
    torch.manual_seed(0)
    cfg = Config(latent=latent, decoder_input=decoder, embed_patch_edge=6, embed_tile=tile, **TINY)
    model = HyperVAE(cfg)
    vol = torch.randn(1, 9, 7, 8) * 3
    dense = embed_volume(model, vol)
    ref = embed_patches(model, vol)
    assert dense.shape == (9, 7, 8, cfg.latent_dim)
    assert torch.allclose(dense, ref.to(dense.dtype), atol=1e-5)


def test_dense_equals_per_patch_odd_patch_and_zero_padding():
    torch.manual_seed(1)
    cfg = Config(embed_patch_edge=7, pad_mode="zeros", embed_tile=5, **{**TINY, "patch_edge": 7})
    model = HyperVAE(cfg)
    vol = torch.randn(1, 8, 8, 8)
    assert torch.allclose(embed_volume(model, vol), embed_patches(model, vol).double(), atol=1e-5)


def test_patch_is_centred_on_its_voxel():
    # A single bright voxel changes exactly the embeddings whose patch contains it.
    torch.manual_seed(2)
    cfg = Config(embed_patch_edge=6, pad_mode="zeros", **TINY)
    model = HyperVAE(cfg)
    base = torch.zeros(1, 12, 12, 12)
    hit = base.clone()
    hit[0, 6, 6, 6] = 50.0
    changed = (embed_volume(model, hit) - embed_volume(model, base)).abs().sum(-1) > 1e-9
    idx = torch.nonzero(changed)
    # even edge 6: the window of v is [v-3, v+2], so v in [4, 9] sees voxel 6
    assert idx.min().item() == 4 and idx.max().item() == 9
    assert changed.sum().item() == 6**3


def test_window_starts_resampled_grid():
    # p = 5 resized to m = 10: s = 2, window of v starts at 2 (v + P) - 4
    st = window_starts(4, 5, 2.0, pad=4)
    assert st.tolist() == [4, 6, 8, 10]


def test_resampled_dense_close_to_per_patch_inside():
    # At s = m / p = 2 (strided last layer) the two differ only in how a patch's border is interpolated: a cut-out
    # patch replicates its own edge, the resampled volume sees the true neighbour. On this smooth volume that
    # costs at most 1.51e-3 (mean 2.4e-4) against latent coordinates up to 0.357; a window start shifted by one
    # resampled voxel (half a native voxel) costs 1.3e-2 (mean 2.3e-3), which a 5 % tolerance (1.8e-2) let pass.
    torch.manual_seed(3)
    cfg = Config(embed_patch_edge=5, patch_edge=10, encoder_channels=[4, 4], decoder_channels=[4, 4], hidden=8,
                 gyro_channels=8, embed_dtype="float32")
    model = HyperVAE(cfg)
    g = torch.linspace(-1, 1, 10)
    vol = (g[:, None, None] + 0.5 * g[None, :, None] - g[None, None, :])[None]
    dense = embed_volume(model, vol)
    ref = embed_patches(model, vol).double()
    diff = (dense - ref).abs()
    assert diff.max() < 2e-3 and diff.mean() < 4e-4


@pytest.mark.parametrize("patch_edge", [3, 2])  # resampling by 2 and by 3: starts on a lattice
@pytest.mark.parametrize("tile", [1, 3, 32])
def test_strided_last_layer_gives_the_full_dense_result(patch_edge, tile):
    """Running the last layer only at the window starts changes nothing but the work done."""
    torch.manual_seed(3)
    cfg = Config(embed_patch_edge=patch_edge, embed_tile=tile, **TINY)
    model = HyperVAE(cfg)
    vol = torch.randn(1, 7, 5, 6)
    fast = embed_volume(model, vol)
    full = embed_volume(model, vol, strided=False)
    assert fast.shape == (7, 5, 6, cfg.latent_dim)
    assert torch.allclose(fast, full, atol=1e-6)


def test_dense_loc_with_a_stride_picks_every_t_th_window():
    torch.manual_seed(4)
    enc = HyperVAE(Config(**TINY)).encoder.eval()
    x = torch.randn(1, 1, 15, 14, 13)
    with torch.no_grad():
        every = enc.dense_loc(x)
        strided = enc.dense_loc(x[:, :, 1:, 2:, 0:], stride=3)
    assert torch.allclose(strided, every[:, 1::3, 2::3, 0::3][:, :strided.shape[1], :strided.shape[2],
                                                                  :strided.shape[3]], atol=1e-6)
    assert strided.shape[1:4] == (3, 3, 3)
