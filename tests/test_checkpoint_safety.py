"""A shared run folder is data: a crafted file runs no code and is refused in one line naming it.

The attack: a ``model.pt`` whose ``config`` entry unpickles to ``os.system("touch MARKER")``
(hyperseg at commit d505928 read ``model.pt`` with ``torch.load(weights_only=False)`` and
so ran it). Every way in (``hyperseg segment``, ``hyperseg train --resume``, the Python
API) must leave no marker and exit with status 2 (or raise ``CheckpointError``).
"""
import ast
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

import hyperseg
from hyperseg.api import HyperbolicSegmenter
from hyperseg.checkpoint import CheckpointError, load_model, read_checkpoint
from hyperseg.cli import main
from hyperseg.config import Config
from hyperseg.data.synthetic import generate_volume
from hyperseg.segment import segment_array
from hyperseg.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCommand:
    """An object whose unpickling calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder in the data-only format (2 steps) and the volume it was trained on, as ``v.npy``."""
    root = tmp_path_factory.mktemp("safety")
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    np.save(root / "v.npy", image[None])
    (root / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY, checkpoint_every=100)))
    assert main(["train", "-i", str(root / "v.npy"), "-o", str(root / "run"), "--config", str(root / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    return root


def one_error_line(capsys, path: Path) -> str:
    """The only line on stderr: ``hyperseg: error: ...`` naming ``path``."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("hyperseg: error: ") and str(path) in lines[0], lines[0]
    return lines[0]


def copy_run(trained, tmp_path) -> Path:
    run = tmp_path / "shared_run"
    shutil.copytree(trained / "run", run)
    return run


@pytest.fixture
def pickle_run(trained, tmp_path):
    """A run folder in the legacy layout (config.yaml, run.json, model.pt) whose model.pt runs ``touch MARKER``."""
    marker = tmp_path / "MARKER"
    run = tmp_path / "shared_run"
    run.mkdir()
    shutil.copy(trained / "run" / "config.yaml", run / "config.yaml")
    shutil.copy(trained / "run" / "run.json", run / "run.json")
    torch.save({"config": RunsCommand(f"touch {shlex.quote(str(marker))}"), "model": {}}, run / "model.pt")
    return run, marker


# ----------------------------------------------------------------------------- the pickled model.pt
def test_the_crafted_model_pt_does_run_code_when_unpickled(pickle_run):
    """The control: the file is a real attack, so a test where no marker appears means something."""
    run, marker = pickle_run
    torch.load(run / "model.pt", weights_only=False)
    assert marker.exists()


def test_segment_refuses_a_pickled_checkpoint_without_running_it(pickle_run, trained, tmp_path, capsys):
    run, marker = pickle_run
    assert main(["segment", "-m", str(run), "-i", str(trained / "v.npy"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert not marker.exists()
    line = one_error_line(capsys, run / "model.pt")
    assert f"hyperseg convert-checkpoint {run}" in line
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_pickled_checkpoint_without_running_it(pickle_run, trained, capsys):
    run, marker = pickle_run
    assert main(["train", "--resume", str(run), "-i", str(trained / "v.npy"), "--steps", "4", "-q"]) == 2
    assert not marker.exists()
    assert "convert-checkpoint" in one_error_line(capsys, run / "model.pt")
    assert not (run / "model.safetensors").exists() and not (run / "resume.safetensors").exists()


def test_the_api_refuses_a_pickled_checkpoint_without_running_it(pickle_run):
    run, marker = pickle_run
    with pytest.raises(CheckpointError, match="model.pt: .*convert-checkpoint") as err:
        HyperbolicSegmenter.load(run)
    assert not marker.exists() and "\n" not in str(err.value)


def test_a_pickle_beside_the_data_only_files_is_never_read(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    marker = tmp_path / "MARKER"
    torch.save({"config": RunsCommand(f"touch {shlex.quote(str(marker))}"), "model": {}}, run / "model.pt")
    assert main(["segment", "-m", str(run), "-i", str(trained / "v.npy"), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert main(["train", "--resume", str(run), "--steps", "3", "-q"]) == 0
    HyperbolicSegmenter.load(run)
    assert not marker.exists()


def test_no_module_unpickles_a_file():
    """Only ``convert-checkpoint`` calls ``torch.load`` (it is asked to trust one file); nothing else unpickles."""
    package = Path(hyperseg.__file__).parent
    unsafe = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            name = f"{node.func.value.id}.{node.func.attr}"
            allow_pickle = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
            if name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.load"):
                unsafe.append(f"{path.relative_to(package.parent)} {name}")
            elif name == "np.load" and allow_pickle is not None and not (
                    isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False):
                unsafe.append(f"{path.relative_to(package.parent)} {name}(allow_pickle=...)")
    assert unsafe == ["hyperseg/cli/convert_checkpoint.py torch.load"]


# ----------------------------------------------------------------------------- YAML and JSON
TAG = '!!python/object/apply:os.system ["touch {marker}"]'


def test_the_crafted_yaml_does_run_code_with_an_unsafe_loader(tmp_path):
    marker = tmp_path / "MARKER"
    yaml.unsafe_load(f"hidden: {TAG.format(marker=marker)}\n")
    assert marker.exists()


@pytest.fixture
def yaml_run(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    marker = tmp_path / "MARKER"
    (run / "config.yaml").write_text(f"hidden: {TAG.format(marker=marker)}\n")
    return run, marker


def test_segment_refuses_a_crafted_config_yaml(yaml_run, trained, tmp_path, capsys):
    run, marker = yaml_run
    assert main(["segment", "-m", str(run), "-i", str(trained / "v.npy"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert not marker.exists()
    one_error_line(capsys, run / "config.yaml")


def test_resume_refuses_a_crafted_config_yaml(yaml_run, capsys):
    run, marker = yaml_run
    before = (run / "resume.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--steps", "4", "-q"]) == 2
    assert not marker.exists()
    one_error_line(capsys, run / "config.yaml")
    assert (run / "resume.safetensors").read_bytes() == before


def test_the_api_refuses_a_crafted_config_yaml(yaml_run):
    run, marker = yaml_run
    with pytest.raises(CheckpointError, match="config.yaml"):
        HyperbolicSegmenter.load(run)
    assert not marker.exists()


def test_train_refuses_a_crafted_config_file(trained, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    crafted = tmp_path / "c.yaml"
    crafted.write_text(f"hidden: {TAG.format(marker=marker)}\n")
    assert main(["train", "-i", str(trained / "v.npy"), "-o", str(tmp_path / "new"), "--config", str(crafted),
                 "-q"]) == 2
    assert not marker.exists()
    one_error_line(capsys, crafted)


@pytest.mark.parametrize("text", [TAG.format(marker="MARKER"), "[1, 2]", '{"input": {"__reduce__": ["os.system"]}}',
                                  '{"input": null, "invocations": "touch MARKER"}'])
def test_resume_refuses_a_crafted_run_json(trained, tmp_path, capsys, text):
    run = copy_run(trained, tmp_path)
    (run / "run.json").write_text(text)
    assert main(["train", "--resume", str(run), "-i", str(trained / "v.npy"), "--steps", "4", "-q"]) == 2
    one_error_line(capsys, run / "run.json")
    assert read_checkpoint(run)["step"] == 2


# ----------------------------------------------------------------------------- safetensors
def safetensors_header_only(path: Path, header: dict) -> None:
    """A file with a safetensors header (8-byte little-endian length, JSON) and no tensor data."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


@pytest.mark.parametrize("damage", ["garbage", "huge promise", "another format"])
def test_segment_refuses_a_crafted_weights_file(trained, tmp_path, capsys, damage):
    run = copy_run(trained, tmp_path)
    weights = run / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\x80\x04\x95 a pickle, perhaps")
    elif damage == "huge promise":  # a header promising 2^40 floats that the file does not hold
        safetensors_header_only(weights, {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}})
    else:  # a valid safetensors file that is not a hyperseg model
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, weights)
    assert main(["segment", "-m", str(run), "-i", str(trained / "v.npy"), "-o", str(tmp_path / "out"), "-q"]) == 2
    one_error_line(capsys, weights)


def test_resume_refuses_a_crafted_resume_state(trained, tmp_path, capsys):
    from safetensors.torch import save_file

    run = copy_run(trained, tmp_path)
    save_file({"model.w": torch.zeros(1)}, run / "resume.safetensors",
              metadata={"format": "hyperseg.resume/1", "state": TAG.format(marker="MARKER")})
    assert main(["train", "--resume", str(run), "--steps", "4", "-q"]) == 2
    one_error_line(capsys, run / "resume.safetensors")


# ----------------------------------------------------------------------------- converting an old run
def write_legacy_run(new_run: Path, old_run: Path) -> None:
    """``new_run`` in the legacy layout (commit d505928) as ``old_run``: a pickled model.pt, and a run.json without
    ``invocations`` (the history of such a run starts again at its conversion)."""
    s = read_checkpoint(new_run)
    old_run.mkdir()
    torch.save({"config": s["config"].to_dict(), "model": s["model"], "optimizer": s["optimizer"],
                "step": s["step"], "generator": s["rng"][0]["generator"], "rng": s["rng"], "versions": s["versions"],
                "skipped_steps": s["skipped_steps"], "world_size": s["world_size"], "seconds": s["seconds"]},
               old_run / "model.pt")
    info = json.loads((new_run / "run.json").read_text())
    del info["invocations"]  # the old format kept that list under a key this version does not read
    (old_run / "run.json").write_text(json.dumps(info))
    for name in ("config.yaml", "log.jsonl"):
        shutil.copy(new_run / name, old_run / name)


def test_a_converted_old_run_resumes_to_the_same_weights_and_labels(trained, tmp_path, capsys):
    image = np.load(trained / "v.npy")
    cfg = Config(**TINY, checkpoint_every=100)
    straight = train(cfg, [image], tmp_path / "straight", steps=4, progress=False)
    train(cfg, [image], tmp_path / "half", steps=2, progress=False)
    old = tmp_path / "old"
    write_legacy_run(tmp_path / "half", old)
    resume = ["train", "--resume", str(old), "-i", str(trained / "v.npy"), "--steps", "4", "-q"]
    assert main(resume) == 2  # refused until converted
    assert "convert-checkpoint" in one_error_line(capsys, old / "model.pt")

    assert main(["convert-checkpoint", str(old)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert main(resume) == 0
    resumed = load_model(old)
    assert all(torch.equal(v, straight.state_dict()[k]) for k, v in resumed.state_dict().items())
    crop = image[:, :16, :16, :16]
    la, lb = (segment_array(m, crop, [2, 3], seed=0).labels for m in (straight, resumed))
    assert all(np.array_equal(la[k], lb[k]) for k in (2, 3))
    info = json.loads((old / "run.json").read_text())  # the old list is not read: only the resumed invocation
    assert [i["from_step"] for i in info["invocations"]] == [2]
    assert main(["convert-checkpoint", str(old)]) == 2  # already converted
    one_error_line(capsys, old / "model.safetensors")


def test_a_checkpoint_from_before_the_likelihood_option_converts_as_unit(tmp_path):
    from hyperseg.model import HyperVAE

    old = HyperVAE(Config(**TINY, likelihood="unit"))
    config = old.cfg.to_dict()
    del config["likelihood"]
    (tmp_path / "run").mkdir()
    torch.save({"config": config, "model": old.state_dict(), "optimizer": None, "step": 0},
               tmp_path / "run" / "model.pt")
    assert main(["convert-checkpoint", str(tmp_path / "run"), "-q"]) == 0
    loaded = load_model(tmp_path / "run")
    assert loaded.cfg.likelihood == "unit"
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert not (tmp_path / "run" / "resume.safetensors").exists()  # nothing to resume without an optimiser


def test_convert_checkpoint_says_it_is_unsafe_for_files_you_did_not_make(capsys):
    with pytest.raises(SystemExit):
        main(["convert-checkpoint", "--help"])
    assert "UNSAFE for files you did not make" in " ".join(capsys.readouterr().out.split())
