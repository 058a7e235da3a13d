"""Continuous flows against mathematics: linear ODEs in closed form, the change of variables
through autograd Jacobians, adjoint = backprop, normalization on a grid; FFJORD/CNF models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from probgen.cnf import ContinuousFlow
from probgen.data import toy_sample
from probgen.inference import RegularizedMaximumLikelihood, fit
from probgen.metrics import integrate_density_2d
from probgen.models import CNF, FFJORD, MODELS, ConcatSquashField, TimeMLPField

DT = torch.float64
A = torch.tensor([[0.3, -1.0], [0.6, -0.5]], dtype=DT)
TIGHT = {"rtol": 1e-9, "atol": 1e-9}


def _base(d: int = 2, dtype: torch.dtype = DT) -> Independent:
    return Independent(Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)), 1)


def _linear(x, t):
    return x @ A.T


class Field(nn.Module):
    """A small nonlinear, time-dependent field, optionally conditioned."""

    def __init__(self, context: int = 0) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Linear(3 + context, 32), nn.Tanh(), nn.Linear(32, 2))
        self.net.to(DT)
        self.context = context

    def forward(self, x, t, context=None):
        h = [x, t[:, None]] + ([context] if self.context else [])
        return self.net(torch.cat(h, -1))


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("t1", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("method,options", [("dopri5", TIGHT), ("bosh3", TIGHT),
                                            ("rk4", {"step_size": 0.01})])
def test_linear_field_log_density_is_closed_form(t1, method, options):
    """v = A x: x_t = exp(t A) x_0, log p_t(x) = log N(exp(-t A) x) - t tr(A)."""
    flow = ContinuousFlow(_linear, _base(), method=method, t1=t1, **options)
    x = torch.randn(6, 2, dtype=DT)
    expected = _base().log_prob(x @ torch.linalg.matrix_exp(-t1 * A).T) - t1 * A.trace()
    tol = {"dopri5": 1e-7, "bosh3": 1e-6, "rk4": 1e-8}[method]
    assert torch.allclose(flow.log_prob(x).detach(), expected, atol=tol)
    z = torch.randn(6, 2, dtype=DT)
    pushed = flow.flow(z)
    assert torch.allclose(pushed, z @ torch.linalg.matrix_exp(t1 * A).T, atol=tol)


def test_fixed_step_counts_its_evaluations():
    flow = ContinuousFlow(_linear, _base(), method="rk4", step_size=0.1)
    flow.log_prob(torch.randn(3, 2, dtype=DT))
    assert flow.last_solve.nfe == 40  # 10 steps x 4 stages
    flow = ContinuousFlow(_linear, _base(), method="euler", step_size=0.05)
    flow.sample((4,))
    assert flow.last_solve.nfe == 20 and flow.last_solve.kind == "sample"


def test_penalties_of_a_linear_field_are_closed_form():
    """Jacobian: int |A|_F^2 dt = |A|_F^2; kinetic: int |A x_t|^2 dt with x_t = e^{(t-1)A} x."""
    flow = ContinuousFlow(_linear, _base(), **TIGHT)
    x = torch.randn(4, 2, dtype=DT)
    _, terms = flow.log_prob_and_penalties(x)
    assert torch.allclose(terms["jacobian"], A.pow(2).sum().expand(4), atol=1e-8)
    ts = torch.linspace(0, 1, 2001, dtype=DT)
    speeds = torch.stack([(x @ torch.linalg.matrix_exp((t - 1) * A).T @ A.T).pow(2).sum(-1)
                          for t in ts])
    simpson = (speeds[0] + speeds[-1] + 4 * speeds[1:-1:2].sum(0) + 2 * speeds[2:-1:2].sum(0))
    assert torch.allclose(terms["kinetic"], simpson / (3 * 2000), atol=1e-8)


# ----------------------------------------------------- change of variables, nonlinear


def test_log_prob_of_samples_is_base_density_plus_solved_log_det():
    """log p(x) with x = Phi(z) equals log N(z) - log|det dPhi/dz|, the Jacobian of the solved
    map by autograd through the solver; the forward and backward solves agree."""
    field = Field()
    flow = ContinuousFlow(field, _base(), **TIGHT)
    z = torch.randn(4, 2, dtype=DT)
    x = flow.flow(z).detach()
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: flow.flow(v[None])[0], zi)
                       for zi in z])
    expected = _base().log_prob(z) - torch.linalg.slogdet(jac)[1]
    assert torch.allclose(flow.log_prob(x).detach(), expected, atol=1e-7)
    assert torch.allclose(flow.flow(x, reverse=True).detach(), z, atol=1e-7)
    torch.manual_seed(5)
    samples, log_p = flow.rsample_and_log_prob((5,))
    assert torch.allclose(flow.log_prob(samples.detach()).detach(), log_p.detach(), atol=1e-7)


def test_hutchinson_log_prob_is_unbiased():
    """The probe enters linearly: the mean over probes of the estimated log-density is exact."""
    field = Field()
    x = torch.randn(1, 2, dtype=DT)
    with torch.no_grad():
        exact = ContinuousFlow(field, _base()).log_prob(x)
        flow = ContinuousFlow(field, _base(), trace="hutchinson", noise="gaussian",
                              generator=torch.Generator().manual_seed(0))
        est = flow.log_prob(x.expand(4000, 2))
    assert est.std() > 1e-3  # a real estimate, not the exact value
    assert abs(float(est.mean() - exact)) < 4 * float(est.std()) / 4000**0.5


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gradients_equal_backprop_gradients(trace):
    field = Field()
    x = torch.randn(8, 2, dtype=DT)
    grads = []
    for adjoint in (False, True):
        flow = ContinuousFlow(field, _base(), trace=trace, adjoint=adjoint, **TIGHT,
                              generator=torch.Generator().manual_seed(0))
        loss = -flow.log_prob(x).mean()
        grads.append(torch.autograd.grad(loss, list(field.parameters())))
        assert flow.last_solve.adjoint == adjoint
        assert (flow.last_solve.nfe_backward > 0) == adjoint
    for g_bp, g_adj in zip(*grads, strict=True):
        assert torch.allclose(g_bp, g_adj, atol=1e-6, rtol=1e-5)


def test_fixed_step_adjoint_uses_the_same_steps():
    field = Field()
    x = torch.randn(8, 2, dtype=DT)
    grads = []
    for adjoint in (False, True):
        flow = ContinuousFlow(field, _base(), method="rk4", step_size=0.05, adjoint=adjoint)
        grads.append(torch.autograd.grad(flow.log_prob(x).mean(), list(field.parameters())))
    assert flow.last_solve.nfe == 80 and flow.last_solve.nfe_backward == 80
    for g_bp, g_adj in zip(*grads, strict=True):  # equal up to the O(h^4) of the two solves
        assert torch.allclose(g_bp, g_adj, atol=1e-6, rtol=1e-4)


def test_adjoint_sampling_gradients_equal_backprop():
    field = Field()
    z = torch.randn(6, 2, dtype=DT)
    grads = []
    for adjoint in (False, True):
        flow = ContinuousFlow(field, _base(), adjoint=adjoint, **TIGHT)
        grads.append(torch.autograd.grad(flow.flow(z).pow(2).sum(), list(field.parameters())))
    for g_bp, g_adj in zip(*grads, strict=True):
        assert torch.allclose(g_bp, g_adj, atol=1e-6, rtol=1e-5)


def _breathing(x, t):
    """v = a(t) x with a(t) = 3 cos(12 t): x_1 = x_0 e^I, log p_1(x) = log N(x e^-I) - 2 I,
    I = int_0^1 a = sin(12) / 4; near x = 0 the log-density, not x, limits the steps."""
    return (3.0 * torch.cos(12.0 * t))[:, None] * x


def test_log_density_atol_loosens_only_the_log_density():
    x = 0.01 * torch.randn(16, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    integral = math.sin(12.0) / 4
    exact = _base().log_prob(x * math.exp(-integral)) - 2 * integral
    default = ContinuousFlow(_breathing, _base())
    same = ContinuousFlow(_breathing, _base(), log_density_atol=1e-5)  # = atol: unchanged
    loose = ContinuousFlow(_breathing, _base(), log_density_atol=1e-3)
    lp, lp_same, lp_loose = default.log_prob(x), same.log_prob(x), loose.log_prob(x)
    assert torch.equal(lp, lp_same) and default.last_solve.nfe == same.last_solve.nfe
    assert (lp - exact).abs().max() < 1e-3
    assert (lp_loose - exact).abs().max() < 1e-2  # of the order of its tolerance
    assert loose.last_solve.nfe < default.last_solve.nfe
    z = torch.randn(4, 2, dtype=DT)  # the transport alone has no log-density
    assert torch.equal(default.flow(z), loose.flow(z))
    # samples with their log-density (the state runs forwards) and the penalties' 4 states
    _, log_p = loose.rsample_and_log_prob((3,))
    assert log_p.shape == (3,)
    _, terms = loose.log_prob_and_penalties(x)
    assert set(terms) == {"kinetic", "jacobian"}


def test_log_density_atol_with_the_adjoint():
    field = Field()
    x = torch.randn(8, 2, dtype=DT)
    grads = []
    for adjoint in (False, True):
        flow = ContinuousFlow(field, _base(), adjoint=adjoint, log_density_atol=1e-7, **TIGHT)
        grads.append(torch.autograd.grad(-flow.log_prob(x).mean(), list(field.parameters())))
    for g_bp, g_adj in zip(*grads, strict=True):
        assert torch.allclose(g_bp, g_adj, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- context


def test_field_with_a_context_argument():
    """v(x, t, c) = c A x: log-density with context c is log N(exp(-c A) x) - c tr(A)."""

    def field(x, t, context):
        return context * (x @ A.T)

    c = torch.tensor([[0.5], [1.0], [2.0]], dtype=DT)
    flow = ContinuousFlow(field, _base(), context=c, **TIGHT)
    assert flow.batch_shape == (3,) and flow.event_shape == (2,)
    x = torch.randn(5, 3, 2, dtype=DT)  # (sample, batch, event)
    expected = torch.stack([
        _base().log_prob(x[:, i] @ torch.linalg.matrix_exp(-ci * A).T) - ci * A.trace()
        for i, ci in enumerate(c[:, 0])], dim=1)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-7)
    assert flow.sample((4,)).shape == (4, 3, 2)
    samples, log_p = flow.rsample_and_log_prob((4,))
    assert samples.shape == (4, 3, 2) and log_p.shape == (4, 3)
    assert flow.expand((2, 3)).sample().shape == (2, 3, 2)


def test_context_gradients_through_the_adjoint():
    field = Field(context=1)
    x = torch.randn(4, 2, dtype=DT)
    grads = []
    for adjoint in (False, True):
        c = torch.full((4, 1), 0.7, dtype=DT, requires_grad=True)
        flow = ContinuousFlow(field, _base(), context=c, adjoint=adjoint, **TIGHT)
        grads.append(torch.autograd.grad(flow.log_prob(x).sum(), c)[0])
    assert grads[0].abs().sum() > 0
    assert torch.allclose(*grads, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument_and_the_allowed_values():
    base = _base()
    with pytest.raises(ValueError, match="method: expected one of"):
        ContinuousFlow(_linear, base, method="leapfrog")
    with pytest.raises(ValueError, match="step_size: method 'rk4' takes fixed steps"):
        ContinuousFlow(_linear, base, method="rk4")
    with pytest.raises(ValueError, match="step_size: method 'dopri5' is adaptive"):
        ContinuousFlow(_linear, base, step_size=0.1)
    with pytest.raises(ValueError, match="t0, t1: expected 0 <= t0 < t1 <= 1"):
        ContinuousFlow(_linear, base, t0=0.5, t1=0.2)
    with pytest.raises(ValueError, match="trace: expected one of"):
        ContinuousFlow(_linear, base, trace="approx")
    with pytest.raises(ValueError, match="adjoint_params"):
        ContinuousFlow(_linear, base, adjoint=True)
    with pytest.raises(ValueError, match="log_density_atol: expected a positive number"):
        ContinuousFlow(_linear, base, log_density_atol=0.0)
    with pytest.raises(TypeError, match="base: expected a torch.distributions.Distribution"):
        ContinuousFlow(_linear, "normal")
    flow = ContinuousFlow(_linear, base)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 2\), got \(4, 3\)"):
        flow.log_prob(torch.randn(4, 3, dtype=DT))
    with pytest.raises(ValueError, match="NaN or Inf"):
        flow.log_prob(torch.full((2, 2), math.nan, dtype=DT))
    bad = ContinuousFlow(lambda x, t: x[:, :1], base)
    with pytest.raises(ValueError, match="must return the shape"):
        bad.sample((2,))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("cls", [FFJORD, CNF])
def test_models_protocol_shapes_and_modes(cls):
    torch.manual_seed(0)
    flow = cls(2, hidden_features=[16, 16])
    assert MODELS[cls.__name__] is cls
    x = torch.randn(5, 2)
    assert flow.log_prob(x).shape == (5,) and flow.nfe > 0
    assert flow.sample((3,)).shape == (3, 2)
    samples, log_p = flow.rsample_and_log_prob((3,))
    assert samples.shape == (3, 2) and log_p.shape == (3,)
    flow.eval()  # exact trace: deterministic
    with torch.no_grad():
        assert torch.equal(flow.log_prob(x), flow.log_prob(x))
    loss = -flow.log_prob(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())
    clone = cls(2, hidden_features=[16, 16])
    clone.load_state_dict(flow.state_dict())
    clone.eval()
    with torch.no_grad():
        assert torch.allclose(clone.log_prob(x), flow.log_prob(x))
    double = flow.double()
    assert double.log_prob(x.double()).dtype == DT
    assert cls.__name__ in repr(flow)


def test_fields_see_time_and_context():
    for field in (ConcatSquashField(2, [8], context=3), TimeMLPField(2, [8], context=3, freqs=2)):
        x, c = torch.randn(4, 2), torch.randn(4, 3)
        out = field(x, torch.zeros(4), context=c)
        assert out.shape == (4, 2)
        assert not torch.allclose(out, field(x, torch.ones(4), context=c))
        with pytest.raises(ValueError, match=r"context: expected shape \(4, 3\)"):
            field(x, torch.zeros(4))
        with pytest.raises(ValueError, match=r"t: expected shape \(4,\)"):
            field(x, torch.zeros(3), context=c)


def test_models_pass_the_log_density_tolerance_on():
    flow = CNF(2, hidden_features=[8], log_density_atol=1e-3)
    assert flow.distribution().log_density_atol == 1e-3
    assert "log_density_atol=0.001" in repr(flow)
    assert "log_density_atol" not in repr(FFJORD(2, hidden_features=[8]))
    assert FFJORD(2, hidden_features=[8]).distribution().log_density_atol == 1e-5  # = atol


def test_conditional_model_and_its_errors():
    flow = CNF(2, hidden_features=[8], context=1)
    c = torch.randn(3, 1)
    assert flow.log_prob(torch.randn(3, 2), c).shape == (3,)
    assert flow.sample((2,), c).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="this flow is conditional"):
        flow.log_prob(torch.randn(3, 2))
    with pytest.raises(ValueError, match="activation: expected one of"):
        CNF(2, activation="swish")
    with pytest.raises(ValueError, match="step_size"):
        FFJORD(2, method="euler")


def test_regularized_likelihood_adds_weighted_penalties():
    torch.manual_seed(0)
    flow = CNF(2, hidden_features=[16])
    objective = RegularizedMaximumLikelihood(flow, kinetic=0.3, jacobian=0.2)
    x = torch.randn(16, 2)
    out = objective(x)
    log_p, terms = flow.log_prob_and_penalties(x)
    assert torch.allclose(out["nll"], -log_p.mean(), atol=1e-5)
    expected = out["nll"] + 0.3 * out["kinetic"] + 0.2 * out["jacobian"]
    assert torch.allclose(out["loss"], expected)
    assert out["kinetic"] > 0 and out["jacobian"] > 0 and out["nfe"] > 0
    with pytest.raises(ValueError, match="kinetic: expected a weight >= 0"):
        RegularizedMaximumLikelihood(flow, kinetic=-1.0)
    class Plain(nn.Module):
        def log_prob(self, x, context=None):
            return -x.pow(2).sum(-1)

    with pytest.raises(TypeError, match="log_prob_and_penalties"):
        RegularizedMaximumLikelihood(Plain(), kinetic=1.0)


def test_trained_2d_model_density_integrates_to_one():
    """After training (RNODE-regularized, fixed-step), the density, solved adaptively, still
    integrates to 1 on a grid within 1%."""
    torch.manual_seed(0)
    flow = CNF(2, hidden_features=[32, 32], method="rk4", step_size=0.125)
    objective = RegularizedMaximumLikelihood(flow, kinetic=0.01, jacobian=0.01)
    data = toy_sample("8gaussians", 4096, generator=torch.Generator().manual_seed(0))
    history = fit(objective, data, steps=120, batch_size=256, lr=3e-3, progress=False,
                  log_every=40)
    assert history.records[-1]["nll"] < history.records[0]["nll"] - 0.3  # it learned
    evaluator = CNF(2, hidden_features=[32, 32], rtol=1e-6, atol=1e-6)
    evaluator.load_state_dict(flow.state_dict())
    evaluator.eval()
    with torch.no_grad():
        total = integrate_density_2d(evaluator.log_prob, bounds=(-7, 7), resolution=140)
    assert total == pytest.approx(1.0, abs=0.01)
