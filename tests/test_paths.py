"""Probability paths against mathematics: targets are time derivatives (autograd), the
closed-form Gaussian marginal field carries the source exactly onto the path's end
(moment ODEs), conversions invert one another and agree with the Gaussian's exact score and
with the VP SDE's probability-flow ODE."""

from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from probgen.paths import (
    PATHS,
    CondOTPath,
    DiffusionPath,
    LinearPath,
    VEPath,
    VPPath,
    get_path,
)
from probgen.sde import SubVPSDE

PATH_CASES = {
    "ot": lambda: CondOTPath(),
    "ot-sigma_min": lambda: CondOTPath(sigma_min=0.1),
    "linear": lambda: LinearPath(),
    "vp": lambda: VPPath(),
    "ve": lambda: VEPath(sigma_min=0.01, sigma_max=5.0),
    "subvp": lambda: DiffusionPath(SubVPSDE()),
}
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.5, 0.6], [0.6, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("name", PATH_CASES)
def test_conditional_target_is_time_derivative_of_x_t(name):
    path = PATH_CASES[name]()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = (0.02 + (path.t_end - 0.04) * torch.rand(16, generator=g, dtype=torch.float64))
    t.requires_grad_(True)
    s = path.sample(x0, x1, t)
    # d x_t[k, d] / d t[k], one column at a time (examples do not interact).
    grads = torch.stack([torch.autograd.grad(s.x_t[:, d].sum(), t, retain_graph=True)[0]
                         for d in range(3)], 1)
    torch.testing.assert_close(s.dx_t, grads, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", PATH_CASES)
def test_schedule_derivatives_match_autograd(name):
    path = PATH_CASES[name]()
    t = torch.linspace(0.05, path.t_end - 0.01, 7, dtype=torch.float64, requires_grad=True)
    m = path.schedule(t)
    d_alpha, d_sigma = (torch.autograd.grad(v.sum(), t, retain_graph=True)[0]
                        if v.requires_grad else torch.zeros_like(t)  # VE: alpha = 1
                        for v in (m.alpha, m.sigma))
    torch.testing.assert_close(m.d_alpha.detach(), d_alpha, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(m.d_sigma.detach(), d_sigma, rtol=1e-8, atol=1e-10)


def test_cond_ot_path_is_the_course_formula():
    path = CondOTPath(sigma_min=0.05)
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    t = torch.rand(5, generator=g)
    s = path.sample(x0, x1, t)
    torch.testing.assert_close(s.x_t, t[:, None] * x1 + (1 - (1 - 0.05) * t[:, None]) * x0)
    torch.testing.assert_close(s.dx_t, x1 - (1 - 0.05) * x0)
    end = path.sample(x0, x1, 1.0)  # N(x1, sigma_min^2) at the data
    torch.testing.assert_close(end.x_t, x1 + 0.05 * x0)
    torch.testing.assert_close(path.sample(x0, x1, 0.0).x_t, x0)


def _moment_flow(path, t_start, t_end):
    """Integrates the mean and covariance of x_t under the (affine) closed-form field."""
    d = MEAN.shape[0]

    def field(x, t):
        return path.gaussian_prediction(x, t.expand(x.shape[0]), MEAN, COV, "velocity")

    def rhs(t, state):
        m, p = state[:d], state[d:].reshape(d, d)
        b = field(torch.zeros(1, d, dtype=torch.float64), t)[0]
        a = torch.autograd.functional.jacobian(lambda x: field(x[None], t)[0],
                                               torch.zeros(d, dtype=torch.float64))
        return torch.cat([a @ m + b, (a @ p + p @ a.T).reshape(-1)])

    m0, p0 = path.gaussian_marginal(t_start, MEAN, COV)
    ts = torch.tensor([t_start, t_end], dtype=torch.float64)
    out = odeint(rhs, torch.cat([m0, p0.reshape(-1)]), ts, rtol=1e-10, atol=1e-12,
                 method="dopri5", options={"step_t": ts[-1:]})[-1]  # no step past t_end
    return out[:d], out[d:].reshape(d, d)


@pytest.mark.parametrize("name", PATH_CASES)
def test_gaussian_marginal_field_transports_source_onto_the_data_exactly(name):
    """The mean and covariance ODEs of the closed-form marginal field, from the path's law
    at t = 0 (N(0, I) for the OT paths), reach the path's law at its end: for the OT path
    N(mu, Sigma) itself, with sigma_min N(mu, Sigma + sigma_min^2 I)."""
    path = PATH_CASES[name]()
    mean, cov = _moment_flow(path, 0.0, path.t_end)
    want_mean, want_cov = path.gaussian_marginal(path.t_end, MEAN, COV)
    torch.testing.assert_close(mean, want_mean, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(cov, want_cov, rtol=1e-7, atol=1e-7)
    if name in ("ot", "linear"):
        torch.testing.assert_close(mean, MEAN, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(cov, COV, rtol=1e-7, atol=1e-7)
    if name in ("ot", "ot-sigma_min", "linear"):  # the source is exactly N(0, I)
        m0, c0 = path.gaussian_marginal(0.0, MEAN, COV)
        torch.testing.assert_close(m0, torch.zeros(2, dtype=torch.float64))
        torch.testing.assert_close(c0, torch.eye(2, dtype=torch.float64))


def _gaussian_score(path, x, t):
    a, s, _, _ = path.schedule(t)
    c = a[:, None, None] ** 2 * COV + s[:, None, None] ** 2 * torch.eye(2, dtype=x.dtype)
    return -torch.linalg.solve(c, (x - a[:, None] * MEAN).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("name", PATH_CASES)
def test_conversions_invert_and_match_the_gaussian_closed_forms(name):
    path = PATH_CASES[name]()
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = 0.05 + (path.t_end - 0.1) * torch.rand(64, generator=g, dtype=torch.float64)
    v = path.gaussian_prediction(x, t, MEAN, COV, "velocity")
    # Round trips through every other prediction.
    for other in ("eps", "data", "v", "score"):
        back = path.convert(path.convert(v, x, t, source="velocity", target=other), x, t,
                            source=other, target="velocity")
        torch.testing.assert_close(back, v)
    # The exact score of p_t = N(a mu, a^2 Sigma + s^2 I) gives the exact field, and the
    # field gives back the exact score.
    score = _gaussian_score(path, x, t)
    torch.testing.assert_close(path.convert(score, x, t, source="score", target="velocity"), v)
    torch.testing.assert_close(path.convert(v, x, t, source="velocity", target="score"), score)
    torch.testing.assert_close(path.gaussian_prediction(x, t, MEAN, COV), score)
    # Every exact prediction is the conversion of the exact score.
    for other in ("eps", "data", "v"):
        torch.testing.assert_close(path.gaussian_prediction(x, t, MEAN, COV, other),
                                   path.convert(score, x, t, source="score", target=other))


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_diffusion_path_velocity_is_the_probability_flow_ode(name):
    """Flow matching along a diffusion path learns the SDE's probability-flow field."""
    path = PATH_CASES[name]()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(32, generator=g, dtype=torch.float64)
    score = _gaussian_score(path, x, t)
    flow = path.sde.probability_flow(lambda y, tt: _gaussian_score(path, y, tt))
    torch.testing.assert_close(path.convert(score, x, t, source="score", target="velocity"),
                               flow(x, t))


def test_conditional_field_moves_the_conditional_gaussian():
    """u_t(x | x1) evaluated at x_t equals the conditional target (the x0 is recovered)."""
    path = CondOTPath(sigma_min=0.1)
    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    t = torch.rand(8, generator=g)
    s = path.sample(x0, x1, t)
    torch.testing.assert_close(path.conditional_field(s.x_t, x1, t), s.dx_t)


def test_prior_and_endpoints():
    assert VPPath().prior_std == 1.0 and VEPath(sigma_max=7.0).prior_std == 7.0
    assert CondOTPath().t_end == 1.0 and VPPath(eps=1e-3).t_end == pytest.approx(0.999)
    prior = VEPath(sigma_max=3.0).prior((1, 4, 4))
    assert prior.event_shape == (1, 4, 4)
    assert float(prior.base_dist.scale.max()) == 3.0
    m = VPPath().schedule(torch.tensor([0.0, 0.999]))
    assert float(m.alpha[0]) < 0.01 and float(m.sigma[1]) < 0.05
    assert math.isclose(float(m.alpha[0] ** 2 + m.sigma[0] ** 2), 1.0, rel_tol=1e-6)


def test_get_path_and_errors():
    assert set(PATHS) == {"ot", "linear", "vp", "ve"}
    assert isinstance(get_path("vp", beta_max=10.0), VPPath)
    with pytest.raises(ValueError, match="expected one of"):
        get_path("cosine")
    with pytest.raises(ValueError, match=r"parameters \['beta_max'\] do not apply"):
        get_path("ot", beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        CondOTPath(sigma_min=1.0)
    with pytest.raises(TypeError, match="probgen.sde.SDE"):
        DiffusionPath("vp")
    path = CondOTPath()
    with pytest.raises(ValueError, match=r"times in \[0, 1\]"):
        path.sample(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        path.sample(torch.zeros(2, 2), torch.zeros(2, 2), torch.rand(3))
    with pytest.raises(ValueError, match="one shape"):
        path.sample(torch.zeros(2, 2), torch.zeros(3, 2), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        path.sample(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2), 0.5)
