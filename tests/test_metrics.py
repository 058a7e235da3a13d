"""probgen.metrics: bits/dim identities and grid integration against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from probgen.metrics import (
    bits_per_dim,
    density_grid,
    integrate_density_2d,
    nats_to_bits,
    nll,
    parse_bounds,
)


def test_bits_per_dim_uniform_8bit_is_8():
    d = 784
    # uniform on [0, 1)^D in model space, data dequantized as (x + u) / 256
    # D log 256 / (D log 2) in float32: 8 up to a few ulps
    torch.testing.assert_close(bits_per_dim(torch.zeros(5), d, levels=256),
                               torch.full((5,), 8.0), rtol=1e-6, atol=0)
    # uniform on [0, 256)^D on the data's own scale
    bpd = bits_per_dim(torch.tensor(d * math.log(256.0), dtype=torch.float64), d)
    assert bpd.item() == pytest.approx(8.0, rel=1e-12)
    # uniform on [-1, 1)^D after x -> 2x - 1: log p = -D log 2, ladj = D log 2
    nll_signed = torch.tensor(d * math.log(2.0), dtype=torch.float64)
    bpd = bits_per_dim(nll_signed, d, ladj=d * math.log(2.0), levels=256)
    assert abs(bpd.item() - 8.0) < 1e-12


def test_bits_per_dim_identities_and_errors():
    nll_nats = torch.tensor([100.0, 200.0], dtype=torch.float64)
    ladj = torch.tensor([3.0, -4.0], dtype=torch.float64)
    expected = (nll_nats - ladj + 10 * math.log(17)) / (10 * math.log(2))
    assert torch.allclose(bits_per_dim(nll_nats, 10, ladj=ladj, levels=17), expected)
    # the levels term is the same as a log|det| of the 1/levels scaling
    same = bits_per_dim(nll_nats, 10, ladj=ladj - 10 * math.log(17))
    assert torch.allclose(same, expected)
    assert nats_to_bits(math.log(2.0)) == 1.0
    assert torch.allclose(nats_to_bits(torch.tensor(1.0)), torch.tensor(1 / math.log(2.0)))
    assert bits_per_dim(3, 1).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="num_dims: expected a positive int, got 0"):
        bits_per_dim(torch.zeros(1), 0)
    with pytest.raises(ValueError, match="levels: expected None or an int >= 2, got 1"):
        bits_per_dim(torch.zeros(1), 4, levels=1)


def test_nll():
    lp = torch.tensor([-1.0, -2.0, -6.0])
    assert nll(lp).item() == 3.0 and nll(lp, reduction="sum").item() == 9.0
    assert torch.equal(nll(lp, reduction="none"), -lp)
    assert nll(torch.tensor([-math.inf])).item() == math.inf
    with pytest.raises(ValueError, match="log_prob: contains NaN"):
        nll(torch.tensor([math.nan]))
    with pytest.raises(ValueError, match=r"reduction: expected one of \['mean', 'sum', 'none'\]"):
        nll(lp, reduction="avg")
    with pytest.raises(TypeError, match="log_prob: expected a floating-point tensor"):
        nll(torch.tensor([1]))


def test_gaussian_integrates_to_one():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
    gauss = MultivariateNormal(torch.tensor([0.5, -0.3]), cov)
    total = integrate_density_2d(gauss.log_prob, bounds=(-8, 8), resolution=400)
    assert abs(total - 1.0) < 1e-3
    # half the mass on a box cut through the mean
    half = integrate_density_2d(gauss.log_prob, bounds=((0.5, 9.0), (-9.0, 9.0)),
                                resolution=400)
    assert abs(half - 0.5) < 1e-3


def test_uniform_box_integrates_exactly():
    def log_prob(x):
        inside = (x[:, 0] >= 0) & (x[:, 0] <= 2) & (x[:, 1] >= 0) & (x[:, 1] <= 1)
        return torch.where(inside, -math.log(2.0), -math.inf)

    # cell edges fall on the box's edges: the midpoint rule is exact
    assert abs(integrate_density_2d(log_prob, bounds=(-1, 3), resolution=400) - 1.0) < 1e-6
    assert integrate_density_2d(log_prob, bounds=((5, 6), (5, 6)), resolution=10) == 0.0


def test_density_grid_orientation_and_batches():
    def log_prob(x):
        return x[:, 0] + 10 * x[:, 1]

    X, Y, logp = density_grid(log_prob, ((0, 1), (-2, 2)), 10, batch_size=7)
    assert X.shape == Y.shape == logp.shape == (10, 10)
    assert torch.allclose(X[0], torch.linspace(0.05, 0.95, 10, dtype=torch.float64))
    assert torch.allclose(Y[:, 0], torch.linspace(-1.8, 1.8, 10, dtype=torch.float64))
    assert torch.allclose(logp, (X + 10 * Y).to(logp.dtype), atol=1e-5)


def test_grid_bad_input():
    with pytest.raises(ValueError, match=r"log_prob: expected log-densities of shape \(4,\)"):
        density_grid(lambda x: x, 1.0, 2)
    with pytest.raises(ValueError, match="bounds: expected finite xmin < xmax, got"):
        integrate_density_2d(lambda x: x[:, 0], bounds=(1, -1))
    with pytest.raises(ValueError, match=r"bounds: expected B, \(lo, hi\)"):
        parse_bounds("wide")
    with pytest.raises(ValueError, match="resolution: expected an int >= 2, got 1"):
        density_grid(lambda x: x[:, 0], 1.0, 1)
    assert parse_bounds(((0, 1), (2, 3))) == ((0.0, 1.0), (2.0, 3.0))
