"""Latent-variable models as first-class Pyro programs: plain ``pyro.infer.SVI`` trains every
parameter (and reaches the bound ``fit`` reaches), ``model(None)`` generates under
``Predictive`` (checked against the closed-form moments of the model), and ``fit`` trains a
user's plain Pyro functions with ``pyro.param`` sites to the conjugate posterior."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO

from probgen.data import load_digits
from probgen.inference import ELBO, fit
from probgen.models import VAE, GaussianMixtureModel, GumbelSoftmaxVAE, flower_mixture

pytestmark = pytest.mark.threads(2)


def _digits(split: str) -> torch.Tensor:
    x, _ = load_digits(split)
    return (x > 8).float()


def _svi_train(model, guide, x, steps, batch_size, lr, loss=None):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss or Trace_ELBO())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        svi.step(x[torch.randint(0, x.shape[0], (batch_size,), generator=g)])


def _unmoved(module, before):
    return [n for n, p in module.named_parameters() if torch.equal(p.detach(), before[n])]


def test_plain_svi_trains_every_vae_parameter_to_the_bound_fit_reaches():
    x, x_test = _digits("train"), _digits("test")
    vae = VAE((1, 8, 8), 4, hidden_features=[32])
    twin = copy.deepcopy(vae)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    bound = ELBO(vae, estimator="meanfield", num_particles=20).eval()
    with torch.no_grad():
        start = float(bound(x_test)["elbo"])

    _svi_train(vae.model, vae.guide, x, steps=150, batch_size=64, lr=1e-2)
    assert not _unmoved(vae, before), f"SVI did not train {_unmoved(vae, before)}"
    fit(ELBO(twin, estimator="trace"), x, steps=150, batch_size=64, lr=1e-2, progress=False)
    with torch.no_grad():
        svi_elbo = float(bound(x_test)["elbo"])
        fit_elbo = float(ELBO(twin, estimator="meanfield", num_particles=20).eval()(x_test)
                         ["elbo"])
    # the same estimator, optimizer and budget: the same bound up to batch-order noise
    assert svi_elbo > start + 15.0
    assert svi_elbo == pytest.approx(fit_elbo, abs=1.5)


@pytest.mark.parametrize("prior,posterior", [("vamp", "iaf"), ("maf", "planar")])
def test_plain_svi_reaches_flow_priors_posteriors_and_a_learned_scale(prior, posterior):
    vae = VAE((1, 8, 8), 2, hidden_features=[8], prior=prior, posterior=posterior,
              prior_components=3, prior_transforms=1, prior_hidden=[8],
              posterior_transforms=1, posterior_hidden=[8], context_features=3,
              likelihood="gaussian", scale="learned")
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    _svi_train(vae.model, vae.guide, torch.rand(64, 1, 8, 8), steps=3, batch_size=16, lr=1e-2)
    assert not _unmoved(vae, before)


def test_a_linear_vae_generates_its_gaussian_under_predictive():
    """With a linear decoder and Gaussian noise, x = W z + b + sigma eps with z ~ N(0, I):
    N(b, W W^T + diag(sigma^2)); Predictive(vae.model)(None, n) must draw from it."""
    vae = VAE((3,), 2, hidden_features=[], likelihood="gaussian", scale="learned").double()
    with torch.no_grad():
        vae.likelihood.log_scale.fill_(math.log(0.5))
    lin = vae.decoder.net[0]
    with torch.no_grad():
        mean = lin.bias.clone()
        cov = lin.weight @ lin.weight.T + 0.25 * torch.eye(3, dtype=torch.float64)
    draws = Predictive(vae.model, num_samples=4)(None, n=5000)
    assert draws["z"].shape == (4, 5000, 2) and draws["x"].shape == (4, 5000, 3)
    x = draws["x"].reshape(-1, 3)
    assert torch.allclose(x.mean(0), mean, atol=0.04)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)
    assert vae.model(None, n=7).shape == (7, 3)
    with pytest.raises(ValueError, match="n: expected a positive int"):
        vae.model(None, n=0)


def test_gumbel_softmax_vae_trains_under_svi_and_generates():
    vae = GumbelSoftmaxVAE((1, 8, 8), latents=3, categories=4, hidden_features=[16])
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    _svi_train(vae.model, vae.guide, _digits("test"), steps=3, batch_size=16, lr=1e-2)
    assert not _unmoved(vae, before)
    onehot = GumbelSoftmaxVAE((1, 8, 8), latents=3, categories=4, hidden_features=[16],
                              kl="categorical")
    draws = Predictive(onehot.model, num_samples=2)(None, n=3000)
    z = draws["z"]
    assert z.shape == (2, 3000, 3, 4) and draws["x"].shape == (2, 3000, 1, 8, 8)
    # discrete latents from the uniform prior: one-hot, every class with frequency 1/4
    assert torch.equal(z.sum(-1), torch.ones(2, 3000, 3))
    assert torch.allclose(z.mean((0, 1)), torch.full((3, 4), 0.25), atol=0.02)
    relaxed = Predictive(vae.model, num_samples=2)(None, n=5)["z"]
    assert torch.allclose(relaxed.sum(-1), torch.ones(2, 5, 3), atol=1e-5)


def test_gmm_trains_under_svi_with_enumeration_and_generates_its_mixture():
    gmm = GaussianMixtureModel(2, 3, hidden_features=[8])
    before = {n: p.detach().clone() for n, p in gmm.named_parameters()}
    _svi_train(gmm.model, gmm.guide, torch.randn(64, 2), steps=3, batch_size=16, lr=1e-2,
               loss=TraceEnum_ELBO(max_plate_nesting=1))
    assert not _unmoved(gmm, before)

    flower = flower_mixture(torch.float64)
    x = Predictive(flower.model, num_samples=1)(None, n=40000)["x"][0]
    w, mu, sigma = flower.weights, flower.loc, flower.covariance()
    with torch.no_grad():
        mean = (w[:, None] * mu).sum(0)
        second = (w[:, None, None] * (sigma + mu[:, :, None] * mu[:, None, :])).sum(0)
        cov = second - mean[:, None] * mean[None, :]
    assert torch.allclose(x.mean(0), mean, atol=0.08)
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.03, atol=0.15)


def test_fit_trains_plain_pyro_functions_with_pyro_param_to_the_conjugate_posterior():
    """z ~ N(0, 1), x_i | z ~ N(z, 1), nine x_i = 2: the posterior is N(1.8, 1/10)."""

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("q_loc", torch.tensor(0.0))
        scale = pyro.param("q_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))

    objective = ELBO(model, guide, num_particles=16)
    fit(objective, torch.full((9,), 2.0), steps=600, batch_size=9, lr=0.05,
        lr_schedule="cosine", progress=False)
    assert pyro.param("q_loc").item() == pytest.approx(1.8, abs=0.05)
    assert pyro.param("q_scale").item() == pytest.approx(math.sqrt(0.1), abs=0.03)
    # the trained values are the objective's parameters (checkpoints and EMA see them)
    assert len(list(objective.parameters())) == 2
    with pytest.raises(TypeError, match="model, guide: expected two Pyro functions"):
        ELBO(model, 3)
    with pytest.raises(ValueError, match="expected pyro.param sites to train"):
        ELBO(model, lambda x: pyro.sample("z", dist.Normal(0.0, 1.0))).setup(torch.ones(3))
