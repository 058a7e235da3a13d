"""VAE priors and posteriors as objects: a Pyro distribution, a normalizing flow, a
continuous flow or a flow-matching model is the prior, and Pyro transforms or a flow push the
encoder's Gaussian; the prior's density enters the ELBO exactly (closed-form Gaussian KL),
a module prior trains with the VAE."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from probgen.inference import ELBO, fit
from probgen.models import CNF, MAF, VAE, VectorFlowMatching

pytestmark = pytest.mark.threads(2)

LOC = torch.tensor([1.0, -1.0])
SCALE = torch.tensor([0.5, 2.0])


def _vae(**kwargs: object) -> VAE:
    return VAE((4,), 2, hidden_features=[8], likelihood="gaussian", **kwargs)


def _traces(vae: VAE, x: torch.Tensor) -> tuple[poutine.Trace, poutine.Trace]:
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    return model, guide


def test_a_gaussian_prior_object_enters_the_elbo_as_its_closed_form_kl():
    torch.manual_seed(0)
    vae = _vae(prior=dist.Normal(LOC, SCALE).to_event(1))
    x = torch.randn(16, 4)
    with torch.no_grad():
        q = vae.posterior(x).base_dist
        m, s = q.loc, q.scale
        # KL(N(m, s^2) || N(LOC, SCALE^2)), summed over the latent, averaged over the batch
        kl = (torch.log(SCALE / s) + (s ** 2 + (m - LOC) ** 2) / (2 * SCALE ** 2) - 0.5)
        out = ELBO(vae, estimator="meanfield")(x)
        assert torch.allclose(out["kl"], kl.sum(-1).mean(), atol=1e-5)
        assert torch.allclose(out["loss"], out["kl"] - out["recon"], atol=1e-5)
        model, _ = _traces(vae, x)
    z = model.nodes["z"]["value"]
    log_p = (-0.5 * ((z - LOC) / SCALE) ** 2 - torch.log(SCALE)
             - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(model.nodes["z"]["fn"].log_prob(z), log_p, atol=1e-5)


def test_a_flow_prior_module_is_the_latent_density_and_trains_with_the_vae():
    torch.manual_seed(1)
    flow = MAF(2, 2, [8])
    vae = _vae(prior=flow)
    x = torch.randn(64, 4)
    with torch.no_grad():
        model, _ = _traces(vae, x)
        z = model.nodes["z"]["value"]
        assert torch.allclose(model.nodes["z"]["fn"].log_prob(z), flow.log_prob(z), atol=1e-5)
    before = {n: p.detach().clone() for n, p in flow.named_parameters()}
    assert any(n.startswith("prior.") for n, _ in vae.named_parameters())
    fit(ELBO(vae, estimator="trace"), x, steps=5, batch_size=32, lr=1e-2, progress=False)
    assert all(not torch.equal(p, before[n]) for n, p in flow.named_parameters())


@pytest.mark.parametrize("make", [
    lambda: CNF(2, hidden_features=[8], method="rk4", step_size=0.25),
    lambda: VectorFlowMatching(2, hidden_features=[8]),
], ids=["cnf", "flow_matching"])
def test_continuous_priors_are_latent_sites_with_their_own_density(make):
    torch.manual_seed(2)
    prior = make()
    vae = _vae(prior=prior)
    x = torch.randn(4, 4)
    with torch.no_grad():
        model, _ = _traces(vae, x)
        z = model.nodes["z"]["value"]
        assert torch.allclose(model.nodes["z"]["fn"].log_prob(z),
                              prior.distribution().log_prob(z), atol=1e-4)
        assert torch.isfinite(ELBO(vae)(x)["loss"])
        assert vae.sample((3,)).shape == (3, 4)


def test_pyro_transforms_as_posterior_push_the_encoder_gaussian():
    """An affine map a z + c of N(m, s^2) is N(a m + c, (a s)^2)."""
    torch.manual_seed(3)
    a, c = torch.tensor([2.0, -0.5]), torch.tensor([0.3, 1.0])
    vae = _vae(posterior=dist.transforms.AffineTransform(c, a, event_dim=1))
    x = torch.randn(8, 4)
    with torch.no_grad():
        base = vae.posterior(x).base_dist.base_dist
        _, guide = _traces(vae, x)
        z = guide.nodes["z"]["value"]
        exact = dist.Normal(a * base.loc + c, a.abs() * base.scale).to_event(1).log_prob(z)
        assert torch.allclose(guide.nodes["z"]["fn"].log_prob(z), exact, atol=1e-5)
    trainable = _vae(posterior=[dist.transforms.affine_autoregressive(2, [8])])
    assert any(n.startswith("flow.") for n, _ in trainable.named_parameters())


def test_prior_and_posterior_objects_are_checked():
    with pytest.raises(ValueError, match=r"event shape \(2,\)"):
        _vae(prior=dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pytest.raises(TypeError, match="density model"):
        _vae(prior=torch.distributions.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="prior: expected one of"):
        _vae(prior="gumbel")
    with pytest.raises(TypeError, match="posterior: expected"):
        _vae(posterior=3)


def test_distribution_priors_and_plain_transforms_move_and_cast_with_the_vae():
    """A Pyro distribution prior and non-module transforms are not nn.Modules: the VAE
    carries their tensors through .double() and .to(device) (meta stands in for a GPU)."""
    from pyro.distributions.transforms import AffineTransform

    prior = dist.MultivariateNormal(torch.zeros(4), scale_tril=2 * torch.eye(4))
    vae = VAE((1, 8, 8), 4, hidden_features=[16], likelihood="bernoulli", prior=prior,
              posterior=[AffineTransform(torch.zeros(4), torch.ones(4))]).double()
    assert vae.prior.loc.dtype == vae.prior.scale_tril.dtype == torch.float64
    assert vae.flow.transforms[0].loc.dtype == torch.float64
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64).bernoulli()
    ll = vae.log_likelihood(x, 16)
    assert ll.dtype == torch.float64 and torch.isfinite(ll).all()
    # the closed form the prior describes survives the cast: log N(0; 0, 4 I) in 4 dims
    z0 = torch.zeros(4, dtype=torch.float64)
    expected = -2 * math.log(2 * math.pi) - 4 * math.log(2.0)
    assert float(vae.prior_distribution().log_prob(z0)) == pytest.approx(expected, rel=1e-12)
    vae.to("meta")
    assert vae.prior.loc.device.type == "meta"
    assert vae.flow.transforms[0].scale.device.type == "meta"
