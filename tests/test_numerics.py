"""Numerical safety: non-finite steps are skipped, ball points stay in the ball, rim points stay finite."""
import json
import math

import geoopt
import numpy as np
import pytest
import torch
from conftest import TINY

from hyperseg.cluster import HyperbolicKMeans, frechet_mean
from hyperseg.config import Config
from hyperseg.data.synthetic import generate_volume
from hyperseg.geometry import dist, pairwise_dist
from hyperseg.model import HyperVAE
from hyperseg.nn.gyroplane import GyroplaneConv3d
from hyperseg.train import read_checkpoint, read_log, train

TINY = {**TINY, "checkpoint_every": 100}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def volume():
    image, _ = generate_volume(np.random.default_rng(0), (24, 24, 24))
    return image[None]


def poison(monkeypatch, bad_calls: set[int] | None = None, where: str = "loss", from_call: int | None = None):
    """Make ``HyperVAE.loss`` non-finite (the loss, or only the gradient) on chosen calls (1-based)."""
    original = HyperVAE.loss
    calls = [0]

    def loss(self, *args):
        calls[0] += 1
        total, stats = original(self, *args)
        n = calls[0]
        if (bad_calls and n in bad_calls) or (from_call is not None and n >= from_call):
            if where == "loss":
                total = total * math.nan
            else:  # finite loss, NaN gradient
                total = total * 1.0
                total.register_hook(lambda g: g * math.nan)
        return total, stats

    monkeypatch.setattr(HyperVAE, "loss", loss)
    return calls


def weights_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_steps_are_skipped_counted_and_logged(monkeypatch, tmp_path, volume, where):
    calls = poison(monkeypatch, bad_calls={2, 3, 6}, where=where)
    model = train(Config(**TINY), [volume], tmp_path / "run", steps=5, progress=False, log_every=1)
    assert calls[0] == 8  # 5 good steps and 3 skipped ones
    assert weights_finite(model)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["steps_done"] == 5 and info["skipped_steps"] == 3 and info["status"] == "finished"
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log if r.get("skipped")] == [2, 2, 4]  # the step each skipped try was for
    assert [r["step"] for r in log if not r.get("skipped")] == [1, 2, 3, 4, 5]
    assert read_checkpoint(tmp_path / "run")["skipped_steps"] == 3


def test_training_stops_after_max_bad_steps_in_a_row_keeping_finite_weights(monkeypatch, tmp_path, volume):
    poison(monkeypatch, from_call=3)
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row"):
        train(Config(**TINY, max_bad_steps=3), [volume], tmp_path / "run", steps=50, progress=False)
    state = read_checkpoint(tmp_path / "run")
    assert state["step"] == 2 and state["skipped_steps"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "stopped: non-finite" and info["steps_done"] == 2


def test_the_cli_reports_a_stop_on_non_finite_steps_in_one_line(monkeypatch, tmp_path, volume, capsys):
    from hyperseg.cli import main

    np.save(tmp_path / "v.npy", volume)
    (tmp_path / "c.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()) + "max_bad_steps: 2\n")
    poison(monkeypatch, from_call=1)
    assert main(["train", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "run"), "--config",
                 str(tmp_path / "c.yaml"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperseg: error:") and "non-finite" in err and "\n" not in err


def test_max_bad_steps_is_validated():
    with pytest.raises(ValueError, match="max_bad_steps"):
        Config(max_bad_steps=0)


def test_no_model_parameter_lives_on_the_ball():
    # ball quantities are stored as tangent vectors and mapped with exp_0, so Adam needs no projection
    model = HyperVAE(Config(**TINY))
    assert not any(isinstance(p, geoopt.ManifoldParameter) for p in model.parameters())
    assert model.decoder.gyroplane is not None and "p_tangent" in dict(model.decoder.gyroplane.named_parameters())


@pytest.mark.parametrize("dtype, c", [(torch.float32, 1.0), (torch.float64, 1.0), (torch.float64, 2.5)])
def test_gyroplane_points_stay_inside_the_ball_after_many_large_steps(dtype, c):
    torch.manual_seed(0)
    layer = GyroplaneConv3d(2, 3, 1, dim=2, c=c).to(dtype)
    opt = torch.optim.Adam(layer.parameters(), lr=10.0)
    x = 0.5 / math.sqrt(c) * torch.nn.functional.normalize(torch.randn(4, 2, 1, 1, 1, 2, dtype=dtype), dim=-1)
    for _ in range(100):  # push every offset p towards the rim, with a huge learning rate
        opt.zero_grad()
        loss = -(layer.p_tangent ** 2).sum() - layer(x).sum()
        loss.backward()
        opt.step()
    p = layer.points()
    radius = 1.0 / math.sqrt(c)
    assert torch.isfinite(p).all() and bool((p.norm(dim=-1) < radius).all())
    assert p.norm(dim=-1).max() > 0.99 * radius  # the test did drive them to the rim
    assert torch.isfinite(layer(x)).all()


def rim_points(n: int, d: int, norm: float, dtype, seed: int = 0) -> torch.Tensor:
    """``n`` points of norm exactly ``norm`` (in ``dtype``), in random directions, plus close pairs."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    u[1] = u[0]  # a coincident pair
    u[2] = torch.nn.functional.normalize(u[0] + 1e-6, dim=-1)  # a very close pair
    return (u * norm).to(dtype)


RIM = [(torch.float64, 1 - 1e-5), (torch.float32, 1 - 1e-3)]


@pytest.mark.parametrize("dtype, norm", RIM)
def test_poincare_distances_stay_finite_at_the_rim(dtype, norm):
    x = rim_points(64, 2, norm, dtype).requires_grad_(True)
    y = rim_points(64, 2, norm, dtype, seed=1)
    d = dist(x, y)
    (d.sum() + dist(x, x.detach().flip(0)).sum()).backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all()
    pw = pairwise_dist(x.detach(), y)
    assert pw.shape == (64, 64) and torch.isfinite(pw).all() and bool((pw >= 0).all())
    # opposite rim points are exactly as far apart as the closed form says (not clamped to something small):
    # d(x, -x) = 4 artanh(|x|), with |x| from the rounded point; float32 keeps ~1e-5 of it (1 - |x|^2 ~ 2e-3)
    p0 = x.detach()[:1]
    exact = 4 * math.atanh(p0.double().norm().item())
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert pairwise_dist(p0, -p0).item() == pytest.approx(exact, rel=rel)
    assert dist(p0, -p0).item() == pytest.approx(exact, rel=rel)


@pytest.mark.parametrize("dtype, norm", RIM)
def test_kmeans_and_frechet_mean_stay_finite_at_the_rim(dtype, norm):
    pts = rim_points(300, 2, norm, dtype).numpy()
    km = HyperbolicKMeans(n_clusters=4, n_init=2, seed=0).fit(pts)
    assert np.isfinite(km.cluster_centers_).all() and np.isfinite(km.inertia_)
    assert (np.linalg.norm(km.cluster_centers_, axis=1) < 1).all()
    labels = km.predict(pts)
    assert labels.shape == (300,) and set(labels.tolist()) <= set(range(4))
    m = frechet_mean(pts[:50])
    assert np.isfinite(m).all() and np.linalg.norm(m) < 1
    means = frechet_mean(pts, labels, n_clusters=4)
    assert np.isfinite(means).all() and (np.linalg.norm(means, axis=1) < 1).all()
