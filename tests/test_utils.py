"""probgen.utils.all_finite against torch.isfinite on every kind of non-finite entry."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.utils import all_finite


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_all_finite_finds_one_bad_entry_anywhere(dtype, bad):
    x = torch.randn(37, 11).to(dtype)
    assert all_finite(x)
    for index in [(0, 0), (36, 10), (17, 3)]:
        y = x.clone()
        y[index] = bad
        assert not all_finite(y) and not bool(torch.isfinite(y).all())
        assert not all_finite(y.T)  # strided views too
    assert not all_finite(torch.tensor([bad, -bad], dtype=dtype))


def test_all_finite_edge_cases():
    assert all_finite(torch.empty(0, 3))
    assert all_finite(torch.tensor(3.0))
    assert not all_finite(torch.tensor(math.nan))
    assert all_finite(torch.arange(5))  # integers are always finite
    assert all_finite(torch.tensor([torch.finfo(torch.float32).max, -1e38]))
    assert not all_finite(torch.tensor([1 + 1j, complex(math.inf, 0)]))
    assert all_finite(torch.tensor([1 + 1j, 2j]))
    assert not all_finite(torch.tensor([0.0, 1.0], requires_grad=True) / 0.0)
