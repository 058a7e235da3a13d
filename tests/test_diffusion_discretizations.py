"""DDPM's schedules and NCSN's ladder as discretizations of continuous Gaussian paths, and
DDPM's networks in probgen time (read by the paths' conversions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probgen.diffusion import NoiseSchedule, SchedulePath, gaussian_epsilon
from probgen.inference import NoiseConditionalScoreMatching
from probgen.models import DiffusionModel
from probgen.paths import CosinePath
from probgen.score import geometric_sigmas
from probgen.sde import VESDE, VPSDE

DT = torch.float64
MU = torch.tensor([1.0, -2.0], dtype=DT)
COV = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=DT)


# ----------------------------------------------------------------------- network time
def test_time_of_step_is_the_schedule_paths_time_and_its_inverse():
    sched = NoiseSchedule.linear(11)
    steps = torch.tensor([0.0, 2.5, 10.0], dtype=DT)
    torch.testing.assert_close(sched.time_of_step(steps),
                               torch.tensor([1.0, 0.75, 0.0], dtype=DT), rtol=0, atol=0)
    torch.testing.assert_close(sched.step_of_time(sched.time_of_step(steps)), steps)
    torch.testing.assert_close(SchedulePath(sched).step(torch.tensor([0.75], dtype=DT)),
                               torch.tensor([2.5], dtype=DT))
    # T = 1: the one step is step 0 and sits at t = 1; every time maps back to it.
    one = NoiseSchedule.linear(1)
    assert one.time_of_step(torch.tensor([0])).tolist() == [1.0]
    assert one.step_of_time(torch.tensor([0.0, 0.3, 1.0])).tolist() == [0.0, 0.0, 0.0]


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.times: list[torch.Tensor] = []

    def forward(self, x, t):
        self.times.append(t)
        return torch.zeros_like(x)


def test_ddpm_networks_are_called_in_probgen_time():
    net = _Recorder()
    model = DiffusionModel(net, NoiseSchedule.linear(5), (2,))
    model.output(torch.zeros(3, 2), torch.tensor([0, 2, 4]))
    model.output(torch.zeros(1, 2), torch.tensor([1.5]))  # fractional (the ODE solvers')
    assert net.times[0].tolist() == [1.0, 0.5, 0.0]  # step 0 at the data end, t = 1
    assert net.times[1].tolist() == [0.625]


class _PathEps(nn.Module):
    """The exact noise prediction of N(MU, COV) data on `path`, a network of (x, t) in
    probgen time."""

    def __init__(self, path: SchedulePath) -> None:
        super().__init__()
        self.path = path
        self.dummy = nn.Parameter(torch.zeros((), dtype=DT))

    def forward(self, x, t):
        return self.path.gaussian_prediction(x, t, MU, COV, "eps")


def test_a_network_of_probgen_time_is_ddpms_and_the_paths_prediction():
    """One network, defined as the path's exact eps-predictor at probgen time t, is DDPM's
    exact eps-predictor at step s (Ho et al.'s closed form) when t = 1 - s/(T-1), and the
    path's conversions read it as its score and data predictions."""
    sched = NoiseSchedule.linear(100, 1e-3, 0.05)
    path = SchedulePath(sched)
    net = _PathEps(path)
    model = DiffusionModel(net, sched, (2,)).double()
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(6, 2, generator=g, dtype=DT)
    step = torch.tensor([0, 1, 17, 50, 98, 99])
    t = 1 - step.to(DT) / 99
    exact = gaussian_epsilon(sched, MU, COV)
    for s in (step, step.to(DT) + torch.tensor([0.0, 0.5, 0.25, 0.75, 0.5, 0.0], dtype=DT)):
        tt = 1 - s.to(DT) / 99
        torch.testing.assert_close(model.eps(x, s), exact(x, s.to(DT)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.eps(x, s),
                                   path.gaussian_prediction(x, tt, MU, COV, "eps"),
                                   rtol=1e-12, atol=1e-12)
    for target in ("score", "data", "v"):
        torch.testing.assert_close(path.convert(net(x, t), x, t, source="eps", target=target),
                                   path.gaussian_prediction(x, t, MU, COV, target),
                                   rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.score(x, step),
                               path.gaussian_prediction(x, t, MU, COV, "score"),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------- discretizations
# NoiseSchedule.linear(100).betas[1], .alphas_cumprod[50] and [-1], recorded bit for bit
# before the linear schedule was computed through VPSDE.discrete_betas.
COURSE_LINEAR_100 = {("betas", 1): "0x1.3ba1c8a237d8bp-12",
                     ("alphas_cumprod", 50): "0x1.89e08d06e927cp-1",
                     ("alphas_cumprod", 99): "0x1.7449ec91b4188p-2"}


@pytest.mark.parametrize(("T", "start", "end"), [(1, 1e-4, 0.02), (7, 1e-3, 0.3),
                                                 (100, 1e-4, 0.02), (1000, 1e-4, 0.02),
                                                 (200, 1e-3, 0.05), (10, 0.1, 0.1)])
def test_linear_schedule_is_the_vp_sdes_discretization(T, start, end):
    betas = NoiseSchedule.linear(T, start, end).betas
    assert torch.equal(betas, VPSDE(T * start, T * end).discrete_betas(T))
    # beta_i = beta(s_i) / T with s_i = i / (T - 1), beta(s) = T start + s T (end - start)
    s = torch.arange(T, dtype=DT) / max(T - 1, 1)
    torch.testing.assert_close(betas, (T * start + s * T * (end - start)) / T, rtol=1e-15,
                               atol=0)


def test_course_linear_schedule_is_unchanged_bit_for_bit():
    sched = NoiseSchedule.linear(100)
    old = torch.linspace(1e-4, 0.02, 100, dtype=DT)  # the schedule's former definition
    assert torch.equal(sched.betas, old)
    assert torch.equal(sched.alphas_cumprod, torch.cumprod(1 - old, 0))
    for (name, i), value in COURSE_LINEAR_100.items():
        assert float(getattr(sched, name)[i]).hex() == value


@pytest.mark.parametrize("T", [10, 100, 1000])
@pytest.mark.parametrize("s", [0.008, 0.0, 0.1])
def test_cosine_schedule_is_the_cosine_path_at_its_grid(T, s):
    """Unclipped, alpha_bar_k = f((k+1)/T)/f(0) is the path's alpha^2 at t = 1 - (k+1)/T; the
    clip changes only the last step (alpha_bar 0, the path at t = 0)."""
    path = CosinePath(s)
    k = torch.arange(T, dtype=DT)
    alpha, sigma = path.alpha_sigma(1 - (k + 1) / T)
    unclipped = NoiseSchedule.cosine(T, s=s, max_beta=1.0)
    # a float64 cumulative product of T ratios against one ratio: a few ulps of 1
    torch.testing.assert_close(unclipped.alphas_cumprod, alpha**2, rtol=0, atol=2e-15)
    torch.testing.assert_close(1 - unclipped.alphas_cumprod, sigma**2, rtol=0, atol=2e-15)
    clipped = NoiseSchedule.cosine(T, s=s)
    assert torch.equal(clipped.betas[:-1], unclipped.betas[:-1])
    assert torch.equal(clipped.alphas_cumprod[:-1], unclipped.alphas_cumprod[:-1])
    assert float(unclipped.alphas_cumprod[-1]) == 0.0 and float(alpha[-1]) < 1e-16


def test_cosine_path_is_a_variance_preserving_path():
    path = CosinePath()
    t = torch.linspace(0.0, 1.0, 21, dtype=DT)
    a, s = path.alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-15)
    assert path.t_end == 1 - 1e-3 and float(path.prior((2,)).stddev[0]) == 1.0
    with pytest.raises(ValueError, match="s: expected a finite float >= 0"):
        CosinePath(-0.1)
    with pytest.raises(ValueError, match=r"eps: expected a float in \(0, 1\)"):
        CosinePath(eps=0.0)


@pytest.mark.parametrize("sched", [NoiseSchedule.linear(1000), NoiseSchedule.cosine(100),
                                   NoiseSchedule.linear(2), NoiseSchedule.linear(1)],
                         ids=["linear1000", "cosine100", "linear2", "linear1"])
def test_schedule_path_is_the_schedule_exactly_at_integer_steps(sched):
    path = SchedulePath(sched)
    k = torch.arange(sched.num_steps)
    assert torch.equal(sched.alphas_cumprod_at(k), sched.alphas_cumprod)
    a, s = path.alpha_sigma(sched.time_of_step(k))
    assert torch.equal(a, sched.alphas_cumprod.sqrt())
    assert torch.equal(s, (1 - sched.alphas_cumprod).sqrt())


@pytest.mark.parametrize(("sigma_max", "sigma_min", "L"), [(1.0, 0.01, 10), (50.0, 0.01, 232),
                                                           (10.0, 0.1, 2)])
def test_ncsn_ladder_is_the_ve_sdes_discretization(sigma_max, sigma_min, L):
    ladder = VESDE(sigma_min, sigma_max).discrete_sigmas(L)
    assert torch.equal(geometric_sigmas(sigma_max, sigma_min, L), ladder.float())
    # sigma_i = sigma_max (sigma_min / sigma_max)^(i / (L - 1)), largest first
    i = torch.arange(L, dtype=DT)
    torch.testing.assert_close(ladder, sigma_max * (sigma_min / sigma_max) ** (i / (L - 1)),
                               rtol=1e-13, atol=0)
    loss = NoiseConditionalScoreMatching(lambda x, sigma: x, sigma_max=sigma_max,
                                         sigma_min=sigma_min, num_sigmas=L)
    assert torch.equal(loss.sigmas, ladder.float())
