"""The VAE objective: shapes, ablations, and the triplet loss against its formula."""
import math

import pytest
import torch
from torch.distributions import Normal

from hyperseg.config import Config
from hyperseg.model import HyperVAE

SMALL = dict(encoder_channels=[4, 4, 4, 4], decoder_channels=[4, 4, 4, 4], hidden=8, gyro_channels=8, n_samples=3)
ABLATIONS = [
    dict(latent="euclidean", decoder_input="linear", triplet=False),
    dict(latent="euclidean", decoder_input="linear", triplet=True),
    dict(latent="hyperbolic", decoder_input="linear", triplet=False),
    dict(latent="hyperbolic", decoder_input="gyroplane", triplet=False),
    dict(latent="hyperbolic", decoder_input="linear", triplet=True),
    dict(latent="hyperbolic", decoder_input="gyroplane", triplet=True),
]


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_gives_a_finite_loss_and_gradients(ablation):
    torch.manual_seed(0)
    model = HyperVAE(Config(**SMALL, **ablation))
    x = [torch.randn(3, 1, 10, 10, 10) for _ in range(3)]
    loss, stats = model.loss(*x)
    loss.backward()
    assert torch.isfinite(loss)
    assert ("triplet" in stats) == ablation["triplet"]
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if ablation["decoder_input"] == "gyroplane":
        assert model.decoder.gyroplane is not None and model.decoder.gyroplane.p_tangent.grad.abs().sum() > 0


def test_hyperbolic_means_lie_in_the_ball_and_reconstructions_have_patch_shape():
    model = HyperVAE(Config(**SMALL))
    loc, scale = model.encode(torch.randn(5, 1, 10, 10, 10) * 100)
    assert loc.dtype == torch.float64 and (loc.norm(dim=-1) < 1).all()
    assert (scale > 0).all()
    assert model.decode(loc).shape == (5, 1, 10, 10, 10)


def test_triplet_loss_matches_the_paper_formula():
    model = HyperVAE(Config(**SMALL))
    p = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    pos = torch.tensor([[0.15, 0.1]], dtype=torch.float64)
    neg = torch.tensor([[-0.5, 0.3]], dtype=torch.float64)

    def d(x, y):  # paper Eq. (1)
        sq = ((x - y) ** 2).sum()
        return math.acosh(1 + 2 * sq / ((1 - (x**2).sum()) * (1 - (y**2).sum())))

    expected = max(0.0, d(p, pos) - d(p, neg) + 0.2)
    assert model.triplet_loss(p, pos, neg).item() == pytest.approx(expected, rel=1e-9)
    # a negative nearer than the positive is penalised by more than the margin
    assert model.triplet_loss(p, neg, pos).item() > 0.2


def test_squared_triplet_loss_matches_the_released_code():
    # released code: relu(dist(p, pos)**2 - dist(p, neg)**2 + margin), Poincare or Euclidean
    p = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    pos = torch.tensor([[0.3, -0.1]], dtype=torch.float64)
    neg = torch.tensor([[-0.2, 0.35]], dtype=torch.float64)
    hyper = HyperVAE(Config(**SMALL, triplet_distance="squared", triplet_margin=0.3))
    dp, dn = hyper.latent_dist(p, pos).item(), hyper.latent_dist(p, neg).item()
    assert hyper.triplet_loss(p, pos, neg).item() == pytest.approx(max(0.0, dp**2 - dn**2 + 0.3), rel=1e-12)
    euclid = HyperVAE(Config(**SMALL, latent="euclidean", decoder_input="linear", triplet_distance="squared"))
    want = max(0.0, float(((p - pos) ** 2).sum() - ((p - neg) ** 2).sum()) + 0.2)
    assert euclid.triplet_loss(p, pos, neg).item() == pytest.approx(want, rel=1e-12)
    assert want != pytest.approx(max(0.0, float((p - pos).norm() - (p - neg).norm()) + 0.2))
    with pytest.raises(ValueError, match="triplet_distance must be one of"):
        Config(triplet_distance="cosine")


def _log_prior_by_formula(z: torch.Tensor, prior_scale: float, c: float | None) -> torch.Tensor:
    """``log p(z)`` of the prior at the origin, written out: ``(..., d) -> (...)``.

    Hyperbolic (``c``): ``v = lambda_0 log_0(z)`` with ``lambda_0 = 2`` and ``|log_0 z| = artanh(sqrt(c)|z|)/sqrt(c)``;
    ``log N(v; 0, s^2 I) - (d - 1) log(sinh(sqrt(c) r) / (sqrt(c) r))`` with ``r = |v|``. Euclidean (``None``):
    ``log N(z; 0, s^2 I)``.
    """
    gauss = Normal(torch.zeros((), dtype=z.dtype), torch.tensor(prior_scale, dtype=z.dtype))
    if c is None:
        return gauss.log_prob(z).sum(-1)
    norm = z.norm(dim=-1, keepdim=True)
    v = 2 * torch.atanh(c**0.5 * norm) / c**0.5 * z / norm
    r = v.norm(dim=-1) * c**0.5
    return gauss.log_prob(v).sum(-1) - (z.shape[-1] - 1) * torch.log(torch.sinh(r) / r)


@pytest.mark.parametrize("latent, decoder", [("hyperbolic", "gyroplane"), ("euclidean", "linear")])
def test_kl_estimate_is_the_mean_log_ratio_of_posterior_to_prior_over_the_drawn_samples(latent, decoder):
    """``kl = mean_k [log q(z_k) - log p(z_k)]`` with ``p`` the prior at the origin of scale ``prior_scale``.

    Patch 0's posterior sits at the origin with a scale other than the prior's: there the wrapped normals are
    the images of two centred Gaussians under one map (``exp_0``), so the KL is the Gaussians'
    ``sum_i log(s_p / s_i) + s_i^2 / (2 s_p^2) - 1/2``. Patch 1's posterior is off the origin.
    """
    prior_scale, c, K = 0.7, 1.5, 400
    model = HyperVAE(Config(**{**SMALL, "n_samples": K, "prior_scale": prior_scale, "c": c, "latent": latent,
                               "decoder_input": decoder}))
    d = model.cfg.latent_dim
    x = torch.zeros(2, 1, 10, 10, 10)
    loc = torch.zeros(2, d, dtype=torch.float64)
    loc[1] = torch.linspace(-0.3, 0.4, d, dtype=torch.float64)
    scale = torch.tensor([[0.3, 1.2, 0.5, 0.9][i % 4] for i in range(d)], dtype=torch.float64).repeat(2, 1)
    torch.manual_seed(5)
    _, _, kl = model.negative_elbo(x, loc, scale)
    torch.manual_seed(5)
    q = model.posterior(loc, scale)
    z = q.rsample(torch.Size([K]))  # the samples negative_elbo drew: (K, 2, d)
    log_ratio = q.log_prob(z) - _log_prior_by_formula(z, prior_scale, c if latent == "hyperbolic" else None)
    torch.testing.assert_close(kl, log_ratio.mean(0), rtol=1e-12, atol=1e-12)
    # at the origin the estimate is a Monte-Carlo estimate of the Gaussians' KL (4 standard errors)
    s = scale[0]
    closed = (torch.log(prior_scale / s) + s**2 / (2 * prior_scale**2) - 0.5).sum()
    assert abs(kl[0] - closed) < 4 * log_ratio[:, 0].std() / K**0.5
    assert kl[1] > kl[0] > 0  # moving the posterior off the prior's centre costs more


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = HyperVAE(Config(**SMALL))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = [torch.randn(4, 1, 10, 10, 10) for _ in range(3)]
    first = model.loss(*x)[0].item()
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(*x)[0]
        loss.backward()
        opt.step()
    assert model.loss(*x)[0].item() < first


@pytest.mark.parametrize("likelihood", ["unit", "scale"])
def test_reconstruction_nll_is_the_gaussian_log_density(likelihood):
    """The NLL term equals ``-sum log N(x; mean, sigma^2)`` computed with torch.distributions."""
    torch.manual_seed(0)
    model = HyperVAE(Config(**{**SMALL, "n_samples": 1, "likelihood": likelihood}))
    x = torch.randn(2, 1, 10, 10, 10)
    loc, scale = model.encode(x)
    torch.manual_seed(1)
    _, nll, _ = model.negative_elbo(x, loc, scale)
    torch.manual_seed(1)
    z = model.posterior(loc, scale).rsample(torch.Size([1]))[0]
    mean, sigma = model.decode_dist(z)
    if likelihood == "unit":
        assert sigma is None
        sigma = torch.ones_like(mean)
    expected = -torch.distributions.Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(nll, expected.to(nll.dtype), rtol=1e-5)


def test_scale_likelihood_predicts_a_floored_standard_deviation_per_voxel():
    model = HyperVAE(Config(**{**SMALL, "likelihood": "scale", "likelihood_min_scale": 0.1}))
    mean, sigma = model.decode_dist(model.encode(torch.randn(3, 1, 10, 10, 10))[0])
    assert mean.shape == sigma.shape == (3, 1, 10, 10, 10)
    assert (sigma > 0.1).all()
    assert model.decode(model.encode(torch.randn(3, 1, 10, 10, 10))[0]).shape == (3, 1, 10, 10, 10)


def test_unknown_likelihood_is_refused():
    with pytest.raises(ValueError, match="likelihood"):
        Config(likelihood="laplace")


