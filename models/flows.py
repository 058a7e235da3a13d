"""Named normalizing flows: each a NormalizingFlow built from probgen and Pyro transforms."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from pyro.distributions.transforms import GeneralizedChannelPermute
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn

from probgen.flows import NormalizingFlow
from probgen.nn import MLP, ConvResNet
from probgen.transforms import (
    ActNorm,
    AdditiveCoupling,
    ConditionalMaskedAffineAutoregressive,
    ConditionalMaskedSplineAutoregressive,
    Invert,
    InvertiblePlanar,
    InvertibleRadial,
    LULinear,
    MaskedAffineAutoregressive,
    MaskedAffineCoupling,
    MaskedSplineAutoregressive,
    MaskedSplineCoupling,
    Partial,
    Squeeze,
    Unsqueeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from probgen.utils import check_int

__all__ = [
    "PlanarFlow",
    "RadialFlow",
    "LinearFlow",
    "MAF",
    "IAF",
    "NICE",
    "RealNVP",
    "NSF",
    "MultiscaleRealNVP",
    "Glow",
    "FLOWS",
]


def _image_shape(shape: Sequence[int], squeezes: int) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"shape: expected (C, H, W), got {list(shape)}.")
    c, h, w = (int(s) for s in shape)
    if h % 2**squeezes or w % 2**squeezes:
        raise ValueError(
            f"shape: the flow squeezes {squeezes} time(s), so H and W must be divisible by "
            f"{2**squeezes}; got {list(shape)} (use fewer scales)."
        )
    return c, h, w


class PlanarFlow(NormalizingFlow):
    """Creates a planar flow (invertible, so it has a ``log_prob`` of new points).

    Args:
        features: dimension D.
        transforms: number of planar layers.

    References:
        Variational inference with normalizing flows (Rezende & Mohamed, 2015),
        https://arxiv.org/abs/1505.05770

    Example:
        >>> PlanarFlow(2).sample((3,)).shape
        torch.Size([3, 2])
    """

    def __init__(self, features: int, transforms: int = 8) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        super().__init__([InvertiblePlanar(features) for _ in range(transforms)], (features,))


class RadialFlow(NormalizingFlow):
    """Creates a radial flow (invertible in closed form).

    Args:
        features: dimension D.
        transforms: number of radial layers.

    References:
        Variational inference with normalizing flows (Rezende & Mohamed, 2015),
        https://arxiv.org/abs/1505.05770
    """

    def __init__(self, features: int, transforms: int = 8) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        super().__init__([InvertibleRadial(features) for _ in range(transforms)], (features,))


class LinearFlow(NormalizingFlow):
    """Creates a linear (full-covariance Gaussian) flow from LU-parametrised layers.

    Args:
        features: dimension D.
        transforms: number of :class:`~probgen.transforms.LULinear` layers.

    References:
        Glow (Kingma & Dhariwal, 2018), https://arxiv.org/abs/1807.03039
    """

    def __init__(self, features: int, transforms: int = 1) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        super().__init__([LULinear(features) for _ in range(transforms)], (features,))


def _orders(features: int, transforms: int) -> list[torch.Tensor]:
    ascending = torch.arange(features)
    return [ascending if i % 2 == 0 else ascending.flip(0) for i in range(transforms)]


def _autoregressive(
    features: int, transforms: int, hidden_features: Sequence[int], context: int
) -> list[nn.Module]:
    hidden = [int(h) for h in hidden_features]
    layers: list[nn.Module] = []
    for order in _orders(features, transforms):
        if context:
            arn = ConditionalAutoRegressiveNN(features, context, hidden, permutation=order)
            layers.append(ConditionalMaskedAffineAutoregressive(arn))
        else:
            layers.append(MaskedAffineAutoregressive(AutoRegressiveNN(features, hidden,
                                                                      permutation=order)))
    return layers


def _spline_autoregressive(
    features: int, hidden: list[int], context: int, bins: int, bound: float,
    order: torch.Tensor,
) -> nn.Module:
    # Widths, heights and the bins - 1 interior derivatives of a monotone RQ spline.
    dims = [bins, bins, bins - 1]
    with warnings.catch_warnings():
        # In 1-D the MADE's outputs depend on the context (or on nothing: one learned
        # spline), which is what a 1-D spline flow is; Pyro's input_dim == 1 hint is moot.
        warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
        if context:
            arn = ConditionalAutoRegressiveNN(features, context, hidden, param_dims=dims,
                                              permutation=order)
        else:
            arn = AutoRegressiveNN(features, hidden, param_dims=dims, permutation=order)
    if context:
        return ConditionalMaskedSplineAutoregressive(features, arn, count_bins=bins, bound=bound)
    return MaskedSplineAutoregressive(features, arn, count_bins=bins, bound=bound)


class MAF(NormalizingFlow):
    """Creates a masked autoregressive flow (MAF): density in one pass, sampling in D.

    Pyro's ``AffineAutoregressive`` over its ``AutoRegressiveNN`` (MADE), used in the
    inverse direction (:class:`~probgen.transforms.Invert`); orders alternate.

    Args:
        features: dimension D.
        transforms: number of autoregressive layers.
        hidden_features: hidden sizes of each MADE.
        context: context size (0: unconditional).

    References:
        Masked autoregressive flow for density estimation (Papamakarios et al., 2017),
        https://arxiv.org/abs/1705.07057

    Example:
        >>> flow = MAF(2, context=1)
        >>> flow.log_prob(torch.randn(4, 2), context=torch.randn(4, 1)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        features: int,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        context: int = 0,
    ) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        layers = _autoregressive(features, transforms, hidden_features, context)
        super().__init__([Invert(t, context) for t in layers], (features,), context=context)


class IAF(NormalizingFlow):
    """Creates an inverse autoregressive flow (IAF): sampling and its log-density in one
    pass (``rsample_and_log_prob``), ``log_prob`` of new points in D passes.

    Args:
        features: dimension D.
        transforms: number of autoregressive layers.
        hidden_features: hidden sizes of each MADE.
        context: context size (0: unconditional).

    References:
        Improved variational inference with inverse autoregressive flow (Kingma et al.,
        2016), https://arxiv.org/abs/1606.04934
    """

    def __init__(
        self,
        features: int,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        context: int = 0,
    ) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        layers = _autoregressive(features, transforms, hidden_features, context)
        super().__init__(layers, (features,), context=context)


class NICE(NormalizingFlow):
    """Creates NICE: additive couplings with alternating masks, then a diagonal scaling.

    Args:
        features: dimension D.
        transforms: number of additive couplings.
        hidden_features: hidden sizes of each coupling MLP.

    References:
        NICE: Non-linear independent components estimation (Dinh et al., 2014),
        https://arxiv.org/abs/1410.8516
    """

    def __init__(
        self, features: int, transforms: int = 4, hidden_features: Sequence[int] = (64, 64)
    ) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        hidden = [int(h) for h in hidden_features]
        layers: list[nn.Module] = [ActNorm([features], data_init=False)]
        for i in range(transforms):
            net = MLP(features, features, hidden, zero_last=True)
            layers.append(AdditiveCoupling(alternating_mask(features, i % 2), net))
        super().__init__(layers, (features,))


class RealNVP(NormalizingFlow):
    """Creates RealNVP for vectors: affine couplings with alternating masks.

    Args:
        features: dimension D.
        transforms: number of couplings.
        hidden_features: hidden sizes of each coupling MLP.
        context: context size (0: unconditional).

    References:
        Density estimation using Real NVP (Dinh et al., 2016), https://arxiv.org/abs/1605.08803

    Example:
        >>> RealNVP(2).log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        transforms: int = 4,
        hidden_features: Sequence[int] = (64, 64),
        context: int = 0,
    ) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        hidden = [int(h) for h in hidden_features]
        layers = [
            MaskedAffineCoupling(
                alternating_mask(features, i % 2),
                MLP(features, 2 * features, hidden, context, zero_last=True),
                context,
            )
            for i in range(transforms)
        ]
        super().__init__(layers, (features,), context=context)


class NSF(NormalizingFlow):
    """Creates a neural spline flow: rational-quadratic splines, coupling or autoregressive.

    With ``autoregressive=False`` (RQ-NSF (C) of the paper) each layer is a spline coupling
    with alternating masks: one pass both ways. With ``autoregressive=True`` (RQ-NSF (AR),
    the layout of zuko's ``NSF``) each layer is a
    :class:`~probgen.transforms.MaskedSplineAutoregressive` over Pyro's MADE (monotone
    rational-quadratic splines with ``bins - 1`` free interior derivatives, identity tails),
    used MAF-style through :class:`~probgen.transforms.Invert`: density in one pass,
    sampling in D; orders alternate.

    Args:
        features: dimension D (at least 2 for couplings).
        transforms: number of layers.
        hidden_features: hidden sizes of each conditioner network (MLP or MADE).
        context: context size (0: unconditional).
        bins: spline bins.
        bound: splines act on ``[-bound, bound]``, identity outside.
        autoregressive: autoregressive layers instead of couplings.

    References:
        Neural spline flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032

    Example:
        >>> flow = NSF(3, transforms=2, autoregressive=True)
        >>> flow.log_prob(torch.randn(5, 3)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        transforms: int = 4,
        hidden_features: Sequence[int] = (64, 64),
        context: int = 0,
        bins: int = 8,
        bound: float = 5.0,
        autoregressive: bool = False,
    ) -> None:
        check_int("features", features)
        check_int("transforms", transforms)
        check_int("bins", bins)
        if not bound > 0:
            raise ValueError(f"bound: expected a positive spline half-width, got {bound}.")
        hidden = [int(h) for h in hidden_features]
        if autoregressive:
            layers = [Invert(_spline_autoregressive(features, hidden, context, bins, bound,
                                                    order), context)
                      for order in _orders(features, transforms)]
            super().__init__(layers, (features,), context=context)
            return
        if features < 2:
            raise ValueError(f"features: NSF couples halves, expected >= 2, got {features} "
                             "(autoregressive=True works in any dimension).")
        layers = [
            MaskedSplineCoupling(alternating_mask(features, i % 2), hidden, context, bins, bound)
            for i in range(transforms)
        ]
        super().__init__(layers, (features,), context=context)


def _coupling(mask: torch.Tensor, hidden: int, blocks: int) -> MaskedAffineCoupling:
    c = mask.shape[0]
    return MaskedAffineCoupling(mask, ConvResNet(c, 2 * c, hidden, blocks))


def _realnvp_scale(
    shape: tuple[int, int, int], scales: int, hidden: int, blocks: int, actnorm: bool
) -> list[nn.Module]:
    """One RealNVP scale in the base -> data direction (shape in = shape out)."""
    c, h, w = shape

    def step(mask: torch.Tensor) -> list[nn.Module]:
        coupling = _coupling(mask, hidden, blocks)
        return [coupling, ActNorm(list(mask.shape))] if actnorm else [coupling]

    if scales == 1:
        return [m for i in range(4) for m in step(checkerboard_mask(shape, i % 2))]
    squeezed = (4 * c, h // 2, w // 2)
    inner = _realnvp_scale((2 * c, h // 2, w // 2), scales - 1, hidden, blocks, actnorm)
    layers: list[nn.Module] = [Squeeze(), Partial(inner, 2 * c)]
    layers += [m for i in range(3) for m in step(channel_mask(squeezed, i % 2))]
    layers.append(Unsqueeze())
    layers += [m for i in range(3) for m in step(checkerboard_mask(shape, i % 2))]
    return layers


class MultiscaleRealNVP(NormalizingFlow):
    """Creates RealNVP for images: checkerboard couplings, squeeze, channel couplings and
    factor-out of half the channels at each scale; 4 checkerboard couplings at the last.

    Every scale maps ``(C, H, W)`` to itself (the factored-out half is kept in place and
    unsqueezed back), so the base is a standard normal over the image shape.

    Args:
        shape: image shape ``[C, H, W]``; H and W divisible by ``2**(scales - 1)``.
        scales: number of scales.
        hidden_channels: width of each coupling's ResNet.
        blocks: residual blocks per ResNet.
        actnorm: add an ActNorm after every coupling.

    References:
        Density estimation using Real NVP (Dinh et al., 2016), https://arxiv.org/abs/1605.08803

    Example:
        >>> flow = MultiscaleRealNVP([1, 4, 4], scales=2, hidden_channels=8, blocks=1)
        >>> flow.log_prob(torch.randn(3, 1, 4, 4)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        shape: Sequence[int],
        scales: int = 2,
        hidden_channels: int = 64,
        blocks: int = 2,
        actnorm: bool = False,
    ) -> None:
        check_int("scales", scales)
        check_int("hidden_channels", hidden_channels)
        shp = _image_shape(shape, scales - 1)
        super().__init__(_realnvp_scale(shp, scales, hidden_channels, blocks, actnorm), shp)


def _glow_scale(
    shape: tuple[int, int, int], scales: int, steps: int, hidden: int, blocks: int
) -> list[nn.Module]:
    """One Glow scale, base -> data: squeeze, (inner scales), flow steps, unsqueeze."""
    c, h, w = shape
    squeezed = (4 * c, h // 2, w // 2)
    layers: list[nn.Module] = [Squeeze()]
    if scales > 1:
        inner = _glow_scale((2 * c, h // 2, w // 2), scales - 1, steps, hidden, blocks)
        layers.append(Partial(inner, 2 * c))
    for i in range(steps):  # each step, data -> base: actnorm, 1x1 conv, coupling
        layers += [
            _coupling(channel_mask(squeezed, i % 2), hidden, blocks),
            GeneralizedChannelPermute(channels=4 * c),
            ActNorm(list(squeezed)),
        ]
    layers.append(Unsqueeze())
    return layers


class Glow(NormalizingFlow):
    """Creates Glow: multi-scale steps of ActNorm, invertible 1x1 convolution and affine
    coupling, with a squeeze and a factor-out of half the channels at each scale.

    The 1x1 convolution is Pyro's ``GeneralizedChannelPermute`` (LU form, fixed
    permutation buffer), which is exactly Glow's LU-decomposed 1x1 convolution.

    Args:
        shape: image shape ``[C, H, W]``; H and W divisible by ``2**scales``.
        scales: number of scales (levels).
        steps: flow steps per scale.
        hidden_channels: width of each coupling's ResNet.
        blocks: residual blocks per ResNet.

    References:
        Glow: Generative flow with invertible 1x1 convolutions (Kingma & Dhariwal, 2018),
        https://arxiv.org/abs/1807.03039
    """

    def __init__(
        self,
        shape: Sequence[int],
        scales: int = 2,
        steps: int = 4,
        hidden_channels: int = 64,
        blocks: int = 1,
    ) -> None:
        check_int("scales", scales)
        check_int("steps", steps)
        check_int("hidden_channels", hidden_channels)
        shp = _image_shape(shape, scales)
        super().__init__(_glow_scale(shp, scales, steps, hidden_channels, blocks), shp)


FLOWS: dict[str, type[NormalizingFlow]] = {
    "PlanarFlow": PlanarFlow,
    "RadialFlow": RadialFlow,
    "LinearFlow": LinearFlow,
    "MAF": MAF,
    "IAF": IAF,
    "NICE": NICE,
    "RealNVP": RealNVP,
    "NSF": NSF,
    "MultiscaleRealNVP": MultiscaleRealNVP,
    "Glow": Glow,
}
