"""Multi-layer perceptrons: plain, with an optional context input, and residual."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from probgen.nn.init import zero_init_
from probgen.utils import check_choice

__all__ = ["ACTIVATIONS", "activation", "MLP", "ResidualBlock", "ResidualMLP"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


def activation(name: str) -> nn.Module:
    """Creates the activation module called ``name`` (one of :data:`ACTIVATIONS`).

    Raises:
        ValueError: unknown name; the message lists the allowed ones.
    """
    check_choice("activation", name, sorted(ACTIVATIONS))
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    r"""Creates a multi-layer perceptron, optionally fed a context vector.

    The context (if ``context > 0``) is concatenated to the input, so the network computes
    :math:`f([x, c])`.

    Args:
        in_features: input size D.
        out_features: output size.
        hidden_features: sizes of the hidden layers.
        context: size of the context vector (0: none).
        activation: name of the hidden activation (see :data:`ACTIVATIONS`).
        zero_last: zero-initialise the output layer (the network starts at 0).

    Shapes:
        ``x``: ``(*batch, in_features)``; ``context``: ``(*batch, context)``;
        output: ``(*batch, out_features)``.

    Example:
        >>> net = MLP(3, 2, hidden_features=[16, 16], context=1)
        >>> net(torch.randn(5, 3), torch.randn(5, 1)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        context: int = 0,
        activation: str = "relu",
        zero_last: bool = False,
    ) -> None:
        sizes = [in_features + context, *hidden_features, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i > 0:
                layers.append(ACTIVATIONS[_checked(activation)]())
            layers.append(nn.Linear(a, b))
        if zero_last:
            zero_init_(layers[-1])
        super().__init__(*layers)
        self.in_features, self.out_features, self.context = in_features, out_features, context

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:  # noqa: D102
        if self.context:
            if context is None:
                raise ValueError(f"context: this MLP needs a context of size {self.context}.")
            context = context.expand(*x.shape[:-1], context.shape[-1])
            x = torch.cat([x, context], dim=-1)
        return super().forward(x)


def _checked(name: str) -> str:
    activation(name)
    return name


class ResidualBlock(nn.Module):
    r"""Creates a residual MLP block :math:`x + W_2\,\sigma(W_1\,\sigma(x))`.

    The second layer is zero-initialised, so the block starts as the identity.

    Args:
        features: width of the block (input and output).
        hidden_features: width of the inner layer (defaults to ``features``).
        activation: activation name.
    """

    def __init__(
        self, features: int, hidden_features: int | None = None, activation: str = "relu"
    ) -> None:
        super().__init__()
        hidden = hidden_features or features
        self.net = nn.Sequential(
            ACTIVATIONS[_checked(activation)](),
            nn.Linear(features, hidden),
            ACTIVATIONS[activation](),
            zero_init_(nn.Linear(hidden, features)),
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x + self.net(x)


class ResidualMLP(nn.Module):
    """Creates a residual MLP: a linear stem, ``blocks`` residual blocks, a linear head.

    Args:
        in_features: input size.
        out_features: output size.
        hidden_features: width of the residual stream.
        blocks: number of :class:`ResidualBlock`.
        context: context size concatenated to the input (0: none).
        activation: activation name.
        zero_last: zero-initialise the head.

    Example:
        >>> ResidualMLP(2, 4, hidden_features=8, blocks=2)(torch.randn(3, 2)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 64,
        blocks: int = 2,
        context: int = 0,
        activation: str = "relu",
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        self.context = context
        self.stem = nn.Linear(in_features + context, hidden_features)
        self.blocks = nn.Sequential(
            *[ResidualBlock(hidden_features, activation=activation) for _ in range(blocks)]
        )
        self.head = nn.Sequential(
            ACTIVATIONS[activation](), nn.Linear(hidden_features, out_features)
        )
        if zero_last:
            zero_init_(self.head)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:  # noqa: D102
        if self.context:
            if context is None:
                raise ValueError(f"context: this MLP needs a context of size {self.context}.")
            x = torch.cat([x, context.expand(*x.shape[:-1], context.shape[-1])], dim=-1)
        return self.head(self.blocks(self.stem(x)))
