"""DDPM as a hierarchical VAE, literally: its Pyro model (reverse process) and guide (forward
process in the posterior factorization) give Pyro ELBOs whose expectation is the closed-form
variational bound, generate under ``Predictive`` what the ancestral sampler draws plus the
decoder's noise, and train the network under plain SVI."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from probgen.diffusion import DiscretizedGaussian, NoiseSchedule, gaussian_epsilon
from probgen.inference import ELBO, reverse_moments, variational_bound
from probgen.models import DDPM, DiffusionModel, DiffusionVAE, VectorDDPM

pytestmark = pytest.mark.threads(2)

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


class ExactGaussianEps(nn.Module):
    """The exact noise prediction of N(MU, COV) data as a network of (x, t)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.schedule, self.eps = schedule, gaussian_epsilon(schedule, MU, COV)
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps(x, self.schedule.step_of_time(t.double()))


def _gaussian_model(schedule: NoiseSchedule) -> DiffusionModel:
    return DiffusionModel(ExactGaussianEps(schedule), schedule, (2,)).double()


def _repeat(fn, times: int) -> tuple[float, float]:
    """Mean and standard error of ``times`` draws of the scalar ``fn()``."""
    values = torch.tensor([float(fn()) for _ in range(times)], dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(times))


def test_pyro_elbos_of_the_exact_gaussian_ddpm_estimate_the_closed_form_bound():
    torch.manual_seed(0)
    model = _gaussian_model(NoiseSchedule.linear(10, 1e-3, 0.3))
    x0 = torch.distributions.MultivariateNormal(MU, COV).sample((500,))
    n = x0.shape[0]
    bound, se_bound = _repeat(lambda: variational_bound(model, x0)["nll"].mean(), 12)
    for estimator in (TraceMeanField_ELBO(), Trace_ELBO()):
        loss, se = _repeat(
            lambda e=estimator: e.loss(model.hvae_model, model.hvae_guide, x0) / n, 12)
        assert abs(loss - bound) < 4 * math.hypot(se, se_bound) + 1e-3, (estimator, loss, bound)
    # a bound on the NLL: its data average is at least the data's entropy
    entropy = 0.5 * (2 * math.log(2 * math.pi * math.e) + math.log(float(torch.det(COV))))
    assert bound > entropy


def test_the_guide_is_the_forward_process_and_the_model_the_reverse_one():
    torch.manual_seed(1)
    model = _gaussian_model(NoiseSchedule.linear(8, 1e-3, 0.3))
    sched = model.schedule
    x0 = torch.distributions.MultivariateNormal(MU, COV).sample((4000,))
    trace = pyro.poutine.trace(model.hvae_guide).get_trace(x0)
    # ancestral draws through q(x_{t-1} | x_t, x0) have the marginals q(x_t | x0)
    for s in range(sched.num_steps):
        z = trace.nodes[f"x_{s + 1}"]["value"]
        ab = float(sched.alphas_cumprod[s])
        eps = (z - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        assert eps.mean(0).abs().max() < 0.1 and (eps.var(0) - 1).abs().max() < 0.1, s
    # the model's sites are the reverse steps of reverse_moments, the data site observed
    mt = pyro.poutine.trace(pyro.poutine.replay(model.hvae_model, trace=trace)).get_trace(x0)
    step = torch.full((x0.shape[0],), 3, dtype=torch.long)
    mean, logvar = reverse_moments(model, trace.nodes["x_4"]["value"], step)
    site = mt.nodes["x_3"]["fn"].base_dist
    assert torch.allclose(site.loc, mean) and torch.allclose(site.scale, (0.5 * logvar).exp())
    assert mt.nodes["x_0"]["is_observed"] and torch.equal(mt.nodes["x_0"]["value"], x0)


def test_predictive_draws_what_the_ancestral_sampler_draws_plus_the_decoder_noise():
    """The sampler returns the decoder's mean at step 0; the Pyro model draws x_0 from the
    decoder, so its covariance is the sampler's plus exp(logvar_0) I."""
    torch.manual_seed(2)
    model = _gaussian_model(NoiseSchedule.linear(10, 1e-3, 0.3))
    n = 20000
    draws = Predictive(model.hvae_model, num_samples=1)(None, n)["x_0"][0]
    assert draws.shape == (n, 2)
    reference = model.sample((n,))
    logvar0 = float(model.schedule.posterior_log_variance_clipped[0])
    expected = torch.cov(reference.T) + math.exp(logvar0) * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(draws.mean(0), reference.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(draws.T), expected, atol=0.06)


def test_integer_images_use_the_discretized_decoder_and_keep_the_bound():
    torch.manual_seed(3)
    ddpm = DDPM((1, 4, 4), num_steps=4, base_channels=8, channel_mults=(1,), groups=4)
    ddpm = ddpm.double().eval()
    x = torch.randint(0, 4, (16, 1, 4, 4)).double()
    vae = ddpm.as_vae(levels=4)
    with torch.no_grad():
        trace = pyro.poutine.trace(vae.model).get_trace(x)
        assert isinstance(trace.nodes["x_0"]["fn"].base_dist, DiscretizedGaussian)
        loss, se = _repeat(lambda: TraceMeanField_ELBO().loss(vae.model, vae.guide, x) / 16, 6)
        bound, se_bound = _repeat(
            lambda: variational_bound(ddpm, x, levels=4)["nll"].mean(), 6)
        assert abs(loss - bound) < 4 * math.hypot(se, se_bound)
        draws = Predictive(vae.model, num_samples=1)(None, 3)["x_0"]
    assert set(draws.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_discretized_gaussian_is_a_distribution_over_the_levels():
    loc = torch.tensor([-0.7, 0.1, 0.9], dtype=torch.float64)
    d = DiscretizedGaussian(loc, torch.tensor([0.3, 1.0, 0.05], dtype=torch.float64), 5)
    levels = torch.arange(5.0, dtype=torch.float64)[:, None]
    assert torch.allclose(d.log_prob(levels).exp().sum(0), torch.ones(3, dtype=torch.float64))
    torch.manual_seed(4)
    draws = d.sample((40000,))
    assert torch.allclose(draws.mean(0), d.mean, atol=0.03)
    with pytest.raises(ValueError, match="levels"):
        DiscretizedGaussian(loc, 1.0, 1)


def test_plain_svi_on_the_hierarchical_vae_trains_the_network():
    torch.manual_seed(5)
    pyro.clear_param_store()
    ddpm = VectorDDPM(2, num_steps=6, hidden_features=[32], embedding_dim=16)
    data = torch.distributions.MultivariateNormal(MU.float(), COV.float())
    x_test = data.sample((1000,))
    with torch.no_grad():
        before = float(variational_bound(ddpm, x_test)["nll"].mean())
    weights = [p.detach().clone() for p in ddpm.parameters()]
    svi = SVI(ddpm.hvae_model, ddpm.hvae_guide, pyro.optim.Adam({"lr": 2e-2}),
              TraceMeanField_ELBO())
    for _ in range(40):
        svi.step(data.sample((64,)))
    pyro.clear_param_store()
    assert all(not torch.equal(p, w) for p, w in zip(ddpm.parameters(), weights, strict=True))
    with torch.no_grad():
        after = float(variational_bound(ddpm, x_test)["nll"].mean())
    assert after < 0.5 * before, (before, after)
    # the same program under the one ELBO objective reports the bound in its outputs
    out = ELBO(DiffusionVAE(ddpm)).eval()(x_test)
    assert float(out["nll"]) == pytest.approx(after, abs=0.15)
