"""The one denoising objective: the old losses' values through it, its minimum for Gaussian
data on every path and target, and its errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from probgen.couplings import ExactOTCoupling, SinkhornCoupling
from probgen.diffusion import NoiseSchedule
from probgen.inference import (
    ConditionalFlowMatching,
    ContinuousScoreMatching,
    DenoisingObjective,
    DenoisingScoreMatching,
    DiffusionLoss,
    DiscreteTimes,
    NoiseConditionalScoreMatching,
    NoiseLevelPath,
    Times,
    UniformTimes,
    denoise,
    perturb,
    variational_bound,
)
from probgen.inference.denoising import StepPath, check_label_dropout, split_batch
from probgen.paths import CondOTPath, LinearPath, VEPath, VPPath
from probgen.processes import PREDICTIONS
from probgen.sde import VESDE, VPSDE, SubVPSDE

DT = torch.float64


# ----------------------------------------------------------------------------- old values
class TimeNet(nn.Module):
    """A fixed small network ``f(x, t, labels=None)`` (float64, seeded weights)."""

    def __init__(self, features: int = 2, num_classes: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.w = nn.Parameter(0.5 * torch.randn(features + 1, features, generator=g, dtype=DT))
        self.b = nn.Parameter(0.1 * torch.randn(features, generator=g, dtype=DT))
        k = 1 if num_classes is None else num_classes + 1
        self.emb = nn.Parameter(0.3 * torch.randn(k, features, generator=g, dtype=DT))

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        h = torch.cat([x, t.to(x)[:, None]], 1) @ self.w + self.b
        if labels is not None:
            h = h + self.emb[labels]
        return torch.tanh(h) - 0.3 * x


class FakeDDPM(nn.Module):
    """The diffusion-model protocol with a network that ignores its time input, so that these
    values do not depend on DDPM's network time convention."""

    def __init__(self, parametrization: str = "eps", variance: str = "fixed_large",
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.schedule = NoiseSchedule.linear(20, 1e-3, 0.3)
        self.parametrization, self.variance = parametrization, variance
        self.num_classes = num_classes
        self.net, self.var = TimeNet(2, num_classes), TimeNet(2, num_classes)

    def output(self, x: Tensor, step: Tensor, labels: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        zero = torch.zeros(x.shape[0], dtype=x.dtype)
        v = torch.tanh(self.var(x, zero, labels)) if self.variance == "learned_range" else None
        return self.net(x, zero, labels), v


def _data(n: int = 64, seed: int = 5) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([1.0, -0.5], dtype=DT) + 0.7 * torch.randn(n, 2, generator=g, dtype=DT)


def _labels(n: int = 64, seed: int = 6) -> Tensor:
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))


def _run(objective: Callable[..., dict[str, Tensor]], batch: object) -> dict[str, float]:
    torch.manual_seed(3)  # the times, noise and label draws
    return {k: float(v.detach().sum()) for k, v in objective(batch).items()}


def _cases() -> dict[str, Callable[[], dict[str, float]]]:
    x, y = _data(), _labels()
    out: dict[str, Callable[[], dict[str, float]]] = {
        "dsm": lambda: _run(DenoisingScoreMatching(TimeNet(), 0.3), x),
        "ncsn": lambda: _run(NoiseConditionalScoreMatching(TimeNet(), LADDER), x),
        "ddpm_vlb": lambda: _run(DiffusionLoss(FakeDDPM("v", "fixed_small"), "vlb"), x),
        "ddpm_hybrid": lambda: _run(DiffusionLoss(FakeDDPM("eps", "learned_range"), "hybrid"),
                                    x),
        "ddpm_conditional": lambda: _run(DiffusionLoss(FakeDDPM(num_classes=3), log_bound=True),
                                         (x, y)),
        "ddpm_bound": lambda: _run(lambda b: variational_bound(FakeDDPM("x0"), b), x),
        "csm_conditional": lambda: _run(ContinuousScoreMatching(
            TimeNet(num_classes=3), VPSDE(), conditional=True, label_dropout=0.3,
            num_classes=3), (x, y)),
        "cfm_exact_ot": lambda: _run(ConditionalFlowMatching(
            TimeNet(), CondOTPath(), ExactOTCoupling()), x),
        "cfm_sinkhorn": lambda: _run(ConditionalFlowMatching(
            TimeNet(), CondOTPath(), SinkhornCoupling(0.1)), (x, y)),
        "cfm_paired": lambda: _run(ConditionalFlowMatching(
            TimeNet(), LinearPath(), paired=True), (_data(seed=8), x)),
        "cfm_conditional": lambda: _run(ConditionalFlowMatching(
            TimeNet(num_classes=3), CondOTPath(), conditional=True, label_dropout=0.3,
            num_classes=3), (x, y)),
    }
    for p in ("eps", "x0", "v"):
        out[f"ddpm_simple_{p}"] = lambda p=p: _run(DiffusionLoss(FakeDDPM(p), log_bound=True),
                                                   x)
    for name, sde in {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 5.0)}.items():
        for w in ("sigma2", "likelihood", "none"):
            out[f"csm_{name}_{w}"] = lambda sde=sde, w=w: _run(ContinuousScoreMatching(
                TimeNet(), sde, weighting=w, eps=0.05 if w == "none" else 1e-3), x)
        out[f"csm_{name}_importance"] = lambda sde=sde: _run(ContinuousScoreMatching(
            TimeNet(), sde, weighting="likelihood", importance=True), x)
    paths = {"ot": CondOTPath(), "ot_smin": CondOTPath(0.05), "vp": VPPath(),
             "ve": VEPath(sigma_max=5.0)}
    for name, path in paths.items():
        out[f"cfm_{name}"] = lambda path=path: _run(ConditionalFlowMatching(TimeNet(), path), x)
    return out


LADDER = torch.tensor([2.0, 0.7, 0.2, 0.05], dtype=DT)
# Measured with the losses' own code before they went through the one objective (commit
# 94d7f31), by _cases(): the same networks, data, seeds, times, noise and labels.
OLD = {
    "dsm": {"loss": 9.634358456904382},
    "ncsn": {"loss": 1.3377956147389878},
    "ddpm_simple_eps": {"loss": 1.8845633065324918, "mse": 1.8845633065324918,
                        "bpd_estimate": 7.561606555362472, "nll": 10.482612528706193},
    "ddpm_simple_x0": {"loss": 1.69952193398403, "mse": 1.69952193398403,
                       "bpd_estimate": 2148.796542887862, "nll": 2978.864530599358},
    "ddpm_simple_v": {"loss": 1.581063075407927, "mse": 1.581063075407927,
                      "bpd_estimate": 1.745065513375664, "nll": 2.4191744809774702},
    "ddpm_vlb": {"loss": 9.082297200067107, "mse": 1.581063075407927,
                 "bpd_estimate": 9.082297200067107, "nll": 12.590737394468002},
    "ddpm_hybrid": {"loss": 1.892466601750318, "mse": 1.8845633065324918,
                    "bpd_estimate": 7.903295217826176, "nll": 10.956293594738224},
    "ddpm_conditional": {"loss": 1.9294570785819636, "mse": 1.9294570785819636,
                         "bpd_estimate": 7.97885238084097, "nll": 11.061038063767851},
    "ddpm_bound": {"nll": 143048.13679070811, "bpd": 103187.41877818035,
                   "prior": 2.2218371718199563, "decoder": 133144.67463972213,
                   "terms": 143045.9149535363},
    "csm_vp_sigma2": {"loss": 0.7825432912912395},
    "csm_vp_likelihood": {"loss": 15.681531370453298},
    "csm_vp_none": {"loss": 2.538463394260217},
    "csm_vp_importance": {"loss": 20.625328635614018},
    "csm_subvp_sigma2": {"loss": 0.7922849782694561},
    "csm_subvp_likelihood": {"loss": 24.863518580839017},
    "csm_subvp_none": {"loss": 26.53561079557128},
    "csm_subvp_importance": {"loss": 34.24792210735251},
    "csm_ve_sigma2": {"loss": 1.3156529155514358},
    "csm_ve_likelihood": {"loss": 20.45294662784971},
    "csm_ve_none": {"loss": 722.087216528332},
    "csm_ve_importance": {"loss": 22.455299781973142},
    "csm_conditional": {"loss": 0.7731783378465051},
    "cfm_ot": {"loss": 2.1731015632534825},
    "cfm_ot_smin": {"loss": 2.095390078918232},
    "cfm_vp": {"loss": 3.2363038372054147},
    "cfm_ve": {"loss": 35.280652957254055},
    "cfm_exact_ot": {"loss": 1.3099084525192162},
    "cfm_sinkhorn": {"loss": 2.1236641158753375},
    "cfm_paired": {"loss": 1.2067013708831769},
    "cfm_conditional": {"loss": 2.00642526036984},
}


@pytest.mark.parametrize("case", sorted(OLD))
def test_every_loss_through_the_objective_keeps_its_old_value(case):
    got = _cases()[case]()
    for key, value in OLD[case].items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=0.0), (case, key)
    for alias in ("dsm", "ncsn", "cfm"):  # the family's name of the loss
        if alias in got:
            assert got[alias] == got["loss"]


def test_the_objective_itself_reproduces_ncsn_and_flow_matching():
    x = _data()
    ncsn = DenoisingObjective(TimeNet(), NoiseLevelPath(), prediction="score", target="eps",
                              times=DiscreteTimes(LADDER), weighting=0.5)
    assert _run(ncsn, x)["loss"] == pytest.approx(OLD["ncsn"]["loss"], rel=1e-6)
    path = VPPath()  # flow matching: the source is the noise, U(0, t_end) times
    torch.manual_seed(3)
    noise = torch.randn_like(x)
    out = denoise(TimeNet(), path, x, UniformTimes(0.0, path.t_end), prediction="velocity",
                  reduction="mean", noise=noise)
    assert float(out.loss.mean().detach()) == pytest.approx(OLD["cfm_vp"]["loss"], rel=1e-6)


def test_simple_loss_can_skip_its_logged_bound_without_changing_the_loss():
    x = _data()
    logged = _run(DiffusionLoss(FakeDDPM(), log_bound=True), x)
    quiet = DiffusionLoss(FakeDDPM())  # the default: no bound in training steps
    assert _run(quiet, x) == {"loss": logged["loss"], "mse": logged["mse"]}
    with torch.no_grad():  # evaluation passes always estimate the bound
        assert _run(quiet, x) == logged


# ----------------------------------------------------------------------------- minimum
MEAN, STD = torch.tensor([1.0, -0.5], dtype=DT), 0.6


def _posterior(m, x_t: Tensor) -> tuple[Tensor, Tensor]:
    r"""E[x | x_t] and E[eps | x_t] for data N(MEAN, STD^2 I): with C = a^2 s^2 + sigma^2,
    E[x | x_t] = MEAN + a s^2 (x_t - a MEAN) / C and E[eps | x_t] = sigma (x_t - a MEAN) / C."""
    a, s = m.alpha, m.sigma
    c = a**2 * STD**2 + s**2
    return MEAN + a * STD**2 * (x_t - a * MEAN) / c, s * (x_t - a * MEAN) / c


def _in(target: str, data: Tensor, eps: Tensor, m) -> Tensor:
    a, s, da, ds = m
    return {"eps": eps, "data": data, "v": a * eps - s * data, "score": -eps / s,
            "velocity": (da * data + ds * eps) if da is not None else None}[target]


def _irreducible(target: str, m) -> Tensor:
    r"""Var[T | x_t] per dimension. Given x_t, eps = (x_t - a x)/sigma, so T = c_x x + c_e eps
    has variance (c_x - c_e a/sigma)^2 Var[x | x_t], Var[x | x_t] = STD^2 sigma^2 / C, that is
    (c_x sigma - c_e a)^2 STD^2 / C."""
    a, s, da, ds = m
    c_x, c_e = {"eps": (0.0, 1.0), "data": (1.0, 0.0), "v": (-s, a), "score": (0.0, -1 / s),
                "velocity": (da, ds)}[target]
    return (c_x * s - c_e * a) ** 2 * STD**2 / (a**2 * STD**2 + s**2)


PATHS = {
    "vp": (VPSDE(), torch.linspace(0.1, 0.9, 9, dtype=DT)),
    "ve": (VESDE(0.01, 5.0), torch.linspace(0.1, 0.9, 9, dtype=DT)),
    "ot": (CondOTPath(), torch.linspace(0.1, 0.9, 9, dtype=DT)),
    "levels": (NoiseLevelPath(), torch.tensor([0.05, 0.3, 1.0, 3.0], dtype=DT)),
    "steps": (StepPath(NoiseSchedule.linear(50)), torch.tensor([0, 5, 20, 49])),
}


@pytest.mark.parametrize("name,target", [(n, t) for n in sorted(PATHS) for t in PREDICTIONS
                                         if (n, t) != ("steps", "velocity")])  # no derivative
def test_exact_gaussian_predictor_reaches_the_irreducible_variance(name, target):
    """With data N(m, s^2 I) and the exact E[T | x_t] the loss is E_t[w(t) D Var[T | x_t]],
    whatever the network predicts (converted to the target by the path)."""
    path, grid = PATHS[name]
    t = grid.repeat_interleave(20000)
    x = MEAN + STD * torch.randn(t.shape[0], 2, dtype=DT)
    m_t = path.coefficients(grid, torch.zeros(grid.shape[0], 2, dtype=DT))
    weight = (lambda t: 1.0 + t.to(DT) / 10) if name != "levels" else 0.5
    expected = 2 * _irreducible(target, m_t).flatten() * (
        weight(grid) if callable(weight) else weight)
    for source in dict.fromkeys((target, "eps")):

        def exact(x_t: Tensor, t: Tensor, source: str = source) -> Tensor:
            m = path.coefficients(t, x_t)
            return _in(source, *_posterior(m, x_t), m)

        out = denoise(exact, path, x, t, prediction=source, target=target, weighting=weight)
        assert float(out.loss.mean()) == pytest.approx(float(expected.mean()), rel=0.02), source


def test_objective_over_uniform_times_matches_the_time_integral():
    """On the VP path with uniform times the mean loss is the integral over t of the
    irreducible noise variance (eps target, summed over D = 2)."""
    sde = VPSDE()

    def exact(x_t: Tensor, t: Tensor) -> Tensor:
        return _posterior(sde.coefficients(t, x_t), x_t)[1]

    objective = DenoisingObjective(exact, sde, times=UniformTimes(0.2, 1.0))
    value = float(objective(MEAN + STD * torch.randn(200000, 2, dtype=DT))["loss"])
    grid = torch.linspace(0.2, 1.0, 4001, dtype=DT)
    curve = 2 * _irreducible("eps", sde.schedule(grid)).flatten()
    assert value == pytest.approx(float(torch.trapezoid(curve, grid) / 0.8), rel=0.02)


def test_perturb_is_the_path_kernel():
    path, x = CondOTPath(0.1), _data(5)
    p = perturb(path, x, torch.full((5,), 0.25, dtype=DT))
    assert torch.allclose(p.x_t, 0.25 * x + (1 - 0.9 * 0.25) * p.noise)


def test_label_dropout_only_in_training_passes():
    seen = {}

    def net(x, t, labels=None):
        seen["labels"] = labels
        return torch.zeros_like(x)

    objective = DenoisingObjective(net, CondOTPath(), conditional=True, label_dropout=0.4,
                                   num_classes=3)
    batch = (torch.randn(4000, 2), torch.zeros(4000, dtype=torch.long))
    objective(batch)
    assert abs(float((seen["labels"] == 3).double().mean()) - 0.4) < 0.04
    with torch.no_grad():
        objective(batch)
    assert not (seen["labels"] == 3).any()
    objective.eval()
    objective(batch)
    assert not (seen["labels"] == 3).any()


# ----------------------------------------------------------------------------- errors
def test_errors_say_what_was_expected():
    net, path, x = (lambda x, t: x), CondOTPath(), torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"network: expected an output of the shape of x "
                                         r"\(8, 2\), got \(8, 1\)"):
        denoise(lambda x, t: x[:, :1], path, x, 0.5)
    with pytest.raises(ValueError, match=r"field: expected an output .* got tuple"):
        denoise(lambda x, t: (), path, x, 0.5, name="field")
    with pytest.raises(ValueError, match=r"x: expected floating-point data \(batch, \*event\), "
                                         r"got torch.int64 of shape \(8, 2\)"):
        denoise(net, path, torch.ones(8, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"x: expected floating-point data .* got list"):
        denoise(net, path, [1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match=r"t: expected shape \(8,\)"):
        denoise(net, path, x, torch.rand(3))
    with pytest.raises(ValueError, match=r"times: expected Times with t of shape \(8,\), "
                                         r"got \(3,\)"):
        denoise(net, path, x, lambda n, like: Times(torch.rand(3)))
    with pytest.raises(TypeError, match="times: expected a time distribution"):
        denoise(net, path, x, "uniform")
    with pytest.raises(ValueError, match=r"prediction: expected one of \['eps', 'data', 'v', "
                                         r"'score', 'velocity'\], got 'x0'"):
        denoise(net, path, x, 0.5, prediction="x0")
    with pytest.raises(ValueError, match=r"reduction: expected one of \['sum', 'mean'\]"):
        denoise(net, path, x, 0.5, reduction="max")
    with pytest.raises(TypeError, match=r"path: expected a Gaussian path with "
                                        r"coefficients\(t, x\).*got str"):
        denoise(net, "ot", x, 0.5)
    with pytest.raises(ValueError, match=r"noise: expected the shape of x \(8, 2\), got "
                                         r"\(8, 3\)"):
        perturb(path, x, 0.5, torch.randn(8, 3))
    steps = StepPath(NoiseSchedule.linear(10))
    with pytest.raises(ValueError, match="target 'velocity': this path has no time deriv"):
        denoise(net, steps, x, DiscreteTimes(10), prediction="velocity")
    with pytest.raises(ValueError, match="velocity: this schedule has no time derivatives"):
        denoise(net, steps, x, DiscreteTimes(10), prediction="velocity", target="eps")
    with pytest.raises(ValueError, match="sigma: expected positive noise levels"):
        denoise(net, NoiseLevelPath(), x, 0.0)
    with pytest.raises(TypeError, match="schedule: expected a probgen.diffusion.NoiseSchedule"):
        StepPath("linear")
    with pytest.raises(ValueError, match=r"values: expected a number of steps or a non-empty "
                                         r"1-d tensor of times, got \(2, 2\)"):
        DiscreteTimes(torch.ones(2, 2))
    with pytest.raises(ValueError, match="low, high: expected low < high, got 1.0, 0.0"):
        UniformTimes(1.0, 0.0)
    with pytest.raises(ValueError, match=r"label_dropout: expected a probability in \[0, 1\), "
                                         r"got 1.5"):
        check_label_dropout(1.5, 3)
    with pytest.raises(ValueError, match="num_classes: label_dropout replaces labels"):
        check_label_dropout(0.1, None)
    with pytest.raises(ValueError, match="times: expected a time distribution for a path "
                                         "without t_end"):
        DenoisingObjective(net, NoiseLevelPath())
    with pytest.raises(TypeError, match="network: expected a callable"):
        DenoisingObjective("net", path)
    with pytest.raises(ValueError, match=r"needs \(x, labels\) batches"):
        DenoisingObjective(net, path, conditional=True)(x)
    with pytest.raises(TypeError, match=r"batch: expected a tensor x of shape \(batch, "
                                        r"\*event\) or a pair \(x, labels\), got \(8,\)"):
        split_batch(torch.randn(8))
    assert math.isfinite(float(DenoisingObjective(net, path)(x)["loss"]))


def test_drawn_times_outside_the_paths_support_are_refused_before_any_step():
    """Drawn times skip the per-step checks, so the time distribution's support is checked
    against the path once: a ladder with a non-positive level, U(0, 1) as noise levels, or
    more steps than the schedule has are errors, as the same times given directly are."""
    net = lambda x, t: x  # noqa: E731
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="positive noise levels"):
        denoise(net, NoiseLevelPath(), x, DiscreteTimes(torch.tensor([1.0, -0.5])))
    with pytest.raises(ValueError, match="positive noise levels"):
        denoise(net, NoiseLevelPath(), x, UniformTimes(0.0, 1.0))
    with pytest.raises(ValueError, match="step: expected indices in 0..9"):
        denoise(net, StepPath(NoiseSchedule.linear(10)), x, DiscreteTimes(12))
    ok = denoise(net, NoiseLevelPath(), x, DiscreteTimes(torch.tensor([1.0, 0.5])))
    assert ok.loss.shape == (4,)


def test_objectives_reused_across_steps_draw_as_fresh_ones():
    """DDPM, NCSN and flow matching keep their time distribution (and DDPM its step path)
    across steps so the support is checked once: a second step of one objective gives the
    loss a fresh objective gives after the same draws."""
    x = _data()

    def build(name: str) -> nn.Module:
        torch.manual_seed(0)
        if name == "ddpm":
            return DiffusionLoss(FakeDDPM())
        if name == "ncsn":
            return NoiseConditionalScoreMatching(TimeNet(), sigmas=LADDER)
        return ConditionalFlowMatching(TimeNet(), VPPath())

    for name in ("ddpm", "ncsn", "cfm"):
        reused = build(name)
        torch.manual_seed(1)
        reused(x)
        second = reused(x)["loss"].detach()
        fresh = build(name)
        torch.manual_seed(1)
        fresh(x)  # the same draws before the compared step
        assert float(second) == pytest.approx(float(fresh(x)["loss"].detach()), rel=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighting", [1.0, 0.5, "callable", "importance"])
def test_batch_means_equal_the_mean_of_the_per_example_losses(reduction, weighting):
    """``per_example=False`` (the objectives' fast path) returns the batch means of the
    per-example losses and errors: by hand, the mean over the batch of the event's sum or
    mean of squares, times the weight."""
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64)
    net = TimeNet().double()
    w = (lambda s: 1.0 + s) if weighting == "callable" else (
        1.0 if weighting == "importance" else weighting)
    times = t if weighting != "importance" else (
        lambda n, like: Times(t, weight=torch.linspace(0.5, 2.0, n, dtype=like.dtype)))
    noise = torch.randn_like(x)
    out = denoise(net, VPPath(), x, times, weighting=w, reduction=reduction, noise=noise,
                  per_example=True)
    fast = denoise(net, VPPath(), x, times, weighting=w, reduction=reduction, noise=noise,
                   per_example=False)
    sq = (net(out.x_t, out.t) - noise).pow(2).flatten(1)
    error = sq.sum(1) if reduction == "sum" else sq.mean(1)
    factor = torch.ones(64, dtype=x.dtype)
    if weighting == "callable":
        factor = 1.0 + t
    elif weighting == "importance":
        factor = torch.linspace(0.5, 2.0, 64, dtype=x.dtype)
    elif weighting == 0.5:
        factor = factor * 0.5
    assert fast.loss.dim() == 0 and fast.error.dim() == 0
    torch.testing.assert_close(fast.error, error.mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(fast.loss, (factor * error).mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(out.loss, factor * error, rtol=1e-10, atol=0)


def test_drawn_steps_read_the_schedules_coefficients_in_the_datas_dtype():
    """The training path reads sqrt(abar) and sqrt(1 - abar) at drawn steps from a table kept
    in the data's dtype: the float64 values rounded to that dtype, re-read after the
    schedule's buffers move or change."""
    sched = NoiseSchedule.cosine(50)
    step = torch.tensor([0, 7, 49, 7])
    ab = sched.alphas_cumprod[step]
    for dtype in (torch.float32, torch.float64, torch.float32):
        like = torch.zeros(4, 3, 2, 2, dtype=dtype)
        m = sched.marginal_at(step, like)
        assert m.alpha.shape == (4, 1, 1, 1) and m.alpha.dtype == dtype
        assert torch.equal(m.alpha.flatten(), ab.sqrt().to(dtype))
        assert torch.equal(m.sigma.flatten(), (1 - ab).sqrt().to(dtype))
    sched.sqrt_alphas_cumprod.mul_(0.5)  # an in-place change is seen
    m = sched.marginal_at(step, like)
    assert torch.equal(m.alpha.flatten(), (0.5 * ab.sqrt()).to(torch.float32))
    x = torch.randn(4, 2)
    drawn = denoise(lambda x_t, s: x_t, StepPath(NoiseSchedule.linear(10)), x,
                    DiscreteTimes(10))
    a, s = NoiseSchedule.linear(10).marginal_at(drawn.t)[:2]
    torch.testing.assert_close(drawn.x_t, a[:, None].float() * x + s[:, None].float()
                               * drawn.noise)
