r"""Generative adversarial networks: a generator (an implicit distribution) and its critic.

A generator is noise :math:`z \sim N(0, I)` (or :math:`U[-1, 1]`) pushed through a network,
:math:`x = G(z)`: it can :meth:`GAN.sample` but has no ``log_prob``. The critic
:math:`D(x)` returns one unconstrained real per example (a logit, a Wasserstein potential or
an f-GAN's :math:`V`); the loss decides what it means (:mod:`probgen.inference.adversarial`).
One :class:`GAN` module holds both networks, so one checkpoint holds both players.

The networks: :class:`MLPGenerator` / :class:`MLPCritic` for 1-D and 2-D data and
:class:`DCGANGenerator` / :class:`DCGANCritic` for square images whose side is a multiple of
4 (28x28 MNIST, the 8x8 digits). Class conditioning feeds a label embedding to the
generator, and to the critic either by projection (Miyato & Koyama 2018) or by
concatenation (Mirza & Osindero 2014). ``spectral_norm=True`` wraps every linear and
convolutional layer of the critic in :func:`torch.nn.utils.parametrizations.spectral_norm`.

References:
    Generative Adversarial Nets (Goodfellow et al., 2014), https://arxiv.org/abs/1406.2661;
    Unsupervised Representation Learning with Deep Convolutional GANs (Radford et al.,
    2016), https://arxiv.org/abs/1511.06434; cGANs with Projection Discriminator (Miyato &
    Koyama, 2018), https://arxiv.org/abs/1802.05637; Spectral Normalization for GANs
    (Miyato et al., 2018), https://arxiv.org/abs/1802.05957; Large Scale GAN Training (Brock
    et al., 2019; the truncation trick), https://arxiv.org/abs/1809.11096; Sampling
    Generative Networks (White, 2016; spherical interpolation), https://arxiv.org/abs/1609.04468
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from probgen.nn import MLP, activation
from probgen.utils import check_choice, check_int

__all__ = [
    "GAN",
    "MLPGAN",
    "DCGAN",
    "MLPGenerator",
    "MLPCritic",
    "DCGANGenerator",
    "DCGANCritic",
    "truncated_normal",
    "interpolate_latents",
    "NOISES",
    "CONDITIONINGS",
    "GAN_MODELS",
]

#: The noise distributions a generator can draw from.
NOISES: tuple[str, ...] = ("normal", "uniform")
#: How a conditional critic sees the label.
CONDITIONINGS: tuple[str, ...] = ("projection", "concat")


def truncated_normal(
    shape: Sequence[int], psi: float, *, generator: torch.Generator | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Standard normal draws conditioned on :math:`|z_i| \le \psi`, every coordinate.

    Exact inverse-CDF sampling by :func:`torch.nn.init.trunc_normal_` (uniform draws between
    :math:`\Phi(-\psi)` and :math:`\Phi(\psi)` mapped back through :math:`\Phi^{-1}`), no
    rejection loop; the result is clamped to :math:`[-\psi, \psi]` against rounding.

    Args:
        shape: the output shape.
        psi: the threshold, > 0 (BigGAN's truncation trick; smaller is closer to the mode).
        generator: a torch Generator for reproducible draws.
        device: the output device.
        dtype: the output dtype (default: torch's default dtype).

    Returns:
        Tensor: of ``shape``, every entry in ``[-psi, psi]``.

    Raises:
        ValueError: ``psi`` is not a positive finite number.

    Example:
        >>> z = truncated_normal((1000, 8), 0.5, generator=torch.Generator().manual_seed(0))
        >>> bool(z.abs().max() <= 0.5)
        True
    """
    if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not 0 < psi < math.inf:
        raise ValueError(f"psi: expected a positive finite threshold, got {psi!r}.")
    z = torch.empty(tuple(shape), device=device, dtype=dtype)
    if generator is not None and generator.device != z.device:  # draw on the generator's device
        z = torch.empty(tuple(shape), dtype=dtype, device=generator.device)
    torch.nn.init.trunc_normal_(z, 0.0, 1.0, -float(psi), float(psi), generator=generator)
    return z.clamp_(-float(psi), float(psi)).to(device)


def interpolate_latents(z0: Tensor, z1: Tensor, steps: int, method: str = "slerp") -> Tensor:
    r"""Points between two latent codes: linear, or spherical (slerp).

    Slerp follows the great circle: with :math:`\cos\Omega = \hat z_0\cdot\hat z_1`,
    :math:`z_t = \frac{\sin((1-t)\Omega)}{\sin\Omega} z_0 + \frac{\sin(t\Omega)}{\sin\Omega}
    z_1`, which keeps the norm of equal-norm endpoints (high-dimensional Gaussian codes live
    near a sphere, where linear midpoints are atypically short). Nearly parallel endpoints
    fall back to linear interpolation.

    Args:
        z0: the start, shape ``(latent_dim,)``.
        z1: the end, same shape.
        steps: the number of points, >= 2, endpoints included.
        method: ``"linear"`` or ``"slerp"``.

    Returns:
        Tensor: ``(steps, latent_dim)``, first row ``z0``, last row ``z1``.

    Example:
        >>> z = interpolate_latents(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 3)
        >>> torch.allclose(z.norm(dim=1), torch.ones(3))
        True
    """
    if method not in ("linear", "slerp"):
        raise ValueError(f"method: expected 'linear' or 'slerp', got {method!r}.")
    if not (isinstance(z0, Tensor) and isinstance(z1, Tensor)) or z0.shape != z1.shape \
            or z0.dim() != 1:
        got = [tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__ for z in (z0, z1)]
        raise ValueError(f"z0, z1: expected two vectors of equal shape (latent_dim,), got {got}.")
    check_int("steps", steps, low=2)
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device).unsqueeze(1)
    linear = (1 - t) * z0 + t * z1
    if method == "linear":
        return linear
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:
        return linear
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def _apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Wraps every Linear/Conv layer of ``module`` in spectral normalization, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            setattr(module, name, _spectral_norm(child))
        else:
            _apply_spectral_norm(child)
    return module


def _check_labels(labels: Tensor | None, num_classes: int | None, n: int, who: str) -> None:
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"{who}: labels given, but this network is unconditional "
                             "(num_classes=None).")
        return
    if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.is_floating_point():
        got = (f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor)
               else type(labels).__name__)
        raise ValueError(f"{who}: expected integer labels of shape ({n},), got {got}.")


class MLPGenerator(nn.Module):
    r"""Creates an MLP generator :math:`x = G(z[, e(y)])` for vectors.

    Args:
        features: the data dimension D.
        latent_dim: the noise dimension.
        hidden_features: hidden layer sizes.
        activation: hidden activation (see :data:`probgen.nn.ACTIVATIONS`).
        num_classes: number of classes for a conditional generator (``None``: none).
        embedding_dim: size of the label embedding concatenated to ``z``.

    Shapes:
        ``z``: ``(batch, latent_dim)``; ``labels``: ``(batch,)`` integers; output
        ``(batch, D)``.

    Example:
        >>> MLPGenerator(2, 4, [16])(torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, features: int, latent_dim: int, hidden_features: Sequence[int] = (128, 128),
        activation: str = "relu", num_classes: int | None = None, embedding_dim: int = 16,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, low=2, allow_none=True)
        self.latent_dim = int(latent_dim)
        context = embedding_dim if num_classes else 0
        self.embed = nn.Embedding(num_classes, embedding_dim) if num_classes else None
        self.net = MLP(latent_dim, features, list(hidden_features), context=context,
                       activation=activation)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:  # noqa: D102
        _check_labels(labels, self.num_classes, z.shape[0], "generator")
        return self.net(z, self.embed(labels) if self.embed is not None else None)


class _Projection(nn.Module):
    r"""The critic's head: :math:`w^\top h + b` plus :math:`e(y)^\top h` when conditional."""

    def __init__(self, features: int, num_classes: int | None) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None

    def forward(self, h: Tensor, labels: Tensor | None) -> Tensor:  # noqa: D102
        out = self.linear(h).squeeze(-1)
        if self.embed is not None and labels is not None:
            out = out + (self.embed(labels) * h).sum(-1)
        return out


class MLPCritic(nn.Module):
    r"""Creates an MLP critic :math:`D(x[, y]) \in \mathbb R` for vectors (no output
    activation: the loss applies its own).

    Args:
        features: the data dimension D.
        hidden_features: hidden layer sizes (at least one).
        activation: hidden activation.
        num_classes: classes of a conditional critic (``None``: unconditional).
        conditioning: ``"projection"`` (inner product of a label embedding with the last
            hidden features) or ``"concat"`` (one-hot labels concatenated to ``x``).
        spectral_norm: spectrally normalize every linear layer.

    Shapes:
        ``x``: ``(batch, D)``; ``labels``: ``(batch,)``; output ``(batch,)``.

    Example:
        >>> MLPCritic(2, [16, 16])(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self, features: int, hidden_features: Sequence[int] = (128, 128),
        activation: str = "leaky_relu", num_classes: int | None = None,
        conditioning: str = "projection", spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        check_choice("conditioning", conditioning, CONDITIONINGS)
        hidden = list(hidden_features)
        if not hidden:
            raise ValueError("hidden_features: a critic needs at least one hidden layer.")
        self.num_classes = check_int("num_classes", num_classes, low=2, allow_none=True)
        self.concat = bool(num_classes) and conditioning == "concat"
        sizes = [features + (num_classes if self.concat else 0), *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), _activation(activation)]
        self.body = nn.Sequential(*layers)
        self.head = _Projection(hidden[-1], None if self.concat else num_classes)
        if spectral_norm:
            _apply_spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:  # noqa: D102
        _check_labels(labels, self.num_classes, x.shape[0], "critic")
        if self.concat:
            x = torch.cat([x, nn.functional.one_hot(labels, self.num_classes).to(x.dtype)], 1)
        return self.head(self.body(x), labels)


def _activation(name: str) -> nn.Module:
    """The activation ``name``; ``"leaky_relu"`` with the GAN literature's slope 0.2."""
    return nn.LeakyReLU(0.2) if name == "leaky_relu" else activation(name)


def _check_image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % 4 or shape[1] < 4:
        raise ValueError(f"shape: expected square images (C, H, H) with H a multiple of 4 "
                         f"(28x28 MNIST, 8x8 digits), got {shape}.")
    return shape  # type: ignore[return-value]


class DCGANGenerator(nn.Module):
    r"""Creates a DCGAN generator for square images of side :math:`H = 4k`.

    ``Linear -> (2C, k, k) -> BN, ReLU -> ConvT(4, 2) -> (C, 2k, 2k) -> BN, ReLU -> ConvT(4, 2)
    -> (channels, H, H)``, then ``tanh`` (images in [-1, 1], the ``"signed"`` preprocessing),
    ``sigmoid`` or nothing. For 28x28 this is the usual MNIST DCGAN (7 -> 14 -> 28); for the
    8x8 digits the same with 2 -> 4 -> 8.

    Args:
        shape: the image shape ``(C, H, H)``.
        latent_dim: the noise dimension.
        hidden_channels: C, the channels of the last hidden feature map.
        num_classes: classes of a conditional generator (``None``: unconditional).
        embedding_dim: size of the label embedding concatenated to ``z``.
        output: ``"tanh"``, ``"sigmoid"`` or ``"none"``.

    Shapes:
        ``z``: ``(batch, latent_dim)``; output ``(batch, C, H, H)``.

    Example:
        >>> DCGANGenerator((1, 8, 8), 16, 8)(torch.randn(3, 16)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self, shape: Sequence[int], latent_dim: int = 64, hidden_channels: int = 64,
        num_classes: int | None = None, embedding_dim: int = 16, output: str = "tanh",
    ) -> None:
        super().__init__()
        channels, side, _ = _check_image_shape(shape)
        if output not in ("tanh", "sigmoid", "none"):
            raise ValueError(f"output: expected 'tanh', 'sigmoid' or 'none', got {output!r}.")
        self.num_classes = check_int("num_classes", num_classes, low=2, allow_none=True)
        self.latent_dim, c, self.k = int(latent_dim), int(hidden_channels), side // 4
        self.embed = nn.Embedding(num_classes, embedding_dim) if num_classes else None
        extra = embedding_dim if num_classes else 0
        self.stem = nn.Linear(latent_dim + extra, 2 * c * self.k * self.k)
        last = {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "none": nn.Identity()}[output]
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, channels, 4, 2, 1), last,
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:  # noqa: D102
        _check_labels(labels, self.num_classes, z.shape[0], "generator")
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.stem(z).reshape(z.shape[0], -1, self.k, self.k)
        return self.net(h)


class DCGANCritic(nn.Module):
    r"""Creates a DCGAN critic for square images of side :math:`H = 4k` (no batch norm, so
    that gradient penalties apply per example, as Gulrajani et al. 2017 advise).

    ``Conv(4, 2) -> LReLU(0.2) -> Conv(4, 2) -> LReLU(0.2) -> flatten -> Linear`` (28 -> 14
    -> 7, or 8 -> 4 -> 2), plus the projection term when conditional; concatenation
    conditioning adds one-hot label planes to the input.

    Args:
        shape: the image shape ``(C, H, H)``.
        hidden_channels: channels of the first conv (the second has twice as many).
        num_classes: classes of a conditional critic.
        conditioning: ``"projection"`` or ``"concat"``.
        spectral_norm: spectrally normalize every conv and linear layer.

    Shapes:
        ``x``: ``(batch, C, H, H)``; output ``(batch,)``.

    Example:
        >>> DCGANCritic((1, 28, 28), 8)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2])
    """

    def __init__(
        self, shape: Sequence[int], hidden_channels: int = 64, num_classes: int | None = None,
        conditioning: str = "projection", spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        channels, side, _ = _check_image_shape(shape)
        check_choice("conditioning", conditioning, CONDITIONINGS)
        self.num_classes = check_int("num_classes", num_classes, low=2, allow_none=True)
        self.concat = bool(num_classes) and conditioning == "concat"
        c, k = int(hidden_channels), side // 4
        extra = num_classes if self.concat else 0
        self.body = nn.Sequential(
            nn.Conv2d(channels + extra, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
        )
        self.head = _Projection(2 * c * k * k, None if self.concat else num_classes)
        if spectral_norm:
            _apply_spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:  # noqa: D102
        _check_labels(labels, self.num_classes, x.shape[0], "critic")
        if self.concat:
            planes = nn.functional.one_hot(labels, self.num_classes).to(x.dtype)
            x = torch.cat([x, planes[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        return self.head(self.body(x), labels)


class GAN(nn.Module):
    r"""Creates a GAN: a noise distribution, a generator and a critic in one module.

    The generator defines the implicit distribution :math:`x = G(z)`,
    :math:`z \sim N(0, I_d)` (or :math:`U[-1, 1]^d`). The objective
    (:class:`probgen.inference.Adversarial`) trains ``generator`` and ``critic`` as two
    parameter groups; ``sample`` draws from the generator, with the truncation trick.

    Args:
        generator: ``generator(z, labels=None) -> x`` of shape ``(batch, *event_shape)``.
        critic: ``critic(x, labels=None) -> (batch,)`` raw scores.
        latent_dim: the noise dimension d.
        event_shape: the shape of one sample.
        num_classes: classes of a conditional pair (``None``: unconditional).
        noise: ``"normal"`` or ``"uniform"``.

    Example:
        >>> gan = MLPGAN(2, latent_dim=4, hidden_features=[16])
        >>> gan.sample((5,)).shape
        torch.Size([5, 2])
        >>> bool(gan.critic(gan.sample((5,))).shape == (5,))
        True
    """

    def __init__(
        self, generator: nn.Module, critic: nn.Module, latent_dim: int,
        event_shape: Sequence[int], num_classes: int | None = None, noise: str = "normal",
    ) -> None:
        super().__init__()
        check_choice("noise", noise, NOISES)
        check_int("latent_dim", latent_dim)
        self.generator, self.critic = generator, critic
        self.latent_dim, self.noise_name = latent_dim, noise
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_classes = check_int("num_classes", num_classes, low=2, allow_none=True)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # device/dtype

    def noise(self, n: int, *, psi: float | None = None,
              generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` noise vectors ``(n, latent_dim)``, truncated to ``|z_i| <= psi``
        when ``psi`` is given (normal noise only)."""
        kw = {"device": self._anchor.device, "dtype": self._anchor.dtype}
        shape = (n, self.latent_dim)
        if psi is not None:
            if self.noise_name != "normal":
                raise ValueError("psi: the truncation trick applies to normal noise, this "
                                 f"generator draws {self.noise_name!r} noise.")
            return truncated_normal(shape, psi, generator=generator, **kw)
        if generator is not None and generator.device != self._anchor.device:
            draw = (torch.randn if self.noise_name == "normal" else torch.rand)(
                shape, generator=generator, dtype=kw["dtype"], device=generator.device)
            return (draw if self.noise_name == "normal" else 2 * draw - 1).to(kw["device"])
        if self.noise_name == "normal":
            return torch.randn(shape, generator=generator, **kw)
        return 2 * torch.rand(shape, generator=generator, **kw) - 1

    def labels(self, n: int, labels: int | Sequence[int] | Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor | None:
        """Labels for ``n`` draws: ``None`` (uniform classes when conditional), one class
        for all, or one per draw; checked against ``num_classes``."""
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("labels: this GAN is unconditional (num_classes=None).")
            return None
        device = self._anchor.device
        if labels is None:
            return torch.randint(0, self.num_classes, (n,), generator=generator,
                                 device=generator.device if generator else device).to(device)
        y = torch.as_tensor(labels, device=device)
        if y.dim() == 0:
            y = y.expand(n)
        if y.shape != (n,) or y.is_floating_point() or bool(
                ((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"labels: expected one class or {n} classes in "
                             f"[0, {self.num_classes}), got {labels!r}.")
        return y.long()

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Maps noise ``(batch, latent_dim)`` to samples ``(batch, *event_shape)``."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z: expected noise of shape (batch, {self.latent_dim}), got {got}.")
        return self.generator(z, labels) if labels is not None else self.generator(z)

    def rsample(self, shape: Sequence[int] = (), *, psi: float | None = None,
                labels: int | Sequence[int] | Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draws samples ``(*shape, *event_shape)``, differentiable in the generator's
        parameters (see :meth:`sample` for the arguments)."""
        shape = tuple(shape)
        n = math.prod(shape)
        y = self.labels(n, labels, generator)
        x = self.generate(self.noise(n, psi=psi, generator=generator), y)
        return x.reshape(*shape, *self.event_shape)

    def sample(self, shape: Sequence[int] = (), psi: float | None = None,
               labels: int | Sequence[int] | Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws samples ``(*shape, *event_shape)`` without gradients.

        Args:
            shape: the sample shape, e.g. ``(n,)``.
            psi: truncation threshold: noise drawn from the standard normal restricted to
                ``[-psi, psi]`` per coordinate (``None``: no truncation).
            labels: conditional GANs: one class, one per sample, or ``None`` (uniform).
            generator: a torch Generator for reproducible draws.

        Returns:
            Tensor: ``(*shape, *event_shape)``.
        """
        with torch.no_grad():
            return self.rsample(shape, psi=psi, labels=labels, generator=generator)

    def interpolate(self, z0: Tensor, z1: Tensor, steps: int = 8, method: str = "slerp",
                    labels: int | Tensor | None = None) -> Tensor:
        """Samples along the path from ``z0`` to ``z1`` (see :func:`interpolate_latents`),
        ``(steps, *event_shape)``."""
        z = interpolate_latents(z0.to(self._anchor), z1.to(self._anchor), steps, method)
        with torch.no_grad():
            return self.generate(z, self.labels(steps, labels))


class MLPGAN(GAN):
    r"""Creates a GAN of two MLPs for vectors (1-D and 2-D toy data).

    Args:
        features: the data dimension D.
        latent_dim: the noise dimension.
        hidden_features: the generator's hidden sizes.
        critic_hidden_features: the critic's (default: the generator's).
        activation: the generator's hidden activation.
        critic_activation: the critic's (``"leaky_relu"``: slope 0.2).
        num_classes: classes of a conditional pair.
        conditioning: the critic's conditioning, ``"projection"`` or ``"concat"``.
        spectral_norm: spectral normalization in the critic.
        noise: ``"normal"`` or ``"uniform"``.

    Example:
        >>> gan = MLPGAN(1, latent_dim=1, hidden_features=[8])
        >>> gan.sample((3,)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self, features: int, latent_dim: int = 2, hidden_features: Sequence[int] = (128, 128),
        critic_hidden_features: Sequence[int] | None = None, activation: str = "relu",
        critic_activation: str = "leaky_relu", num_classes: int | None = None,
        conditioning: str = "projection", spectral_norm: bool = False, noise: str = "normal",
    ) -> None:
        critic_hidden = hidden_features if critic_hidden_features is None \
            else critic_hidden_features
        super().__init__(
            MLPGenerator(features, latent_dim, hidden_features, activation, num_classes),
            MLPCritic(features, critic_hidden, critic_activation, num_classes, conditioning,
                      spectral_norm),
            latent_dim, (features,), num_classes, noise)


class DCGAN(GAN):
    r"""Creates a DCGAN pair for square images (28x28 MNIST, 8x8 digits).

    Args:
        shape: the image shape ``(C, H, H)``, H a multiple of 4.
        latent_dim: the noise dimension.
        hidden_channels: the generator's last hidden channels.
        critic_channels: the critic's first-layer channels (default: ``hidden_channels``).
        num_classes: classes of a conditional pair.
        conditioning: the critic's conditioning, ``"projection"`` or ``"concat"``.
        spectral_norm: spectral normalization in the critic.
        output: the generator's output activation (``"tanh"`` for ``"signed"`` data).
        noise: ``"normal"`` or ``"uniform"``.

    Example:
        >>> gan = DCGAN((1, 8, 8), latent_dim=8, hidden_channels=8, num_classes=10)
        >>> gan.sample((4,), labels=3).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self, shape: Sequence[int], latent_dim: int = 64, hidden_channels: int = 64,
        critic_channels: int | None = None, num_classes: int | None = None,
        conditioning: str = "projection", spectral_norm: bool = False, output: str = "tanh",
        noise: str = "normal",
    ) -> None:
        shape = _check_image_shape(shape)
        super().__init__(
            DCGANGenerator(shape, latent_dim, hidden_channels, num_classes, output=output),
            DCGANCritic(shape, critic_channels or hidden_channels, num_classes, conditioning,
                        spectral_norm),
            latent_dim, shape, num_classes, noise)


#: The GAN models the CLI's ``[model] name`` can build.
GAN_MODELS: dict[str, type[GAN]] = {"MLPGAN": MLPGAN, "DCGAN": DCGAN}
