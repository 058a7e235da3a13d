"""Masked layers: conv masks A/B, MADE connectivity, masked convolutions, the causal mask."""

from __future__ import annotations

import pytest
import torch

from probgen.nn.masked import (
    MaskedConv2d,
    MaskedLinear,
    MaskedMLP,
    causal_mask,
    channel_groups,
    conv_mask,
    made_masks,
)


def test_mask_a_has_zero_centre_and_mask_b_one_on_5x5():
    a, b = conv_mask(5, "A")[0, 0], conv_mask(5, "B")[0, 0]
    assert a[2, 2] == 0 and b[2, 2] == 1
    expected = torch.zeros(5, 5)
    expected[:2] = 1
    expected[2, :2] = 1
    assert torch.equal(a, expected)
    expected[2, 2] = 1
    assert torch.equal(b, expected)


def test_colour_groups_at_the_centre_tap():
    # RGB: R sees nothing of the current pixel (A) / itself (B); G sees R; B sees R and G.
    a = conv_mask(3, "A", 3, 3, data_channels=3)[:, :, 1, 1]
    b = conv_mask(3, "B", 3, 3, data_channels=3)[:, :, 1, 1]
    assert torch.equal(a, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(b, torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert torch.equal(channel_groups(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="cannot be split into 3 colour groups"):
        channel_groups(4, 3)


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_output_depends_only_on_earlier_pixels(mask_type):
    conv = MaskedConv2d(1, 2, 3, mask_type).double()
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(conv, x)[0].abs().sum(0)  # (5, 5, 1, 5, 5)
    jac = jac.reshape(25, 25)
    for i in range(25):
        later = torch.arange(25) >= (i + 1 if mask_type == "B" else i)
        assert (jac[i, later] == 0).all()
    assert (jac[12, [6, 7, 8, 11]] != 0).all()  # the causal 3x3 neighbours of pixel (2, 2)
    assert (jac[12, 12] != 0) == (mask_type == "B")


@pytest.mark.parametrize("random_degrees", [False, True])
def test_made_masks_connect_exactly_the_earlier_inputs(random_degrees):
    order = torch.tensor([2, 0, 3, 1])
    rank = torch.empty(4, dtype=torch.long)
    rank[order] = torch.arange(4)
    masks = made_masks(order, [8, 8], outputs_per_input=2, random_degrees=random_degrees,
                       generator=torch.Generator().manual_seed(1))
    path = masks[0][0]
    for m in masks[1:]:
        path = m[0] @ path  # number of paths from input j to output unit
    allowed = (rank.repeat_interleave(2)[:, None] > rank[None, :])
    assert ((path > 0) <= allowed).all()  # never a connection to a later input
    if not random_degrees:  # cycling degrees with >= D - 1 units realise every dependency
        assert torch.equal(path > 0, allowed)


def test_made_masks_reject_bad_orders():
    with pytest.raises(ValueError, match="permutations of 0..2"):
        made_masks(torch.tensor([0, 0, 1]), [4])
    with pytest.raises(ValueError, match="at least one hidden layer"):
        made_masks(torch.arange(3), [])


def test_masked_mlp_jacobian_is_strictly_triangular_in_the_order():
    order = torch.tensor([1, 3, 0, 2])
    rank = torch.empty(4, dtype=torch.long)
    rank[order] = torch.arange(4)
    net = MaskedMLP(order, [16, 16], context=2).double()
    x, c = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: net(v, c), x)[0, :, 0]
    assert ((jac != 0) <= (rank[:, None] > rank[None, :])).all()
    assert jac[order[3], order[0]] != 0


def test_masked_linear_picks_its_mask():
    masks = torch.stack([torch.eye(2), torch.ones(2, 2)])
    layer = MaskedLinear(masks, bias=False)
    x = torch.ones(1, 2)
    assert torch.allclose(layer(x, 0), x @ (layer.weight * torch.eye(2)).t())
    assert torch.allclose(layer(x, 1), x @ layer.weight.t())
    with pytest.raises(ValueError, match=r"expected \(out, in\)"):
        MaskedLinear(torch.ones(2))


def test_causal_mask_of_length_two():
    m = causal_mask(2)
    assert m[0, 0] == 0 and m[1, 0] == 0 and m[1, 1] == 0 and m[0, 1] == float("-inf")
    with pytest.raises(ValueError, match="positive int"):
        causal_mask(0)


def test_conv_mask_errors():
    with pytest.raises(ValueError, match="odd sizes"):
        conv_mask(4, "A")
    with pytest.raises(ValueError, match="'A' or 'B'"):
        conv_mask(3, "C")
