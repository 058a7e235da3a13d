"""Score SDEs against mathematics: simulated marginals (torchsde, many paths) vs the closed
forms, the moment ODE of a linear SDE through autograd, DDPM/NCSN as discretizations."""

from __future__ import annotations

import math

import pytest
import torch
import torchsde

from probgen.cnf import ContinuousFlow
from probgen.score import geometric_sigmas
from probgen.sde import (
    SDES,
    VESDE,
    VPSDE,
    ProbabilityFlow,
    ReverseSDE,
    SubVPSDE,
    get_sde,
    to_diffusion_time,
    to_probgen_time,
)

DT = torch.float64
ALL = [VPSDE(), SubVPSDE(), VESDE(0.01, 10.0)]
IDS = ["vp", "subvp", "ve"]


@pytest.mark.parametrize("sde", ALL, ids=IDS)
@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_simulated_marginals_match_closed_form(sde, method):
    # Many paths from one start x0 = 2: x_s ~ N(alpha x0, sigma^2) in diffusion time s.
    n = 8000
    x0 = torch.full((n, 2), 2.0)
    ss = torch.tensor([0.0, 0.2, 0.5, 1.0])  # (Euler under-spreads sub-VP near s = 0)
    ys = torchsde.sdeint(sde, x0, ss, method=method, dt=2e-3)  # (len(ss), n, 2)
    m = sde.schedule(to_probgen_time(ss))
    mean, std = ys.mean(1), ys.std(1)
    for k in range(1, len(ss)):
        se = float(m.sigma[k]) / math.sqrt(n)
        assert (mean[k] - 2.0 * m.alpha[k]).abs().max() < 4.5 * se + 2e-3, (k, mean[k])
        assert (std[k] / m.sigma[k] - 1).abs().max() < 0.04, (k, std[k], m.sigma[k])


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_marginal_solves_moment_equations(sde):
    # A linear SDE dx = -b/2 x ds + g dW started at a point has d alpha/ds = -b alpha / 2
    # and d sigma^2/ds = -b sigma^2 + g^2 (the Fokker-Planck moments); derivatives by autograd.
    s = torch.linspace(0.02, 1.0, 40, dtype=DT).requires_grad_()
    m = sde.schedule(to_probgen_time(s))
    kw = {"retain_graph": True, "allow_unused": True, "materialize_grads": True}
    # VE: alpha = 1 is a constant without a graph.
    da = torch.autograd.grad(m.alpha.sum(), s, **kw)[0] if m.alpha.requires_grad else 0 * s
    (dvar,) = torch.autograd.grad((m.sigma**2).sum(), s, **kw)
    (dsig,) = torch.autograd.grad(m.sigma.sum(), s, **kw)
    b, g = sde.drift_coefficient(s), sde.diffusion_coefficient(s)
    torch.testing.assert_close(da, -0.5 * b * m.alpha, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dvar, -b * m.sigma**2 + g**2, rtol=1e-9, atol=1e-9)
    # The closed-form derivatives are in probgen time: d/dt = -d/ds.
    torch.testing.assert_close(m.d_alpha, -da, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(m.d_sigma, -dsig, rtol=1e-9, atol=1e-9)


def test_endpoints_and_time_conversion():
    vp, ve, sub = VPSDE(), VESDE(0.01, 50.0), SubVPSDE()
    for sde in (vp, ve, sub):
        a1, s1 = sde.alpha_sigma(1.0)  # data
        assert float(a1) == 1.0 and float(s1) == 0.0
    a0, s0 = vp.alpha_sigma(0.0)
    assert math.isclose(float(a0), math.exp(-0.25 * 19.9 - 0.05), rel_tol=1e-6)
    assert math.isclose(float(a0**2 + s0**2), 1.0, rel_tol=1e-6)
    _, s0 = ve.alpha_sigma(torch.tensor(0.0, dtype=DT))
    assert math.isclose(float(s0), math.sqrt(50.0**2 - 0.01**2), rel_tol=1e-9)
    a, s = sub.alpha_sigma(torch.tensor(0.4, dtype=DT))
    _, s_vp = vp.alpha_sigma(torch.tensor(0.4, dtype=DT))
    assert float(s) < float(s_vp) and math.isclose(float(s), 1 - float(a) ** 2, rel_tol=1e-12)
    assert to_diffusion_time(0.25) == 0.75 and to_probgen_time(0.75) == 0.25
    assert vp.prior((1, 4, 4)).event_shape == (1, 4, 4)
    assert float(ve.prior((2,)).stddev[0]) == 50.0


def test_vp_discretizes_ddpm():
    betas = VPSDE().discrete_betas(1000)
    assert math.isclose(float(betas[0]), 1e-4, rel_tol=1e-12)
    assert math.isclose(float(betas[-1]), 0.02, rel_tol=1e-12)
    # prod_{j<=i}(1 - beta_j) -> alpha(s = i/N)^2 as N grows (DDPM's continuum limit), the
    # gap in log shrinking like 1/N (log(1 - beta) = -beta + O(beta^2), beta = O(1/N)).

    def gap(n: int) -> float:
        log_bar = torch.cumsum(torch.log1p(-VPSDE().discrete_betas(n)), 0)
        alpha, _ = VPSDE().alpha_sigma(to_probgen_time(torch.arange(1, n + 1, dtype=DT) / n))
        return float((log_bar - 2 * alpha.log()).abs().max() / (2 * alpha.log()).abs().max())

    assert gap(1000) < 0.01 and gap(10000) < gap(1000) / 8


def test_ve_discretizes_ncsn():
    sde = VESDE(0.01, 1.0)
    torch.testing.assert_close(sde.discrete_sigmas(10).float(), geometric_sigmas(1.0, 0.01, 10))


def test_noise_score_conversion_round_trip():
    sde = VPSDE()
    t = torch.rand(5)
    eps = torch.randn(5, 3)
    x = torch.randn(5, 3)
    score = sde.convert(eps, x, t, source="eps", target="score")
    _, sigma = sde.alpha_sigma(t)
    torch.testing.assert_close(score, -eps / sigma[:, None])  # s = -eps / sigma_t
    torch.testing.assert_close(sde.convert(score, x, t, source="score", target="eps"), eps)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_gaussian_score_is_gradient_of_marginal_log_density(sde):
    mean, cov = torch.tensor([1.0, -0.5], dtype=DT), torch.tensor([[1.0, 0.3], [0.3, 0.5]],
                                                                  dtype=DT)
    x = torch.randn(6, 2, dtype=DT, requires_grad=True)
    t = torch.rand(6, dtype=DT) * 0.9 + 0.05
    alpha, sigma = sde.alpha_sigma(t)
    lp = sum(torch.distributions.MultivariateNormal(
        alpha[i] * mean, alpha[i] ** 2 * cov + sigma[i] ** 2 * torch.eye(2, dtype=DT)
    ).log_prob(x[i]) for i in range(6))
    (grad,) = torch.autograd.grad(lp, x)
    torch.testing.assert_close(sde.gaussian_prediction(x.detach(), t, mean, cov), grad)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_probability_flow_log_prob_is_exact_for_gaussian_data(sde):
    # Data N(mu, Sigma) with the analytic score: the flow's log-density at t = 1 - eps is the
    # Gaussian marginal's, within solver tolerance (the prior is exact up to alpha_0 mu).
    mean, cov = torch.tensor([0.5, -0.3], dtype=DT), torch.tensor([[0.6, 0.2], [0.2, 0.4]],
                                                                  dtype=DT)
    t1 = 1.0 - 1e-3
    field = sde.probability_flow(lambda x, t: sde.gaussian_prediction(x, t, mean, cov))
    flow = ContinuousFlow(field, sde.prior((2,), dtype=DT), t1=t1, rtol=1e-8, atol=1e-8)
    x = torch.randn(8, 2, dtype=DT) * 0.7 + mean
    a, s = sde.alpha_sigma(torch.tensor(t1, dtype=DT))
    exact = torch.distributions.MultivariateNormal(a * mean, a**2 * cov + s**2 * torch.eye(
        2, dtype=DT)).log_prob(x)
    # Error budget: the prior N(0, prior_std^2) stands for p_0 = N(alpha_0 mu, ...).
    a0, s0 = sde.alpha_sigma(torch.tensor(0.0, dtype=DT))
    p0 = torch.distributions.MultivariateNormal(a0 * mean, a0**2 * cov + s0**2 * torch.eye(
        2, dtype=DT))
    z = flow.flow(x, reverse=True)
    prior_gap = (flow.base.log_prob(z) - p0.log_prob(z)).abs().max()
    with torch.no_grad():
        lp = flow.log_prob(x)
    assert (lp - exact).abs().max() < 1e-5 + prior_gap, (lp - exact, prior_gap)
    assert field.nfe > 0


def test_reverse_sde_object_and_errors():
    sde = VPSDE()
    rev = sde.reverse(lambda x, t: -x, event_shape=(1, 2, 2))
    assert isinstance(rev, ReverseSDE) and rev.noise_type == "diagonal"
    assert rev.as_type("stratonovich").sde_type == "stratonovich"
    y = torch.randn(3, 4)
    assert rev.f(torch.tensor(0.3), y).shape == (3, 4) and rev.g(torch.tensor(0.3), y).shape == (
        3, 4)
    # N(0, I) data: p_t = N(0, I) for VP, so the reverse drift is -f + g^2 s = -beta/2 y.
    s = torch.tensor(0.7)
    torch.testing.assert_close(rev.f(torch.tensor(0.3), y), -0.5 * sde.beta(s) * y)
    assert isinstance(sde.probability_flow(lambda x, t: x), ProbabilityFlow)
    with pytest.raises(ValueError, match="shape of x"):
        sde.reverse(lambda x, t: x[:, :1]).f(torch.tensor(0.5), y)
    with pytest.raises(ValueError, match="one time per example"):
        sde.probability_flow(lambda x, t: x)(y, torch.rand(2))
    with pytest.raises(TypeError, match="callable"):
        sde.reverse(3)
    with pytest.raises(ValueError, match="sde_type"):
        rev.as_type("ito2")
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="expected one of"):
        get_sde("vpp")
    with pytest.raises(ValueError, match="sigma_min"):
        get_sde("ve", beta_min=0.1)
    assert sorted(SDES) == ["subvp", "ve", "vp"]
    assert "beta_max=20" in repr(sde)
