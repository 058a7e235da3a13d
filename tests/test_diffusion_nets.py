"""Conditional networks net(x, t, labels): shapes, the null class, per-example independence."""

from __future__ import annotations

import pytest
import torch

from probgen.nn import ConditionalMLP, UNet


def _randomize_head(net: torch.nn.Module) -> None:
    """The heads start at zero (a fresh predictor outputs 0); give them weights to test."""
    torch.manual_seed(0)
    for p in net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)


@pytest.mark.parametrize("shape,mults", [((1, 28, 28), (1, 2, 2)), ((1, 8, 8), (1, 2, 2)),
                                         ((3, 7, 9), (1, 2))])
def test_unet_shapes_and_zero_output(shape, mults):
    net = UNet(shape, base_channels=8, channel_mults=mults, attention_levels=(1,),
               num_classes=10, out_channels=2 * shape[0], num_res_blocks=2)
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3), labels=torch.tensor([0, 9, 10]))
    assert out.shape == (3, 2 * shape[0], *shape[1:])
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised head
    assert net(x, 0.3).shape == out.shape  # scalar time broadcast, labels None = null class


def test_unet_conditioning_and_null_class():
    torch.manual_seed(1)
    net = UNet((1, 8, 8), base_channels=8, num_classes=3, dropout=0.0)
    _randomize_head(net)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    null = torch.full((4,), 3)
    assert torch.equal(net(x, t), net(x, t, labels=null))
    a = net(x, t, labels=torch.tensor([0, 0, 0, 0]))
    b = net(x, t, labels=torch.tensor([1, 1, 1, 1]))
    assert (a - b).abs().amax() > 1e-4  # labels change the output
    assert (net(x, t + 0.2, labels=null) - net(x, t, labels=null)).abs().amax() > 1e-4


@pytest.mark.parametrize("make", [
    lambda: UNet((1, 8, 8), base_channels=8, attention_levels=(2,), num_classes=2),
    lambda: ConditionalMLP(3, [16, 16], num_classes=2),
])
def test_outputs_depend_only_on_their_own_example(make):
    """The Jacobian of output i with respect to input j != i is zero (GroupNorm, no batch
    statistics), so a noise predictor's samples do not interact."""
    torch.manual_seed(2)
    net = make().double()
    _randomize_head(net)
    shape = (3, *net.event_shape)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    out = net(x, t, labels=labels)
    grad, = torch.autograd.grad(out[1].sum(), x)
    assert grad[1].abs().sum() > 0
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    assert torch.equal(grad[2], torch.zeros_like(grad[2]))


def test_conditional_mlp_shapes_and_time():
    net = ConditionalMLP(2, [32, 32], out_features=4)
    _randomize_head(net)
    x = torch.randn(5, 2)
    assert net(x, torch.rand(5)).shape == (5, 4)
    assert torch.allclose(net(x, 0.5), net(x, torch.full((5,), 0.5)))
    # integer steps are accepted as times
    assert net(x, torch.arange(5)).dtype == torch.float32


def test_errors_say_what_was_expected():
    unet = UNet((1, 8, 8), base_channels=8)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 1, 8, 8\)"):
        unet(torch.randn(2, 1, 28, 28), torch.rand(2))
    with pytest.raises(ValueError, match=r"t: expected shape \(2,\)"):
        unet(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="unconditional"):
        unet(torch.randn(2, 1, 8, 8), torch.rand(2), labels=torch.tensor([0, 1]))
    mlp = ConditionalMLP(2, [8], num_classes=3)
    with pytest.raises(ValueError, match=r"labels: expected values in 0..2"):
        mlp(torch.randn(2, 2), torch.rand(2), labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integer tensor"):
        mlp(torch.randn(2, 2), torch.rand(2), labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        mlp(torch.randn(2, 2), torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet((1, 8, 8), channel_mults=())
