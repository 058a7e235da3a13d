"""Gaussian paths and the one conversion between predictions, against their definitions."""

from __future__ import annotations

import itertools

import pytest
import torch

from probgen.diffusion import NoiseSchedule, SchedulePath
from probgen.paths import CondOTPath, CosinePath, LinearPath, VEPath, VPPath
from probgen.processes import PREDICTIONS, GaussianPath, Marginal, convert_prediction
from probgen.sde import VESDE, VPSDE, SubVPSDE

DT = torch.float64
PATHS = {"vp-sde": VPSDE, "subvp-sde": SubVPSDE, "ve-sde": lambda: VESDE(0.01, 5.0),
         "ot": CondOTPath, "ot-sigma_min": lambda: CondOTPath(0.1), "linear": LinearPath,
         "vp-path": VPPath, "ve-path": lambda: VEPath(0.01, 5.0), "cosine": CosinePath,
         "ddpm-linear": lambda: SchedulePath(NoiseSchedule.linear(1000)),
         "ddpm-cosine": lambda: SchedulePath(NoiseSchedule.cosine(100))}


def _truth(m: Marginal, data: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every prediction at x = a data + s eps, from its definition."""
    a, s, da, ds = m
    return {"eps": eps, "data": data, "v": a * eps - s * data, "score": -eps / s,
            "velocity": da * data + ds * eps}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(PREDICTIONS, repeat=2)))
def test_every_conversion_maps_the_true_prediction_to_the_true_prediction(source, target):
    g = torch.Generator().manual_seed(0)
    n = 16
    coefficient = lambda low, high: low + (high - low) * torch.rand(n, 1, generator=g,  # noqa: E731
                                                                    dtype=DT)
    # Any path: alpha, sigma > 0 and derivatives with Delta = a ds - da s != 0.
    m = Marginal(coefficient(0.1, 2.0), coefficient(0.1, 3.0), coefficient(0.5, 2.0),
                 -coefficient(0.5, 2.0))
    data = torch.randn(n, 3, generator=g, dtype=DT)
    eps = torch.randn(n, 3, generator=g, dtype=DT)
    x = m.alpha * data + m.sigma * eps
    truth = _truth(m, data, eps)
    got = convert_prediction(truth[source], x, m, source=source, target=target)
    torch.testing.assert_close(got, truth[target], rtol=1e-10, atol=1e-10)


def test_conversion_errors_say_what_was_expected():
    m = Marginal(torch.tensor(0.6), torch.tensor(0.8))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="source: expected one of"):
        convert_prediction(x, x, m, source="noise", target="eps")
    with pytest.raises(ValueError, match="no time derivatives"):
        convert_prediction(x, x, m, source="eps", target="velocity")
    with pytest.raises(ValueError, match=r"shape of x \(2, 3\)"):
        convert_prediction(torch.zeros(2, 2), x, m, source="eps", target="data")


@pytest.mark.parametrize("name", PATHS)
def test_schedule_derivatives_are_the_autograd_derivatives(name):
    path: GaussianPath = PATHS[name]()
    t = torch.linspace(0.05, 0.95, 19, dtype=DT, requires_grad=True)
    m = path.schedule(t)

    def derivative(value: torch.Tensor) -> torch.Tensor:  # a constant has no graph
        if not value.requires_grad:
            return torch.zeros_like(t)
        return torch.autograd.grad(value.sum(), t, retain_graph=True)[0]

    d_alpha, d_sigma = derivative(m.alpha), derivative(m.sigma)
    torch.testing.assert_close(m.d_alpha.detach(), d_alpha, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(m.d_sigma.detach(), d_sigma, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", PATHS)
def test_path_convert_is_the_conversion_at_the_paths_schedule(name):
    path: GaussianPath = PATHS[name]()
    g = torch.Generator().manual_seed(1)
    t = 0.1 + 0.8 * torch.rand(8, generator=g, dtype=DT)
    data, eps = torch.randn(8, 2, generator=g, dtype=DT), torch.randn(8, 2, generator=g,
                                                                          dtype=DT)
    m = path.coefficients(t, data)
    x = m.alpha * data + m.sigma * eps
    truth = _truth(m, data, eps)
    for target in PREDICTIONS:
        torch.testing.assert_close(path.convert(eps, x, t, source="eps", target=target),
                                   truth[target], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PATHS)
def test_prior_is_the_paths_law_at_time_zero_up_to_the_data(name):
    """At t = 0 the path is alpha_0 x + sigma_0 eps: the prior N(0, prior_std^2 I) is its
    noise part (alpha_0 = 0 for the OT paths, tiny for VP; sigma_0 = prior_std)."""
    path: GaussianPath = PATHS[name]()
    prior = path.prior((3,), dtype=DT)
    assert prior.event_shape == (3,)
    _, sigma0 = path.alpha_sigma(torch.tensor(0.0, dtype=DT))
    torch.testing.assert_close(prior.stddev, torch.full((3,), float(sigma0), dtype=DT),
                               rtol=1e-3, atol=0)


def test_ddpm_schedule_converts_through_the_same_function():
    """NoiseSchedule.convert (DDPM names: x0 is the data) equals convert_prediction at
    (sqrt(abar), sqrt(1 - abar))."""
    sched = NoiseSchedule.linear(100)
    g = torch.Generator().manual_seed(2)
    step = torch.randint(0, 100, (6,), generator=g)
    x0 = torch.randn(6, 2, generator=g, dtype=DT)
    eps = torch.randn(6, 2, generator=g, dtype=DT)
    ab = sched.alphas_cumprod[step].to(DT)[:, None]
    x = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(sched.convert(eps, x, step, "eps", "x0"), x0)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(sched.convert(v, x, step, "v", "eps"), eps)
    torch.testing.assert_close(sched.convert(eps, x, step, "eps", "score"),
                               -eps / (1 - ab).sqrt())
