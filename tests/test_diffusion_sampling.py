"""Diffusion samplers and bounds driven by exact noise predictions of Gaussian data and
Gaussian mixtures: moments, DDIM determinism and inversion, bound >= exact NLL, guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probgen.diffusion import (
    NoiseSchedule,
    discretized_gaussian_log_likelihood,
    gaussian_epsilon,
    to_signed,
)
from probgen.inference import DiffusionLoss, diffusion_sample, langevin, variational_bound
from probgen.models import DiffusionModel

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


class ExactGaussianEps(nn.Module):
    """The exact epsilon of N(mu, cov) data as a network of (x, t), t the step's probgen
    time 1 - step / (T - 1)."""

    def __init__(self, schedule: NoiseSchedule, mu: torch.Tensor, cov: torch.Tensor) -> None:
        super().__init__()
        self.schedule = schedule
        self.eps = gaussian_epsilon(schedule, mu, cov)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.eps(x, self.schedule.step_of_time(t.double()))


def _gaussian_model(schedule: NoiseSchedule, variance: str = "fixed_large",
                    mu: torch.Tensor = MU, cov: torch.Tensor = COV) -> DiffusionModel:
    net = ExactGaussianEps(schedule, mu, cov)
    return DiffusionModel(net, schedule, (mu.shape[0],), variance=variance).double()


def _check_moments(x: torch.Tensor, mean_tol: float, cov_tol: float) -> None:
    assert torch.allclose(x.mean(0), MU, atol=mean_tol), x.mean(0)
    assert torch.allclose(torch.cov(x.T), COV, atol=cov_tol), torch.cov(x.T)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ancestral_ddpm_reproduces_the_gaussian(variance):
    model = _gaussian_model(NoiseSchedule.linear(1000), variance)
    g = torch.Generator().manual_seed(0)
    x = model.sample((3000,), generator=g)
    _check_moments(x, 0.08, 0.15)


@pytest.mark.parametrize("sampler,steps,eta", [("ancestral", 100, 0.0), ("ddim", 200, 0.0),
                                               ("ddim", 250, 1.0), ("ddim", 100, 0.5)])
def test_strided_samplers_reproduce_the_gaussian(sampler, steps, eta):
    model = _gaussian_model(NoiseSchedule.linear(1000))
    g = torch.Generator().manual_seed(1)
    x = model.sample((3000,), sampler=sampler, steps=steps, eta=eta, generator=g)
    _check_moments(x, 0.08, 0.15)


def test_ddim_eta_one_is_ancestral_with_posterior_variance():
    """Song et al. (2021): eta = 1 is the DDPM posterior-variance sampler, step for step."""
    model = _gaussian_model(NoiseSchedule.cosine(100), "fixed_small")
    noise = torch.randn(64, 2, dtype=torch.float64)
    a = model.run(64, noise=noise, sampler="ddim", steps=30, eta=1.0,
                  generator=torch.Generator().manual_seed(3)).samples
    b = model.run(64, noise=noise, sampler="ancestral", steps=30,
                  generator=torch.Generator().manual_seed(3)).samples
    assert torch.allclose(a, b, atol=1e-10)


def test_ddim_is_deterministic_and_inverts():
    model = _gaussian_model(NoiseSchedule.linear(1000))
    z = torch.randn(256, 2, dtype=torch.float64)
    x1 = model.run(256, noise=z, sampler="ddim", steps=100,
                   generator=torch.Generator().manual_seed(1)).samples
    x2 = model.run(256, noise=z, sampler="ddim", steps=100,
                   generator=torch.Generator().manual_seed(2)).samples
    assert torch.equal(x1, x2)
    data = MU + torch.randn(256, 2, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    latent = model.encode(data)  # all 1000 steps
    # the latent of Gaussian data is standard normal (the flow maps N(mu, cov) to N(0, I))
    assert torch.allclose(latent.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.2)
    assert torch.allclose(latent.std(0), torch.ones(2, dtype=torch.float64), atol=0.15)
    err = (model.decode(latent) - data).abs().max()
    assert err < 0.02, err
    # the round trip's error is the discretization's: first order in the step size
    coarse = (model.decode(model.encode(data, steps=100), steps=100) - data).abs().max()
    assert 5 * err < coarse < 0.3


def _exact_marginal(model: DiffusionModel, mu: torch.Tensor, cov: torch.Tensor):
    """p_theta(x) of the linear-Gaussian reverse chain driven by the exact epsilon: the
    mean and covariance of x_data, propagated from N(0, I) through every step."""
    sched = model.schedule
    D = mu.shape[0]
    eye = torch.eye(D, dtype=torch.float64)
    m, S = torch.zeros(D, dtype=torch.float64), eye.clone()
    for s in reversed(range(sched.num_steps)):
        ab = sched.alphas_cumprod[s]
        C = ab * cov + (1 - ab) * eye
        # eps = sqrt(1-ab) C^{-1}(x - sqrt(ab) mu); x0 = (x - sqrt(1-ab) eps)/sqrt(ab)
        Ci = torch.linalg.inv(C)
        Ax0 = (eye - (1 - ab) * Ci) / ab.sqrt()
        bx0 = (1 - ab) * Ci @ (ab.sqrt() * mu) / ab.sqrt()
        c1, c2 = sched.posterior_mean_coef1[s], sched.posterior_mean_coef2[s]
        A = c1 * Ax0 + c2 * eye
        b = c1 * bx0
        if model.variance == "fixed_small" or s == 0:
            var = sched.posterior_log_variance_clipped[s].exp()
        else:
            var = sched.betas[s]
        m, S = A @ m + b, A @ S @ A.T + var * eye
    return m, S


def test_variational_bound_never_below_the_exact_nll():
    """Continuous Gaussian data: E_q[bound(x)] >= -log p_theta(x) for every x (p_theta the
    reverse chain's exact marginal), and the data's mean bound >= its entropy."""
    sched = NoiseSchedule.linear(200, 1e-4, 0.1)
    for variance in ("fixed_large", "fixed_small"):
        model = _gaussian_model(sched, variance)
        m, S = _exact_marginal(model, MU, COV)
        p = torch.distributions.MultivariateNormal(m, S)
        x = torch.tensor([[1.0, -2.0], [3.0, -1.0], [-1.0, -3.0]], dtype=torch.float64)
        reps = 200
        out = variational_bound(model, x.repeat(reps, 1),
                                generator=torch.Generator().manual_seed(0))
        nll = out["nll"].reshape(reps, 3)
        mean, se = nll.mean(0), nll.std(0) / math.sqrt(reps)
        exact = -p.log_prob(x)
        assert (mean > exact - 3 * se).all(), (variance, mean, exact, se)
        if variance == "fixed_large":  # near the true reverse variance at small steps: tight
            assert (mean - exact < 0.2).all(), (mean, exact)
        else:  # the posterior variance is far too small at the first steps: loose
            assert (mean - exact > 1.0).all(), (mean, exact)
        data = torch.distributions.MultivariateNormal(MU, COV)
        sample = data.sample((1000,))
        bound = variational_bound(model, sample)["nll"].mean()
        assert bound > data.entropy()


def test_discretized_bound_above_the_exact_discrete_nll():
    """1-D data on a 17-level grid: the chain's exact discrete probabilities are the bins of
    its continuous marginal, so the bound in bits/dim must sit above the exact value."""
    levels = 17
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    mu, cov = torch.tensor([0.1], dtype=torch.float64), torch.tensor([[0.16]],
                                                                      dtype=torch.float64)
    model = _gaussian_model(sched, "fixed_large", mu, cov)
    m, S = _exact_marginal(model, mu, cov)
    pixels = torch.arange(levels, dtype=torch.float64)
    grid = to_signed(pixels, levels)
    logp = discretized_gaussian_log_likelihood(grid, m, 0.5 * S[0, 0].log(), levels)
    reps = 300
    out = variational_bound(model, pixels.repeat(reps)[:, None], levels=levels,
                            generator=torch.Generator().manual_seed(0))
    nll = out["nll"].reshape(reps, levels)
    mean, se = nll.mean(0), nll.std(0) / math.sqrt(reps)
    assert (mean > -logp - 3 * se - 1e-9).all()
    bpd = out["bpd"].reshape(reps, levels).mean(0)
    assert torch.allclose(bpd, mean / math.log(2))


def test_bpd_estimate_is_unbiased_for_the_full_bound():
    sched = NoiseSchedule.cosine(20)
    model = _gaussian_model(sched, "fixed_large")
    x = MU + torch.randn(256, 2, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    full = variational_bound(model, x.repeat(20, 1), generator=torch.Generator().manual_seed(0))
    full_se = full["bpd"].std() / math.sqrt(full["bpd"].numel())
    torch.manual_seed(0)
    objective = DiffusionLoss(model, "vlb")
    estimates = torch.stack([objective(x)["bpd_estimate"] for _ in range(300)])
    se = (estimates.std() ** 2 / 300 + full_se**2).sqrt()
    assert abs(float(estimates.mean() - full["bpd"].mean())) < 4 * se


class MixtureEps(nn.Module):
    """Exact epsilon of two isotropic Gaussian classes (+-c, 0) with std s; label 2 = null
    (the mixture), as a class-conditional network of (x, t, labels)."""

    def __init__(self, schedule: NoiseSchedule, c: float, s: float) -> None:
        super().__init__()
        self.sched = schedule
        self.means = torch.tensor([[-c, 0.0], [c, 0.0]], dtype=torch.float64)
        self.s = s
        self.dummy = nn.Parameter(torch.zeros(()))

    def parts(self, x, t):
        ab = self.sched.alphas_cumprod_at(self.sched.step_of_time(t.double()))[:, None, None]
        var = ab * self.s**2 + 1 - ab  # (n, 1, 1)
        diff = x[:, None, :] - ab.sqrt() * self.means  # (n, 2, D)
        eps_k = (1 - ab).sqrt() * diff / var
        logits = -0.5 * (diff**2).sum(-1) / var[..., 0]
        return eps_k, logits

    def forward(self, x, t, labels=None):
        eps_k, logits = self.parts(x, t)
        resp = logits.softmax(-1)
        mix = (resp[..., None] * eps_k).sum(1)
        if labels is None:
            return mix
        cond = eps_k[torch.arange(x.shape[0]), labels.clamp(max=1)]
        return torch.where((labels == 2)[:, None], mix, cond)


def _mixture(num_classes):
    sched = NoiseSchedule.linear(1000)
    net = MixtureEps(sched, c=1.0, s=0.8)
    model = DiffusionModel(net, sched, (2,), num_classes=num_classes).double()
    return model, net


def test_guidance_weight_zero_is_the_unconditional_model():
    model, _ = _mixture(2)
    z = torch.randn(300, 2, dtype=torch.float64)
    for sampler, eta in (("ddim", 0.0), ("ancestral", 0.0)):
        kw = {"noise": z, "sampler": sampler, "steps": 40, "eta": eta}
        a = model.run(300, labels=1, guidance=0.0,
                      generator=torch.Generator().manual_seed(0), **kw).samples
        b = model.run(300, generator=torch.Generator().manual_seed(0), **kw).samples
        assert torch.allclose(a, b, atol=1e-12)


def _accuracy(x, target):
    """Bayes classifier of the clean mixture: class 1 iff x_1 > 0."""
    return float(((x[:, 0] > 0).long() == target).double().mean())


def test_classifier_free_guidance_pushes_accuracy_up():
    model, _ = _mixture(2)
    g = torch.Generator().manual_seed(0)
    kw = {"sampler": "ddim", "steps": 50, "labels": 1}
    acc = {w: _accuracy(model.sample((3000,), guidance=w, generator=g, **kw), 1)
           for w in (0.0, 1.0, 4.0)}
    phi = 0.5 * (1 + math.erf(1.0 / 0.8 / math.sqrt(2)))  # P(correct) of the true class
    assert abs(acc[0.0] - 0.5) < 0.05
    assert abs(acc[1.0] - phi) < 0.03
    assert acc[4.0] > acc[1.0] + 0.04


def test_classifier_guidance_pushes_accuracy_up():
    model, net = _mixture(None)
    net_forward = net.forward

    def unconditional(x, t, labels=None):
        return net_forward(x, t)

    net.forward = unconditional

    def classifier(x, t):
        return net.parts(x, t)[1]

    g = torch.Generator().manual_seed(0)
    kw = {"sampler": "ddim", "steps": 50, "labels": 1, "classifier": classifier}
    acc = {s: _accuracy(model.sample((3000,), classifier_scale=s, generator=g, **kw), 1)
           for s in (0.0, 1.0, 4.0)}
    phi = 0.5 * (1 + math.erf(1.0 / 0.8 / math.sqrt(2)))
    assert abs(acc[0.0] - 0.5) < 0.05
    assert abs(acc[1.0] - phi) < 0.04  # scale 1 with the exact classifier: p(x | y)
    assert acc[4.0] > acc[1.0] + 0.04


def test_ve_score_drives_langevin_to_the_gaussian():
    """A noise predictor as a VE score: the score models' Langevin sampler applies (at the
    smallest level, sigma = 0.01, the perturbed data is the Gaussian up to 1e-4 I)."""
    model = _gaussian_model(NoiseSchedule.linear(1000))
    score = model.ve_score()
    sigma = score.sigmas()[-1:].double()
    assert float(sigma) == pytest.approx(0.01, rel=1e-3)
    level = sigma.expand(2000)
    out = langevin(torch.randn(2000, 2, dtype=torch.float64), score=lambda x: score(x, level),
                   steps=800, eta=0.1, generator=torch.Generator().manual_seed(0))
    _check_moments(out.samples, 0.08, 0.15)


def test_sampler_errors():
    model = _gaussian_model(NoiseSchedule.linear(10))
    z = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="sampler: expected one of"):
        diffusion_sample(model, z, sampler="euler")
    with pytest.raises(ValueError, match=r"eta: expected a value in \[0, 1\]"):
        diffusion_sample(model, z, sampler="ddim", eta=2.0)
    with pytest.raises(ValueError, match=r"steps: expected an int in 1..10"):
        diffusion_sample(model, z, steps=11)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample((3,), labels=1)
    with pytest.raises(ValueError, match="guidance"):
        _mixture(2)[0].sample((3,), guidance=2.0)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 2\)"):
        model.encode(torch.zeros(3, 5, dtype=torch.float64))


def test_probability_flow_of_a_ddpm_is_its_exact_marginal():
    """With the exact noise prediction of N(mu, cov) data, the probability-flow ODE of the
    schedule's path carries the law of the last step to the law of x at step 0: the DDPM's
    log_prob is that Gaussian's log-density; and sampler "ode" (adaptive and fixed-step)
    reproduces the data."""
    eye = torch.eye(2, dtype=torch.float64)

    def law(ab):
        return torch.distributions.MultivariateNormal(ab**0.5 * MU, ab * COV + (1 - ab) * eye)

    sched = NoiseSchedule.linear(100)
    model = _gaussian_model(sched)
    first, last = law(float(sched.alphas_cumprod[0])), law(float(sched.alphas_cumprod[-1]))
    x = first.mean + torch.randn(64, 2, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(0)) @ first.scale_tril.T
    lp = model.log_prob(x, rtol=1e-8, atol=1e-8, prior=last)
    # the log-SNR is piecewise linear in t (kinks at the steps): dopri5 at 1e-8 measured 1.4e-3
    torch.testing.assert_close(lp, first.log_prob(x), atol=5e-3, rtol=0)
    assert model.last_solve.nfe > 0
    # T = 1000: the default N(0, I) prior misses the last step's mean 0.006 mu only
    sched = NoiseSchedule.linear(1000)
    model = _gaussian_model(sched)
    first = law(float(sched.alphas_cumprod[0]))
    lp = model.log_prob(x, rtol=1e-5, atol=1e-5)
    assert float((lp.detach() - first.log_prob(x)).abs().max()) < 0.1
    g = torch.Generator().manual_seed(1)
    for options in ({"method": "dopri5"}, {"method": "rk4", "steps": 40}):
        samples = model.sample((20000,), sampler="ode", generator=g, **options)
        _check_moments(samples, 0.05, 0.08)
