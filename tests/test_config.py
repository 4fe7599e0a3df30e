import numpy as np
import yaml
import pytest

from hyperseg.config import Config


def test_yaml_round_trip(tmp_path):
    cfg = Config(latent_dim=3, levels=[2, 3], lr=5e-4)
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg


def test_partial_file_overrides_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("latent: euclidean\ndecoder_input: linear\n")
    cfg = Config.load(tmp_path / "c.yaml")
    assert cfg.latent == "euclidean" and cfg.patch_edge == Config().patch_edge


@pytest.mark.parametrize("bad,msg", [
    (dict(latent="spherical"), "latent"),
    (dict(latent="euclidean"), "gyroplane"),
    (dict(patch_edge=4), "patch_edge"),
    (dict(c=0.0), "curvature"),
    (dict(child_range=[3, 40]), "child_range"),
])
def test_invalid_values_name_the_field(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Config(**bad)


def test_unknown_keys_are_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("latnet: euclidean\n")
    with pytest.raises(ValueError, match="latnet"):
        Config.load(tmp_path / "c.yaml")


def test_per_level_dicts_survive_a_json_round_trip():
    import json

    from hyperseg.config import Config

    cfg = Config(level_smooth_sigma={2: 4.0}, level_clustering={2: "kmedians", 4: "mixture"})
    back = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))  # JSON turns the int keys into strings
    assert back == cfg and back.level_clustering == {2: "kmedians", 4: "mixture"}


def test_the_paper_preset_is_the_papers_configuration_on_top_of_the_defaults():
    from hyperseg.config import presets

    assert "paper" in presets()
    paper = Config.from_preset("paper")
    # paper.md: d = 2, c = 1, beta = 1e3, alpha = 0.2, unit-variance decoder, K = 8, k-means per level, no smoothing
    assert (paper.latent_dim, paper.c, paper.triplet_weight, paper.triplet_margin) == (2, 1.0, 1e3, 0.2)
    assert (paper.likelihood, paper.n_samples, paper.smooth_sigma) == ("unit", 8, 0.0)
    assert (paper.clustering, paper.level_clustering, paper.hierarchy) == ("kmeans", {}, "independent")
    default = Config()
    assert paper.latent_dim != default.latent_dim and paper.smooth_sigma != default.smooth_sigma
    assert paper.steps == default.steps and paper.encoder_channels == default.encoder_channels
    assert Config.from_preset("paper", seed=3).seed == 3  # changes apply on top
    with pytest.raises(ValueError, match="unknown preset 'papr'; choose one of mri, paper"):
        Config.from_preset("papr")


def test_train_preset_then_config_file_on_top(tmp_path):
    from conftest import TINY

    from hyperseg.cli import main
    from hyperseg.data.io import write_label_map  # noqa: F401  (the reader stack is importable)

    vol = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "smooth_sigma": 1.5}))
    run = tmp_path / "run"
    assert main(["train", "-i", str(tmp_path / "v.npy"), "-o", str(run), "--preset", "paper",
                 "--config", str(cfg_file), "--steps", "1", "-q"]) == 0
    saved = Config.load(run / "config.yaml")
    assert saved.likelihood == "unit" and saved.latent_dim == 2  # from the preset (TINY does not set them)
    assert saved.smooth_sigma == 1.5  # the file wins over the preset
    assert main(["train", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "r2"), "--preset", "nope"]) == 2
