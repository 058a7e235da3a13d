"""ViT encoder and decoder: shapes and leading batch dimensions, per-example independence,
and a VAE trained with them (the encoder/decoder contract of probgen.models.vae)."""

from __future__ import annotations

import pytest
import torch

from probgen.nn import ViTDecoder, ViTEncoder


def test_shapes_grids_and_leading_dimensions():
    enc = ViTEncoder((3, 32, 32), 10, patch=4, hidden=32, depth=2, heads=4)
    x = torch.rand(2, 5, 3, 32, 32)
    assert enc(x).shape == (2, 5, 10)
    assert torch.allclose(enc(x)[1, 3], enc(x[1, 3:4])[0], atol=1e-5)
    grid = ViTEncoder((3, 32, 32), 6, patch=4, hidden=32, depth=1, heads=2, tokens=True)
    assert grid(x[0]).shape == (5, 6, 8, 8)
    dec = ViTDecoder(6, (3, 32, 32), patch=4, hidden=32, depth=1, heads=2, tokens=True)
    assert dec(grid(x[0])).shape == (5, 3, 32, 32)
    dec = ViTDecoder(7, (1, 28, 28), params=2, patch=4, hidden=32, depth=1, heads=2)
    assert dec(torch.randn(4, 3, 7)).shape == (4, 3, 2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"z: expected shape \(\*batch, 7\)"):
        dec(torch.randn(4, 6))
    with pytest.raises(ValueError, match="patch: expected a positive int dividing"):
        ViTEncoder((1, 28, 28), 4, patch=3)
    with pytest.raises(ValueError, match="params: expected a positive int and no out_channels"):
        ViTDecoder(4, (1, 8, 8), params=2, out_channels=3)


def test_outputs_depend_only_on_their_own_example():
    torch.manual_seed(0)
    enc = ViTEncoder((1, 8, 8), 4, patch=2, hidden=16, depth=2, heads=2).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(enc(x)[1].sum(), x)
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_a_vit_vae_trains_on_digits():
    """encoder='vit' and decoder='vit' in the VAE: every parameter gets a gradient and the
    ELBO improves over a few steps."""
    from probgen.data import load_digits
    from probgen.inference import ELBO, fit
    from probgen.models import VAE

    torch.manual_seed(0)
    images, _ = load_digits("train")
    x = (images[:256] / 16.0 > 0.5).float()
    vae = VAE((1, 8, 8), latent_features=4, encoder="vit", decoder="vit", channels=16,
              likelihood="bernoulli")
    objective = ELBO(vae)
    before = float(objective(x[:128])["loss"].detach())
    fit(objective, x, steps=60, batch_size=64, lr=3e-3, progress=False)
    after = float(objective(x[:128])["loss"].detach())
    assert after < before - 5, (before, after)
