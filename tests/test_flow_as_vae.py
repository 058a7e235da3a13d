"""A normalizing flow as a VAE with point-mass sites (``flow.as_vae()``): its ELBO is the
flow's exact log-likelihood for every kind of flow (Pyro's BatchNorm and Permute included,
in training and evaluation mode), an observation off the decoder's point scores -inf,
``Predictive`` on ``model(None, n)`` draws the flow's closed-form Gaussian, and plain
``pyro.infer.SVI`` trains the flow to the likelihood ``fit`` reaches."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import BatchNorm, Permute, affine_coupling
from pyro.infer import Predictive, Trace_ELBO, TraceMeanField_ELBO
from test_pyro_programs import _svi_train, _unmoved
from torch.distributions import kl_divergence

from probgen.flow_vae import FlowVAE, TolerantDelta
from probgen.flows import NormalizingFlow
from probgen.inference import ELBO, MaximumLikelihood, fit
from probgen.models import IAF, MAF, NSF, Glow, LinearFlow, PlanarFlow, RealNVP
from probgen.transforms import LULinear


def _pyro_transform_flow() -> NormalizingFlow:
    transforms = [affine_coupling(2, hidden_dims=[8]), BatchNorm(2), Permute(torch.tensor([1, 0])),
                  LULinear(2), affine_coupling(2, hidden_dims=[8])]
    return NormalizingFlow(transforms, (2,))


FLOWS = {
    "realnvp": lambda: RealNVP(2, transforms=2, hidden_features=[8]),
    "maf": lambda: MAF(3, transforms=2, hidden_features=[8]),
    "nsf-autoregressive": lambda: NSF(2, transforms=2, hidden_features=[8], autoregressive=True),
    "iaf": lambda: IAF(2, transforms=2, hidden_features=[8]),
    "planar": lambda: PlanarFlow(2, transforms=2),
    "pyro-batchnorm-permute-train": _pyro_transform_flow,
    "pyro-batchnorm-permute-eval": lambda: _pyro_transform_flow().eval(),
    "glow": lambda: Glow([1, 4, 4], scales=1, steps=2, hidden_channels=4),
}


def _perturbed(flow: NormalizingFlow) -> NormalizingFlow:
    """The flow in float64, its parameters moved off their (often identity) initialization."""
    flow = flow.double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("name", list(FLOWS))
def test_the_elbo_of_a_flow_as_a_vae_is_its_exact_log_likelihood(name):
    flow = _perturbed(FLOWS[name]())
    vae = flow.as_vae()
    x = 1.5 * torch.randn(16, *flow.event_shape, dtype=torch.float64) + 0.5
    exact = flow.log_prob(x).detach()  # Pyro's TransformedDistribution (or the fused pass)
    # one particle is exact: the guide is the true posterior, a point mass
    assert Trace_ELBO().loss(vae.model, vae.guide, x) == pytest.approx(-float(exact.sum()),
                                                                       rel=1e-10)
    # closed-form KL of the point mass keeps its log-density: the same number
    assert TraceMeanField_ELBO().loss(vae.model, vae.guide, x) == pytest.approx(
        -float(exact.sum()), rel=1e-10)
    with torch.no_grad():
        out = ELBO(vae)(x)  # probgen's default estimator
    assert float(out["elbo"]) == pytest.approx(float(exact.mean()), rel=1e-10)
    assert float(out["recon"]) == 0.0  # log p(x | z) of the point mass at f(z) = x
    # the guide's encoding is the change of variables: log p(x) = log N(z) + ladj
    z, ladj = flow.to_base(x)
    base = dist.Normal(torch.zeros_like(z), 1.0).to_event(z.dim() - 1)
    assert torch.allclose(base.log_prob(z) + ladj, exact)


def test_a_conditional_flow_as_a_vae_takes_the_context():
    flow = _perturbed(MAF(2, transforms=2, hidden_features=[8], context=1))
    vae = flow.as_vae()
    x, c = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x, y=c)
    assert loss == pytest.approx(-float(flow.log_prob(x, c).detach().sum()), rel=1e-10)
    draws = Predictive(vae.model, num_samples=2)(None, 8, y=c)
    assert draws["x"].shape == (2, 8, 2)


def test_an_observation_off_the_decoders_point_scores_minus_infinity():
    """The guide encodes x; the model, replayed with the guide's z, recomputes f(z) for an
    observation that is not that x: within the tolerance it scores 0, beyond it -inf."""
    flow = _perturbed(RealNVP(2, transforms=3, hidden_features=[8]))
    vae = flow.as_vae()
    x = torch.randn(4, 2, dtype=torch.float64)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    rtol = math.sqrt(torch.finfo(torch.float64).eps)
    scale = x.abs().amax(-1).clamp(min=1.0)
    shifted = x.clone()
    shifted[0, 1] += 100 * rtol * scale[0]  # off the point
    shifted[1, 0] += 0.01 * rtol * scale[1]  # rounding-sized: on it
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(shifted)
    site = model_trace.nodes["x"]
    assert torch.allclose(site["fn"].v, x, rtol=0, atol=1e-12)  # f(f^{-1}(x)) recomputed
    lp = site["fn"].log_prob(shifted)
    assert lp[0] == -math.inf and torch.equal(lp[1:], torch.zeros(3, dtype=torch.float64))
    elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    assert elbo == -math.inf  # Trace_ELBO's loss of such a pair is +inf
    # a z that is not the guide's (a copy) also goes through f, and x is on its point
    copied = poutine.trace(poutine.condition(vae.model, {"z": guide_trace.nodes["z"]["value"]
                                                         .clone()})).get_trace(x)
    assert torch.equal(copied.nodes["x"]["fn"].log_prob(x), torch.zeros(4, dtype=torch.float64))


def test_the_tolerant_delta_checks_within_eps_relative_to_the_values_scale():
    v = torch.tensor([[1000.0, 0.0], [1e-3, 2e-3]], dtype=torch.float64)
    d = TolerantDelta(v, log_density=torch.tensor([0.5, -1.0], dtype=torch.float64),
                      event_dim=1, rtol=1e-4)
    # row 0: scale 1000, tolerance 0.1; row 1: scale floored at 1, tolerance 1e-4
    near = v + torch.tensor([[0.05, -0.05], [5e-5, 0.0]], dtype=torch.float64)
    far = v + torch.tensor([[0.0, 0.2], [0.0, 2e-4]], dtype=torch.float64)
    assert torch.equal(d.log_prob(near), torch.tensor([0.5, -1.0], dtype=torch.float64))
    assert torch.equal(d.log_prob(far), torch.full((2,), -math.inf, dtype=torch.float64))
    nan = v.clone()
    nan[1, 1] = math.nan
    assert d.log_prob(nan)[1] == -math.inf
    # expand (as pyro.plate does) keeps the class and the tolerance
    wide = d.expand((3, 2))
    assert isinstance(wide, TolerantDelta) and wide.rtol == 1e-4
    assert wide.log_prob(near).shape == (3, 2)
    # the default tolerance is sqrt(eps) of the dtype
    assert TolerantDelta(torch.zeros(2)).rtol == pytest.approx(math.sqrt(1.1920929e-07))
    # KL keeps the log-density (Pyro's Delta KL drops it)
    p = dist.Normal(torch.zeros(2, 2, dtype=torch.float64), 1.0).to_event(1)
    assert torch.allclose(kl_divergence(d, p), d.log_density - p.log_prob(v))
    with pytest.raises(ValueError, match="rtol: expected a positive finite tolerance"):
        TolerantDelta(v, rtol=0.0)
    with pytest.raises(TypeError, match="v: expected a floating-point tensor"):
        TolerantDelta(torch.arange(3))


def test_predictive_on_the_model_draws_the_flows_closed_form_gaussian():
    """An affine flow x = A z + b of z ~ N(0, I) is N(b, A A^T); b and the columns of A are
    read off the flow itself (f(0) and f(e_i) - f(0))."""
    flow = LinearFlow(3, transforms=2).double()
    with torch.no_grad():
        for t in flow.transforms:
            t.lower.normal_(0.0, 0.5)
            t.upper.normal_(0.0, 0.5)
            t.log_diag.normal_(0.0, 0.3)
            t.bias.normal_(0.0, 1.0)
        points = flow.from_base(torch.cat([torch.zeros(1, 3), torch.eye(3)]).double())
    b, a = points[0], (points[1:] - points[0]).T
    cov = a @ a.T
    vae = flow.as_vae()
    draws = Predictive(vae.model, num_samples=4)(None, n=5000)
    assert draws["z"].shape == (4, 5000, 3) and draws["x"].shape == (4, 5000, 3)
    assert torch.allclose(draws["x"], flow.from_base(draws["z"]).detach())
    tol = 0.05 * float(cov.diagonal().max())
    for x in (draws["x"].reshape(-1, 3), flow.sample((20000,))):
        assert torch.allclose(x.mean(0), b, atol=tol ** 0.5)
        assert torch.allclose(torch.cov(x.T), cov, atol=tol)
    # outside Predictive, model(None) draws are reparametrized (differentiable) samples
    x = vae.model(None, n=7)
    assert x.shape == (7, 3) and x.requires_grad


def test_plain_svi_trains_the_flow_to_the_likelihood_fit_reaches():
    """A correlated Gaussian: SVI on (model, guide) and fit(MaximumLikelihood) on a twin, at
    the same optimizer, learning rate and budget, both reach the true density's NLL."""
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    target = dist.MultivariateNormal(torch.tensor([1.0, -2.0]), cov)
    g = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(cov)
    x, x_test = (target.loc + torch.randn(2, 4000, 2, generator=g) @ chol.T).unbind(0)
    flow = RealNVP(2, transforms=4, hidden_features=[16])
    twin = copy.deepcopy(flow)
    vae = flow.as_vae()
    before = {n: p.detach().clone() for n, p in flow.named_parameters()}
    start = Trace_ELBO().loss(vae.model, vae.guide, x) / len(x)

    _svi_train(vae.model, vae.guide, x, steps=300, batch_size=128, lr=1e-2)
    assert not _unmoved(flow, before), f"SVI did not train {_unmoved(flow, before)}"
    assert Trace_ELBO().loss(vae.model, vae.guide, x) / len(x) < start - 0.5
    fit(MaximumLikelihood(twin), x, steps=300, batch_size=128, lr=1e-2, progress=False)
    with torch.no_grad():
        truth = -float(target.log_prob(x_test).mean())
        svi_nll = -float(flow.log_prob(x_test).mean())
        fit_nll = -float(twin.log_prob(x_test).mean())
    assert svi_nll == pytest.approx(truth, abs=0.08)
    assert fit_nll == pytest.approx(truth, abs=0.08)
    assert svi_nll == pytest.approx(fit_nll, abs=0.06)  # batch order: the only difference


def test_bad_input_is_rejected_before_any_work_with_what_was_expected():
    vae = RealNVP(2, transforms=2, hidden_features=[8]).as_vae()
    for call in (vae.model, vae.guide):
        with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 2\), got \(5, 3\)"):
            call(torch.randn(5, 3))
        with pytest.raises(ValueError, match=r"x: expected a batch of shape \(N, 2\), got "
                                             r"\(4, 5, 2\)"):
            call(torch.randn(4, 5, 2))
    with pytest.raises(ValueError, match="n: expected a positive int, got 0"):
        vae.model(None, n=0)
    assert not list(pyro.get_param_store().keys())  # nothing was registered or computed
    conditional = MAF(2, transforms=1, hidden_features=[8], context=1).as_vae()
    with pytest.raises(ValueError, match=r"y: this flow is conditional; expected its context "
                                         r"of shape \(5, 1\), got None"):
        conditional.guide(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"y: expected the context of shape \(5, 1\) \(one row "
                                         r"per example\), got \(4, 1\)"):
        conditional.model(torch.randn(5, 2), y=torch.randn(4, 1))
    with pytest.raises(ValueError, match="y: this flow is unconditional"):
        vae.model(torch.randn(5, 2), y=torch.randn(5, 1))
    with pytest.raises(TypeError, match="flow: expected a probgen NormalizingFlow"):
        FlowVAE(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="rtol: expected a positive finite tolerance"):
        RealNVP(2).as_vae(rtol=-1.0)
