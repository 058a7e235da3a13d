r"""VAE building blocks: encoders, decoders, likelihoods and priors (used by probgen.models.vae).

- Encoders map ``(*batch, *shape)`` to ``(*batch, out_features)``: :class:`MLPEncoder`,
  :class:`ConvEncoder` (a convolutional ResNet that halves H and W twice; with
  ``out_features=None`` it returns the feature map). :func:`make_encoder` builds one by name.
- Decoders map ``(*batch, in_features)`` to ``(*batch, params, *shape)``, the ``params``
  numbers per data entry that a likelihood reads: :class:`MLPDecoder`, :class:`ConvDecoder`
  (mirror of the encoder; ``in_features=None`` takes a feature map). :func:`make_decoder`.
- Likelihoods turn decoder outputs into a Distribution whose event shape is the data's:
  ``likelihood.params`` says how many decoder outputs per entry it needs, ``likelihood(out)``
  is the distribution, ``likelihood.mean(out)`` its mean (what figures show).
- Priors (:class:`StandardNormalPrior`, :class:`VampPrior`, :class:`DiagonalNormalMixture`)
  live in :mod:`probgen.models.vae_priors`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probgen.nn import MLP, ConvResidualBlock
from probgen.nn.vit import ViTDecoder, ViTEncoder
from probgen.pixels import DiscretizedLogistic
from probgen.utils import check_choice, check_int

__all__ = [
    "MLPEncoder",
    "ConvEncoder",
    "MLPDecoder",
    "ConvDecoder",
    "make_encoder",
    "make_decoder",
    "Likelihood",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "CategoricalLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
]


def _shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as e:
        raise TypeError(f"{name}: expected a sequence of ints, got {shape!r}.") from e
    if not out or any(s < 1 for s in out):
        raise ValueError(f"{name}: expected positive sizes, (D,) or (C, H, W); got {shape!r}.")
    return out


def _image(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"{name}: convolutional networks need images (C, H, W) with H and W "
                         f"divisible by 4 (two halvings), got {shape}.")
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- networks
class MLPEncoder(nn.Module):
    """Creates an MLP encoder: flattens ``(*batch, *shape)`` and returns ``(*batch, out)``.

    Args:
        shape: data shape, ``(D,)`` or ``(C, H, W)``.
        out_features: output size (for a diagonal Gaussian: ``2 * latent``).
        hidden_features: hidden sizes (empty: a linear map).
        activation: hidden activation name (see :data:`probgen.nn.ACTIVATIONS`).

    Example:
        >>> MLPEncoder((1, 8, 8), 4, [16])(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, shape: Sequence[int], out_features: int,
                 hidden_features: Sequence[int] = (512, 512), activation: str = "relu") -> None:
        super().__init__()
        self.shape = _shape(shape)
        check_int("out_features", out_features)
        self.net = MLP(math.prod(self.shape), out_features, list(hidden_features),
                       activation=activation)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x.flatten(x.dim() - len(self.shape)))


class ConvEncoder(nn.Module):
    """Creates a convolutional ResNet encoder: a 3x3 stem, then twice (residual blocks, a
    stride-2 convolution doubling the channels), then a linear head.

    Args:
        shape: image shape ``(C, H, W)``, H and W divisible by 4.
        out_features: output size; ``None`` returns the ``(4 * channels, H/4, W/4)`` map.
        channels: width after the stem.
        blocks: residual blocks per level.

    Example:
        >>> ConvEncoder((1, 8, 8), 6, channels=4)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 6])
    """

    def __init__(self, shape: Sequence[int], out_features: int | None,
                 channels: int = 32, blocks: int = 1) -> None:
        super().__init__()
        c, h, w = _image(_shape(shape), "shape")
        check_int("channels", channels)
        self.shape = (c, h, w)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1)]
        width = channels
        for _ in range(2):
            layers += [ConvResidualBlock(width) for _ in range(blocks)]
            layers += [nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.map_shape = (width, h // 4, w // 4)
        self.head = (nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(math.prod(self.map_shape),
                                                                      out_features))
                     if out_features is not None else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        lead = x.shape[:-3]
        out = self.head(self.features(x.reshape(-1, *self.shape)))
        return out.reshape(*lead, *out.shape[1:])


class MLPDecoder(nn.Module):
    """Creates an MLP decoder: ``(*batch, in_features)`` -> ``(*batch, params, *shape)``.

    Example:
        >>> MLPDecoder(2, (1, 8, 8), params=3, hidden_features=[16])(torch.randn(5, 2)).shape
        torch.Size([5, 3, 1, 8, 8])
    """

    def __init__(self, in_features: int, shape: Sequence[int], params: int = 1,
                 hidden_features: Sequence[int] = (512, 512), activation: str = "relu") -> None:
        super().__init__()
        check_int("in_features", in_features)
        check_int("params", params)
        self.shape, self.params = _shape(shape), params
        self.net = MLP(in_features, params * math.prod(self.shape), list(hidden_features),
                       activation=activation)

    def forward(self, z: Tensor) -> Tensor:  # noqa: D102
        return self.net(z).unflatten(-1, (self.params, *self.shape))


class ConvDecoder(nn.Module):
    """Creates a convolutional ResNet decoder, the mirror of :class:`ConvEncoder`: a linear
    map to a ``(4 * channels, H/4, W/4)`` map (or such a map given), twice (a stride-2
    transposed convolution halving the channels, residual blocks), then a 3x3 convolution
    to ``params * C`` channels.

    Args:
        in_features: latent size; ``None`` takes a ``(in_channels, H/4, W/4)`` map.
        shape: image shape ``(C, H, W)``.
        params: outputs per pixel (see the likelihoods).
        channels: width at full resolution.
        blocks: residual blocks per level.
        in_channels: channels of a given map (``in_features=None``); default ``4 * channels``.

    Example:
        >>> ConvDecoder(3, (1, 8, 8), params=2, channels=4)(torch.randn(5, 3)).shape
        torch.Size([5, 2, 1, 8, 8])
    """

    def __init__(self, in_features: int | None, shape: Sequence[int], params: int = 1,
                 channels: int = 32, blocks: int = 1, in_channels: int | None = None) -> None:
        super().__init__()
        c, h, w = _image(_shape(shape), "shape")
        check_int("params", params)
        check_int("channels", channels)
        self.shape, self.params, self.in_features = (c, h, w), params, in_features
        width = 4 * channels
        self.map_shape = (width, h // 4, w // 4)
        if in_features is not None:
            self.stem: nn.Module = nn.Linear(in_features, math.prod(self.map_shape))
        else:
            self.stem = nn.Conv2d(in_channels or width, width, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.ReLU(), nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1)]
            width //= 2
            layers += [ConvResidualBlock(width) for _ in range(blocks)]
        layers += [nn.ReLU(), nn.Conv2d(width, params * c, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # noqa: D102
        if self.in_features is not None:
            lead = z.shape[:-1]
            y = self.stem(z.reshape(-1, z.shape[-1])).unflatten(-1, self.map_shape)
        else:
            lead = z.shape[:-3]
            y = self.stem(z.reshape(-1, *z.shape[-3:]))
        out = self.net(y).unflatten(1, (self.params, self.shape[0]))
        return out.reshape(*lead, *out.shape[1:])


def make_encoder(kind: str | nn.Module, shape: Sequence[int], out_features: int, *,
                 hidden_features: Sequence[int] = (512, 512), channels: int = 32,
                 blocks: int = 1) -> nn.Module:
    """Builds the encoder called ``kind`` (``"mlp"``, ``"conv"`` or ``"vit"``, images only); a
    module passes through."""
    if isinstance(kind, nn.Module):
        return kind
    if kind == "mlp":
        return MLPEncoder(shape, out_features, hidden_features)
    if kind == "conv":
        return ConvEncoder(shape, out_features, channels, blocks)
    if kind == "vit":
        return ViTEncoder(shape, out_features, **_vit(shape, channels, blocks))
    raise ValueError(f"encoder: expected 'mlp', 'conv', 'vit' or an nn.Module, got {kind!r}.")


def make_decoder(kind: str | nn.Module, in_features: int, shape: Sequence[int], params: int, *,
                 hidden_features: Sequence[int] = (512, 512), channels: int = 32,
                 blocks: int = 1) -> nn.Module:
    """Builds the decoder called ``kind`` (``"mlp"``, ``"conv"`` or ``"vit"``, images only); a
    module passes through."""
    if isinstance(kind, nn.Module):
        return kind
    if kind == "mlp":
        return MLPDecoder(in_features, shape, params, hidden_features)
    if kind == "conv":
        return ConvDecoder(in_features, shape, params, channels, blocks)
    if kind == "vit":
        return ViTDecoder(in_features, shape, params=params, **_vit(shape, channels, blocks))
    raise ValueError(f"decoder: expected 'mlp', 'conv', 'vit' or an nn.Module, got {kind!r}.")


def _vit(shape: Sequence[int], channels: int, blocks: int) -> dict[str, int]:
    """A ViT's settings from the named blocks' ``channels`` (token width, rounded up to a
    multiple of 4 heads) and ``blocks`` (depth, at least 2); patches of 4 pixels on
    28x28/32x32 images, 2 on smaller ones."""
    if len(shape) != 3:
        raise ValueError(f"encoder/decoder 'vit': expected images (C, H, W), got {tuple(shape)}.")
    patch = 4 if min(shape[1:]) >= 16 and shape[1] % 4 == 0 and shape[2] % 4 == 0 else 2
    return {"patch": patch, "hidden": 16 * math.ceil(channels / 16), "heads": 4,
            "depth": max(2, int(blocks))}


# ------------------------------------------------------------------------- likelihoods
class Likelihood(nn.Module):
    """Base class of the decoder likelihoods :math:`p(x \\mid z)`.

    ``forward(out)`` takes decoder outputs of shape ``(*batch, params, *shape)`` and returns
    a Pyro distribution with batch shape ``batch`` and event shape ``shape``.
    """

    params: int = 1

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = _shape(shape)

    def _param(self, out: Tensor, i: int) -> Tensor:
        return out.select(out.dim() - len(self.shape) - 1, i)

    def mean(self, out: Tensor) -> Tensor:
        """The mean of ``p(x | z)``, shape ``(*batch, *shape)``."""
        return self(out).mean


class BernoulliLikelihood(Likelihood):
    """Creates a Bernoulli likelihood on binary data (decoder outputs are logits).

    Example:
        >>> BernoulliLikelihood((2,))(torch.zeros(3, 1, 2)).log_prob(torch.ones(3, 2))
        tensor([-1.3863, -1.3863, -1.3863])
    """

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Bernoulli(logits=self._param(out, 0),
                              validate_args=False).to_event(len(self.shape))

    def mean(self, out: Tensor) -> Tensor:  # noqa: D102
        return torch.sigmoid(self._param(out, 0))


class ContinuousBernoulliLikelihood(Likelihood):
    """Creates a continuous Bernoulli likelihood on data in [0, 1] (decoder outputs are
    logits); unlike a Bernoulli on grey levels it is a normalized density on [0, 1].

    References:
        The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019),
        https://arxiv.org/abs/1907.06845
    """

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.ContinuousBernoulli(logits=self._param(out, 0),
                                        validate_args=False).to_event(len(self.shape))


class GaussianLikelihood(Likelihood):
    """Creates a diagonal Gaussian likelihood whose mean the decoder outputs.

    Args:
        shape: data shape.
        scale: a float (fixed standard deviation), ``"learned"`` (one learned standard
            deviation per data entry, independent of z) or ``"decoder"`` (the decoder
            outputs it: ``softplus(out) + min_scale``).
        min_scale: floor of a decoder-output scale.
    """

    def __init__(self, shape: Sequence[int], scale: float | str = "decoder",
                 min_scale: float = 1e-3) -> None:
        super().__init__(shape)
        if isinstance(scale, str) and scale not in ("learned", "decoder"):
            raise ValueError(f"scale: expected a positive float, 'learned' or 'decoder', got "
                             f"{scale!r}.")
        if not isinstance(scale, str) and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale: expected a positive float, 'learned' or 'decoder', got "
                             f"{scale!r}.")
        self.kind = scale if isinstance(scale, str) else "fixed"
        self.params = 2 if scale == "decoder" else 1
        self.min_scale = float(min_scale)
        if scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(self.shape))
        elif self.kind == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))

    def scale(self, out: Tensor) -> Tensor:
        """The standard deviation for decoder outputs ``out``."""
        if self.kind == "decoder":
            return F.softplus(self._param(out, 1)) + self.min_scale
        if self.kind == "learned":
            return self.log_scale.exp().expand(self._param(out, 0).shape)
        return self.fixed_scale.expand(self._param(out, 0).shape)

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Normal(self._param(out, 0), self.scale(out),
                           validate_args=False).to_event(len(self.shape))

    def mean(self, out: Tensor) -> Tensor:  # noqa: D102
        return self._param(out, 0)

    def extra_repr(self) -> str:  # noqa: D102
        return f"scale={self.kind}"


class CategoricalLikelihood(Likelihood):
    """Creates a ``levels``-way categorical likelihood per entry (integer pixels as floats
    or ints in ``0 .. levels-1``); the decoder outputs ``levels`` logits per entry.

    Example:
        >>> lik = CategoricalLikelihood((2,), levels=4)
        >>> lik(torch.zeros(1, 4, 2)).log_prob(torch.tensor([[0.0, 3.0]]))
        tensor([-2.7726])
    """

    def __init__(self, shape: Sequence[int], levels: int = 256) -> None:
        super().__init__(shape)
        check_int("levels", levels)
        self.params = self.levels = levels

    def _logits(self, out: Tensor) -> Tensor:
        return out.movedim(out.dim() - len(self.shape) - 1, -1)

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Categorical(logits=self._logits(out),
                                validate_args=False).to_event(len(self.shape))

    def mean(self, out: Tensor) -> Tensor:  # noqa: D102
        values = torch.arange(self.levels, dtype=out.dtype, device=out.device)
        return (self._logits(out).softmax(-1) * values).sum(-1)


class DiscretizedLogisticLikelihood(Likelihood):
    """Creates the discretized logistic likelihood of integer pixels ``0..levels-1`` (the
    decoder outputs a location on the [-1, 1] grid and a log-scale per entry), for exact
    bits per dimension of 8-bit images; the encoder sees the pixels on [-1, 1].

    Example:
        >>> lik = DiscretizedLogisticLikelihood((2,), levels=256)
        >>> lik(torch.zeros(1, 2, 2)).log_prob(torch.tensor([[0.0, 255.0]])).shape
        torch.Size([1])
    """

    params = 2

    def __init__(self, shape: Sequence[int], levels: int = 256) -> None:
        super().__init__(shape)
        check_int("levels", levels)
        self.levels = levels

    def encoder_input(self, x: Tensor) -> Tensor:
        """Integer pixels mapped to [-1, 1] for the encoder."""
        return 2.0 * x / (self.levels - 1) - 1.0

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        scale = F.softplus(self._param(out, 1)) + 1e-3
        return DiscretizedLogistic(self._param(out, 0), scale, self.levels,
                                   validate_args=False).to_event(len(self.shape))


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "categorical": CategoricalLikelihood,
    "discretized_logistic": DiscretizedLogisticLikelihood,
}


def make_likelihood(name: str, shape: Sequence[int], *, scale: float | str = "decoder",
                    levels: int = 256) -> Likelihood:
    """Builds the likelihood called ``name`` (one of :data:`LIKELIHOODS`)."""
    check_choice("likelihood", name, sorted(LIKELIHOODS))
    if name == "gaussian":
        return GaussianLikelihood(shape, scale)
    if name == "categorical":
        return CategoricalLikelihood(shape, levels)
    if name == "discretized_logistic":
        return DiscretizedLogisticLikelihood(shape, levels)
    return LIKELIHOODS[name](shape)


# ------------------------------------------------------------------------------ priors
