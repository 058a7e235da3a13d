"""Latent-variable helpers against closed forms: the course's Gaussian KL/NLL values, KL per
dimension, active units, importance sampling on a conjugate Normal-Normal model."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from probgen.latent import (
    active_units,
    evidence_lower_bound,
    gaussian_kl,
    gaussian_nll,
    importance_log_likelihood,
    kl_per_dimension,
    log_importance_weights,
)

pytestmark = pytest.mark.threads(2)


def test_course_reference_values():
    # N(m, e^s): s is the log standard deviation (see probgen.latent's docstring).
    t = torch.tensor
    assert float(gaussian_kl(t(2.0), t(3.0))) == pytest.approx(200.2144, abs=1e-4)
    assert float(gaussian_kl(t(2.0), t(3.0), t(4.0), t(5.0))) == pytest.approx(1.50925,
                                                                              abs=1e-5)
    assert float(gaussian_nll(t(2.0), t(2.0), t(3.0))) == pytest.approx(3.9189, abs=1e-4)
    # the other readings of "e^3" give other numbers
    var_reading = 0.5 * (math.exp(3) + 4 - 1 - 3)
    assert abs(var_reading - 200.2144) > 1


def test_gaussian_kl_is_zero_on_equal_arguments_and_broadcasts():
    m, s = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(gaussian_kl(m, s, m, s), torch.zeros(4, 3), atol=1e-6)
    assert gaussian_kl(m, s).shape == (4, 3)


def test_kl_per_dimension_and_active_units():
    loc = torch.stack([torch.linspace(-2, 2, 101), torch.zeros(101)], -1)
    q = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
    kl = kl_per_dimension(q)
    assert kl[0] == pytest.approx(float((loc[:, 0] ** 2 / 2).mean()), rel=1e-5)
    assert kl[1] == pytest.approx(0.0, abs=1e-7)
    count, var = active_units(loc)
    assert count == 1 and var[1] == 0
    with pytest.raises(TypeError, match="diagonal"):
        kl_per_dimension(dist.Gamma(torch.ones(2), 1.0))
    with pytest.raises(ValueError, match="shape"):
        active_units(torch.zeros(5))


def _normal_normal(prior_scale=2.0, noise=0.5):
    """z ~ N(0, s^2), x | z ~ N(z, n^2) per example: p(x) = N(0, s^2 + n^2) exactly."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, prior_scale))
            pyro.sample("x", dist.Normal(z, noise), obs=x)

    def guide(x, shift=0.7, scale=1.3):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(0.8 * x + shift, scale))

    exact = dist.Normal(0.0, math.sqrt(prior_scale**2 + noise**2))
    return model, guide, exact


def test_importance_sampling_rises_to_the_exact_evidence():
    model, guide, exact = _normal_normal()
    x = torch.linspace(-3, 3, 50, dtype=torch.float64)
    log_px = exact.log_prob(x)
    elbo = evidence_lower_bound(model, guide, x, num_samples=2000)
    assert (elbo < log_px).all()
    bounds = [importance_log_likelihood(model, guide, x, num_samples=k, chunk_size=64).mean()
              for k in (1, 10, 100, 5000)]
    assert bounds[0] < bounds[1] < bounds[2] < bounds[3]
    # k = 5000: the bound reaches log p(x) up to its Monte Carlo error (a few 1e-3 nats)
    assert abs(float(bounds[3] - log_px.mean())) < 0.01
    assert bounds[2] < log_px.mean()
    assert float(log_px.mean() - bounds[3]) < 0.01 * float(log_px.mean() - elbo.mean())
    # the exact posterior as guide makes every weight equal p(x)
    post_var = 1 / (1 / 4 + 1 / 0.25)

    def exact_guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(post_var * x / 0.25, math.sqrt(post_var)))

    lw = log_importance_weights(model, exact_guide, x, 7)
    assert lw.shape == (7, 50)
    assert torch.allclose(lw, log_px.expand(7, 50), atol=1e-9)


def test_chunking_does_not_change_the_estimate():
    model, guide, exact = _normal_normal()
    x = torch.randn(5, dtype=torch.float64)
    torch.manual_seed(3)
    a = importance_log_likelihood(model, guide, x, num_samples=300, chunk_size=300)
    torch.manual_seed(3)
    b = importance_log_likelihood(model, guide, x, num_samples=300, chunk_size=300)
    assert torch.equal(a, b)
    # 3000 particles in chunks of 7 or in one pass: both at log p(x) up to MC error
    for chunk in (7, 3000):
        c = importance_log_likelihood(model, guide, x, num_samples=3000, chunk_size=chunk)
        assert torch.allclose(c, exact.log_prob(x), atol=0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        importance_log_likelihood(model, guide, x, num_samples=3, chunk_size=0)


def test_estimators_draw_from_a_given_generator_and_leave_the_global_rng_alone():
    model, guide, exact = _normal_normal()
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    state = torch.get_rng_state()
    runs = [importance_log_likelihood(model, guide, x, num_samples=3000, chunk_size=500,
                                      generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    elbos = [evidence_lower_bound(model, guide, x, num_samples=20,
                                  generator=torch.Generator().manual_seed(6))
             for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream did not move
    assert torch.equal(runs[0], runs[1]) and torch.equal(elbos[0], elbos[1])
    assert torch.allclose(runs[0], exact.log_prob(x), atol=0.1)  # still the estimator
    g = torch.Generator().manual_seed(5)
    first = importance_log_likelihood(model, guide, x, num_samples=200, generator=g)
    second = importance_log_likelihood(model, guide, x, num_samples=200, generator=g)
    assert not torch.equal(first, second)  # one generator advances between calls
