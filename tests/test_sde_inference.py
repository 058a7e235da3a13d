"""Score-SDE inference against mathematics: with Gaussian data and its analytic score, every
sampler reproduces the data Gaussian and the probability-flow likelihood is the exact one;
the continuous DSM loss has the closed-form gap of a wrong score under every weighting."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.data import ImagePreprocess
from probgen.inference.sde import (
    ContinuousScoreMatching,
    predictor_corrector_sample,
    probability_flow_bits_per_dim,
    probability_flow_log_prob,
    probability_flow_sample,
    reverse_sde_sample,
)
from probgen.sde import VESDE, VPSDE, SubVPSDE

DT = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=DT)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=DT)
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 20.0)}


def _score(sde):
    return lambda x, t: sde.gaussian_prediction(x, t, MEAN, COV)


def _check_gaussian(x: torch.Tensor, tol_mean: float = 0.05, tol_cov: float = 0.06) -> None:
    x = x.double()
    assert torch.isfinite(x).all()
    assert (x.mean(0) - MEAN).abs().max() < tol_mean, x.mean(0)
    assert (torch.cov(x.T) - COV).abs().max() < tol_cov, torch.cov(x.T)


@pytest.mark.parametrize("name,method", [("vp", "euler"), ("subvp", "euler"), ("ve", "euler"),
                                         ("vp", "heun"), ("ve", "reversible_heun"),
                                         ("vp", "srk"), ("ve", "milstein")])
def test_reverse_sde_reproduces_gaussian(name, method):
    sde = SDES[name]
    steps = 100 if method == "srk" else 200  # SRK: strong order 1.5, 3 drift calls a step
    out = reverse_sde_sample(sde, _score(sde), 3000, (2,), steps=steps, method=method,
                             generator=torch.Generator().manual_seed(1), dtype=DT)
    _check_gaussian(out.samples)
    assert out.nfe >= steps + 1
    if method == "euler":
        # Seeded: the same generator state gives the same samples.
        again = reverse_sde_sample(sde, _score(sde), 3000, (2,), steps=steps, method=method,
                                   generator=torch.Generator().manual_seed(1), dtype=DT)
        torch.testing.assert_close(again.samples, out.samples)


def test_reverse_sde_with_a_wrong_score_is_caught():
    sde = SDES["vp"]
    wrong = lambda x, t: sde.gaussian_prediction(x, t, MEAN, 2 * COV)  # noqa: E731
    out = reverse_sde_sample(sde, wrong, 4000, (2,), steps=200, dtype=DT)
    with pytest.raises(AssertionError):
        _check_gaussian(out.samples)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama"])
def test_predictor_corrector_reproduces_gaussian(name, predictor):
    sde = SDES[name]
    out = predictor_corrector_sample(sde, _score(sde), 4000, (2,), steps=200,
                                     predictor=predictor, snr=0.1,
                                     generator=torch.Generator().manual_seed(2), dtype=DT)
    _check_gaussian(out.samples)
    assert out.nfe == 2 * 200 + 1


def test_corrector_alone_is_annealed_langevin():
    sde = SDES["ve"]
    out = predictor_corrector_sample(sde, _score(sde), 4000, (2,), steps=200, predictor="none",
                                     corrector_steps=5, snr=0.16,
                                     generator=torch.Generator().manual_seed(3), dtype=DT)
    _check_gaussian(out.samples, 0.06, 0.08)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_probability_flow_sampling_reproduces_gaussian(name):
    sde = SDES[name]
    g = torch.Generator().manual_seed(4)
    out = probability_flow_sample(sde, _score(sde), 4000, (2,), generator=g, dtype=DT,
                                  rtol=1e-6, atol=1e-6)
    _check_gaussian(out.samples)
    assert out.nfe > 0
    fixed = probability_flow_sample(sde, _score(sde), 4000, (2,), method="rk4",
                                    step_size=0.01, generator=torch.Generator().manual_seed(4),
                                    dtype=DT)
    assert fixed.nfe == 4 * 100
    # Same prior draws: the ODE is deterministic, so both solvers agree pointwise.
    assert (fixed.samples - out.samples).abs().max() < 2e-3


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_probability_flow_log_prob_equals_exact_gaussian(name, trace):
    sde = SDES[name]
    eps = 1e-5
    x = MEAN + torch.randn(400, 2, dtype=DT) @ torch.linalg.cholesky(COV).T
    # The exact p_0 as the prior (the default N(0, prior_std^2) only approximates it).
    a0, s0 = sde.alpha_sigma(torch.tensor(0.0, dtype=DT))
    p0 = torch.distributions.MultivariateNormal(a0 * MEAN, a0**2 * COV + s0**2 * torch.eye(
        2, dtype=DT))
    lp, nfe = probability_flow_log_prob(sde, _score(sde), x, trace=trace, eps=eps, prior=p0,
                                        rtol=1e-8, atol=1e-8)
    a, s = sde.alpha_sigma(torch.tensor(1 - eps, dtype=DT))
    exact = torch.distributions.MultivariateNormal(a * MEAN, a**2 * COV + s**2 * torch.eye(
        2, dtype=DT)).log_prob(x)
    if trace == "exact":
        assert (lp - exact).abs().max() < 1e-4
    else:  # an unbiased estimate per point: the mean over points is close
        assert abs(float((lp - exact).mean())) < 0.05
    assert nfe > 0


def test_bits_per_dim_is_the_dequantized_gaussian_bound():
    # 2x2 "images" with 16 levels; the model in [-1, 1] model space is a Gaussian with the
    # analytic score, so the ODE's bits/dim equal those of the exact density at the same
    # dequantized points.
    sde = SDES["vp"]
    pre = ImagePreprocess(levels=16, transform="signed", shape=(1, 2, 2))
    mean4, cov4 = torch.zeros(4, dtype=DT), 0.3 * torch.eye(4, dtype=DT)

    def score(x, t):
        return sde.gaussian_prediction(x.reshape(-1, 4), t, mean4, cov4).reshape(x.shape)

    x_int = torch.randint(0, 16, (50, 1, 2, 2))
    bpd = probability_flow_bits_per_dim(sde, score, x_int, pre, trace="exact", eps=1e-5,
                                        rtol=1e-7, atol=1e-7,
                                        generator=torch.Generator().manual_seed(5))
    y, ladj = pre(x_int, generator=torch.Generator().manual_seed(5))
    a, s = sde.alpha_sigma(torch.tensor(1 - 1e-5, dtype=DT))
    lp = torch.distributions.MultivariateNormal(mean4, a**2 * cov4 + s**2 * torch.eye(
        4, dtype=DT)).log_prob(y.reshape(-1, 4).double())
    expected = pre.bits_per_dim(lp, ladj.double())
    assert (bpd - expected).abs().max() < 1e-3
    assert bpd.shape == (50,)


@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", False),
                                                  ("likelihood", True), ("none", False)])
def test_dsm_gap_of_a_shifted_score_is_closed_form(weighting, importance):
    # L(s* + c) - L(s*) = 1/2 E_t[lambda(t)] ||c||^2 (E[s* + eps/sigma | x_t] = 0), with the
    # same times and noise for both; lambda = sigma^2, g^2 or 1, t ~ U(eps, 1).
    sde = VPSDE()
    eps = 0.05 if weighting == "none" else 1e-5  # lambda = 1: variance ~ E[1/sigma^2]
    c = torch.tensor([0.3, -0.2], dtype=DT)
    exact = lambda x, t: sde.gaussian_prediction(x, t, MEAN, COV)  # noqa: E731
    x1 = MEAN + torch.randn(200000, 2, dtype=DT) @ torch.linalg.cholesky(COV).T
    losses = []
    for shift in (0.0, 1.0):
        torch.manual_seed(7)
        dsm = ContinuousScoreMatching(lambda x, t, k=shift: exact(x, t) + k * c, sde,
                                      weighting=weighting, eps=eps, importance=importance)
        losses.append(float(dsm(x1)["loss"]))
    s = torch.linspace(eps, 1, 200001, dtype=DT)
    lam = {"sigma2": sde.marginal_diffusion_time(s).sigma ** 2,
           "likelihood": sde.diffusion_coefficient(s) ** 2,
           "none": torch.ones_like(s)}[weighting]
    mean_lambda = float(torch.trapezoid(lam, s) / (1 - eps))
    expected = 0.5 * mean_lambda * float(c.pow(2).sum())
    assert abs((losses[1] - losses[0]) / expected - 1) < 0.05, (losses, expected)


def test_dsm_errors_and_labels():
    sde = VPSDE()
    with pytest.raises(ValueError, match="weighting"):
        ContinuousScoreMatching(lambda x, t: x, sde, weighting="sigma")
    with pytest.raises(ValueError, match="importance"):
        ContinuousScoreMatching(lambda x, t: x, sde, importance=True)
    with pytest.raises(TypeError, match="probgen.sde.SDE"):
        ContinuousScoreMatching(lambda x, t: x, "vp")
    with pytest.raises(ValueError, match="num_classes"):
        ContinuousScoreMatching(lambda x, t: x, sde, label_dropout=0.1)
    with pytest.raises(ValueError, match="shape of x"):
        ContinuousScoreMatching(lambda x, t: x[:, :1], sde)(torch.randn(4, 2))
    seen = {}

    def net(x, t, labels=None):
        seen["labels"] = labels
        return torch.zeros_like(x)

    dsm = ContinuousScoreMatching(net, sde, conditional=True, label_dropout=0.5, num_classes=3)
    dsm((torch.randn(2000, 2), torch.zeros(2000, dtype=torch.long)))
    share = float((seen["labels"] == 3).double().mean())
    assert abs(share - 0.5) < 0.05
    with pytest.raises(ValueError, match="method"):
        reverse_sde_sample(sde, net, 4, (2,), method="rk4")
    with pytest.raises(ValueError, match="predictor"):
        predictor_corrector_sample(sde, net, 4, (2,), predictor="ddim")
    with pytest.raises(ValueError, match="x_init"):
        reverse_sde_sample(sde, net)
    assert math.isfinite(float(ContinuousScoreMatching(net, sde)(torch.randn(8, 2))["loss"]))
