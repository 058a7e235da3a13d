"""GAN networks and sampling: truncation against the truncated normal's closed form,
interpolation geometry, conditioning, spectral norm, checkpoints, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
from scipy.stats import truncnorm

from probgen.models import (
    DCGAN,
    MLPGAN,
    MODELS,
    DCGANCritic,
    MLPCritic,
    interpolate_latents,
    truncated_normal,
)


def _identity_gan(dim: int) -> MLPGAN:
    """A GAN whose generator is x = z, so samples show the noise itself."""
    gan = MLPGAN(dim, latent_dim=dim, hidden_features=[], critic_hidden_features=[8])
    with torch.no_grad():
        gan.generator.net[0].weight.copy_(torch.eye(dim))
        gan.generator.net[0].bias.zero_()
    return gan


@pytest.mark.parametrize("psi", [0.3, 1.0, 2.5])
def test_truncation_keeps_every_coordinate_within_psi(psi):
    g = torch.Generator().manual_seed(1)
    z = truncated_normal((50_000, 4), psi, generator=g)
    assert float(z.abs().max()) <= psi
    # Moments of N(0, 1) conditioned on [-psi, psi] (scipy's closed form).
    assert float(z.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(z.var()) == pytest.approx(truncnorm(-psi, psi).var(), rel=0.02)
    # Through the model: the identity generator's samples are the noise.
    x = _identity_gan(4).sample((20_000,), psi=psi)
    assert float(x.abs().max()) <= psi + 1e-6
    assert float(x.var()) == pytest.approx(truncnorm(-psi, psi).var(), rel=0.03)


def test_untruncated_noise_is_standard_normal_and_uniform_noise_is_uniform():
    x = _identity_gan(3).sample((40_000,))
    assert float(x.var()) == pytest.approx(1.0, rel=0.03)
    assert float(x.abs().max()) > 3.0
    gan = MLPGAN(2, latent_dim=2, noise="uniform")
    z = gan.noise(40_000)
    assert float(z.min()) >= -1 and float(z.max()) <= 1
    assert float(z.var()) == pytest.approx(1 / 3, rel=0.03)
    with pytest.raises(ValueError, match="truncation trick applies to normal noise"):
        gan.sample((2,), psi=0.5)


def test_sampling_is_reproducible_with_a_generator():
    gan = MLPGAN(2, latent_dim=3)
    a = gan.sample((7,), generator=torch.Generator().manual_seed(3))
    b = gan.sample((7,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (7, 2) and not a.requires_grad
    assert gan.sample((2, 3)).shape == (2, 3, 2)
    assert gan.rsample((4,)).requires_grad


def test_linear_and_spherical_interpolation():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(16, generator=g), torch.randn(16, generator=g)
    for method in ("linear", "slerp"):
        path = interpolate_latents(z0, z1, 9, method)
        assert path.shape == (9, 16)
        assert torch.allclose(path[0], z0, atol=1e-6) and torch.allclose(path[-1], z1, atol=1e-6)
    lin = interpolate_latents(z0, z1, 5, "linear")
    assert torch.allclose(lin[2], (z0 + z1) / 2)
    # Slerp of equal-norm codes stays on the sphere with equally spaced angles.
    u0, u1 = z0 / z0.norm() * 4, z1 / z1.norm() * 4
    path = interpolate_latents(u0, u1, 7, "slerp")
    assert torch.allclose(path.norm(dim=1), torch.full((7,), 4.0), atol=1e-5)
    cos = (path[:-1] * path[1:]).sum(1) / 16
    assert torch.allclose(cos, cos[0].expand(6), atol=1e-5)
    # Parallel codes: slerp falls back to the straight line.
    assert torch.allclose(interpolate_latents(z0, 2 * z0, 3, "slerp")[1], 1.5 * z0)
    with pytest.raises(ValueError, match="method: expected 'linear' or 'slerp'"):
        interpolate_latents(z0, z1, 3, "cubic")
    with pytest.raises(ValueError, match="steps: expected an int >= 2"):
        interpolate_latents(z0, z1, 1)
    gan = MLPGAN(2, latent_dim=16)
    assert gan.interpolate(z0, z1, steps=5).shape == (5, 2)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("conditioning", ["projection", "concat"])
def test_dcgan_shapes_and_conditioning(shape, conditioning):
    gan = DCGAN(shape, latent_dim=8, hidden_channels=8, num_classes=10,
                conditioning=conditioning)
    x = gan.sample((6,), labels=[0, 1, 2, 3, 4, 5])
    assert x.shape == (6, *shape) and float(x.abs().max()) <= 1.0  # tanh output
    y = torch.arange(6)
    out = gan.critic(x, y)
    assert out.shape == (6,)
    assert not torch.allclose(out, gan.critic(x, (y + 1) % 10))  # the label matters
    gan.eval()
    z = gan.noise(6)
    a, b = gan.generate(z, torch.zeros(6, dtype=torch.long)), gan.generate(z, torch.ones(
        6, dtype=torch.long))
    assert not torch.allclose(a, b)


def test_mlp_gan_conditioning_and_label_errors():
    gan = MLPGAN(2, latent_dim=2, num_classes=3, conditioning="concat")
    assert gan.sample((5,), labels=2).shape == (5, 2)
    assert gan.sample((5,)).shape == (5, 2)  # uniform labels
    with pytest.raises(ValueError, match=r"labels: expected one class or 5 classes in \[0, 3\)"):
        gan.sample((5,), labels=3)
    with pytest.raises(ValueError, match="labels: this GAN is unconditional"):
        MLPGAN(2).sample((2,), labels=1)
    with pytest.raises(ValueError, match=r"critic: expected integer labels of shape \(4,\)"):
        gan.critic(torch.randn(4, 2))
    with pytest.raises(ValueError, match="conditioning: expected one of"):
        MLPCritic(2, conditioning="film")
    with pytest.raises(ValueError, match=r"z: expected noise of shape \(batch, 2\)"):
        gan.generate(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="psi: expected a positive finite threshold"):
        gan.sample((2,), psi=0.0)
    with pytest.raises(ValueError, match=r"shape: expected square images \(C, H, H\)"):
        DCGAN((1, 10, 10))


def test_spectral_norm_bounds_every_critic_layer():
    torch.manual_seed(0)
    for critic in (MLPCritic(2, [32, 32], spectral_norm=True),
                   DCGANCritic((1, 8, 8), 8, spectral_norm=True)):
        for _ in range(30):  # power iterations run in train-mode forwards
            critic(torch.randn(4, 2) if isinstance(critic, MLPCritic)
                   else torch.randn(4, 1, 8, 8))
        layers = [m for m in critic.modules() if isinstance(m, (torch.nn.Linear,
                                                                torch.nn.Conv2d))]
        assert layers and all(hasattr(m, "parametrizations") for m in layers)
        critic.eval()
        with torch.no_grad():
            for m in layers:
                sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2)
                assert float(sigma) == pytest.approx(1.0, abs=0.02)


def test_checkpoint_round_trip_holds_both_players():
    gan = DCGAN((1, 8, 8), latent_dim=4, hidden_channels=4, spectral_norm=True)
    buffer = io.BytesIO()
    torch.save(gan.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert any(k.startswith("critic.") for k in state)
    assert any(k.startswith("generator.") for k in state)
    other = DCGAN((1, 8, 8), latent_dim=4, hidden_channels=4, spectral_norm=True)
    other.load_state_dict(state)
    gan.eval(), other.eval()
    g = torch.Generator().manual_seed(0)
    x = gan.sample((3,), generator=g)
    assert torch.equal(x, other.sample((3,), generator=g.manual_seed(0)))
    assert torch.equal(gan.critic(x), other.critic(x))


def test_models_are_registered_for_the_cli():
    assert MODELS["MLPGAN"] is MLPGAN and MODELS["DCGAN"] is DCGAN
    assert math.prod(MLPGAN(1).event_shape) == 1


def test_critic_maps_match_analytic_gradients():
    from probgen.gan_plots import critic_maps, plot_critic_1d, plot_critic_2d

    # D(x) = |x|^2 / 2: value |x|^2 / 2 and gradient norm |x| at every grid point.
    xs, ys, values, norms = critic_maps(lambda x: 0.5 * (x**2).sum(1), (-2.0, 2.0), 21)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    assert torch.allclose(values, 0.5 * (gx**2 + gy**2), atol=1e-6)
    assert torch.allclose(norms, (gx**2 + gy**2).sqrt(), atol=1e-5)
    gan = MLPGAN(2, hidden_features=[8])
    fig = plot_critic_2d(gan.critic, 3.0, 20, data=torch.randn(50, 2), samples=gan.sample((50,)))
    assert len(fig.axes) == 4  # two maps and their colour bars
    fig = plot_critic_1d(MLPGAN(1, hidden_features=[8]).critic, data=torch.randn(100, 1),
                         transform=torch.sigmoid)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="critic: expected one score per point"):
        critic_maps(lambda x: x, 1.0, 4)
