"""ELBO surgery against closed forms: for a linear-Gaussian encoder of Gaussian data the
aggregate posterior is Gaussian, so the index-code mutual information and the marginal KL
are log-determinants."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.distributions import Normal
from torch.distributions import MultivariateNormal

from probgen.latent import elbo_surgery
from probgen.models import VAE

pytestmark = pytest.mark.threads(2)

SIGMA_X = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.2], [0.0, 0.2, 0.5]],
                       dtype=torch.float64)
A = torch.tensor([[0.8, -0.4, 0.3], [0.2, 0.5, -0.6]], dtype=torch.float64)
B = torch.tensor([0.5, -0.3], dtype=torch.float64)
S = torch.tensor([0.7, 0.6], dtype=torch.float64)  # posterior standard deviations


def _linear_gaussian_vae() -> VAE:
    """A VAE whose encoder is q(z | x) = N(A x + B, diag(S^2)) (a linear layer; the scale
    outputs ignore x)."""
    vae = VAE((3,), 2, hidden_features=[], likelihood="gaussian").double()
    lin = vae.encoder.net[0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:2] = A
        lin.bias[:2] = B
        lin.bias[2:] = torch.log(torch.expm1(S - 1e-5))  # softplus(b) + 1e-5 = S
    return vae


def test_surgery_of_a_linear_gaussian_vae_matches_the_closed_forms():
    torch.manual_seed(0)
    vae = _linear_gaussian_vae()
    x = MultivariateNormal(torch.zeros(3, dtype=torch.float64), SIGMA_X).sample((3000,))
    with torch.no_grad():
        q = vae.posterior(x)
        assert torch.allclose(q.base_dist.scale, S.expand(3000, 2), atol=1e-9)
        out = elbo_surgery(q, vae.prior_distribution().expand(torch.Size()), num_samples=4,
                           generator=torch.Generator().manual_seed(1))
    # q(z) over the data distribution: N(B, C), C = A Sigma_x A^T + diag(S^2)
    cov = A @ SIGMA_X @ A.T + torch.diag(S ** 2)
    mi = 0.5 * (torch.logdet(cov) - torch.log(S ** 2).sum())
    marginal_kl = 0.5 * (torch.trace(cov) + B @ B - 2 - torch.logdet(cov))
    assert float(out["mutual_information"]) == pytest.approx(float(mi), abs=0.04)
    assert float(out["marginal_kl"]) == pytest.approx(float(marginal_kl), abs=0.04)
    # the split is of the average KL, which is known in closed form too
    assert float(out["kl"]) == pytest.approx(float(mi + marginal_kl), abs=0.05)
    assert float(out["kl_estimate"]) == pytest.approx(
        float(out["mutual_information"] + out["marginal_kl"]), abs=1e-9)
    assert 0 <= float(out["mutual_information"]) <= math.log(3000)


def test_an_uninformative_encoder_has_no_mutual_information():
    q = Normal(torch.full((500, 2), 0.4), torch.full((500, 2), 0.9)).to_event(1)
    p = Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    out = elbo_surgery(q, p, num_samples=5)
    assert float(out["mutual_information"]) == pytest.approx(0.0, abs=1e-5)
    assert float(out["marginal_kl"]) == pytest.approx(float(out["kl"]), abs=0.03)


def test_surgery_checks_its_inputs():
    p = Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    with pytest.raises(ValueError, match=r"batch shape \(N,\)"):
        elbo_surgery(p, p)
    q = Normal(torch.zeros(4, 3), torch.ones(4, 3)).to_event(1)
    with pytest.raises(ValueError, match=r"event shape \(3,\)"):
        elbo_surgery(q, p)
