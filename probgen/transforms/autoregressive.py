"""Pyro's affine autoregressive transform with a dtype-safe, batched inverse."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN
from torch import Tensor

from probgen.transforms.base import _CachedLadjMixin

__all__ = ["MaskedAffineAutoregressive", "ConditionalMaskedAffineAutoregressive"]


def made(arn: Any, x: Tensor) -> Any:
    """``arn(x)`` for a Pyro ``AutoRegressiveNN`` (or a conditioned one, a ``partial``).

    Pyro's forward slices its layer list on every call (``self.layers[:-1]`` builds a new
    ``ModuleList``), which costs about as much as a small hidden layer; this runs the same
    layers, activation, skip layer and output reshaping without the slice. Any other
    network, a subclass, or one with hooks on it is simply called.
    """
    if type(arn) is not AutoRegressiveNN or arn._forward_hooks or arn._forward_pre_hooks:
        return arn(x)
    *hidden, last = arn.layers._modules.values()
    h = x
    for layer in hidden:
        h = arn.f(layer(h))
    p, d = arn.output_multiplier, arn.input_dim
    if p > 1 and torch.compiler.is_compiling():
        # Same values, feature-major memory: the output rows are reordered (d, p) so each
        # feature's P parameters are contiguous, the layout inductor vectorizes a spline's
        # per-feature bins in (about 15% faster compiled; eager prefers the parameter-major one).
        order = torch.arange(p * d, device=x.device).reshape(p, d).T.reshape(-1)
        h = F.linear(h, (last.weight * last.mask)[order], last.bias[order])
        if arn.skip_layer is not None:
            skip = arn.skip_layer
            h = h + F.linear(x, (skip.weight * skip.mask)[order])
        h = h.reshape(x.shape[:-1] + (d, p)).transpose(-1, -2)
    else:
        h = last(h)
        if arn.skip_layer is not None:
            h = h + arn.skip_layer(x)
        if p == 1:
            return h
        h = h.reshape(x.shape[:-1] + (p, d))
    if arn.count_params == 1:
        return h
    if arn.all_ones:
        return torch.unbind(h, dim=-2)
    return tuple(h[..., s, :] for s in arn.param_slices)


class MaskedAffineAutoregressive(_CachedLadjMixin, AffineAutoregressive):
    r"""Pyro's :class:`~pyro.distributions.transforms.AffineAutoregressive`
    (:math:`y = \mu(x) + e^{s(x)} x`, a MADE network) with a fixed inverse.

    Pyro's inverse starts from ``torch.zeros(...)`` in the *default* dtype, so it fails on
    float64 inputs with a float32 default, and loops feature by feature over Python lists.
    Here the inverse iterates :math:`x \leftarrow (y - \mu(x)) e^{-s(x)}` D times from zeros,
    which is exact after D passes by the autoregressive property, in the input's dtype.

    Forward (``t(x)``) is IAF's one-pass sampling direction; MAF is ``Invert(t)``.

    The log-scale is bounded *softly* by default: :math:`s \mapsto s / (1 + |s| / B)` with
    :math:`B` = ``log_scale_max_clip`` above zero and ``-log_scale_min_clip`` below. Pyro's
    hard clamp keeps the value in bounds but passes the gradient through unchanged
    (``clamp_preserve_gradients``), so once an output passes a bound maximum likelihood keeps
    pushing it further with no effect on the loss; the network's raw outputs then drift
    without limit, and on hard densities (2 spirals, one seed in ten) training diverged. The
    soft bound's gradient vanishes smoothly instead (zuko bounds its MAF the same way).
    ``soft_clip=False`` restores Pyro's behaviour.

    Args:
        autoregressive_nn: a Pyro ``AutoRegressiveNN`` with ``param_dims=[1, 1]``.
        soft_clip: bound the log-scale softly (default) or with Pyro's hard clamp.
        **kwargs: passed to ``AffineAutoregressive`` (log-scale bounds, default -5 and 3).

    References:
        Masked autoregressive flow for density estimation (Papamakarios et al., 2017),
        https://arxiv.org/abs/1705.07057; Improved variational inference with inverse
        autoregressive flow (Kingma et al., 2016), https://arxiv.org/abs/1606.04934

    Example:
        >>> from pyro.nn import AutoRegressiveNN
        >>> t = MaskedAffineAutoregressive(AutoRegressiveNN(3, [8]))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-5)
        True
    """

    def __init__(self, autoregressive_nn: Any, soft_clip: bool = True, **kwargs: Any) -> None:
        super().__init__(autoregressive_nn, **kwargs)
        if self.stable:
            raise ValueError("MaskedAffineAutoregressive: stable=True (Pyro's sigmoid "
                             "variant) is not supported; use the default affine form.")
        if not self.log_scale_min_clip < 0 < self.log_scale_max_clip:
            raise ValueError(f"log-scale bounds: expected min < 0 < max, got "
                             f"{self.log_scale_min_clip} and {self.log_scale_max_clip}.")
        self.soft_clip = soft_clip

    def _bound(self, log_scale: Tensor) -> Tensor:
        lo, hi = self.log_scale_min_clip, self.log_scale_max_clip
        if not self.soft_clip:
            return clamp_preserve_gradients(log_scale, lo, hi)
        bound = torch.where(log_scale >= 0, hi, -lo)
        return log_scale / (1 + log_scale.abs() / bound)

    # ``t(x)``, ``t.inv(y)`` and ``log_abs_det_jacobian`` come from _CachedLadjMixin; these
    # give y (or x) and the forward log|det J| in one pass, and the flows call them directly.
    def _fwd(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = made(self.arn, x)
        log_scale = self._bound(log_scale)
        return torch.exp(log_scale) * x + mean, log_scale.sum(-1)

    def _bwd(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(y)
        log_scale = torch.zeros_like(y)
        for _ in range(y.size(-1)):
            mean, log_scale = made(self.arn, x)
            log_scale = self._bound(log_scale)
            x = (y - mean) * torch.exp(-log_scale)
        return x, log_scale.sum(-1)


class ConditionalMaskedAffineAutoregressive(ConditionalAffineAutoregressive):
    """Pyro's ``ConditionalAffineAutoregressive`` conditioning to
    :class:`MaskedAffineAutoregressive` (same fixed inverse).

    Args:
        autoregressive_nn: a Pyro ``ConditionalAutoRegressiveNN``.
        **kwargs: passed to ``AffineAutoregressive``.
    """

    def condition(self, context: Tensor) -> MaskedAffineAutoregressive:  # noqa: D102
        cond_nn = partial(self.nn, context=context)
        cond_nn.permutation = self.nn.permutation  # type: ignore[attr-defined]
        cond_nn.get_permutation = self.nn.get_permutation  # type: ignore[attr-defined]
        return MaskedAffineAutoregressive(cond_nn, **self.kwargs)
