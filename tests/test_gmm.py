"""Gaussian mixtures against closed forms: the flower mixture's parameters, densities that
integrate to 1 and match scipy, EM's monotone log-likelihood and parameter recovery, the
exact enumerated ELBO below the exact log-likelihood in variational EM."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from scipy.stats import multivariate_normal

from probgen.inference import ExactEM, MaximumLikelihood, VariationalEM, fit
from probgen.inference.registry import OBJECTIVES
from probgen.metrics import integrate_density_2d
from probgen.models import MODELS, GaussianMixtureModel, flower_mixture


def _separated():
    """Three far-apart components with unequal weights and correlated covariances."""
    truth = GaussianMixtureModel(2, 3).double()
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    loc = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 12.0]], dtype=torch.float64)
    cov = torch.tensor([[[2.0, 0.8], [0.8, 1.0]], [[1.0, -0.3], [-0.3, 0.5]],
                        [[0.7, 0.0], [0.0, 1.5]]], dtype=torch.float64)
    truth.set_parameters(weights, loc, cov)
    return truth, weights, loc, cov


def _poor_start(gmm, x):
    """k-means++ seeds as means, but the whole data's covariance for every component."""
    gmm.initialize(x, generator=torch.Generator().manual_seed(0), kmeans_iterations=0)
    cov = torch.cov(x.T.double()).to(x.dtype).expand(gmm.components, 2, 2)
    gmm.set_parameters(torch.full((gmm.components,), 1 / gmm.components, dtype=x.dtype),
                       gmm.loc.detach(), cov)


def test_flower_mixture_is_the_courses():
    gmm = flower_mixture(torch.float64)
    assert torch.allclose(gmm.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    assert torch.allclose(gmm.loc[0], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(gmm.covariance()[0], torch.eye(2, dtype=torch.float64))
    for k in range(1, 8):
        angle = 2 * math.pi * (k - 1) / 7
        radial = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        assert torch.allclose(gmm.loc[k], 6 * radial)
        cov = gmm.covariance()[k].detach()
        across = torch.tensor([-radial[1], radial[0]])
        assert float(radial @ cov @ radial) == pytest.approx(3.0)
        assert float(across @ cov @ across) == pytest.approx(1.0)
        assert float(radial @ cov @ across) == pytest.approx(0.0, abs=1e-12)


def test_density_matches_scipy_and_integrates_to_one():
    gmm = flower_mixture(torch.float64)
    x = gmm.sample((50,))
    ref = sum(w * multivariate_normal(m, c).pdf(x.numpy()) for w, m, c in zip(
        gmm.weights.detach().numpy(), gmm.loc.detach().numpy(),
        gmm.covariance().detach().numpy(), strict=True))
    assert np.allclose(gmm.log_prob(x).detach().numpy(), np.log(ref), atol=1e-10)
    with torch.no_grad():
        total = integrate_density_2d(gmm.log_prob, bounds=(-14, 14), resolution=400)
    assert total == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(gmm.responsibilities(x).sum(-1), torch.ones(50, dtype=torch.float64))


def test_exact_em_never_lowers_the_likelihood_and_recovers_separated_parameters():
    truth, weights, loc, cov = _separated()
    torch.manual_seed(1)
    x = truth.sample((6000,))
    gmm = GaussianMixtureModel(2, 3).double()
    gmm.initialize(x, generator=torch.Generator().manual_seed(0))
    history = gmm.fit_em(x, iterations=200, tol=1e-10)
    steps = np.diff(history)
    assert (steps >= -1e-9).all(), steps.min()
    order = torch.cdist(loc, gmm.loc.detach()).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert torch.allclose(gmm.weights.detach()[order], weights, atol=0.02)
    assert torch.allclose(gmm.loc.detach()[order], loc, atol=0.1)
    assert torch.allclose(gmm.covariance().detach()[order], cov, atol=0.12)
    # the EM fixed point is a stationary point of the log-likelihood
    ll = gmm.log_prob(x).mean()
    grads = torch.autograd.grad(ll, [gmm.logits, gmm.loc, gmm.log_diag, gmm.lower])
    assert max(float(g.abs().max()) for g in grads) < 1e-4


def test_exact_em_objective_in_the_trainer_is_monotone_from_a_poor_start():
    torch.manual_seed(0)
    flower = flower_mixture()
    x = flower.sample((3000,))
    gmm = GaussianMixtureModel(2, 8)  # means on the unit circle, identity covariances
    gmm.set_parameters(torch.full((8,), 1 / 8), gmm.loc.detach(), torch.eye(2).expand(8, 2, 2))
    history = fit(ExactEM(gmm), x, steps=40, batch_size=3000, log_every=1, progress=False)
    ll = [r["log_likelihood"] for r in history.records if "log_likelihood" in r]
    assert len(ll) == 40 and ll[-1] > ll[0] + 0.5
    assert (np.diff(ll) >= -1e-5).all(), np.diff(ll).min()
    # a fresh model is initialized from the first batch (k-means) and reaches the truth
    fresh = GaussianMixtureModel(2, 8)
    history = fit(ExactEM(fresh), x, steps=10, batch_size=3000, log_every=1, progress=False)
    assert bool(fresh.initialized)
    with torch.no_grad():
        assert fresh.log_prob(x).mean().item() > flower.log_prob(x).mean().item() - 0.02


def test_enumerated_elbo_is_the_closed_form_and_below_the_log_likelihood():
    gmm = GaussianMixtureModel(2, 4).double()
    torch.manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float64) * 3
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(gmm.model, gmm.guide, x)
    log_q = gmm.encoder(x).log_softmax(-1)
    elbo = (log_q.exp() * (gmm.joint_log_prob(x) - log_q)).sum()
    assert -loss.item() == pytest.approx(elbo.item(), rel=1e-5)
    assert elbo.item() <= gmm.log_prob(x).sum().item()


@pytest.mark.parametrize("schedule", ["alternating", "joint"])
def test_variational_em_elbo_stays_below_the_exact_log_likelihood(schedule):
    torch.manual_seed(0)
    x = flower_mixture().sample((2000,))
    gmm = GaussianMixtureModel(2, 8, hidden_features=[32])
    _poor_start(gmm, x)
    objective = VariationalEM(gmm, schedule=schedule, e_steps=2)
    history = fit(objective, x, steps=250, batch_size=500, lr=1e-2, log_every=1,
                  progress=False)
    records = [r for r in history.records if "gap" in r]
    gaps = np.array([r["gap"] for r in records])
    # the ELBO is exact (enumerated), so no Monte Carlo slack is needed
    assert (gaps >= -1e-5).all(), gaps.min()
    lls = [r["log_likelihood"] for r in records]
    assert np.mean(lls[-20:]) > np.mean(lls[:20]) + 0.05
    assert np.mean(gaps[-20:]) < 0.5 * np.mean(gaps[:20])
    with torch.no_grad():  # held-out evaluation runs without gradients
        out = objective.eval()(x)
    assert float(out["gap"]) >= -1e-5 and float(out["nll"]) == pytest.approx(
        -gmm.log_prob(x).mean().item(), rel=1e-5)


def test_gradient_maximum_likelihood_climbs():
    truth, *_ = _separated()
    torch.manual_seed(2)
    x = truth.sample((3000,)).float()
    gmm = GaussianMixtureModel(2, 3)
    _poor_start(gmm, x)
    before = gmm.log_prob(x).mean().item()
    fit(MaximumLikelihood(gmm), x, steps=300, batch_size=500, lr=0.05, progress=False)
    after = float(gmm.log_prob(x).mean().detach())
    with torch.no_grad():
        best = float(truth.log_prob(x.double()).mean())
    assert after > before + 1.0
    assert after == pytest.approx(best, abs=0.1)


def test_registered_and_errors():
    assert {"em", "vem"} <= set(OBJECTIVES)
    assert MODELS["GaussianMixtureModel"] is GaussianMixtureModel
    with pytest.raises(ValueError, match="covariance: expected one of"):
        GaussianMixtureModel(2, 3, covariance="spherical")
    with pytest.raises(ValueError, match="components: expected a positive int"):
        GaussianMixtureModel(2, 0)
    gmm = GaussianMixtureModel(2, 3)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 2\)"):
        gmm.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="need at least 3 points"):
        gmm.initialize(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"loc: expected shape \(3, 2\)"):
        gmm.set_parameters(torch.ones(3) / 3, torch.zeros(2, 2), torch.eye(2).expand(3, 2, 2))
    with pytest.raises(TypeError, match="e_step, m_step and log_prob"):
        ExactEM(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="schedule: expected one of"):
        VariationalEM(gmm, schedule="random")
    assert len(pyro.get_param_store()) == 0
