"""Density models as Pyro distributions: a continuous flow and an autoregressive model are
latent and observed ``pyro.sample`` sites under plain execution, ``poutine.trace`` and
``Predictive``, with joint log-densities and draws checked against closed forms, and with
torch's batch-shape rules for ``expand``; a normalizing flow with Pyro's own BatchNorm and
Permute is Pyro's TransformedDistribution; NUTS with a flow prior reproduces a grid posterior."""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from probgen.cnf import ContinuousFlow
from probgen.models import MADE

A = torch.tensor([[-0.5, 0.8], [-0.3, 0.2]], dtype=torch.float64)


def _linear_flow() -> ContinuousFlow:
    """dx/dt = A x from N(0, I): x_1 = e^A z, so the flow is N(0, e^A e^{A^T})."""
    base = dist.Normal(torch.zeros(2, dtype=torch.float64),
                       torch.ones(2, dtype=torch.float64)).to_event(1)
    return ContinuousFlow(lambda x, t: x @ A.T, base, rtol=1e-8, atol=1e-8)


def _linear_flow_exact() -> dist.MultivariateNormal:
    m = torch.linalg.matrix_exp(A)
    return dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), m @ m.T)


def test_continuous_flow_is_a_latent_site_whose_joint_density_is_the_closed_form():
    flow, exact = _linear_flow(), _linear_flow_exact()
    x_obs = torch.tensor([[0.3, -1.0], [1.2, 0.4], [0.0, 0.5]], dtype=torch.float64)

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", flow)
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x_obs)
        return z

    trace = poutine.trace(model).get_trace()
    z = trace.nodes["z"]["value"]
    assert z.shape == (3, 2) and trace.nodes["z"]["fn"].batch_shape == (3,)
    likelihood = dist.Normal(z, 0.5).to_event(1).log_prob(x_obs).sum()
    expected = exact.log_prob(z).sum() + likelihood
    assert torch.allclose(trace.log_prob_sum(), flow.log_prob(z).sum() + likelihood)
    assert torch.allclose(trace.log_prob_sum(), expected, atol=1e-6)
    draws = Predictive(model, num_samples=1000, parallel=True)()["z"].reshape(-1, 2)
    assert torch.allclose(torch.cov(draws.T), exact.covariance_matrix, atol=0.1)


def test_continuous_flow_is_an_observed_site():
    flow, exact = _linear_flow(), _linear_flow_exact()
    x = torch.randn(5, 2, dtype=torch.float64)

    def model():
        with pyro.plate("data", 5):
            pyro.sample("x", flow, obs=x)

    lp = poutine.trace(model).get_trace().log_prob_sum()
    assert torch.allclose(lp, exact.log_prob(x).sum(), atol=1e-6)


def test_continuous_flow_expand_follows_torch_rules():
    flow = _linear_flow()
    wide = flow.expand((3,))
    assert wide.batch_shape == (3,) and wide.event_shape == (2,)
    assert wide.sample((4,)).shape == (4, 3, 2)
    assert wide.log_prob(torch.zeros(2, dtype=torch.float64)).shape == (3,)
    assert wide.expand((5, 3)).sample().shape == (5, 3, 2)
    assert wide.to_event(1).event_shape == (3, 2)
    with pytest.raises((RuntimeError, ValueError)):
        wide.expand((2,))


def _pmf(d, patterns):
    return d.log_prob(patterns).exp()


def test_autoregressive_distribution_is_a_latent_site_and_draws_its_pmf():
    made = MADE((4,), hidden_features=[16]).double()
    d = made.distribution()
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    pmf = _pmf(d, patterns)
    assert torch.allclose(pmf.sum(), torch.tensor(1.0, dtype=torch.float64))
    x_obs = torch.randn(6, 4, dtype=torch.float64)

    def model():
        with pyro.plate("data", 6):
            z = pyro.sample("z", made.distribution())
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x_obs)

    with torch.no_grad():
        trace = poutine.trace(model).get_trace()
        z = trace.nodes["z"]["value"]
        expected = made.log_prob(z).sum() + dist.Normal(z, 1.0).to_event(1).log_prob(x_obs).sum()
        assert torch.allclose(trace.log_prob_sum(), expected)
        draws = Predictive(model, num_samples=500, parallel=True)()["z"].reshape(-1, 4)
    codes = (draws * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)).sum(-1).long()
    freq = torch.bincount(codes, minlength=16).double() / codes.numel()
    assert torch.allclose(freq, pmf, atol=0.02)


def test_autoregressive_distribution_is_an_observed_site_and_expands_by_torch_rules():
    made = MADE((4,), hidden_features=[16], classes=3).double()
    x = torch.bernoulli(torch.full((5, 4), 0.5, dtype=torch.float64))
    labels = torch.tensor([0, 2, 1, 1, 0])

    def model():
        with pyro.plate("data", 5):
            pyro.sample("x", made.distribution(labels), obs=x)

    with torch.no_grad():
        lp = poutine.trace(model).get_trace().log_prob_sum()
        assert torch.allclose(lp, made.log_prob(x, labels).sum())
        d = made.distribution(torch.tensor([0, 2]))
        assert d.batch_shape == (2,)
        wide = d.expand((3, 2))
        assert wide.batch_shape == (3, 2) and wide.sample((4,)).shape == (4, 3, 2, 4)
        assert wide.log_prob(x[0]).shape == (3, 2)
        plain = MADE((4,), hidden_features=[8]).distribution().expand((3,))
        assert plain.sample((2,)).shape == (2, 3, 4) and plain.log_prob(x[:1]).shape == (3,)
    with pytest.raises(ValueError, match="batch_shape: expected a shape that"):
        d.expand((3,))


def _pyro_transform_flow():
    from pyro.distributions.transforms import BatchNorm, Permute, affine_coupling

    from probgen.flows import NormalizingFlow
    from probgen.transforms import LULinear

    transforms = [affine_coupling(2, hidden_dims=[8]), BatchNorm(2), Permute(torch.tensor([1, 0])),
                  LULinear(2), affine_coupling(2, hidden_dims=[8])]
    return NormalizingFlow(transforms, (2,)).double(), transforms


def test_a_flow_with_pyros_batchnorm_and_permute_is_pyros_transformed_distribution():
    flow, transforms = _pyro_transform_flow()
    base = dist.Normal(torch.zeros(2, dtype=torch.float64),
                       torch.ones(2, dtype=torch.float64)).to_event(1)
    x = 2.0 * torch.randn(64, 2, dtype=torch.float64) + 1.0
    for training in (True, False):  # batch statistics, then BatchNorm's moving averages
        flow.train(training)
        reference = dist.TransformedDistribution(base, transforms).log_prob(x)
        assert torch.allclose(flow.log_prob(x), reference)
    # drawn base -> data, the log-density of a draw is its log_prob (ladj without batch dims)
    with torch.no_grad():
        draws, log_q = flow.rsample_and_log_prob((5,))
        assert torch.allclose(log_q, flow.log_prob(draws))
    # Permute's tensor is a buffer: saved, restored and moved with the flow
    state = flow.state_dict()
    assert any(k.endswith("permutation") for k in state)
    twin, _ = _pyro_transform_flow()
    twin.load_state_dict(state)
    twin.eval()
    assert torch.allclose(twin.log_prob(x), flow.log_prob(x))
    assert flow.float().transforms[2].transform.permutation.dtype == torch.long


def test_the_fused_log_prob_of_probgens_transforms_equals_pyros_transformed_distribution():
    from probgen.models import NSF, RealNVP

    x = torch.randn(32, 2, dtype=torch.float64)
    for flow in (RealNVP(2, 4, [16]).double(), NSF(2, 2, [16]).double()):
        assert torch.allclose(flow.log_prob(x), flow.distribution().log_prob(x))


def test_nuts_with_a_flow_prior_reproduces_the_grid_posterior():
    """z ~ flow (a RealNVP with fixed random weights), y | z ~ N(z, 0.7^2 I): NUTS draws the
    posterior whose mean and covariance a 301 x 301 grid of the flow's own density gives."""
    from pyro.infer import MCMC, NUTS

    from probgen.models import RealNVP

    flow = RealNVP(2, 4, [16]).double().eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.4).requires_grad_(False)
    y, sigma = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.7

    def model():
        z = pyro.sample("z", flow.distribution())
        pyro.sample("y", dist.Normal(z, sigma).to_event(1), obs=y)

    g = torch.linspace(-5.0, 5.0, 301, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_w = flow.log_prob(grid) + dist.Normal(grid, sigma).log_prob(y).sum(-1)
    w = (log_w - log_w.logsumexp(0)).exp()
    mean = (w[:, None] * grid).sum(0)
    centred = grid - mean
    cov = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
    assert float(w.reshape(301, 301)[[0, -1]].sum() + w.reshape(301, 301)[:, [0, -1]].sum()) \
        < 1e-6, "the grid must hold the posterior"

    mcmc = MCMC(NUTS(model), num_samples=500, warmup_steps=200, disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples()["z"]
    assert z.shape == (500, 2)
    assert torch.allclose(z.mean(0), mean, atol=0.12)
    # Monte Carlo tolerance: a few standard errors of a few hundred correlated draws (a
    # 3000-draw chain agrees with the grid to 0.03)
    assert torch.allclose(torch.cov(z.T), cov, atol=0.15)


@pytest.mark.parametrize("make", ["ddpm", "sde", "fm"])
def test_dynamical_models_are_latent_sites_through_their_probability_flow(make):
    """DDPM (through its probability-flow ODE), a score SDE and flow matching: the
    distribution of each is a Pyro site whose trace density is the model's own log_prob plus
    the likelihood's, and Predictive draws from it."""
    from probgen.models import VectorDDPM, VectorFlowMatching, VectorScoreSDE

    torch.manual_seed(0)
    model = {"ddpm": lambda: VectorDDPM(2, num_steps=20, hidden_features=[16]),
             "sde": lambda: VectorScoreSDE(2, hidden_features=[16]),
             "fm": lambda: VectorFlowMatching(2, hidden_features=[16])}[make]().double()
    prior = model.distribution(rtol=1e-5, atol=1e-5)
    assert isinstance(prior, dist.TorchDistribution)
    y = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def program():
        z = pyro.sample("z", prior)
        pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        return z

    trace = poutine.trace(program).get_trace()
    z = trace.nodes["z"]["value"]
    own = model.log_prob(z.unsqueeze(0), rtol=1e-5, atol=1e-5)[0]
    likelihood = dist.Normal(z, 0.5).to_event(1).log_prob(y)
    assert torch.allclose(trace.log_prob_sum(), own + likelihood, atol=1e-3)
    draws = Predictive(program, num_samples=3)()["z"]
    assert draws.shape == (3, 2) and torch.isfinite(draws).all()
