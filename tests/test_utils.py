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


def test_drawing_from_uses_the_generators_stream_and_leaves_the_global_rng_alone():
    from probgen.utils import drawing_from

    torch.manual_seed(123)
    before = torch.get_rng_state()
    g = torch.Generator().manual_seed(7)
    with drawing_from(g):
        a = torch.randn(5)
        b = torch.distributions.Normal(0.0, 1.0).sample((3,))  # no generator argument
    with drawing_from(g):
        c = torch.rand(2)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG did not move
    ref = torch.Generator().manual_seed(7)  # the same stream, drawn directly
    assert torch.equal(a, torch.randn(5, generator=ref))
    assert torch.equal(b, torch.randn(3, generator=ref))
    assert torch.equal(c, torch.rand(2, generator=ref))  # g advanced past the first block
    with drawing_from(None):  # no generator: the global RNG draws and moves on
        d = torch.randn(4)
    torch.set_rng_state(before)
    assert torch.equal(d, torch.randn(4))
    with pytest.raises(TypeError, match="torch.Generator"):
        with drawing_from(7):
            pass
