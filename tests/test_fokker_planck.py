"""The 1-D Fokker-Planck solver against closed forms (linear SDEs carry Gaussian mixtures to
Gaussian mixtures) and against histograms of paths simulated by torchsde."""

from __future__ import annotations

import math

import pytest
import torch
import torchsde

from probgen.fokker_planck import histogram_density, solve_fokker_planck
from probgen.sde import VESDE, VPSDE, SubVPSDE

WEIGHTS, MEANS, STDS = (0.3, 0.7), (-2.0, 1.5), (0.3, 0.5)


def _mixture(x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
    # The initial mixture pushed through x_s = alpha x_0 + sigma eps.
    out = torch.zeros_like(x)
    for w, m, s in zip(WEIGHTS, MEANS, STDS, strict=True):
        sd = math.sqrt(alpha**2 * s**2 + sigma**2)
        out = out + w * torch.exp(-0.5 * ((x - alpha * m) / sd) ** 2) / (sd * math.sqrt(
            2 * math.pi))
    return out


def _sample_mixture(n: int) -> torch.Tensor:
    k = torch.multinomial(torch.tensor(WEIGHTS), n, replacement=True)
    return (torch.tensor(MEANS)[k] + torch.tensor(STDS)[k] * torch.randn(n))[:, None]


@pytest.mark.parametrize("sde,bounds", [(VPSDE(), (-6.0, 6.0)), (SubVPSDE(), (-6.0, 6.0)),
                                        (VESDE(0.01, 3.0), (-14.0, 14.0))],
                         ids=["vp", "subvp", "ve"])
def test_density_matches_closed_form(sde, bounds):
    times = [0.0, 0.1, 0.4, 1.0]
    sol = solve_fokker_planck(sde, _mixture, bounds, 600, times)
    torch.testing.assert_close(sol.mass(), torch.ones(4, dtype=torch.float64), atol=1e-8,
                               rtol=0)
    for k, s in enumerate(times):
        alpha, sigma = sde.alpha_sigma(torch.tensor(1.0 - s, dtype=torch.float64))
        exact = _mixture(sol.centers, float(alpha), float(sigma))
        l1 = float((sol.density[k] - exact).abs().sum()) * sol.width
        assert l1 < 5e-3, (s, l1)


def test_density_matches_histogram_of_simulated_paths():
    sde = VPSDE()
    n = 40000
    times = torch.tensor([0.0, 0.15, 0.5])
    paths = torchsde.sdeint(sde, _sample_mixture(n), times, method="euler", dt=1e-3)
    sol = solve_fokker_planck(sde, _mixture, (-6.0, 6.0), 480, times)
    coarse = sol.edges[::12]  # 40 bins of width 0.3
    for k in range(1, 3):
        hist = histogram_density(paths[k], coarse)
        fp = sol.density[k].reshape(40, 12).mean(-1)  # the solution's bin averages
        l1 = float((hist - fp).abs().sum()) * 0.3
        # Monte Carlo: E L1 of a 40-bin histogram of 40000 draws is about 0.03.
        assert l1 < 0.06, (float(times[k]), l1)
    # A wrong drift (half the VP one) is visibly off: the test can fail.
    wrong = solve_fokker_planck(VPSDE(0.05, 10.0), _mixture, (-6.0, 6.0), 480, times)
    hist = histogram_density(paths[2], coarse)
    assert float((hist - wrong.density[2].reshape(40, 12).mean(-1)).abs().sum()) * 0.3 > 0.2


def test_x_dependent_diffusion_reaches_its_stationary_density():
    # x-dependent diffusion D(x) = g^2 / 2 = 1 + x^2 / 4 with drift f = -D x + D': zero flux
    # f p = (D p)' gives (D p)'/(D p) = -x + D'/D, so the stationary density is N(0, 1).
    class Sde:
        def f(self, s, y):
            d = 1 + y**2 / 4
            return -d * y + y / 2

        def g(self, s, y):
            return (2 * (1 + y**2 / 4)).sqrt()

    sol = solve_fokker_planck(Sde(), lambda x: torch.exp(-0.5 * ((x - 1) / 0.3) ** 2),
                              (-8.0, 8.0), 400, [0.0, 8.0])
    stationary = torch.exp(-0.5 * sol.centers**2) / math.sqrt(2 * math.pi)
    assert float((sol.density[-1] - stationary).abs().sum()) * sol.width < 5e-3


def test_histogram_density_and_errors():
    edges = torch.linspace(0, 1, 5)
    h = histogram_density(torch.tensor([0.1, 0.1, 0.6, 2.0]), edges)
    torch.testing.assert_close(h, torch.tensor([2.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="lo < hi"):
        solve_fokker_planck(VPSDE(), _mixture, (1.0, 0.0), 10, [0, 1])
    with pytest.raises(ValueError, match="increasing"):
        solve_fokker_planck(VPSDE(), _mixture, (-1.0, 1.0), 10, [1, 0])
    with pytest.raises(ValueError, match="no mass"):
        solve_fokker_planck(VPSDE(), torch.zeros(10), (-1.0, 1.0), 10, [0, 1])
    with pytest.raises(ValueError, match="method"):
        solve_fokker_planck(VPSDE(), _mixture, (-1.0, 1.0), 10, [0, 1], method="RK45")
