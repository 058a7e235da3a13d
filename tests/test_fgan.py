"""The f-GAN table against mathematics: conjugates as suprema, tight bounds at T* = f'(p/q),
Fenchel's inequality for any critic, and trained critics reaching the true divergence
between two 1-D Gaussians (computed by numerical integration)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch.distributions import Normal

from probgen.fdivergences import F_DIVERGENCES, f_divergence_1d, get_f_divergence
from probgen.inference import Adversarial, fit
from probgen.models import MLPGAN

P, Q = Normal(0.0, 1.0), Normal(1.0, 1.0)  # data P, model Q
GRID = torch.linspace(-12.0, 13.0, 25001, dtype=torch.float64)
DX = float(GRID[1] - GRID[0])
# Closed forms for P = N(0, 1), Q = N(1, 1) (shift 1): KL both ways 1/2, Pearson e - 1,
# squared Hellinger 2(1 - e^{-1/8}), TV 2 Phi(1/2) - 1.
CLOSED = {
    "kl": 0.5, "reverse_kl": 0.5, "pearson": math.e - 1,
    "hellinger": 2 * (1 - math.exp(-1 / 8)),
    "tv": 2 * float(Normal(0.0, 1.0).cdf(torch.tensor(0.5))) - 1,
}


def _quadrature_bound(div, t: torch.Tensor) -> float:
    """E_P[T] - E_Q[f*(T)] by a Riemann sum over GRID, T given on GRID."""
    p, q = P.log_prob(GRID).exp(), Q.log_prob(GRID).exp()
    return float(((p * t - q * div.conjugate(t)) * DX).sum())


def _f(div, u: float) -> float:
    return float(div.generator(torch.tensor(u, dtype=torch.float64)))


@pytest.mark.parametrize("name", sorted(F_DIVERGENCES))
def test_conjugate_is_the_supremum(name):
    div = get_f_divergence(name)
    for v in (-3.0, -0.7, 0.0, 0.4, 2.0):
        t = float(div.activation(torch.tensor(v, dtype=torch.float64)))
        if name in ("pearson", "tv"):  # f is defined on all of R: sup over u in R
            res = minimize_scalar(lambda u, t=t: -(u * t - _f(div, u)), bounds=(-50.0, 50.0),
                                  method="bounded", options={"xatol": 1e-10})
        else:  # sup over u > 0, searched over s = log u
            res = minimize_scalar(lambda s, t=t: -(math.exp(s) * t - _f(div, math.exp(s))),
                                  bounds=(-25.0, 25.0), method="bounded",
                                  options={"xatol": 1e-10})
        expected = -res.fun
        got = float(div.conjugate(torch.tensor(t, dtype=torch.float64)))
        assert got == pytest.approx(expected, abs=2e-5), (name, v, t)


@pytest.mark.parametrize("name", sorted(F_DIVERGENCES))
def test_true_divergences_match_closed_forms(name):
    value = f_divergence_1d(name, P.log_prob, Q.log_prob)
    js = value if name == "js" else f_divergence_1d("js", P.log_prob, Q.log_prob)
    expected = CLOSED.get(name, {"js": js, "gan": js - math.log(4.0)}.get(name))
    if name == "js":  # 2 JS: the two KLs to the mixture, summed (independent quadrature)
        m = lambda x: torch.logaddexp(P.log_prob(x), Q.log_prob(x)) - math.log(2.0)  # noqa: E731
        expected = float(((P.log_prob(GRID).exp() * (P.log_prob(GRID) - m(GRID))
                           + Q.log_prob(GRID).exp() * (Q.log_prob(GRID) - m(GRID))) * DX).sum())
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", sorted(F_DIVERGENCES))
def test_bound_is_tight_at_the_optimal_critic(name):
    div = get_f_divergence(name)
    ratio = (P.log_prob(GRID) - Q.log_prob(GRID)).exp()
    t_star = div.derivative(ratio)
    true = f_divergence_1d(name, P.log_prob, Q.log_prob)
    assert _quadrature_bound(div, t_star) == pytest.approx(true, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", sorted(F_DIVERGENCES))
def test_any_critic_stays_below_the_divergence(name):
    div = get_f_divergence(name)
    true = f_divergence_1d(name, P.log_prob, Q.log_prob)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b, c = (torch.randn(3, generator=g, dtype=torch.float64) * torch.tensor([2, 1, .3],
                                                                                  dtype=torch.float64))
        v = a * GRID + b + c * GRID**2 / 10
        t = div.activation(v)
        assert _quadrature_bound(div, t) <= true + 1e-6


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "pearson", "hellinger", "tv"])
def test_trained_critic_reaches_the_divergence_from_below(name):
    torch.manual_seed(0)
    gan = MLPGAN(1, latent_dim=1, hidden_features=[], critic_hidden_features=[32, 32])
    with torch.no_grad():  # the generator is the fixed map z -> z + 1: Q = N(1, 1)
        gan.generator.net[0].weight.fill_(1.0)
        gan.generator.net[0].bias.fill_(1.0)
    objective = Adversarial(gan, name, train_generator=False)
    assert list(objective.parameter_groups()) == ["critic"]
    before = _quadrature_bound(get_f_divergence(name), _critic_on_grid(gan, name))
    fit(objective, lambda n, generator=None: torch.randn(n, 1, generator=generator),
        steps=600, batch_size=1024, lr=3e-3, progress=False, log_every=100)
    after = _quadrature_bound(get_f_divergence(name), _critic_on_grid(gan, name))
    true = f_divergence_1d(name, P.log_prob, Q.log_prob)
    assert before < 0.5 * true
    assert after <= true + 1e-4
    assert after >= 0.95 * true, (name, after, true)
    generator = gan.generator.net[0]
    assert float(generator.weight.detach()) == 1.0 and float(generator.bias.detach()) == 1.0


def _critic_on_grid(gan: MLPGAN, name: str) -> torch.Tensor:
    with torch.no_grad():
        v = gan.critic(GRID.float().unsqueeze(1)).double()
    return get_f_divergence(name).activation(v)


def test_unknown_divergence_lists_the_names():
    with pytest.raises(ValueError, match=r"expected one of \['gan', 'hellinger'"):
        get_f_divergence("chi2")
