"""Building blocks: shapes, context handling, zero-init identity, embeddings."""

from __future__ import annotations

import pytest
import torch

from probgen.nn import (
    MLP,
    ConvResNet,
    FourierEmbedding,
    ResidualMLP,
    SinusoidalEmbedding,
    zero_init_,
)
from probgen.transforms import MaskedAffineCoupling, checkerboard_mask


def test_mlp_shapes_and_context():
    net = MLP(3, 5, [8, 8], context=2, activation="silu")
    assert net(torch.randn(4, 3), torch.randn(4, 2)).shape == (4, 5)
    assert net(torch.randn(7, 4, 3), torch.randn(2)).shape == (7, 4, 5)  # broadcast context
    with pytest.raises(ValueError, match="context"):
        net(torch.randn(4, 3))
    with pytest.raises(ValueError, match="activation: expected one of"):
        MLP(3, 5, activation="swishy")


def test_residual_mlp_shapes_and_zero_last():
    net = ResidualMLP(3, 2, hidden_features=8, blocks=2, context=1, zero_last=True)
    out = net(torch.randn(5, 3), torch.randn(5, 1))
    assert out.shape == (5, 2) and torch.equal(out, torch.zeros(5, 2))


def test_conv_resnet_shapes_and_zero_init():
    net = ConvResNet(3, 6, hidden_channels=8, blocks=2)
    out = net(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 6, 8, 8) and torch.equal(out, torch.zeros_like(out))
    wn = ConvResNet(3, 6, hidden_channels=8, blocks=1, weight_norm=True, zero_last=False)
    assert wn(torch.randn(2, 3, 4, 4)).abs().sum() > 0


def test_zero_init_gives_identity_coupling():
    shape = (2, 4, 4)
    t = MaskedAffineCoupling(checkerboard_mask(shape), ConvResNet(2, 4, 8, 1))
    x = torch.randn(3, *shape)
    assert torch.equal(t(x), x)
    layer = zero_init_(torch.nn.Linear(3, 3))
    assert all(bool((p == 0).all()) for p in layer.parameters())


@pytest.mark.parametrize("cls", [SinusoidalEmbedding, FourierEmbedding])
def test_time_embeddings(cls):
    emb = cls(16)
    t = torch.rand(5)
    out = emb(t)
    assert out.shape == (5, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    assert emb(torch.tensor(0.5)).shape == (1, 16)
    with pytest.raises(ValueError, match=r"t: expected shape \(batch,\)"):
        emb(torch.rand(5, 2))
    with pytest.raises(ValueError, match="dim: expected an even"):
        cls(7)


def test_sinusoidal_embedding_values():
    emb = SinusoidalEmbedding(4, scale=1.0)
    out = emb(torch.zeros(1))
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
