"""The normalizing-flow base class: transform modules over a standard-normal base."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn
from torch.distributions import Transform

from probgen.transforms.base import _CachedLadjMixin
from probgen.utils import check_tensor, drawing_from

__all__ = ["NormalizingFlow"]

_LOG_2PI = math.log(2 * math.pi)


def _is_conditional(t: nn.Module) -> bool:
    return isinstance(t, ConditionalTransformModule) or bool(getattr(t, "context", 0))


def _submodules(module: nn.Module) -> list[nn.Module]:
    """``module`` and every module under it, depth first. Unlike ``nn.Module.modules()`` it
    keeps no set, so torch.compile traces it (transforms' hashes are opaque to it); a shared
    submodule may appear twice."""
    found, stack = [], [module]
    while stack:
        m = stack.pop()
        found.append(m)
        stack.extend(child for child in m._modules.values() if child is not None)
    return found


def _reduce(ladj: Tensor, batch_dims: int) -> Tensor:
    """Sums a log|det J| over any event dimensions it still has."""
    return ladj.flatten(start_dim=batch_dims).sum(-1) if ladj.dim() > batch_dims else ladj


class NormalizingFlow(nn.Module):
    r"""Creates a normalizing flow: transforms applied to a standard-normal base.

    ``transforms`` are Pyro ``TransformModule``\ s (or conditional modules), listed in the
    base -> data direction, so :math:`x = T_K \circ \dots \circ T_1(z)` with
    :math:`z \sim \mathcal N(0, I)` and
    :math:`\log q(x) = \log \mathcal N(z) - \sum_k \log|\det J_{T_k}|`.
    The base's loc and scale are buffers, so ``.to(device)`` / ``.double()`` move everything.

    Args:
        transforms: the transform modules, base -> data.
        event_shape: shape of one data point, ``(D,)`` or ``(C, H, W)``.
        base_shape: event shape of the base (defaults to ``event_shape``).
        context: context size of the conditional transforms (0: unconditional).

    Example:
        >>> from probgen.transforms import LULinear
        >>> flow = NormalizingFlow([LULinear(2)], (2,))
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        transforms: Sequence[nn.Module],
        event_shape: Sequence[int],
        base_shape: Sequence[int] | None = None,
        context: int = 0,
    ) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self._event_shape = torch.Size(event_shape)
        base = torch.Size(base_shape if base_shape is not None else event_shape)
        self.register_buffer("base_loc", torch.zeros(base))
        self.register_buffer("base_scale", torch.ones(base))
        self.context = context

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one data point."""
        return self._event_shape

    # ----------------------------------------------------------------------------- checks
    def _check_context(self, context: Tensor | None) -> Tensor | None:
        if self.context:
            if context is None:
                raise ValueError(
                    f"context: this flow is conditional; expected a tensor of shape "
                    f"(..., {self.context}), got None."
                )
            context = check_tensor(context, "context", event_shape=(self.context,))
            return context.to(self.base_loc.dtype)
        if context is not None:
            raise ValueError("context: this flow is unconditional (context=0), got a tensor.")
        return None

    def _reset_caches(self) -> None:
        # Pyro transforms cache their last (x, y) pair and return it when the *same* tensor
        # object comes back; after a parameter update that would be stale (or a freed
        # graph). Every public entry point starts from empty caches.
        cached = self.__dict__.get("_cached_transforms")
        if cached is None or cached[0] is not self.transforms or cached[1] != len(self.transforms):
            # The module tree is walked once (not on every call), and again only when the
            # transform list is replaced or changes length.
            found = [m for m in _submodules(self) if isinstance(m, Transform) and m._cache_size]
            cached = (self.transforms, len(self.transforms), found)
            self.__dict__["_cached_transforms"] = cached
        for m in cached[2]:
            m._cached_x_y = None, None

    def _transforms(self, context: Tensor | None) -> list[Transform]:
        self._reset_caches()
        return [t.condition(context) if _is_conditional(t) else t for t in self.transforms]

    def _base(self) -> dist.Distribution:
        normal = dist.Normal(self.base_loc, self.base_scale, validate_args=False)
        return normal.to_event(len(self.base_loc.shape))

    def _base_log_prob(self, z: Tensor) -> Tensor:
        u = (z - self.base_loc) / self.base_scale
        lp = -0.5 * u.pow(2) - self.base_scale.log() - 0.5 * _LOG_2PI
        return lp.flatten(start_dim=z.dim() - self.base_loc.dim()).sum(-1)

    # ------------------------------------------------------------------------------- API
    def distribution(self, context: Tensor | None = None) -> dist.TransformedDistribution:
        """Returns the flow as a Pyro ``TransformedDistribution`` (conditioned on ``context``).

        Args:
            context: ``(*batch, context)`` for a conditional flow, else None.
        """
        context = self._check_context(context)
        return dist.TransformedDistribution(
            self._base(), self._transforms(context), validate_args=False
        )

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``x``, shape ``(*batch, *event_shape)`` -> ``(*batch,)``.

        One pass in the normalising direction (data -> base), for MAF, couplings, etc.

        Raises:
            TypeError: ``x`` is not a floating tensor.
            ValueError: wrong trailing shape, NaN/Inf, or a missing/unexpected context.
        """
        x = check_tensor(x, "x", event_shape=tuple(self._event_shape))
        context = self._check_context(context)
        batch = x.dim() - len(self._event_shape)
        total = x.new_zeros(x.shape[:batch])
        y = x
        for t in reversed(self._transforms(context)):
            y, ladj = _inverse_and_ladj(t, y)
            total = total - _reduce(ladj, batch)
        return total + self._base_log_prob(y)

    def rsample_and_log_prob(
        self, shape: Sequence[int] = (), context: Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draws reparametrised samples and their log-density in one base -> data pass.

        Needs no inverse, so it works for planar and radial flows (reverse KL).

        Args:
            shape: sample shape; with a context of shape ``(*b, context)`` the samples
                have shape ``(*shape, *b, *event_shape)``.
            context: the context, or None.
            generator: the base draws come from it (``None``: the global RNG).

        Returns:
            ``(x, log_q)`` of shapes ``(*shape, *b, *event_shape)`` and ``(*shape, *b)``.
        """
        context = self._check_context(context)
        shape = _check_shape(shape)
        if context is not None:
            shape = shape + context.shape[:-1]
        with drawing_from(generator):
            z = self._base().rsample(shape)
        total = self._base_log_prob(z)
        batch = len(shape)
        for t in self._transforms(context):
            z, ladj = _forward_and_ladj(t, z)
            total = total - _reduce(ladj, batch)
        return z, total

    def rsample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
        """Reparametrised samples, shape ``(*shape, *event_shape)`` (no log-density); the base
        draws come from ``generator`` when one is given."""
        context = self._check_context(context)
        shape = _check_shape(shape)
        if context is not None:
            shape = shape + context.shape[:-1]
        with drawing_from(generator):
            z = self._base().rsample(shape)
        for t in self._transforms(context):
            z = t(z)
        return z

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples without gradients, shape ``(*shape, *event_shape)``; the base draws come
        from ``generator`` when one is given."""
        return self.rsample(shape, context, generator=generator)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, context)

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={tuple(self._event_shape)}, context={self.context}"


def _inverse_and_ladj(t: Transform, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(t^{-1}(y), log|det J_t|)``; probgen's transforms give both in one call, skipping
    Pyro's per-call cache bookkeeping (a measurable share of a small flow's step)."""
    if isinstance(t, _CachedLadjMixin):
        return t._bwd(y)
    x = t.inv(y)
    return x, t.log_abs_det_jacobian(x, y)


def _forward_and_ladj(t: Transform, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(t(x), log|det J_t|)``, one call for probgen's transforms."""
    if isinstance(t, _CachedLadjMixin):
        return t._fwd(x)
    y = t(x)
    return y, t.log_abs_det_jacobian(x, y)


def _check_shape(shape: Sequence[int] | int) -> torch.Size:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        return torch.Size(shape)
    except TypeError as e:
        raise TypeError(f"shape: expected a tuple of ints, got {shape!r}.") from e
