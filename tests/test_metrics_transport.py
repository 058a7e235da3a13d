"""Exact W2 against brute force over all matchings, and against translations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from probgen.metrics import wasserstein2


@pytest.mark.parametrize("n", [1, 3, 6])
def test_matches_the_brute_force_optimum(n):
    g = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) * 2
    cost = torch.cdist(x.double(), y.double()) ** 2
    best = min(sum(float(cost[i, p[i]]) for i in range(n)) / n
               for p in itertools.permutations(range(n)))
    value, plan = wasserstein2(x, y, squared=True, return_plan=True)
    assert value == pytest.approx(best, rel=1e-9)
    assert sorted(plan.tolist()) == list(range(n))
    assert float(cost[torch.arange(n), plan].mean()) == pytest.approx(best, rel=1e-9)
    assert wasserstein2(x, y) == pytest.approx(math.sqrt(best), rel=1e-9)


def test_a_translation_costs_its_length():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([3.0, 4.0], dtype=torch.float64)
    # Translating every point: the identity matching is optimal and W2 = |shift|.
    assert wasserstein2(x, x[torch.randperm(200)] + shift) == pytest.approx(5.0, rel=1e-9)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="one size and dimension"):
        wasserstein2(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        wasserstein2(torch.full((2, 2), math.nan), torch.randn(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        wasserstein2(torch.ones(2, 2, dtype=torch.long), torch.randn(2, 2))
