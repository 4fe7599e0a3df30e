"""The dense pass in bfloat16: chosen only where the hardware runs it, close to float32, the model untouched."""
import pytest
import torch

from hyperseg.config import Config
from hyperseg.embed import embed_volume
from hyperseg.geometry import dist
from hyperseg.model import HyperVAE
from hyperseg.nn import precision
from hyperseg.nn.precision import cpu_has_native_bf16, inference_copy, resolve_dtype

SMALL = dict(encoder_channels=[8, 8], decoder_channels=[8, 8], hidden=16, gyro_channels=8, patch_edge=6,
             embed_patch_edge=6)


def _cpuinfo(tmp_path, name: str, flags: str) -> str:
    path = tmp_path / name
    path.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return str(path)


def test_cpu_flags_decide_native_bfloat16(tmp_path):
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "amx", "avx512f amx_tile amx_bf16")) is True
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "vnni", "avx512f avx512_bf16")) is True
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "plain", "avx512f avx512bw avx512_vnni")) is False
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_auto_follows_the_hardware(monkeypatch):
    assert resolve_dtype("float32") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16")


def test_config_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="embed_dtype must be one of auto, float32, bfloat16"):
        Config(embed_dtype="half")


def test_inference_copy_leaves_the_model_in_float32():
    torch.manual_seed(0)
    model = HyperVAE(Config(**SMALL))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc = inference_copy(model.encoder, torch.bfloat16)
    assert enc is not model.encoder
    assert all(p.dtype == torch.bfloat16 for p in enc.body.parameters())
    assert enc.loc_head.weight.dtype == torch.float32  # the heads stay float32
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plain = inference_copy(model.encoder, torch.float32)  # on the CPU: a float32 copy, channels-last
    assert plain is not model.encoder and all(p.dtype == torch.float32 for p in plain.parameters())
    assert plain.body[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model.encoder.body[0].weight.is_contiguous()  # the model itself keeps its layout
    m = model.cfg.patch_edge
    x = torch.randn(2, model.cfg.in_channels, m, m, m)
    torch.testing.assert_close(plain(x), model.encoder(x), rtol=1e-5, atol=1e-6)  # the same numbers


@pytest.mark.parametrize("latent,decoder", [("hyperbolic", "gyroplane"), ("euclidean", "linear")])
def test_bfloat16_pass_is_close_to_float32_but_not_it(latent, decoder):
    # bfloat16 keeps 8 bits of mantissa: each activation is rounded to about 0.4 %. Measured on this small model:
    # latent points move by at most 0.0017 in ball distance against a spread of 0.28 between voxels, far below
    # what changes a cluster; the same pass with the float32 copy skipped (dtype ignored) would give exactly 0.
    torch.manual_seed(0)
    model = HyperVAE(Config(latent=latent, decoder_input=decoder, **SMALL))
    vol = torch.randn(1, 10, 9, 8)
    a = embed_volume(model, vol, dtype="float32")
    b = embed_volume(model, vol, dtype="bfloat16")
    assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape == (10, 9, 8, 4)
    flat_a, flat_b = a.reshape(-1, 4), b.reshape(-1, 4)
    d = dist(flat_a, flat_b, 1.0) if latent == "hyperbolic" else (flat_a - flat_b).norm(dim=-1)
    spread = (dist(flat_a, flat_a[:1], 1.0) if latent == "hyperbolic" else (flat_a - flat_a[:1]).norm(dim=-1))
    assert 0 < d.max() < 0.02 * spread.max()


def test_bfloat16_training_runs_in_bfloat16_and_keeps_float32_weights(tmp_path):
    import json

    import numpy as np
    from conftest import TINY

    from hyperseg.data.synthetic import generate_volume
    from hyperseg.train import train

    image = generate_volume(np.random.default_rng(0), shape=(16, 16, 16))[0][None]
    plain = train(Config(**TINY), [image], tmp_path / "f32", steps=3, progress=False).state_dict()
    half = train(Config(**{**TINY, "train_dtype": "bfloat16"}), [image], tmp_path / "bf16", steps=3, progress=False)
    state = half.state_dict()
    assert all(v.dtype == plain[k].dtype for k, v in state.items())  # the weights and their updates stay float32
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the same seed and batches: any difference comes from the bfloat16 convolutions
    assert any(not torch.equal(v, plain[k]) for k, v in state.items() if v.is_floating_point())
    logged = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert logged and all(np.isfinite(r["loss"]) for r in logged)
    assert Config.load(tmp_path / "bf16" / "config.yaml").train_dtype == "bfloat16"


def test_training_runs_channels_last_and_saves_contiguous_weights(tmp_path, monkeypatch):
    """Every convolution of a training step sees channels-last input and weights (precision.TRAIN_MEMORY_FORMAT);
    the saved weights are plain contiguous tensors that load back equal."""
    import numpy as np
    from conftest import TINY

    from hyperseg.checkpoint import load_model
    from hyperseg.data.synthetic import generate_volume
    from hyperseg.train import train

    seen = []

    def record(module, args):
        fmt = torch.channels_last_3d
        seen.append((type(module).__name__, args[0].is_contiguous(memory_format=fmt),
                     module.weight.is_contiguous(memory_format=fmt)))

    original = HyperVAE.__init__

    def hooked(self, cfg):
        original(self, cfg)
        for m in self.modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and m.weight.shape[2:] != (1, 1, 1):
                m.register_forward_pre_hook(record)

    monkeypatch.setattr(HyperVAE, "__init__", hooked)
    one = generate_volume(np.random.default_rng(0), shape=(16, 16, 16))[0]
    image = np.stack([one, one ** 2])  # two channels: one channel is channels-last in any layout
    model = train(Config(**{**TINY, "in_channels": 2}), [image], tmp_path / "run", steps=2, progress=False)
    assert {name for name, _, _ in seen} == {"Conv3d", "ConvTranspose3d"}
    assert all(inp and weight for _, inp, weight in seen)
    monkeypatch.setattr(HyperVAE, "__init__", original)
    loaded = load_model(tmp_path / "run")
    for k, v in loaded.state_dict().items():
        assert v.is_contiguous() and torch.equal(v, model.state_dict()[k])
    # the returned model is in the default layout too, as the loaded one
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("choice", ["auto", "float32", "bfloat16"])
def test_segment_embed_dtype_option_sets_the_field(choice, capsys):
    from hyperseg.cli import build_parser
    from hyperseg.cli.segment import segment_config

    parse = build_parser().parse_args
    args = parse(["segment", "-m", "RUN", "-i", "IN", "-o", "OUT", "--embed-dtype", choice])
    assert segment_config(Config(embed_dtype="float32"), args).embed_dtype == choice
    args = parse(["segment", "-m", "RUN", "-i", "IN", "-o", "OUT"])
    assert segment_config(Config(embed_dtype="float32"), args).embed_dtype == "float32"  # a run keeps its own
    with pytest.raises(SystemExit):
        parse(["segment", "-m", "RUN", "-i", "IN", "-o", "OUT", "--embed-dtype", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err
