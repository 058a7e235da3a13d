"""Gumbel-softmax VAE: argmax frequencies of relaxed samples, straight-through samples, the
analytic categorical KL, the temperature schedule, the discrete model's likelihood."""

from __future__ import annotations

import itertools
import math

import pyro.distributions as dist
import pytest
import torch
from scipy.stats import chisquare

from probgen.inference import ExponentialTemperature, RelaxedCategoricalELBO, fit
from probgen.models import MODELS, GumbelSoftmaxVAE


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("hard", [False, True])
def test_relaxed_sample_argmax_follows_the_class_probabilities(temperature, hard):
    """Gumbel-max: argmax of (logits + Gumbel) / tau is Cat(softmax(logits)) at any tau."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    cls = dist.RelaxedOneHotCategoricalStraightThrough if hard else dist.RelaxedOneHotCategorical
    q = cls(torch.tensor(temperature), probs=probs)
    n = 40_000
    z = q.rsample((n,))
    counts = torch.bincount(z.argmax(-1), minlength=5).double()
    assert chisquare(counts.numpy(), (n * probs.double()).numpy()).pvalue > 1e-3
    if hard:
        assert set(z.unique().tolist()) == {0.0, 1.0} and torch.all(z.sum(-1) == 1)
    else:
        assert torch.allclose(z.sum(-1), torch.ones(n), atol=1e-5)


def _vae(**kw):
    kw.setdefault("hidden_features", [16])
    return GumbelSoftmaxVAE((1, 4, 4), latents=3, categories=4, **kw)


@pytest.mark.parametrize("hard", [False, True])
def test_guide_argmax_follows_the_encoder_probabilities(hard):
    vae = _vae(hard=hard, temperature=0.7)
    x = torch.bernoulli(torch.full((1, 1, 4, 4), 0.5))
    with torch.no_grad():
        probs = torch.softmax(vae.logits(x), -1)[0]  # (3, 4)
        z = vae.posterior(x.expand(20_000, 1, 4, 4)).sample()  # (20000, 3, 4)
    for latent in range(3):
        counts = torch.bincount(z[:, latent].argmax(-1), minlength=4).double()
        expected = probs[latent].double()
        expected = 20_000 * expected / expected.sum()
        assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_straight_through_sample_is_one_hot_with_the_soft_gradient():
    logits = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(6, 5)
    tau = torch.tensor(0.5)
    torch.manual_seed(3)
    soft = dist.RelaxedOneHotCategorical(tau, logits=logits).rsample()
    (g_soft,) = torch.autograd.grad((w * soft).sum(), logits)
    torch.manual_seed(3)
    hard = dist.RelaxedOneHotCategoricalStraightThrough(tau, logits=logits).rsample()
    (g_hard,) = torch.autograd.grad((w * hard).sum(), logits)
    assert torch.equal(hard.detach(), torch.nn.functional.one_hot(soft.argmax(-1), 5).float())
    assert torch.allclose(g_hard, g_soft)


def test_categorical_kl_is_the_closed_form():
    vae = _vae(kl="categorical")
    x = torch.bernoulli(torch.full((7, 1, 4, 4), 0.5))
    q, p = vae.posterior(x), vae.prior_distribution().expand([7])
    kl = torch.distributions.kl_divergence(q, p)  # (7,), summed over the 3 latents
    pi = torch.softmax(vae.logits(x), -1)
    by_hand = (pi * torch.log(4 * pi)).sum((-1, -2))
    torch_kl = torch.distributions.kl_divergence(
        torch.distributions.Categorical(probs=pi), torch.distributions.Categorical(
            probs=torch.full_like(pi, 0.25))).sum(-1)
    assert torch.allclose(kl, by_hand, atol=1e-6) and torch.allclose(kl, torch_kl, atol=1e-6)
    objective = RelaxedCategoricalELBO(vae, estimator="meanfield").eval()
    assert float(objective(x)["kl"]) == pytest.approx(float(kl.detach().mean()), rel=1e-5)
    with pytest.raises(ValueError, match="meanfield"):
        RelaxedCategoricalELBO(vae, estimator="trace")


def test_relaxed_kl_is_monte_carlo_of_the_relaxed_densities():
    vae = _vae(temperature=0.8, prior_temperature=0.8)
    x = torch.bernoulli(torch.full((2000, 1, 4, 4), 0.5))
    with torch.no_grad():
        out = RelaxedCategoricalELBO(vae).eval()(x)
        q, p = vae.posterior(x), vae.prior_distribution()
        z = q.sample()
        mc = (q.log_prob(z) - p.log_prob(z)).mean()
    # two independent Monte Carlo estimates of one expectation
    assert float(out["kl"]) == pytest.approx(float(mc), abs=0.1)
    assert float(out["elbo"]) == pytest.approx(float(out["recon"] - out["kl"]), abs=1e-4)


def test_temperature_is_annealed_by_the_exponential_schedule():
    schedule = ExponentialTemperature(2.0, 0.5, rate=0.01)
    assert schedule(0) == 2.0
    assert schedule(50) == pytest.approx(2.0 * math.exp(-0.5))
    assert schedule(10_000) == 0.5
    with pytest.raises(ValueError, match="minimum"):
        ExponentialTemperature(0.5, 1.0)
    vae = _vae()
    objective = RelaxedCategoricalELBO(vae, schedule=schedule)
    x = torch.bernoulli(torch.full((64, 1, 4, 4), 0.3))
    fit(objective, x, steps=30, batch_size=16, progress=False)
    assert int(objective.step) == 30
    assert float(vae.temperature) == pytest.approx(schedule(29))
    objective.eval()(x)
    assert int(objective.step) == 30 and float(vae.temperature) == pytest.approx(schedule(29))


def test_discrete_log_likelihood_matches_exact_enumeration():
    torch.manual_seed(0)
    vae = GumbelSoftmaxVAE((5,), latents=2, categories=3, hidden_features=[8])
    x = torch.bernoulli(torch.full((4, 5), 0.5))
    with torch.no_grad():
        terms = []
        for a, b in itertools.product(range(3), repeat=2):
            z = torch.zeros(4, 2, 3)
            z[:, 0, a], z[:, 1, b] = 1.0, 1.0
            terms.append(vae.decoder_distribution(z).log_prob(x) - math.log(9))
        exact = torch.logsumexp(torch.stack(terms), 0)
    estimate = vae.log_likelihood(x, num_samples=20_000, chunk_size=5000)
    assert torch.allclose(estimate, exact, atol=0.02)
    # one sample at a time: the discrete ELBO, below log p(x) on average (Jensen)
    single = torch.stack([vae.log_likelihood(x, num_samples=1) for _ in range(400)]).mean(0)
    assert torch.all(single < exact)


def test_gumbel_vae_shapes_errors_registry():
    vae = _vae()
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    assert vae.encode(x).shape == (3, 3) and vae.encode(x).dtype == torch.long
    assert vae.reconstruct(x).shape == x.shape
    assert vae.sample((2, 5)).shape == (2, 5, 1, 4, 4)
    assert vae.sample(4, mean=False).unique().tolist() in ([0.0, 1.0], [0.0], [1.0])
    out = RelaxedCategoricalELBO(vae)(x)
    out["loss"].backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="kl"):
        _vae(kl="exact")
    with pytest.raises(ValueError, match="categories"):
        GumbelSoftmaxVAE((4,), categories=1)
    with pytest.raises(ValueError, match=r"\(N, 1, 4, 4\)"):
        vae.logits(torch.zeros(2, 16))
    with pytest.raises(TypeError, match="temperature"):
        RelaxedCategoricalELBO(torch.nn.Linear(2, 2))
    assert MODELS["GumbelSoftmaxVAE"] is GumbelSoftmaxVAE


def test_low_temperature_samples_stay_finite():
    vae = _vae(temperature=0.05)
    with torch.no_grad():
        for m in vae.encoder.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(200.0)  # huge logits, squashed to (-10, 10)
    x = torch.bernoulli(torch.full((256, 1, 4, 4), 0.5))
    out = RelaxedCategoricalELBO(vae, schedule=ExponentialTemperature(0.3, 0.3, 0.0))(x)
    assert all(torch.isfinite(v) for v in out.values())


def test_gumbel_preset_runs_from_the_cli(tmp_path):
    import json

    from probgen.cli import main

    out = tmp_path / "gumbel"
    args = ["fit", "gumbel-digits", "--out", str(out), "--quiet"]
    for o in ("train.steps=5", "train.eval_every=5", "eval.num_samples=40", "sample.n=4",
              "objective.anneal_rate=0.1"):
        args += ["--set", o]
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["test/temperature"] == pytest.approx(math.exp(-0.1 * 4), rel=1e-5)
    assert result["test/elbo"] == pytest.approx(result["test/recon"] - result["test/kl"],
                                                abs=1e-3)
    assert (out / "samples.png").is_file()
