"""probgen.utils: all_finite against torch.isfinite on every kind of non-finite entry,
drawing_from, and the shared check_int."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probgen.utils import all_finite, check_int


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


@pytest.mark.parametrize("value", [1, 7, 10**12])
def test_check_int_returns_a_count_unchanged(value):
    assert check_int("steps", value) == value
    assert type(check_int("steps", value)) is int


@pytest.mark.parametrize("value", [True, False, 0, -3, 2.0, 1.5, "3", None, torch.tensor(3),
                                   np.int64(3), [3]])
def test_check_int_refuses_what_is_not_a_positive_int(value):
    with pytest.raises(ValueError) as info:
        check_int("steps", value)
    assert str(info.value) == f"steps: expected a positive int, got {value!r}."


def test_check_int_with_a_lower_bound_names_it():
    assert check_int("levels", 2, low=2) == 2
    with pytest.raises(ValueError, match=r"^levels: expected an int >= 2, got 1\.$"):
        check_int("levels", 1, low=2)
    assert check_int("num_workers", 0, low=0) == 0
    with pytest.raises(ValueError, match=r"^num_workers: expected an int >= 0, got -1\.$"):
        check_int("num_workers", -1, low=0)


def test_check_int_allows_none_only_when_asked():
    assert check_int("num_dims", None, allow_none=True) is None
    assert check_int("num_dims", 4, allow_none=True) == 4
    with pytest.raises(ValueError, match=r"^num_dims: expected a positive int, got None\.$"):
        check_int("num_dims", None)
    with pytest.raises(ValueError, match=r"^num_dims: expected a positive int or None, got 0\.$"):
        check_int("num_dims", 0, allow_none=True)
    with pytest.raises(ValueError, match=r"^levels: expected an int >= 2 or None, got True\.$"):
        check_int("levels", True, low=2, allow_none=True)
