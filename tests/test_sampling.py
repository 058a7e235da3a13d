"""The one sampler loop and its steppers, against the exact predictions of Gaussian data."""

import pytest
import torch

from probgen.inference import (
    DDIM,
    DPMSolver2M,
    DPMSolver3M,
    EDMHeun,
    Stepper,
    UniPC,
    sample_loop,
    time_grid,
)
from probgen.inference.langevin import Langevin
from probgen.inference.sde import (
    EulerMaruyama,
    LangevinCorrector,
    PredictorCorrector,
    ReverseDiffusion,
)
from probgen.paths import CondOTPath
from probgen.sde import VESDE, VPSDE

DT = torch.float64
MU = torch.tensor([1.0, -2.0], dtype=DT)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=DT)


def _moments_match(x, atol_mean, rtol_cov):
    mean, cov = x.mean(0), torch.cov(x.T)
    assert torch.allclose(mean, MU, atol=atol_mean), mean
    assert torch.allclose(cov, COV, rtol=rtol_cov, atol=rtol_cov * 0.3), cov


def _start(path, n, generator):
    return path.prior_std * torch.randn(n, 2, dtype=DT, generator=generator)


@pytest.mark.parametrize("path", [VPSDE(), CondOTPath()], ids=["vp", "condot"])
@pytest.mark.parametrize(("make", "steps", "grid"), [
    (lambda p, d: DDIM(p, d), 40, "time"),
    # the stochastic step plugs in E[x | x_t]: exact only as the steps shrink
    (lambda p, d: DDIM(p, d, eta=1.0), 1000, "time"),
    (lambda p, d: DPMSolver2M(p, d), 40, "logsnr"),
    (lambda p, d: DPMSolver3M(p, d), 20, "logsnr"),
    (lambda p, d: UniPC(p, d), 20, "logsnr"),
    (lambda p, d: UniPC(p, d, order=3), 20, "logsnr"),
    (lambda p, d: EDMHeun(p, d), 40, "karras")],
    ids=["ddim", "ddim-eta1", "dpm++2m", "dpm++3m", "unipc", "unipc3", "edm_heun"])
def test_path_steppers_driven_by_the_exact_prediction_reproduce_the_gaussian(
        path, make, steps, grid):
    g = torch.Generator().manual_seed(0)

    def data(x, t):
        return path.gaussian_prediction(x, t[0], MU, COV, "data")

    grid = time_grid(path, steps, grid=grid, t_end=min(path.t_end, 0.999))
    out = sample_loop(make(path, data), _start(path, 20000, g), grid, generator=g)
    _moments_match(out.samples, 0.03, 0.06)


@pytest.mark.parametrize("predictor", [ReverseDiffusion, EulerMaruyama, None])
def test_predictor_corrector_steppers_with_the_exact_score_reproduce_the_gaussian(predictor):
    sde = VPSDE() if predictor is not EulerMaruyama else VESDE(sigma_min=0.01, sigma_max=10.0)
    g = torch.Generator().manual_seed(1)

    def score(x, t):
        return sde.gaussian_prediction(x, t[0], MU, COV, "score")

    stepper = PredictorCorrector(
        None if predictor is None else predictor(sde, score),
        LangevinCorrector(sde, score, snr=0.16, steps=2 if predictor is None else 1),
        sde=sde, score=score)
    out = sample_loop(stepper, _start(sde, 20000, g),
                      torch.linspace(0.0, 1.0 - 1e-3, 301, dtype=DT), generator=g)
    _moments_match(out.samples, 0.05, 0.1)


def test_langevin_stepper_reaches_its_biased_stationary_law():
    # ULA on N(0, s^2) with step eta has variance s^2 / (1 - eta / (4 s^2)).
    s2, eta = 1.0, 0.4
    g = torch.Generator().manual_seed(2)
    out = sample_loop(Langevin(lambda x: -x / s2, eta), torch.zeros(40000, 1, dtype=DT),
                      torch.arange(300, dtype=DT), generator=g)
    assert abs(out.samples.var().item() - s2 / (1 - eta / (4 * s2))) < 0.03
    assert out.nfe == 299


class _Counting(Stepper):
    def step(self, x, t, t_next):
        return self.run.call(lambda y, s: y + (t_next - t) * self.run.noise(y), x, t)

    def end(self, x, t):
        return self.run.call(lambda y, s: 2 * y, x, t)


def test_the_loop_owns_nfe_trajectory_modes_and_seeds():
    net = torch.nn.Linear(2, 2)
    net.train()
    grid = torch.linspace(0, 1, 8, dtype=DT)
    a = sample_loop(_Counting(), torch.zeros(3, 2), grid, record_every=3,
                    generator=torch.Generator().manual_seed(5), networks=[net])
    b = sample_loop(_Counting(), torch.zeros(3, 2), grid,
                    generator=torch.Generator().manual_seed(5))
    assert net.training  # restored
    assert a.nfe == 8 and torch.equal(a.samples, b.samples)  # 7 steps + the end
    # the start, steps 3 and 6, and the end's state (the end counts as step 8)
    assert a.trajectory.shape == (4, 3, 2) and b.trajectory is None
    assert torch.equal(a.trajectory[0], torch.zeros(3, 2))
    assert torch.equal(a.trajectory[-1], a.samples)
    assert torch.equal(a.times, grid)


def test_the_loop_rejects_bad_input():
    with pytest.raises(TypeError, match="Stepper"):
        sample_loop(object(), torch.zeros(2, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match="floating start of shape"):
        sample_loop(_Counting(), torch.zeros(2), [0.0, 1.0])
    with pytest.raises(ValueError, match="strictly monotone"):
        sample_loop(_Counting(), torch.zeros(2, 2), [0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="record_every"):
        sample_loop(_Counting(), torch.zeros(2, 2), [0.0, 1.0], record_every=0)
    with pytest.raises(ValueError, match=r"network: expected an output of the shape of x"):
        class Bad(Stepper):
            def step(self, x, t, t_next):
                return self.run.call(lambda y, s: y[:, :1], x, t)
        sample_loop(Bad(), torch.zeros(2, 2), [0.0, 1.0])


class _Exact(torch.nn.Module):
    """The exact prediction of N(MU, COV) data on a path, as a network of (x, t)."""

    def __init__(self, path, target):
        super().__init__()
        self.path, self.target = path, target
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=DT))

    def forward(self, x, t, labels=None):
        assert bool((t == t[0]).all())  # the samplers call one time per batch
        return self.path.gaussian_prediction(x, t[0], MU, COV, self.target)


@pytest.mark.parametrize(("family", "sampler", "options"), [
    # a flow-matching model on its VP path through the stochastic (posterior) sampler
    ("fm", "ddim", {"eta": 1.0, "steps": 1000}),
    ("fm", "ode", {"method": "rk4", "steps": 20}),
    # a score model through the flow-matching samplers of its path
    ("sde", "ode", {"method": "dopri5"}),
    ("sde", "ddim", {"eta": 1.0, "steps": 1000}),
])
def test_every_model_of_a_path_samples_with_every_sampler_of_that_path(family, sampler,
                                                                       options):
    from probgen.models import FlowMatching, ScoreSDE
    from probgen.paths import VPPath

    g = torch.Generator().manual_seed(4)
    if family == "fm":
        path = VPPath()
        model = FlowMatching(_Exact(path, "velocity"), path, (2,))
    else:
        path = VPSDE()
        model = ScoreSDE(_Exact(path, "score"), path, (2,), parametrization="score")
    x = model.sample((20000,), sampler=sampler, generator=g, **options)
    assert x.dtype == DT
    _moments_match(x, 0.05, 0.08)
    if sampler == "ddim" and family == "fm":
        assert model.last_nfe == 1000


@pytest.mark.parametrize(("sampler", "steps", "calls"), [
    ("ancestral", 10, 10), ("ddim", 10, 10), ("dpm++2m", 10, 10), ("edm_heun", 10, 19),
    ("dpm++3m", 10, 10), ("unipc", 10, 10)])
def test_ddpm_reports_its_network_calls(sampler, steps, calls):
    from probgen.models import VectorDDPM

    model = VectorDDPM(2, num_steps=100, hidden_features=[8])
    seen = []
    model.network.register_forward_hook(lambda *_: seen.append(1))
    model.sample((4,), sampler=sampler, steps=steps)
    assert model.last_nfe == calls == len(seen)
