"""Langevin samplers against closed forms: Gaussian stationary laws (ULA's bias, MALA's none),
and annealed vs plain Langevin on the 0.95/0.05 two-mode mixture."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.inference.langevin import (
    ScoreSampler,
    annealed_langevin,
    langevin,
    mala,
    score_from_log_prob,
)
from probgen.score import (
    GaussianMixture,
    annealed_variance_ratio,
    choose_sigmas,
    geometric_sigmas,
    two_modes,
)

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
PREC = torch.linalg.inv(COV)


def gauss_score(x):
    return -(x - MU) @ PREC


def gauss_log_prob(x):
    d = x - MU
    return -0.5 * ((d @ PREC) * d).sum(-1)


def moments(x):
    mean = x.mean(0)
    d = x - mean
    return mean, d.T @ d / (x.shape[0] - 1)


def test_ula_matches_its_known_step_size_bias_1d():
    # N(0, s^2): ULA's stationary variance is s^2 / (1 - eta / (4 s^2)) (here 4/3 s^2).
    s, eta = 1.5, 1.5**2
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(40000, 1, dtype=torch.float64)
    out = langevin(x0, score=lambda x: -x / s**2, steps=60, eta=eta, generator=g)
    var = out.samples.var().item()
    biased = s**2 / (1 - eta / (4 * s**2))
    assert var == pytest.approx(biased, rel=0.03)
    assert abs(var - s**2) > 0.25 * s**2  # the bias is real, not within the tolerance
    assert abs(out.samples.mean().item()) < 0.03


def test_ula_matches_its_known_bias_in_2d_and_accepts_a_log_prob():
    # For N(mu, Sigma): stationary covariance Sigma (I - eta/4 Sigma^-1)^-1.
    eta = 0.5
    g = torch.Generator().manual_seed(1)
    x0 = MU.expand(40000, 2).clone()
    out = langevin(x0, log_prob=gauss_log_prob, steps=80, eta=eta, generator=g)
    mean, cov = moments(out.samples)
    expected = COV @ torch.linalg.inv(torch.eye(2, dtype=torch.float64) - eta / 4 * PREC)
    assert torch.allclose(mean, MU, atol=0.03)
    assert torch.allclose(cov, expected, rtol=0.04, atol=0.03)
    assert not torch.allclose(cov, COV, rtol=0.04, atol=0.03)


@pytest.mark.parametrize("given", ["log_prob", "score"])
def test_mala_reproduces_the_gaussian_exactly(given):
    eta = 0.5  # ULA at this step is visibly biased (previous test); MALA is not
    g = torch.Generator().manual_seed(2)
    x0 = MU + torch.randn(20000, 2, dtype=torch.float64, generator=g)
    kwargs = {"log_prob": gauss_log_prob} if given == "log_prob" else {"score": gauss_score}
    out = mala(x0, steps=150, eta=eta, generator=g, **kwargs)
    mean, cov = moments(out.samples)
    assert torch.allclose(mean, MU, atol=0.04)
    assert torch.allclose(cov, COV, rtol=0.05, atol=0.03)
    rate = out.acceptance.mean().item()
    assert 0.2 < rate < 0.99  # it does reject (else it would be ULA)


def test_score_from_log_prob_is_the_gradient():
    x = torch.randn(7, 2, dtype=torch.float64)
    assert torch.allclose(score_from_log_prob(gauss_log_prob)(x), gauss_score(x))


def test_seeded_and_recorded():
    x0 = torch.zeros(5, 3)
    a = langevin(x0, score=lambda x: -x, steps=10, eta=0.1,
                 generator=torch.Generator().manual_seed(3), record_every=5)
    b = langevin(x0, score=lambda x: -x, steps=10, eta=0.1,
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.samples, b.samples)
    assert a.trajectory.shape == (3, 5, 3) and torch.equal(a.trajectory[-1], a.samples)
    assert torch.equal(a.trajectory[0], x0) and b.trajectory is None


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="exactly one of score= or log_prob="):
        langevin(torch.zeros(2, 2), steps=1, eta=0.1)
    with pytest.raises(ValueError, match=r"score: expected an output of the shape of x \(2, 2\)"):
        langevin(torch.zeros(2, 2), score=lambda x: x[:, :1], steps=1, eta=0.1)
    with pytest.raises(ValueError, match="eta: expected a positive float"):
        langevin(torch.zeros(2, 2), score=lambda x: -x, steps=1, eta=-1.0)
    with pytest.raises(ValueError, match="decreasing ladder"):
        annealed_langevin(lambda x, s: -x, torch.zeros(2, 2), [0.1, 1.0], steps_per_level=1,
                          eps=0.1)
    with pytest.raises(ValueError, match=r"x0: expected a floating tensor of shape"):
        langevin(torch.zeros(3), score=lambda x: -x, steps=1, eta=0.1)


def major_weight(x, mix):
    return (mix.assign(x) == 0).double().mean().item()


def test_annealed_langevin_recovers_the_mixture_weights_plain_langevin_does_not():
    mix = two_modes()
    g = torch.Generator().manual_seed(4)
    x0 = 16 * torch.rand(4000, 2, dtype=torch.float64, generator=g) - 8  # uniform in the box
    plain = langevin(x0, score=mix.score, steps=1000, eta=0.1, generator=g).samples
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    annealed = annealed_langevin(mix.score, x0, sigmas, steps_per_level=100, eps=0.1,
                                 generator=g).samples
    assert abs(major_weight(annealed, mix) - 0.95) < 0.05
    assert abs(major_weight(plain, mix) - 0.95) > 0.3  # stays near the start's 1/2
    # within a mode: the last level's law, the unit-variance component perturbed by sigma_L
    near = annealed[mix.assign(annealed) == 0]
    assert near.var(0).mean().item() == pytest.approx(1.0 + 1.0**2, rel=0.1)


def test_gaussian_mixture_score_is_the_gradient_of_its_log_prob():
    mix = GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], std=0.7)
    x = torch.randn(9, 2, dtype=torch.float64)
    for sigma in (None, 0.5):
        auto = score_from_log_prob(lambda y, s=sigma: mix.log_prob(y, s))(x)
        assert torch.allclose(mix.score(x, sigma), auto)


def test_choose_sigmas_follows_song_and_ermon_2020():
    from scipy.stats import norm

    g = torch.Generator().manual_seed(7)
    data = torch.rand(300, 1, 8, 8, generator=g)  # D = 64
    choice = choose_sigmas(data, sigma_min=0.01, steps_per_level=5)
    flat = data.flatten(1).double()
    assert choice.sigmas[0].item() == pytest.approx(torch.cdist(flat, flat).max().item(),
                                                    rel=1e-5)  # largest pairwise distance
    assert choice.sigmas[-1].item() == pytest.approx(0.01, rel=1e-5)
    ratios = choice.sigmas[:-1] / choice.sigmas[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, choice.ratio), rtol=1e-4)
    # technique 2: overlap(gamma) = 1/2 at the root; L is rounded up, so the ladder's ratio
    # is at most the root and its overlap at least 1/2 (and close: one level more or less)
    root, g_ = math.sqrt(2 * 64), choice.ratio
    overlap = norm.cdf(root * (g_ - 1) + 3 * g_) - norm.cdf(root * (g_ - 1) - 3 * g_)
    assert 0.5 - 1e-9 <= overlap < 0.6
    # technique 4: eps brings the variance after one level closest to the level's own (no
    # eps on a fine grid does better), and close to it when T allows (T = 50 here)
    import numpy as np

    grid = np.exp(np.linspace(-30, math.log(2e-4), 20000))
    best = min(abs(annealed_variance_ratio(e, 0.01, choice.ratio, 5) - 1) for e in grid)
    assert abs(annealed_variance_ratio(choice.eps, 0.01, choice.ratio, 5) - 1) <= best + 1e-4
    long = choose_sigmas(data, sigma_min=0.01, steps_per_level=50)
    assert annealed_variance_ratio(long.eps, 0.01, long.ratio, 50) == pytest.approx(1.0,
                                                                                    abs=0.05)
    # in 2-D technique 2 has no root: the error says to pass the ratio
    with pytest.raises(ValueError, match="no solution in D = 2"):
        choose_sigmas(torch.randn(10, 2))
    two = choose_sigmas(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), sigma_min=0.1, ratio=2.0)
    assert two.sigmas[0].item() == pytest.approx(5.0) and two.ratio <= 2.0


def test_annealed_variance_ratio_matches_a_simulation():
    # one level on a point mass: start N(0, (gamma sigma)^2), run T steps with eta_i.
    sigma, sigma_min, gamma, eps, steps = 0.5, 0.1, 1.5, 0.002, 20
    g = torch.Generator().manual_seed(5)
    x = gamma * sigma * torch.randn(200000, 1, dtype=torch.float64, generator=g)
    eta = eps * sigma**2 / sigma_min**2
    out = langevin(x, score=lambda y: -y / sigma**2, steps=steps, eta=eta, generator=g)
    ratio = out.samples.var().item() / sigma**2
    assert ratio == pytest.approx(annealed_variance_ratio(eps, sigma_min, gamma, steps),
                                  rel=0.02)


def test_score_sampler_draws_from_a_network_like_a_model():
    def score(x, sigma):
        return -x / (1 + sigma[:, None] ** 2)  # N(0, I) perturbed by sigma

    sampler = ScoreSampler(score, (2,), sigmas=geometric_sigmas(3.0, 0.5, 5), steps=100,
                           eps=0.05)
    x = sampler.sample((4000,), generator=torch.Generator().manual_seed(6))
    assert x.shape == (4000, 2) and torch.isfinite(x).all()
    # the last level's law N(0, 1 + 0.5^2), with ULA's bias at eta = 0.05
    assert x.var(0).mean().item() == pytest.approx(1.25 / (1 - 0.05 / 5), rel=0.08)
    plain = ScoreSampler(lambda x: -x, (2,), sampler="langevin", steps=100, eta=0.05)
    assert plain.sample((3,)).shape == (3, 2) and plain.init_std == 1.0
    with pytest.raises(ValueError, match="needs a noise ladder"):
        ScoreSampler(lambda x: -x, (2,))


@pytest.mark.parametrize(("sampler", "steps"), [("pc", 200), ("sde", 400), ("ode", None),
                                                 ("dpm++2m", 25), ("edm_heun", 30)])
def test_score_sampler_runs_the_ladders_ve_path_samplers(sampler, steps):
    """A noise-conditional score of N(m, s^2 I) data, net(x, sigma) = -(x - m)/(s^2 +
    sigma^2), sampled on the ladder's variance-exploding path, reproduces the data (Tweedie's
    last step at the smallest level shrinks the variance by s^2 / (s^2 + sigma_min^2))."""
    from probgen.inference import ScoreSampler
    from probgen.score import geometric_sigmas

    m, s2 = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.25
    # sigma_max >> the data's scale: the deterministic samplers carry the prior's error (its
    # mean 0 for m) to the end scaled by s / sigma_max
    sigmas = geometric_sigmas(50.0, 0.01, 10).double()

    def net(x, sigma):
        return -(x - m.to(x.dtype)) / (s2 + sigma[:, None] ** 2)

    sampler_ = ScoreSampler(net, (2,), sampler=sampler, sigmas=sigmas,
                            steps=steps if steps else 100)
    x = sampler_.sample((20000,), generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(x.mean(0), m, atol=0.03)
    assert torch.allclose(x.var(0), torch.full((2,), s2, dtype=torch.float64), rtol=0.08)
