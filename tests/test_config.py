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
