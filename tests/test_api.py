"""The scikit-learn style API: numpy in, numpy out, on tiny volumes."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hyperseg
from hyperseg.api import HyperbolicSegmenter, NotFittedError
from hyperseg.config import Config
from hyperseg.data.io import VolumeError

TINY = Config(encoder_channels=[4, 4, 4, 4], decoder_channels=[4, 4, 4, 4], hidden=8, gyro_channels=8,
              n_samples=2, batch_size=4, checkpoint_every=100, kmeans_n_init=1)


def two_phase(shape=(14, 12, 16), seed=0):
    """A bright box in a dark noisy background: ``(D, H, W)`` float32."""
    rng = np.random.default_rng(seed)
    v = 0.1 * rng.standard_normal(shape).astype(np.float32)
    v[3:10, 2:9, 4:12] += 1.0
    return v


@pytest.fixture(scope="module")
def fitted():
    return HyperbolicSegmenter(TINY, steps=2).fit([two_phase(seed=0), two_phase(seed=1)])


def test_unfitted_segmenter_says_what_to_do():
    seg = HyperbolicSegmenter(TINY)
    for call in (lambda: seg.predict(two_phase()), lambda: seg.embed(two_phase()), lambda: seg.save("x")):
        with pytest.raises(NotFittedError, match="call fit"):
            call()
    assert hyperseg.HyperbolicSegmenter is HyperbolicSegmenter


def test_predict_and_embed_give_arrays_on_the_input_grid(fitted):
    vol = two_phase((13, 12, 15), seed=2)
    maps = fitted.predict(vol, levels=(2, 3))
    assert set(maps) == {2, 3}
    for k, lab in maps.items():
        assert lab.shape == vol.shape and lab.dtype == np.uint8 and lab.max() < k
    z = fitted.embed(vol)
    assert z.shape == (*vol.shape, fitted.config_.latent_dim) and np.all(np.linalg.norm(z, axis=-1) < 1)  # ball points


def test_anisotropic_spacing_returns_outputs_on_the_input_grid(fitted):
    vol = two_phase((6, 12, 16), seed=3)
    maps = fitted.predict(vol, levels=(2,), spacing=(2.5, 1.0, 1.0))
    assert maps[2].shape == vol.shape
    z = fitted.embed(vol, spacing=(2.5, 1.0, 1.0))
    assert z.shape == (*vol.shape, fitted.config_.latent_dim)


def test_save_load_gives_the_same_labels(fitted, tmp_path):
    vol = two_phase(seed=4)
    fitted.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "model.safetensors"]
    again = HyperbolicSegmenter.load(tmp_path / "run")
    assert again.config_ == fitted.config_
    saved = again.model_.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in fitted.model_.state_dict().items())
    for k in (2, 4):
        assert np.array_equal(again.predict(vol, levels=(k,))[k], fitted.predict(vol, levels=(k,))[k])


def test_loading_and_predicting_never_import_the_training_code(fitted, tmp_path):
    """The segmentation path (API load/predict, the pipeline, `hyperseg segment`) loads through hyperseg.checkpoint."""
    fitted.save(tmp_path / "run")
    np.save(tmp_path / "v.npy", two_phase(seed=7))
    script = (
        "import sys, numpy as np\n"
        "from hyperseg.api import HyperbolicSegmenter\n"
        "from hyperseg.cli import segment\n"
        "import hyperseg.pipeline, hyperseg.segment\n"
        f"seg = HyperbolicSegmenter.load({str(tmp_path / 'run')!r})\n"
        f"seg.predict(np.load({str(tmp_path / 'v.npy')!r}), levels=(2,))\n"
        "print(sorted(m for m in sys.modules if m == 'hyperseg.train' or m.startswith('hyperseg.train.')))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.stdout.strip() == "[]"


def test_multichannel_fit_and_bad_inputs(tmp_path):
    a = np.stack([two_phase(seed=5), two_phase(seed=6) ** 2])
    seg = HyperbolicSegmenter(TINY, steps=1).fit(a, run_dir=tmp_path / "run")
    assert seg.model_.cfg.in_channels == 2 and (tmp_path / "run" / "model.safetensors").is_file()
    assert seg.predict(a, levels=(2,))[2].shape == a.shape[1:]
    with pytest.raises(VolumeError, match="has 1 channels but the model was trained on 2"):
        seg.predict(two_phase())
    bad = two_phase()
    bad[0, 0, 0] = np.nan
    with pytest.raises(VolumeError, match="NaN"):
        seg.fit([bad])
    with pytest.raises(VolumeError, match="constant"):
        seg.predict(np.ones((2, 8, 8, 8)))
    with pytest.raises(VolumeError, match="different numbers of channels"):
        HyperbolicSegmenter(TINY, steps=1).fit([a, two_phase()])
