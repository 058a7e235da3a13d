"""Noise schedules against closed forms: the course's values, Bayes' posterior, conversions."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from probgen.diffusion import (
    NoiseSchedule,
    VEScore,
    discretized_gaussian_log_likelihood,
    gaussian_epsilon,
    make_schedule,
    normal_kl,
    spaced_timesteps,
    to_signed,
)


def test_course_cosine_values_t5():
    """T = 100 cosine schedule at index 5, x_0 = 1 (the course's numbers)."""
    sched = NoiseSchedule.cosine(100)
    x0, step = torch.ones(1, 1, dtype=torch.float64), torch.tensor([5])
    mean, var = sched.q_mean_variance(x0, step)
    assert float(mean) == pytest.approx(0.9944681, abs=5e-8)
    assert float(var) == pytest.approx(0.01103322, abs=5e-9)
    noise = torch.ones_like(x0)
    x_t = sched.q_sample(x0, step, noise)
    assert float(x_t) == pytest.approx(1.0995072, abs=5e-8)
    # x_t = noise = 1: the predicted x_0 and the posterior q(x_4 | x_5, x_0_hat)
    x_t = torch.ones_like(x0)
    x0_hat = sched.convert(noise, x_t, step, "eps", "x0")
    assert float(x0_hat) == pytest.approx(0.8999391, abs=2e-7)
    post_mean, post_var, _ = sched.q_posterior(x0_hat, x_t, step)
    assert float(post_mean) == pytest.approx(0.9723116, abs=5e-8)
    assert float(post_var) == pytest.approx(0.00222036, abs=5e-9)


def test_linear_and_cosine_shapes():
    lin = NoiseSchedule.linear(1000)
    assert lin.betas.dtype == torch.float64
    assert float(lin.betas[0]) == pytest.approx(1e-4) and float(lin.betas[-1]) == 0.02
    assert (lin.alphas_cumprod[1:] < lin.alphas_cumprod[:-1]).all()
    cos = NoiseSchedule.cosine(1000)
    assert float(cos.betas.max()) == pytest.approx(0.999)  # the cap binds at the end
    u = torch.arange(1, 1001, dtype=torch.float64) / 1000
    f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    # before the cap, alpha_bar follows f(u)/f(0) exactly
    assert torch.allclose(cos.alphas_cumprod[:-1], (f / f0)[:-1], rtol=1e-12, atol=1e-15)
    user = make_schedule(betas=[0.1, 0.2, 0.3], num_steps=3)
    assert torch.allclose(user.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504],
                                                            dtype=torch.float64))


def test_posterior_is_bayes_rule():
    """q(x_{s-1} | x_s, x_0) from q(x_{s-1} | x_0) q(x_s | x_{s-1}) by completing the square."""
    sched = NoiseSchedule.linear(50, 1e-3, 0.2)
    x0 = torch.randn(6, 3, dtype=torch.float64)
    x_t = torch.randn(6, 3, dtype=torch.float64)
    step = torch.tensor([0, 1, 5, 20, 48, 49])
    mean, var, logvar = sched.q_posterior(x0, x_t, step)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), sched.alphas_cumprod[:-1]])[step]
    beta = sched.betas[step]
    for i, s in enumerate(step.tolist()):
        if s == 0:  # x_{-1} is the data itself: a point mass
            assert float(var[i]) == 0.0 and torch.allclose(mean[i], x0[i])
            continue
        prec = 1 / (1 - ab_prev[i]) + (1 - beta[i]) / beta[i]
        m = (ab_prev[i].sqrt() * x0[i] / (1 - ab_prev[i])
             + (1 - beta[i]).sqrt() * x_t[i] / beta[i]) / prec
        assert torch.allclose(mean[i], m) and float(var[i]) == pytest.approx(float(1 / prec))
        assert float(logvar[i]) == pytest.approx(math.log(float(1 / prec)))
    assert float(logvar[0]) == pytest.approx(float(sched.posterior_variance[1].log()))


def test_conversions_round_trip_and_score_is_autograd():
    sched = NoiseSchedule.cosine(100)
    mu, cov = torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    eps_fn = gaussian_epsilon(sched, mu, cov)
    step = torch.tensor([0, 10, 50, 99])
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    ab = sched.alphas_cumprod[step][:, None, None]
    c = ab * cov.double() + (1 - ab) * torch.eye(2, dtype=torch.float64)
    d = x - ab[:, :, 0].sqrt() * mu.double()
    logq = -0.5 * (d[:, None, :] @ torch.linalg.solve(c, d[..., None]))[:, 0, 0]
    score, = torch.autograd.grad(logq.sum(), x)
    eps = eps_fn(x, step)
    assert torch.allclose(sched.convert(eps, x, step, "eps", "score"), score, atol=1e-10)
    for p in ("x0", "v", "score"):
        there = sched.convert(eps, x, step, "eps", p)
        assert torch.allclose(sched.convert(there, x, step, p, "eps"), eps, atol=1e-9)
    # v = sqrt(ab) eps - sqrt(1 - ab) x0
    x0 = sched.convert(eps, x, step, "eps", "x0")
    a = ab[:, :, 0]
    assert torch.allclose(sched.convert(eps, x, step, "eps", "v"),
                          a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-12)


def test_respace_keeps_marginals():
    sched = NoiseSchedule.linear(1000)
    full = sched.respace(range(1000))
    assert torch.allclose(full.betas, sched.betas, rtol=1e-10)
    tau = spaced_timesteps(1000, 50)
    assert tau[0] == 0 and tau[-1] == 999 and tau.numel() == 50
    sub = sched.respace(tau)
    assert torch.allclose(sub.alphas_cumprod, sched.alphas_cumprod[tau], rtol=1e-12)
    assert torch.equal(sub.timesteps, tau)
    # respacing a respaced schedule maps back to the original indices
    assert torch.equal(sub.respace([0, 49]).timesteps, torch.tensor([0, 999]))
    assert spaced_timesteps(1000, 10, "leading").tolist()[:3] == [0, 100, 200]
    assert spaced_timesteps(1000, 10, "trailing").tolist()[-1] == 999


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50, 100, 317, 999, 1000])
def test_quadratic_spacing_is_distinct_and_spans_the_chain(steps):
    tau = spaced_timesteps(1000, steps, "quadratic")
    assert tau.numel() == steps and tau[-1] == 999
    assert bool((tau.diff() > 0).all())
    if steps > 1:
        assert tau[0] == 0
    if steps == 1000:
        assert torch.equal(tau, torch.arange(1000))
    if steps == 10:
        # round(999 (k/9)^2), k = 0..9: already distinct
        expected = [round(999 * (k / 9) ** 2) for k in range(10)]
        assert tau.tolist() == expected
    # packed towards low noise: the first gap is never wider than the last
    if steps > 2:
        gaps = tau.diff()
        assert gaps[0] <= gaps[-1]


def test_unknown_spacing_names_the_choices():
    with pytest.raises(ValueError, match="quadratic"):
        spaced_timesteps(1000, 10, "cubic")


def test_discretized_gaussian_sums_to_one_and_matches_cdf():
    levels = 17
    grid = to_signed(torch.arange(levels, dtype=torch.float64), levels)
    mean = torch.tensor([[-1.2], [0.03], [0.9]], dtype=torch.float64)
    log_scale = torch.tensor([[-3.0], [-1.0], [0.5]], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(grid.expand(3, -1), mean, log_scale, levels)
    assert torch.allclose(logp.exp().sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    half = 1 / (levels - 1)
    m, s = float(mean[1]), math.exp(float(log_scale[1]))
    k = 5
    ref = stats.norm.cdf(grid[k] + half, m, s) - stats.norm.cdf(grid[k] - half, m, s)
    assert float(logp[1, k]) == pytest.approx(math.log(ref), rel=1e-10)
    # far tails stay finite and accurate (no clamp): bin 8 sigma from the mean
    far = discretized_gaussian_log_likelihood(torch.tensor([0.5], dtype=torch.float64),
                                              torch.tensor([0.0], dtype=torch.float64),
                                              torch.tensor([math.log(0.05)],
                                                           dtype=torch.float64), 256)
    ref = stats.norm.logsf((0.5 - 1 / 255) / 0.05) + math.log1p(
        -math.exp(stats.norm.logsf((0.5 + 1 / 255) / 0.05)
                  - stats.norm.logsf((0.5 - 1 / 255) / 0.05)))
    assert float(far) == pytest.approx(ref, rel=1e-8)
    with pytest.raises(ValueError, match="integer pixels in 0..16"):
        to_signed(torch.tensor([0.5]), levels)


def test_normal_kl_matches_torch():
    m1, m2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    v1, v2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * v1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * v2).exp()))
    assert torch.allclose(normal_kl(m1, v1, m2, v2), ref)


def test_ve_score_is_the_exact_perturbed_score():
    """eps -> score(y, sigma) of y = data + N(0, sigma^2): -(Sigma + sigma^2 I)^{-1}(y - mu),
    at the schedule's own levels and between them."""
    sched = NoiseSchedule.linear(200, 1e-3, 0.05)
    mu, cov = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.4]])
    score = VEScore(gaussian_epsilon(sched, mu, cov), sched)
    ladder = score.sigmas()
    assert (ladder[1:] < ladder[:-1]).all()
    sig = torch.tensor([float(ladder[-1]), 0.37, 1.3, float(ladder[0])], dtype=torch.float64)
    y = torch.randn(4, 2, dtype=torch.float64)
    got = score(y, sig)
    c = cov.double() + sig[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
    ref = -torch.linalg.solve(c, (y - mu.double())[..., None])[..., 0]
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-8)
    # integer steps: the interpolation is exact there
    steps = torch.arange(200)
    assert torch.allclose(sched.alphas_cumprod_at(steps), sched.alphas_cumprod, rtol=1e-12)
    assert torch.allclose(sched.step_from_sigma_ve(sched.sigma_ve(steps.double())),
                          steps.double(), atol=1e-8)


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"betas: expected values in \(0, 1\]"):
        NoiseSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="schedule: expected one of"):
        make_schedule("quadratic", 10)
    sched = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match=r"step: expected indices in 0..9"):
        sched.q_sample(torch.zeros(2, 3), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="strictly increasing"):
        sched.respace([3, 3, 5])
    with pytest.raises(ValueError, match="target: expected one of"):
        sched.convert(torch.zeros(1, 2), torch.zeros(1, 2), 0, "eps", "noise")

