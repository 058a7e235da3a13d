"""DDIM, DPM-Solver++(2M) and EDM's Heun on Gaussian paths, driven by exact predictions of
Gaussian data: the law they reach, their order of convergence against a fine solve of the
same probability-flow ODE, the grids, and DDPM's discrete schedule as a path."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from probgen.diffusion import NoiseSchedule, SchedulePath, gaussian_epsilon
from probgen.inference import diffusion_sample
from probgen.inference.solvers import SOLVERS, solve_path, time_grid
from probgen.models import DiffusionModel
from probgen.paths import CondOTPath, VEPath
from probgen.sde import VPSDE

DT = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=DT)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=DT)
PATHS = {"vp": (VPSDE, 1 - 1e-3), "ot": (CondOTPath, 1.0), "ve": (lambda: VEPath(0.01, 5.0),
                                                                  None)}
GRID = {"ddim": "time", "dpm++2m": "logsnr", "edm_heun": "karras"}
STEPS = {"ddim": 100, "dpm++2m": 20, "edm_heun": 40}


def _start(path, n: int, seed: int = 0) -> torch.Tensor:
    """Draws of the path's exact law at t = 0 for N(MU, COV) data."""
    m0, c0 = path.gaussian_marginal(0.0, MU, COV)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return m0 + z @ torch.linalg.cholesky(c0).T


def _denoiser(path):
    return lambda x, t: path.gaussian_prediction(x, t, MU, COV, "data")


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", PATHS)
def test_solvers_reach_the_gaussian_data(name, solver):
    make, t_end = PATHS[name]
    path = make()
    steps = STEPS[solver]
    times = time_grid(path, steps, grid=GRID[solver], t_end=t_end)
    out = solve_path(_denoiser(path), path, _start(path, 8000), times, solver=solver)
    x = out.samples
    torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0)  # Monte Carlo: ~0.01
    torch.testing.assert_close(torch.cov(x.T), COV, atol=0.04, rtol=0)
    # Network calls: one per level; Heun two per interval but Euler on a step from
    # alpha = 0 and on the last step to sigma = 0 (the final denoising, when sigma > 0 at
    # the grid's end, is one more step).
    denoising = float(path.alpha_sigma(times[-1:])[1]) > 0
    intervals = steps + int(denoising)
    if solver != "edm_heun":
        assert out.nfe == intervals
    else:
        euler = 1 + int(float(path.alpha_sigma(times[:1])[0]) == 0)
        assert out.nfe == 2 * intervals - euler


def _errors(solver: str, grid: str, steps: list[int]) -> list[float]:
    """Mean distance to a fine RK4 solve of the exact probability-flow ODE of the VP SDE."""
    path, t_end = VPSDE(), 1 - 1e-3
    x0 = _start(path, 256, seed=1)

    def field(t, x):
        return path.gaussian_prediction(x, t.expand(x.shape[0]), MU, COV, "velocity")

    ref = odeint(field, x0, torch.tensor([0.0, t_end], dtype=DT), method="rk4",
                 options={"step_size": t_end / 4000})[-1]
    errors = []
    for n in steps:
        out = solve_path(_denoiser(path), path, x0, time_grid(path, n, grid=grid, t_end=t_end),
                         solver=solver, denoise=False)
        errors.append(float((out.samples - ref).norm(dim=1).mean()))
    return errors


@pytest.mark.parametrize(("solver", "grid"), [("dpm++2m", "logsnr"), ("dpm++2m", "karras"),
                                              ("edm_heun", "karras"), ("edm_heun", "time")])
def test_second_order_solvers_converge_at_order_two(solver, grid):
    e20, e40, e80 = _errors(solver, grid, [20, 40, 80])
    assert 3.2 < e20 / e40 < 5.2, (e20, e40)
    assert 3.2 < e40 / e80 < 5.2, (e40, e80)


def test_ddim_converges_at_order_one_and_the_second_order_solvers_beat_it():
    ddim = _errors("ddim", "logsnr", [10, 20, 40])
    assert 1.7 < ddim[0] / ddim[1] < 2.3 and 1.7 < ddim[1] / ddim[2] < 2.3, ddim
    dpm = _errors("dpm++2m", "logsnr", [10, 20, 40])
    assert all(d < 0.5 * e for d, e in zip(dpm, ddim, strict=True)), (dpm, ddim)  # same calls
    heun = _errors("edm_heun", "logsnr", [10, 20])  # at equal steps (twice the calls)
    assert heun[0] < ddim[0] and heun[1] < ddim[1], (heun, ddim)


def test_time_grids_follow_their_definitions():
    path = VPSDE()
    t = time_grid(path, 8, grid="karras", t_end=0.99)
    a, s = path.alpha_sigma(t)
    ratio = s / a
    hi, lo = float(ratio[0]), float(ratio[-1])
    i = torch.arange(9, dtype=DT) / 8
    want = (hi ** (1 / 7) + i * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    torch.testing.assert_close(ratio, want, rtol=1e-9, atol=0)
    t = time_grid(path, 8, grid="logsnr", t_end=0.99)
    a, s = path.alpha_sigma(t)
    lam = (a / s).log()
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(8), rtol=1e-8, atol=0)
    assert float(t[0]) == 0.0 and float(t[-1]) == 0.99
    # Flow matching's source (alpha = 0) and data (sigma = 0) ends stay in the grid.
    t = time_grid(CondOTPath(), 6, grid="karras")
    assert float(t[0]) == 0.0 and float(t[-1]) == 1.0 and bool((t.diff() > 0).all())
    with pytest.raises(ValueError, match="grid: expected one of"):
        time_grid(path, 4, grid="uniform")
    with pytest.raises(ValueError, match="steps: expected a positive int"):
        time_grid(path, 0)


def test_solver_errors_say_what_was_expected():
    path = CondOTPath()
    with pytest.raises(ValueError, match="solver: expected one of"):
        solve_path(_denoiser(path), path, torch.zeros(2, 2, dtype=DT), time_grid(path, 2),
                   solver="heun")
    with pytest.raises(ValueError, match="increasing"):
        solve_path(_denoiser(path), path, torch.zeros(2, 2, dtype=DT),
                   torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match=r"denoiser: expected an output of the shape of x"):
        solve_path(lambda x, t: x[:, :1], path, torch.zeros(2, 2), time_grid(path, 2))


def test_schedule_path_is_the_discrete_schedule_at_its_steps():
    sched = NoiseSchedule.linear(100)
    path = SchedulePath(sched)
    steps = torch.arange(100, dtype=DT)
    a, s = path.alpha_sigma(1 - steps / 99)
    torch.testing.assert_close(a, sched.alphas_cumprod.sqrt(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s, (1 - sched.alphas_cumprod).sqrt(), rtol=1e-10, atol=1e-14)


class _ExactGaussianEps(nn.Module):
    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.eps = gaussian_epsilon(schedule, MU, COV)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):  # t: the step's probgen time 1 - step / (T - 1)
        return self.eps(x, self.schedule.step_of_time(t.double()))


@pytest.mark.parametrize(("sampler", "steps", "spacing", "bound"), [
    ("dpm++2m", 15, "logsnr", 0.03), ("dpm++2m", 20, "karras", 0.05),
    ("edm_heun", 20, "karras", 0.05)])
def test_ddpm_samples_through_the_ode_solvers(sampler, steps, spacing, bound):
    """DDPM's probability-flow ODE solved at `steps` levels: the same noise through
    1000-step DDIM is the ODE's solution (first order, error ~1/1000); the second-order
    solvers land near it, nearer than DDIM at as many levels, and their law is the data's."""
    sched = NoiseSchedule.linear(1000)
    model = DiffusionModel(_ExactGaussianEps(sched), sched, (2,)).double()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=DT)
    out = diffusion_sample(model, noise, sampler=sampler, steps=steps, spacing=spacing)
    fine = diffusion_sample(model, noise, sampler="ddim").samples
    ddim = diffusion_sample(model, noise, sampler="ddim", steps=steps).samples
    error = float((out.samples - fine).norm(dim=1).mean())
    assert error < bound and error < float((ddim - fine).norm(dim=1).mean())
    torch.testing.assert_close(out.samples.mean(0), MU, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(out.samples.T), COV, atol=0.06, rtol=0)
    assert out.timesteps[0] == 999 and out.timesteps[-1] == 0  # noisiest first


class _ExactPrediction(nn.Module):
    """The exact prediction of N(MU, COV) data on a path, as a network of (x, t)."""

    def __init__(self, path, target: str) -> None:
        super().__init__()
        self.path, self.target = path, target
        self.dummy = nn.Parameter(torch.zeros((), dtype=DT))

    def forward(self, x, t, labels=None):
        return self.path.gaussian_prediction(x, t, MU, COV, self.target)


@pytest.mark.parametrize("solver", ["dpm++2m", "edm_heun"])
def test_flow_matching_and_score_sde_models_sample_through_the_solvers(solver):
    from probgen.models import FlowMatching, ScoreSDE

    steps = {"dpm++2m": 20, "edm_heun": 40}[solver]
    path = CondOTPath()
    fm = FlowMatching(_ExactPrediction(path, "velocity"), path, (2,))
    g = torch.Generator().manual_seed(3)
    x = fm.sample((6000,), sampler=solver, steps=steps, generator=g)
    assert fm.last_nfe == (steps if solver == "dpm++2m" else 2 * steps - 2)
    sde = VPSDE()
    model = ScoreSDE(_ExactPrediction(sde, "score"), sde, (2,), parametrization="score")
    y = model.sample((6000,), sampler=solver, steps=steps, generator=g)
    for samples in (x, y):
        torch.testing.assert_close(samples.mean(0), MU, atol=0.04, rtol=0)
        torch.testing.assert_close(torch.cov(samples.T), COV, atol=0.06, rtol=0)
    a = fm.sample((4,), sampler=solver, steps=steps, generator=torch.Generator().manual_seed(5))
    b = fm.sample((4,), sampler=solver, steps=steps, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_time_at_ratio_inverts_the_schedule_on_every_path():
    from probgen.processes import GaussianPath

    sched = NoiseSchedule.cosine(100)
    for path in (VPSDE(), CondOTPath(0.1), VEPath(0.01, 5.0), SchedulePath(sched)):
        t = torch.linspace(0.05, 0.95, 7, dtype=DT)
        a, s = path.alpha_sigma(t)
        torch.testing.assert_close(path.time_at_ratio(s / a), t, rtol=0, atol=1e-9)
    # The schedule path's closed-form inverse is the generic bisection's answer.
    path = SchedulePath(sched)
    ratios = torch.logspace(-1.5, 1.5, 9, dtype=DT)
    torch.testing.assert_close(path.time_at_ratio(ratios),
                               GaussianPath.time_at_ratio(path, ratios), rtol=0, atol=1e-9)
