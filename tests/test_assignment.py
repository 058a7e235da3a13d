"""The warm-started assignment is exact: its cost equals scipy's cold optimum (and brute
force on tiny problems) on random, tied, constant and rectangular costs, below and above
the warm-start threshold, in 2 to 784 dimensions; the sample's and the auction's prices make
scipy's job easy but never change it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from probgen.assignment import (
    MIN_WARM_START,
    SAMPLE,
    auction_prices,
    linear_assignment,
    sample_prices,
)


def _cost(c: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    return float(c[rows, cols].sum())


def _check(c: np.ndarray) -> None:
    rows, cols = linear_assignment(c)
    ref_rows, ref_cols = linear_sum_assignment(c)
    n = min(c.shape)
    assert rows.shape == cols.shape == (n,)
    assert np.all(np.diff(rows) > 0) and len(set(cols.tolist())) == n  # injective
    best = _cost(c, ref_rows, ref_cols)
    assert _cost(c, rows, cols) == pytest.approx(best, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        c = rng.random((n, n))
        best = min(c[np.arange(n), list(p)].sum() for p in itertools.permutations(range(n)))
        rows, cols = linear_assignment(c)
        assert c[rows, cols].sum() == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("shape", [(2 * SAMPLE, 2 * SAMPLE), (200, 200),
                                   (MIN_WARM_START, MIN_WARM_START), (300, 300), (512, 512),
                                   (260, 400), (400, 260)])
def test_warm_start_is_exact(shape):
    rng = np.random.default_rng(sum(shape))
    x0, x1 = rng.standard_normal((shape[0], 2)), 2 * rng.random((shape[1], 2)) - 1
    _check(((x0[:, None] - x1[None]) ** 2).sum(-1))  # squared distances (the couplings')
    _check(rng.random(shape))  # uniform costs
    _check(rng.integers(0, 5, shape).astype(float))  # many ties


@pytest.mark.parametrize(("n", "dim"), [(320, 8), (320, 64), (300, 784), (1024, 2)])
def test_warm_start_is_exact_in_dimensions(n, dim):
    """Sizes that are not multiples of the sample's stride, features 2 to 784 (the
    flow-matching batches' shapes), a far shifted source (large costs, small spread)."""
    rng = np.random.default_rng(n + dim)
    x0, x1 = rng.standard_normal((n, dim)), 2 * rng.random((n, dim)) - 0.5
    _check(((x0[:, None] - x1[None]) ** 2).sum(-1))
    _check(((x0[:, None] + 30.0 - x1[None]) ** 2).sum(-1))


def test_sample_prices_are_the_samples_optimal_potentials():
    """On the strided sample the prices leave the sample's optimal assignment at zero
    reduced cost (so they are optimal potentials there), and the c-transform extension
    makes no other column cheaper for a sampled row."""
    rng = np.random.default_rng(3)
    x0, x1 = rng.standard_normal((300, 2)), rng.random((300, 2)) + 1
    c = ((x0[:, None] - x1[None]) ** 2).sum(-1)
    p = sample_prices(c, SAMPLE)
    assert p.shape == (300,)
    step = 300 // SAMPLE
    rows = c[::step][:SAMPLE]
    sub = rows[:, ::step][:, :SAMPLE]
    reduced = sub + p[::step][:SAMPLE]
    reduced -= reduced.min(1, keepdims=True)
    i, j = linear_sum_assignment(sub)
    assert np.abs(reduced[i, j]).max() <= 1e-12 * c.max()
    full = rows + p  # no unsampled column is cheaper for a sampled row than its sample's best
    np.testing.assert_allclose(full.min(1), (sub + p[::step][:SAMPLE]).min(1), rtol=0,
                               atol=1e-12 * c.max())


def test_degenerate_costs():
    _check(np.zeros((300, 300)))  # every assignment optimal
    c = np.zeros((300, 300))
    c[:, 0] = 1.0  # median spread zero, max spread not
    _check(c)
    pts = np.repeat(np.random.default_rng(0).random((30, 2)), 10, axis=0)  # duplicates
    _check(((pts[:, None] - pts[None, ::-1]) ** 2).sum(-1))
    with pytest.raises(ValueError):
        linear_assignment(np.full((300, 300), np.nan))


def test_auction_prices_are_nearly_optimal_potentials():
    """A finished auction at epsilon leaves an epsilon-optimal assignment; since every
    permutation pays the same total price, the optimal permutation's reduced costs
    C[i, s(i)] + p[s(i)] - min_j (C[i, j] + p[j]) average at
    most epsilon (what lets scipy finish in a few short augmentations)."""
    rng = np.random.default_rng(1)
    x0, x1 = rng.standard_normal((400, 2)), rng.standard_normal((400, 2)) + 1
    c = ((x0[:, None] - x1[None]) ** 2).sum(-1)
    eps = 1e-3
    p = auction_prices(c, eps_start=0.3, eps_end=eps, leave=0, max_rounds=10**6)
    rows, opt = linear_sum_assignment(c)
    reduced = c + p - (c + p).min(1, keepdims=True)
    assert reduced[rows, opt].mean() <= eps * (1 + 1e-9)
    cold = c - c.min(1, keepdims=True)  # zero prices: far from optimal potentials
    assert cold[rows, opt].mean() > 100 * eps
    # From the sample's prices (as linear_assignment starts it) and a smaller first epsilon.
    p = auction_prices(c, eps_start=0.03, eps_end=eps, leave=0, max_rounds=10**6,
                       prices=sample_prices(c, SAMPLE))
    reduced = c + p - (c + p).min(1, keepdims=True)
    assert reduced[rows, opt].mean() <= eps * (1 + 1e-9)
    # The round cap returns prices whatever the state.
    assert auction_prices(c, eps_start=1.0, eps_end=1e-9, max_rounds=3).shape == (400,)
