"""Variational EM on the one ELBO layer: its enumerated bound is the closed form of a mixture
(also with beta), and its IWAE option lies between the exact log-likelihood and the ELBO of a
linear-Gaussian VAE."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.inference import VariationalEM, fit
from probgen.models import VAE, GaussianMixtureModel

pytestmark = pytest.mark.threads(2)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_the_enumerated_bound_and_beta_are_the_mixture_closed_form(beta):
    torch.manual_seed(0)
    gmm = GaussianMixtureModel(2, 3, hidden_features=[8]).double()
    x = torch.randn(64, 2, dtype=torch.float64) * 3
    out = {k: v.detach() for k, v in VariationalEM(gmm, beta=beta)(x).items()}
    with torch.no_grad():
        log_q = gmm.encoder(x).log_softmax(-1)
        log_pi = gmm.logits.log_softmax(-1)
        q = log_q.exp()
        kl = (q * (log_q - log_pi)).sum(-1).mean()
        recon = (q * (gmm.joint_log_prob(x) - log_pi)).sum(-1).mean()
        ll = gmm.log_prob(x).mean()
    assert float(out["loss"]) == pytest.approx(float(beta * kl - recon), rel=1e-9)
    assert float(out["kl"]) == pytest.approx(float(kl), rel=1e-9)
    assert float(out["elbo"]) == pytest.approx(float(recon - kl), rel=1e-9)
    assert float(out["gap"]) == pytest.approx(float(ll - (recon - kl)), rel=1e-9)
    assert float(out["gap"]) >= 0


def _linear_vae() -> tuple[VAE, torch.distributions.MultivariateNormal]:
    """A linear decoder with Gaussian noise: p(x) = N(b, W W^T + sigma^2 I) exactly."""
    torch.manual_seed(1)
    vae = VAE((3,), 2, hidden_features=[], likelihood="gaussian", scale="learned").double()
    with torch.no_grad():
        vae.likelihood.log_scale.fill_(math.log(0.5))
        lin = vae.decoder.net[0]
        cov = lin.weight @ lin.weight.T + 0.25 * torch.eye(3, dtype=torch.float64)
        return vae, torch.distributions.MultivariateNormal(lin.bias.clone(), cov)


def test_the_iwae_option_lies_between_the_elbo_and_the_exact_log_likelihood():
    vae, exact = _linear_vae()
    x = exact.sample((256,)) + 0.5
    nll = -float(exact.log_prob(x).mean())
    draws = 30
    with torch.no_grad():
        elbo = [float(VariationalEM(vae, estimator="meanfield")(x)["loss"])
                for _ in range(draws)]
        iwae = [float(VariationalEM(vae, estimator="renyi", num_particles=20)(x)["loss"])
                for _ in range(draws)]
    elbo_t, iwae_t = torch.tensor(elbo), torch.tensor(iwae)
    se = math.hypot(float(elbo_t.std()), float(iwae_t.std())) / math.sqrt(draws)
    assert float(iwae_t.mean()) < float(elbo_t.mean()) - 4 * se
    assert float(iwae_t.mean()) > nll - 4 * float(iwae_t.std()) / math.sqrt(draws)


def test_alternating_variational_em_trains_a_vae_with_the_iwae_bound():
    vae, exact = _linear_vae()
    x = exact.sample((512,)) * 2 + 1
    objective = VariationalEM(vae, estimator="renyi", num_particles=5, e_steps=2)
    assert set(objective.parameter_groups()) == {"e", "m"}
    with torch.no_grad():
        before = float(objective.eval()(x)["loss"])
    fit(objective.train(), x, steps=60, batch_size=128, lr=2e-2, progress=False)
    with torch.no_grad():
        after = float(objective.eval()(x)["loss"])
    assert after < before - 0.5, (before, after)
