r"""Score networks: an MLP for vectors and a noise-conditional convolutional U-Net for images.

Both follow the protocol of :mod:`probgen.score`: ``net(x, sigma)`` with ``x`` of shape
``(batch, *event)`` and ``sigma`` of shape ``(batch,)``, returning an estimate of
:math:`\nabla_x \log p_\sigma(x)` of the shape of ``x``. Noise-conditional networks embed
:math:`\log\sigma` and divide their output by :math:`\sigma` (Song & Ermon 2020, technique 3),
so the network itself predicts a quantity of order one at every level. Train them with
:mod:`probgen.inference.score_matching`, sample with :mod:`probgen.inference.langevin`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from probgen.nn import MLP, SinusoidalEmbedding, activation, zero_init_

__all__ = ["ScoreMLP", "ConvScoreNet", "SCORE_MODELS"]


def _check_sigma(sigma: Tensor | None, x: Tensor) -> Tensor:
    if sigma is None:
        raise ValueError("sigma: this network is noise-conditional; call it as net(x, sigma) "
                         f"with sigma of shape ({x.shape[0]},).")
    if not isinstance(sigma, Tensor) or sigma.shape != x.shape[:1]:
        got = tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__
        raise ValueError(f"sigma: expected shape ({x.shape[0]},) (one level per example), "
                         f"got {got}.")
    return sigma.to(x.dtype)


class _SigmaEmbedding(nn.Sequential):
    """Sinusoidal features of log(sigma) through a small MLP, ``(batch,) -> (batch, dim)``."""

    def __init__(self, dim: int, act: str) -> None:
        super().__init__(SinusoidalEmbedding(dim, max_period=100.0, scale=1.0),
                         nn.Linear(dim, dim), activation(act), nn.Linear(dim, dim))

    def forward(self, sigma: Tensor) -> Tensor:  # noqa: D102
        return super().forward(torch.log(sigma))


class ScoreMLP(nn.Module):
    r"""Creates an MLP score network for vectors, optionally noise-conditional.

    Unconditional: :math:`s(x) = \text{MLP}(x)` (a ``sigma`` argument is accepted and
    ignored, so the denoising losses can call it). Noise-conditional:
    :math:`s(x, \sigma) = \text{MLP}([x, e(\log\sigma)]) / \sigma`.

    Args:
        features: the dimension D.
        hidden_features: hidden layer sizes.
        noise_conditional: take the noise level as an input.
        embedding_dim: size of the noise-level embedding (even).
        activation: hidden activation (smooth ones suit score matching, whose implicit
            and sliced losses differentiate the network).

    Shapes:
        ``x``: ``(batch, D)``; ``sigma``: ``(batch,)``; output ``(batch, D)``.

    Example:
        >>> net = ScoreMLP(2, [32, 32], noise_conditional=True)
        >>> net(torch.randn(5, 2), torch.full((5,), 0.1)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (128, 128),
        noise_conditional: bool = False,
        embedding_dim: int = 32,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.features, self.noise_conditional = int(features), bool(noise_conditional)
        self.event_shape = (self.features,)
        extra = embedding_dim if noise_conditional else 0
        self.embed = _SigmaEmbedding(embedding_dim, activation) if noise_conditional else None
        self.net = MLP(features + extra, features, list(hidden_features),
                       activation=activation)

    def forward(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """The score at ``x`` (and noise level ``sigma``), shape of ``x``."""
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x: expected shape (batch, {self.features}), got "
                             f"{tuple(x.shape)}.")
        if not self.noise_conditional:
            return self.net(x)
        sigma = _check_sigma(sigma, x)
        h = self.net(torch.cat([x, self.embed(sigma)], dim=-1))
        return h / sigma[:, None]


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.film(e)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class ConvScoreNet(nn.Module):
    r"""Creates a noise-conditional convolutional score network (a small U-Net) for images.

    Two resolutions down and up (28 -> 14 -> 7 -> 14 -> 28 for MNIST) with skip
    connections; every residual block gets a per-channel shift from the embedding of
    :math:`\log\sigma`; GroupNorm (per example); the output is divided by :math:`\sigma`.
    A compact stand-in for NCSN's RefineNet, sized for CPU budgets.

    Args:
        shape: the image shape ``(C, H, W)``, ``H`` and ``W`` divisible by 4.
        hidden_channels: width at full resolution (doubled at the coarser ones).
        embedding_dim: size of the noise-level embedding (even).
        groups: GroupNorm groups.

    Shapes:
        ``x``: ``(batch, C, H, W)``; ``sigma``: ``(batch,)``; output ``(batch, C, H, W)``.

    Example:
        >>> net = ConvScoreNet((1, 28, 28), hidden_channels=8)
        >>> net(torch.rand(2, 1, 28, 28), torch.tensor([1.0, 0.01])).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden_channels: int = 32,
        embedding_dim: int = 64,
        groups: int = 8,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
            raise ValueError(f"shape: expected (C, H, W) with H and W divisible by 4, got "
                             f"{shape}.")
        self.event_shape = shape
        c, e = hidden_channels, embedding_dim
        self.embed = _SigmaEmbedding(e, "silu")
        self.stem = nn.Conv2d(shape[0], c, 3, padding=1)
        self.down1 = _ResBlock(c, c, e, groups)
        self.pool1 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2 = _ResBlock(c, 2 * c, e, groups)
        self.pool2 = nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)
        self.mid = _ResBlock(2 * c, 2 * c, e, groups)
        self.up2 = _ResBlock(4 * c, 2 * c, e, groups)
        self.up1 = _ResBlock(3 * c, c, e, groups)
        self.head = nn.Sequential(nn.GroupNorm(min(groups, c), c), nn.SiLU(),
                                  zero_init_(nn.Conv2d(c, shape[0], 3, padding=1)))

    def forward(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """The score at ``x`` and noise level ``sigma``, shape of ``x``."""
        if x.shape[1:] != self.event_shape:
            raise ValueError(f"x: expected shape (batch, {', '.join(map(str, self.event_shape))})"
                             f", got {tuple(x.shape)}.")
        sigma = _check_sigma(sigma, x)
        e = self.embed(sigma)
        h1 = self.down1(self.stem(x), e)  # full resolution
        h2 = self.down2(self.pool1(h1), e)  # 1/2
        h = self.mid(self.pool2(h2), e)  # 1/4
        h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up2(torch.cat([h, h2], dim=1), e)
        h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), e)
        return self.head(h) / sigma.view(-1, 1, 1, 1)


#: The score networks, for the CLI's ``[model] name``.
SCORE_MODELS: dict[str, type[nn.Module]] = {"ScoreMLP": ScoreMLP, "ConvScoreNet": ConvScoreNet}
