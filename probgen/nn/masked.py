"""Masked layers for autoregressive models: MADE masks, masked convolutions, causal masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probgen.utils import check_int

__all__ = [
    "MaskedLinear",
    "MaskedMLP",
    "made_masks",
    "MaskedConv2d",
    "conv_mask",
    "channel_groups",
    "causal_mask",
]


class MaskedLinear(nn.Linear):
    r"""Creates a linear layer whose weight is multiplied by fixed 0/1 masks.

    Computes :math:`y = x (W \odot M_k)^\top + b`, with :math:`M_k` one of several masks
    (one per ordering of a MADE ensemble), chosen at call time.

    Args:
        mask: ``(out_features, in_features)`` or ``(masks, out_features, in_features)``.
        bias: add a bias.

    Example:
        >>> layer = MaskedLinear(torch.tril(torch.ones(3, 3)))
        >>> layer(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3:
            raise ValueError(f"mask: expected (out, in) or (masks, out, in), got "
                             f"{tuple(mask.shape)}.")
        super().__init__(mask.shape[2], mask.shape[1], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    @property
    def num_masks(self) -> int:
        """How many masks the layer holds."""
        return self.mask.shape[0]

    def forward(self, x: Tensor, index: int = 0) -> Tensor:
        """Applies the layer with mask ``index``; ``x`` is ``(*batch, in_features)``."""
        return F.linear(x, self.weight * self.mask[index], self.bias)


def made_masks(
    orders: Tensor,
    hidden_features: Sequence[int],
    outputs_per_input: int = 1,
    *,
    random_degrees: bool = False,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Builds MADE's connectivity masks for one or several input orderings.

    Input ``i`` has degree ``r(i)`` (its 0-based position in the order); a hidden unit of
    degree ``m`` sees inputs with ``r <= m`` and hidden units below with degree ``<= m``; the
    outputs of input ``i`` see hidden units with ``m < r(i)``. So output ``i`` depends exactly
    on the inputs that precede ``i`` in the order (Germain et al., 2015, eq. 12-13). Hidden
    degrees cycle through ``0..D-2`` (every dependency is realisable once a layer has at
    least ``D - 1`` units), or are drawn uniformly from ``[min of the layer below, D-2]``.

    Args:
        orders: ``(D,)`` or ``(K, D)``: permutations of ``0..D-1`` (``orders[k][r]`` is the
            input generated at step ``r``).
        hidden_features: sizes of the hidden layers (at least one).
        outputs_per_input: output units per input (e.g. the number of categories).
        random_degrees: draw the hidden degrees at random instead of cycling.
        generator: for ``random_degrees``.

    Returns:
        list[Tensor]: masks ``(K, out, in)`` for each layer, the output layer last; output
        unit ``i * outputs_per_input + j`` belongs to input ``i``.

    References:
        MADE: Masked autoencoder for distribution estimation (Germain et al., 2015),
        https://arxiv.org/abs/1502.03509

    Example:
        >>> [m.shape for m in made_masks(torch.arange(3), [4])]
        [torch.Size([1, 4, 3]), torch.Size([1, 3, 4])]
    """
    orders = orders.unsqueeze(0) if orders.dim() == 1 else orders
    d = orders.shape[1]
    ref = torch.arange(d)
    if orders.dim() != 2 or not all(torch.equal(o.sort().values, ref) for o in orders):
        raise ValueError(f"orders: expected permutations of 0..{d - 1}, got {orders.tolist()}.")
    if not hidden_features:
        raise ValueError("hidden_features: MADE needs at least one hidden layer, got [].")
    sizes = [check_int("hidden_features", int(h)) for h in hidden_features]
    check_int("outputs_per_input", outputs_per_input)
    top = max(d - 2, 0)
    layers: list[list[Tensor]] = [[] for _ in range(len(sizes) + 1)]
    for order in orders:
        rank = torch.empty(d, dtype=torch.long)
        rank[order] = torch.arange(d)
        below = rank
        for i, size in enumerate(sizes):
            if random_degrees:
                low = int(below.min()) if i else 0
                low = min(low, top)
                degrees = torch.randint(low, top + 1, (size,), generator=generator)
            else:
                degrees = torch.arange(size) % (top + 1)
            layers[i].append((degrees[:, None] >= below[None, :]).float())
            below = degrees
        out_rank = rank.repeat_interleave(outputs_per_input)
        layers[-1].append((out_rank[:, None] > below[None, :]).float())
    return [torch.stack(masks) for masks in layers]


class MaskedMLP(nn.Module):
    """Creates MADE's masked MLP: outputs of input ``i`` see only the inputs before ``i``.

    Holds one mask set per order (``index`` picks it at call time). An optional context
    (e.g. a one-hot class) enters every hidden layer unmasked: it may affect every output.

    Args:
        orders: ``(D,)`` or ``(K, D)`` input orderings (see :func:`made_masks`).
        hidden_features: hidden layer sizes.
        outputs_per_input: output units per input.
        context: context size (0: none).
        random_degrees: random hidden degrees (see :func:`made_masks`).
        generator: for ``random_degrees``.

    Shapes:
        ``x``: ``(N, D)``; ``context``: ``(N, context)``; output:
        ``(N, D * outputs_per_input)``.

    Example:
        >>> net = MaskedMLP(torch.arange(4), [16], outputs_per_input=2)
        >>> net(torch.randn(5, 4)).shape
        torch.Size([5, 8])
    """

    def __init__(
        self,
        orders: Tensor,
        hidden_features: Sequence[int],
        outputs_per_input: int = 1,
        context: int = 0,
        *,
        random_degrees: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        masks = made_masks(orders, hidden_features, outputs_per_input,
                           random_degrees=random_degrees, generator=generator)
        self.layers = nn.ModuleList(MaskedLinear(m) for m in masks)
        self.context = int(context)
        self.context_layers = nn.ModuleList(
            nn.Linear(self.context, m.shape[1], bias=False) for m in masks[:-1]
        ) if self.context else None

    @property
    def num_masks(self) -> int:
        """How many orders (mask sets) the network holds."""
        return self.layers[0].num_masks

    def forward(self, x: Tensor, context: Tensor | None = None, index: int = 0) -> Tensor:
        """Runs the network with mask set ``index``."""
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            h = layer(h, index)
            if self.context_layers is not None:
                if context is None:
                    raise ValueError(f"context: expected (N, {self.context}), got None.")
                h = h + self.context_layers[i](context)
            h = F.relu(h)
        return self.layers[-1](h, index)


def channel_groups(channels: int, groups: int) -> Tensor:
    """Group index of each of ``channels`` feature maps split into ``groups`` contiguous
    blocks (PixelCNN's colour groups: block ``g`` serves data channel ``g``).

    Example:
        >>> channel_groups(6, 3)
        tensor([0, 0, 1, 1, 2, 2])
    """
    if channels % groups:
        raise ValueError(f"channels: {channels} feature maps cannot be split into {groups} "
                         f"colour groups; use a multiple of {groups}.")
    return torch.arange(channels) // (channels // groups)


def conv_mask(
    kernel_size: int | tuple[int, int],
    mask_type: str,
    in_channels: int = 1,
    out_channels: int = 1,
    data_channels: int = 1,
) -> Tensor:
    """Builds the 0/1 mask of a PixelCNN masked convolution, ``(out, in, kh, kw)``.

    Taps above the centre row, and left of the centre in its row, are 1; taps after the
    centre are 0. The centre tap connects input group ``g_in`` to output group ``g_out``
    when ``g_in < g_out`` (type ``"A"``, the first layer: a pixel never sees itself) or
    ``g_in <= g_out`` (type ``"B"``, later layers). With ``data_channels = 1`` type A has a
    zero centre and type B a one.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``, odd sizes.
        mask_type: ``"A"`` or ``"B"``.
        in_channels: input feature maps (a multiple of ``data_channels``).
        out_channels: output feature maps (a multiple of ``data_channels``).
        data_channels: colour channels of the data (R, G, B generated in that order).

    References:
        Pixel recurrent neural networks (van den Oord et al., 2016),
        https://arxiv.org/abs/1601.06759

    Example:
        >>> conv_mask(3, "A")[0, 0]
        tensor([[1., 1., 1.],
                [1., 0., 0.],
                [0., 0., 0.]])
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kh % 2 == 0 or kw % 2 == 0 or kh < 1 or kw < 1:
        raise ValueError(f"kernel_size: expected odd sizes, got {(kh, kw)}.")
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type: expected 'A' or 'B', got {mask_type!r}.")
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, : kh // 2] = 1.0
    mask[:, :, kh // 2, : kw // 2] = 1.0
    g_in = channel_groups(in_channels, data_channels)
    g_out = channel_groups(out_channels, data_channels)
    before = g_in[None, :] < g_out[:, None]
    centre = before if mask_type == "A" else before | (g_in[None, :] == g_out[:, None])
    mask[:, :, kh // 2, kw // 2] = centre.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """Creates a PixelCNN masked convolution (type A or B), "same" padding.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: ``k`` or ``(kh, kw)``, odd.
        mask_type: ``"A"`` (excludes the centre pixel's own group) or ``"B"``.
        data_channels: colour channels of the data (see :func:`conv_mask`).
        bias: add a bias.

    Shapes:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)``.

    Example:
        >>> conv = MaskedConv2d(1, 4, 5, "A")
        >>> conv(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: str,
        data_channels: int = 1,
        bias: bool = True,
    ) -> None:
        mask = conv_mask(kernel_size, mask_type, in_channels, out_channels, data_channels)
        kh, kw = mask.shape[2:]
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2),
                         bias=bias)
        self.mask_type = mask_type
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        """Convolves ``x`` with the masked kernel."""
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", mask_type={self.mask_type!r}"


def causal_mask(
    length: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The additive causal attention mask: 0 where key ``j <= i`` (query ``i``), else -inf.

    Example:
        >>> causal_mask(2)
        tensor([[0., -inf],
                [0., 0.]])
    """
    check_int("length", length)
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, device=device, dtype=dtype).masked_fill(
        future, float("-inf"))
