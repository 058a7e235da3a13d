"""Divergences against mathematics: autograd Jacobians, traces, Hutchinson's moments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probgen.divergence import (
    exact_divergence,
    hutchinson_divergence,
    hutchinson_noise,
    jacobian,
)

DT = torch.float64


def _net(d: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, d)).to(DT)


def _autograd_jacobians(f, x):
    """Per-example Jacobians by torch.autograd.functional.jacobian, one example at a time."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda y: f(y[None])[0], xi) for xi in x
    ])


def test_linear_field_has_matrix_jacobian_and_trace():
    a = torch.randn(4, 4, dtype=DT)
    x = torch.randn(7, 4, dtype=DT)
    value, jac = jacobian(lambda y: y @ a.T, x)
    assert torch.allclose(value, x @ a.T)
    assert torch.allclose(jac, a.expand(7, 4, 4))
    out = exact_divergence(lambda y: y @ a.T, x, jacobian_norm=True)
    assert torch.allclose(out.divergence, a.trace().expand(7))
    assert torch.allclose(out.jacobian_norm, a.pow(2).sum().expand(7))


@pytest.mark.parametrize("vectorize", [None, True, False])
def test_nonlinear_field_matches_autograd_jacobian(vectorize):
    net = _net(3)
    x = torch.randn(6, 3, dtype=DT)
    _, jac = jacobian(net, x, vectorize=vectorize)
    expected = _autograd_jacobians(net, x)
    assert torch.allclose(jac, expected, atol=1e-12)
    out = exact_divergence(net, x, jacobian_norm=True, vectorize=vectorize)
    assert torch.allclose(out.divergence, expected.diagonal(dim1=-2, dim2=-1).sum(-1))
    assert torch.allclose(out.jacobian_norm, expected.pow(2).sum((-2, -1)))


def test_image_shaped_events_flatten_to_one_jacobian():
    w = torch.randn(6, 6, dtype=DT)

    def f(y):  # (batch, 2, 3) -> (batch, 2, 3), mixing all entries
        return torch.tanh(y.flatten(1) @ w.T).reshape(y.shape)

    x = torch.randn(5, 2, 3, dtype=DT)
    _, jac = jacobian(f, x, vectorize=False)
    assert torch.allclose(jac, jacobian(f, x, vectorize=True)[1], atol=1e-12)
    expected = _autograd_jacobians(lambda y: f(y.reshape(-1, 2, 3)).flatten(1), x.flatten(1))
    assert jac.shape == (5, 6, 6)
    assert torch.allclose(jac, expected, atol=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_divergence_is_differentiable_in_the_parameters(vectorize):
    net = _net(2)
    x = torch.randn(5, 2, dtype=DT)
    div = exact_divergence(net, x, vectorize=vectorize).divergence.sum()
    params = list(net.parameters())  # the last bias does not move the divergence: grad 0
    grads = torch.autograd.grad(div, params, allow_unused=True, materialize_grads=True)

    def reference():
        jac = torch.stack([torch.autograd.functional.jacobian(
            lambda y: net(y[None])[0], xi, create_graph=True) for xi in x])
        return jac.diagonal(dim1=-2, dim2=-1).sum()

    expected = torch.autograd.grad(reference(), params, allow_unused=True,
                                   materialize_grads=True)
    assert grads[0].abs().sum() > 0
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_no_graph_is_kept_under_no_grad(vectorize):
    net = _net(2)
    x = torch.randn(5, 2, dtype=DT)
    with torch.no_grad():
        out = exact_divergence(net, x, jacobian_norm=True, vectorize=vectorize)
        est = hutchinson_divergence(net, x, hutchinson_noise(x))
    for t in (out.value, out.divergence, out.jacobian_norm, est.value, est.divergence):
        assert not t.requires_grad


def test_divergence_of_a_constant_field_is_zero():
    x = torch.randn(3, 2, dtype=DT)
    out = exact_divergence(lambda y: torch.ones_like(y), x)
    assert torch.equal(out.divergence, torch.zeros(3, dtype=DT))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_noise_has_identity_covariance(kind):
    g = torch.Generator().manual_seed(0)
    eps = hutchinson_noise(torch.zeros(200_000, 3, dtype=DT), kind, generator=g)
    cov = eps.T @ eps / eps.shape[0]
    assert torch.allclose(cov, torch.eye(3, dtype=DT), atol=0.02)
    if kind == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_mean_and_variance_match_theory(kind):
    """E[e^T A e] = tr A; E|A^T e|^2 = |A|_F^2; Var = sum_ij A_ij^2 + A_ij A_ji (Gaussian), the
    same without the diagonal terms (Rademacher)."""
    torch.manual_seed(3)
    a = torch.randn(3, 3, dtype=DT)
    n = 200_000
    x = torch.randn(n, 3, dtype=DT)
    eps = hutchinson_noise(x, kind, generator=torch.Generator().manual_seed(1))
    out = hutchinson_divergence(lambda y: y @ a.T, x, eps, jacobian_norm=True)
    s = a * a + a * a.T
    variance = float(s.sum() - (s.diagonal().sum() if kind == "rademacher" else 0.0))
    est = out.divergence
    stderr = (variance / n) ** 0.5
    assert abs(float(est.mean()) - float(a.trace())) < 4 * stderr
    assert float(est.var()) == pytest.approx(variance, rel=0.05)
    norm = out.jacobian_norm
    assert abs(float(norm.mean()) - float(a.pow(2).sum())) < 4 * float(norm.std()) / n**0.5


def test_hutchinson_mean_matches_exact_trace_of_a_network():
    net = _net(3)
    x = torch.randn(1, 3, dtype=DT).expand(100_000, 3)
    exact = exact_divergence(net, x[:1]).divergence.detach()
    with torch.no_grad():
        est = hutchinson_divergence(net, x, hutchinson_noise(x)).divergence
    assert abs(float(est.mean() - exact)) < 4 * float(est.std()) / est.numel() ** 0.5


def test_errors_say_what_was_expected():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="must return the shape of its input"):
        exact_divergence(lambda y: y.sum(-1), x)
    with pytest.raises(ValueError, match=r"noise: expected the shape of x \(4, 2\)"):
        hutchinson_divergence(lambda y: y, x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="kind: expected one of"):
        hutchinson_noise(x, "uniform")
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, \*event\)"):
        exact_divergence(lambda y: y, torch.randn(3))
    with pytest.raises(TypeError, match="floating-point"):
        exact_divergence(lambda y: y, torch.ones(3, 2, dtype=torch.long))
