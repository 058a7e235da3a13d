"""DDIM, DPM-Solver++(2M, 3M), UniPC and EDM's Heun on Gaussian paths, driven by exact
predictions of Gaussian data: the law they reach, their order of convergence against a fine
solve of the same probability-flow ODE, the grids, and DDPM's discrete schedule as a path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from probgen.diffusion import NoiseSchedule, SchedulePath, gaussian_epsilon
from probgen.inference import diffusion_sample
from probgen.inference.sampling import Run, sample_loop
from probgen.inference.solvers import SOLVERS, DPMSolver2M, UniPC, solve_path, time_grid
from probgen.models import DiffusionModel
from probgen.paths import CondOTPath, VEPath
from probgen.sde import VPSDE

DT = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=DT)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=DT)
PATHS = {"vp": (VPSDE, 1 - 1e-3), "ot": (CondOTPath, 1.0), "ve": (lambda: VEPath(0.01, 5.0),
                                                                  None)}
GRID = {"ddim": "time", "dpm++2m": "logsnr", "dpm++3m": "logsnr", "unipc": "logsnr",
        "edm_heun": "karras"}
STEPS = {"ddim": 100, "dpm++2m": 20, "dpm++3m": 20, "unipc": 20, "edm_heun": 40}


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


def _flow(path, x0, t_start: float, t_end: float) -> torch.Tensor:
    """A tight adaptive (dopri5) solve of the exact probability-flow ODE of N(MU, COV) data
    (steps clipped at t_end: the VP schedule is undefined past t = 1)."""
    def field(t, x):
        return path.gaussian_prediction(x, t.expand(x.shape[0]), MU, COV, "velocity")

    return odeint(field, x0, torch.tensor([t_start, t_end], dtype=DT), method="dopri5",
                  rtol=1e-12, atol=1e-12,
                  options={"step_t": torch.tensor([t_end], dtype=DT)})[-1]


def _start_at(path, t: float, n: int = 256) -> torch.Tensor:
    m, c = path.gaussian_marginal(t, MU, COV)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    return m + z @ torch.linalg.cholesky(c).T


def _flow_errors(name: str, solver: str, grid: str, steps: list[int], t_start: float = 0.0,
                 t_end: float = 1 - 1e-3, order: int | None = None) -> list[float]:
    """Mean distance to the adaptive solve, at each number of steps (one call a step)."""
    path = VPSDE() if name == "vp" else CondOTPath()
    x0 = _start_at(path, t_start)
    ref = _flow(path, x0, t_start, t_end)
    errors = []
    for n in steps:
        times = time_grid(path, n, grid=grid, t_start=t_start, t_end=t_end)
        if order is None:
            out = solve_path(_denoiser(path), path, x0, times, solver=solver, denoise=False)
        else:
            stepper = UniPC(path, lambda x, t: _denoiser(path)(x, t), order=order,
                            denoise=False)
            out = sample_loop(stepper, x0, times)
        assert out.nfe == n
        errors.append(float((out.samples - ref).norm(dim=1).mean()))
    return errors


def test_the_adaptive_reference_is_the_exact_gaussian_flow():
    """For Gaussian data the probability flow is affine: x_t - m_t = C_t^{1/2} C_s^{-1/2}
    (x_s - m_s), the covariances C_t = alpha_t^2 COV + sigma_t^2 I commuting."""
    def root(c, p):
        w, v = torch.linalg.eigh(c)
        return v @ torch.diag(w**p) @ v.T

    for path, t0, t1 in ((VPSDE(), 0.0, 1 - 1e-3), (CondOTPath(), 1e-3, 1.0)):
        x0 = _start_at(path, t0)
        (m0, c0), (m1, c1) = path.gaussian_marginal(t0, MU, COV), path.gaussian_marginal(
            t1, MU, COV)
        exact = m1 + (x0 - m0) @ (root(c1, 0.5) @ root(c0, -0.5)).T
        assert float((_flow(path, x0, t0, t1) - exact).abs().max()) < 1e-10


# Ratios e(N)/e(2N) measured (256 points, float64) at the listed N -> 2N -> 4N:
#   dpm++3m  VP karras               N=40: 8.47 8.21
#   dpm++3m  VP logsnr  t <= 0.7     N=80: 7.19 7.71
#   dpm++3m  CondOT karras t >= 1e-3 N=40: 8.42 8.21
#   unipc    VP logsnr               N=40: 7.83 7.95
#   unipc    VP karras               N=40: 8.19 8.11
#   unipc    CondOT logsnr t >= 1e-3 N=40: 7.64 7.90
#   unipc    VP logsnr from t = 0.5  N=40: 7.91 7.96 (its corrected start-up keeps order 3)
# From CondOT's source (alpha = 0) every grid keeps the node at ratio sigma_max = 80 whatever
# N, so an N-independent error of the first (infinite) step, ~2e-5, floors the errors: these
# start at t = 1e-3. DPM-Solver++(3M) on the *full* uniform log-SNR grid converges faster
# than order 3 (ratios 16.0 16.2 16.3 from N=20, VP): its leading error, h^3 times a weighted
# integral of d^3D/dlambda^3 over a lambda range at whose ends D saturates, nearly cancels;
# stopping at t = 0.7 (D still curved) gives the order-3 ratios above.
@pytest.mark.parametrize(("solver", "name", "grid", "steps", "t_start", "t_end"), [
    ("dpm++3m", "vp", "karras", [40, 80, 160], 0.0, 1 - 1e-3),
    ("dpm++3m", "vp", "logsnr", [80, 160, 320], 0.0, 0.7),
    ("dpm++3m", "ot", "karras", [40, 80, 160], 1e-3, 1 - 1e-3),
    ("unipc", "vp", "logsnr", [40, 80, 160], 0.0, 1 - 1e-3),
    ("unipc", "vp", "karras", [40, 80, 160], 0.0, 1 - 1e-3),
    ("unipc", "ot", "logsnr", [40, 80, 160], 1e-3, 1 - 1e-3),
    ("unipc", "vp", "logsnr", [40, 80, 160], 0.5, 0.9)])
def test_third_order_solvers_converge_at_order_three(solver, name, grid, steps, t_start,
                                                     t_end):
    e1, e2, e4 = _flow_errors(name, solver, grid, steps, t_start, t_end)
    assert 6.5 < e1 / e2 < 10 and 6.5 < e2 / e4 < 10, (e1, e2, e4)


def test_dpm_solver_3m_start_up_is_second_order_where_the_prediction_moves():
    """The first step of a multistep solver has no past: DPM-Solver++(3M)'s is first order,
    a local error h^2 dD/dlambda that stays in the global error. From the prior dD/dlambda
    is ~alpha_0 (VP: 0.0066), below the O(h^3) terms at every N here; started mid-path
    (t = 0.5, D moving) the global order is 2: measured ratios 3.64 3.83 3.92 from N=40."""
    e = _flow_errors("vp", "dpm++3m", "logsnr", [80, 160, 320], 0.5, 0.9)
    assert 3.4 < e[0] / e[1] < 4.6 and 3.4 < e[1] / e[2] < 4.6, e
    full = _flow_errors("vp", "dpm++3m", "logsnr", [20, 40, 80])  # from the prior
    assert full[0] / full[1] > 6.5 and full[1] / full[2] > 6.5, full


# Mean errors at 20 and 40 calls on the default log-SNR grid (256 points):
#   VP (t <= 1 - 1e-3): dpm++2m 1.05e-2 2.83e-3; dpm++3m 2.29e-3 1.43e-4;
#                       unipc 6.55e-3 8.98e-4; unipc order 3 1.35e-4 5.41e-5
#   CondOT (0 -> 1):    dpm++2m 1.51e-2 3.78e-3; dpm++3m 5.03e-3 2.18e-4;
#                       unipc 1.13e-2 1.36e-3
# (at 10 calls or fewer, steps h >~ 1 in lambda, the third-order extrapolation is not better
# than DPM-Solver++(2M): VP at 10, 2.7e-2 against 3.7e-2 and 3.5e-2).
@pytest.mark.parametrize(("name", "t_end"), [("vp", 1 - 1e-3), ("ot", 1.0)])
def test_third_order_solvers_beat_dpm_solver_2m_at_equal_calls(name, t_end):
    two = _flow_errors(name, "dpm++2m", "logsnr", [20, 40], t_end=t_end)
    for solver, order in (("dpm++3m", None), ("unipc", None), ("unipc", 3)):
        e = _flow_errors(name, solver, "logsnr", [20, 40], t_end=t_end, order=order)
        assert e[0] < two[0] and e[1] < 0.5 * two[1], (solver, order, e, two)


def test_unipc_predictor_of_order_two_is_dpm_solver_2m():
    """With B(h) = 1 - e^{-h} and a_1 = 1/2, UniP-2 is DPM-Solver++(2M)'s step."""
    path = VPSDE()
    times = torch.tensor([0.2, 0.35, 0.5], dtype=DT)
    (a0, a1, a2), (s0, s1, s2) = (v.tolist() for v in path.alpha_sigma(times))
    lam = [math.log(a / s) for a, s in ((a0, s0), (a1, s1), (a2, s2))]
    x = _start_at(path, 0.35, 8)
    d_prev, d = _denoiser(path)(x + 0.1, times[0]), _denoiser(path)(x, times[1])
    unip = UniPC.update(x, s1, lam[1], [(lam[1], d), (lam[0], d_prev)], a2, s2, lam[2])
    two = DPMSolver2M(path, lambda y, t: d)
    two.begin(Run(), x, times)
    two.previous = (lam[0], d_prev)
    torch.testing.assert_close(unip, two.step(x, 0.35, 0.5), rtol=1e-12, atol=1e-12)


def test_unipc_rejects_a_bad_order():
    path = CondOTPath()
    for order in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match="order: expected 1, 2 or 3"):
            UniPC(path, _denoiser(path), order=order)
    with pytest.raises(TypeError, match="GaussianPath"):
        UniPC(object(), _denoiser(path))


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
    ("dpm++3m", 15, "logsnr", 0.03), ("unipc", 15, "logsnr", 0.03),
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


@pytest.mark.parametrize("solver", ["dpm++2m", "dpm++3m", "unipc", "edm_heun"])
def test_flow_matching_and_score_sde_models_sample_through_the_solvers(solver):
    from probgen.models import FlowMatching, ScoreSDE

    steps = 40 if solver == "edm_heun" else 20
    path = CondOTPath()
    fm = FlowMatching(_ExactPrediction(path, "velocity"), path, (2,))
    g = torch.Generator().manual_seed(3)
    x = fm.sample((6000,), sampler=solver, steps=steps, generator=g)
    assert fm.last_nfe == (2 * steps - 2 if solver == "edm_heun" else steps)
    sde = VPSDE()
    model = ScoreSDE(_ExactPrediction(sde, "score"), sde, (2,), parametrization="score")
    y = model.sample((6000,), sampler=solver, steps=steps, generator=g)
    for samples in (x, y):
        torch.testing.assert_close(samples.mean(0), MU, atol=0.04, rtol=0)
        torch.testing.assert_close(torch.cov(samples.T), COV, atol=0.06, rtol=0)
    a = fm.sample((4,), sampler=solver, steps=steps, generator=torch.Generator().manual_seed(5))
    b = fm.sample((4,), sampler=solver, steps=steps, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_every_family_samples_with_every_solver_and_names_them_once():
    from probgen.inference import DIFFUSION_SAMPLERS
    from probgen.models import SDE_SAMPLERS

    assert set(SOLVERS) <= set(DIFFUSION_SAMPLERS) and set(SOLVERS) <= set(SDE_SAMPLERS)
    assert {"dpm++3m", "unipc"} <= set(SOLVERS)
    sched = NoiseSchedule.linear(100)
    model = DiffusionModel(_ExactGaussianEps(sched), sched, (2,)).double()
    with pytest.raises(ValueError, match=r"grid of the ODE solvers \[.*'unipc'.*, not of 'ddim'"):
        diffusion_sample(model, torch.zeros(2, 2, dtype=DT), sampler="ddim", steps=5,
                         spacing="logsnr")
    with pytest.raises(ValueError, match=r"sampler: expected one of .*'dpm\+\+3m'"):
        diffusion_sample(model, torch.zeros(2, 2, dtype=DT), sampler="dpm++4m")


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
