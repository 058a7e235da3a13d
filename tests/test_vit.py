"""ViT encoder and decoder: shapes and leading batch dimensions, per-example independence,
and a VAE trained with them (the encoder/decoder contract of probgen.models.vae)."""

from __future__ import annotations

import math

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


def test_discretized_logistic_is_the_logistic_mass_of_each_bin():
    """Probabilities equal differences of the logistic CDF at the bin edges (the end bins
    reach infinity), sum to 1 over the levels, and draws follow them."""
    from probgen.models.vae_blocks import DiscretizedLogistic

    loc = torch.tensor([-0.9, 0.0, 0.4, 1.2], dtype=torch.float64)
    scale = torch.tensor([0.05, 0.3, 0.01, 0.5], dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale, levels=9)
    k = torch.arange(9.0, dtype=torch.float64)[:, None]
    edges_hi = 2 * k / 8 - 1 + 1 / 8
    edges_lo = 2 * k / 8 - 1 - 1 / 8
    cdf_hi = torch.where(k == 8, torch.ones(()), torch.sigmoid((edges_hi - loc) / scale))
    cdf_lo = torch.where(k == 0, torch.zeros(()), torch.sigmoid((edges_lo - loc) / scale))
    p = d.log_prob(k).exp()
    assert torch.allclose(p, cdf_hi - cdf_lo, atol=1e-12)
    assert torch.allclose(p.sum(0), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.isfinite(d.log_prob(k)).all()  # far tails: no log(0) from cancellation
    draws = d.sample((20000,))
    freq = torch.stack([(draws == v).double().mean(0) for v in range(9)])
    assert (freq - p).abs().max() < 0.015


def test_a_discretized_logistic_vae_reports_bits_per_dim_of_integer_pixels():
    from probgen.inference import ELBO
    from probgen.models import VAE

    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8)).float()
    vae = VAE((3, 8, 8), latent_features=4, encoder="conv", decoder="conv", channels=8,
              likelihood="discretized_logistic")
    out = ELBO(vae)(x)
    assert torch.isfinite(out["loss"])
    # a random decoder spreads its mass over the 256 levels: about 8 bits per entry or more
    bits = float(out["loss"].detach()) / (3 * 8 * 8 * math.log(2))
    assert 4.0 < bits < 30.0
    out["loss"].backward()
