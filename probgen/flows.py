"""The normalizing-flow base class: transform modules over a standard-normal base."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn
from torch.distributions import Transform

from probgen.transforms.base import _CachedLadjMixin
from probgen.utils import check_tensor, standard_normal

if TYPE_CHECKING:
    from probgen.flow_vae import FlowVAE

__all__ = ["NormalizingFlow"]

_LOG_2PI = math.log(2 * math.pi)


class _TransformHolder(nn.Module):
    """Holds a torch ``Transform`` that is not an ``nn.Module`` (e.g. Pyro's ``Permute``) in
    a flow's module list: its tensors are buffers (saved in ``state_dict``) and follow
    ``.to(device)`` / ``.double()``."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform
        for name, value in vars(transform).items():
            if isinstance(value, Tensor):
                self.register_buffer(name, value)

    def _apply(self, fn: Any, recurse: bool = True) -> _TransformHolder:
        super()._apply(fn, recurse)
        state = vars(self.transform)
        for name, value in list(state.items()):
            if name in self._buffers:
                state[name] = self._buffers[name]
            elif isinstance(value, Tensor):  # a lazily computed tensor (e.g. an inverse)
                state[name] = fn(value)
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # a lazily computed tensor (e.g. Permute's inverse) belongs to the old values
        state = vars(self.transform)
        for name in [n for n, v in state.items() if isinstance(v, Tensor)
                     and n not in self._buffers]:
            del state[name]

    def extra_repr(self) -> str:  # noqa: D102
        return repr(self.transform)


def as_module(t: nn.Module | Transform) -> nn.Module:
    """``t`` itself if a module, else ``t`` in a holder whose buffers are its tensors."""
    if isinstance(t, nn.Module):
        return t
    if isinstance(t, Transform):
        return _TransformHolder(t)
    raise TypeError(f"transforms: expected torch Transforms or Pyro TransformModules, got "
                    f"{type(t).__name__}.")


def _unwrap(t: nn.Module) -> Any:
    return t.transform if isinstance(t, _TransformHolder) else t


def _is_conditional(t: nn.Module) -> bool:
    return isinstance(t, ConditionalTransformModule) or bool(getattr(t, "context", 0))


def _sum_rightmost(value: Tensor, dims: int) -> Tensor:
    """Sums the ``dims`` rightmost dimensions (as many as ``value`` has)."""
    k = min(dims, value.dim())
    return value.sum(tuple(range(-k, 0))) if k > 0 else value


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

    ``transforms`` are Pyro ``TransformModule``\ s (or conditional modules) or plain torch
    ``Transform``\ s such as Pyro's ``Permute`` (held so that their tensors move with the
    module and are saved in ``state_dict``), listed in the base -> data direction, so
    :math:`x = T_K \circ \dots \circ T_1(z)` with
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
        self.transforms = nn.ModuleList([as_module(t) for t in transforms])
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
            found = [_unwrap(m) for m in _submodules(self)]
            found = [m for m in found if isinstance(m, Transform) and m._cache_size]
            cached = (self.transforms, len(self.transforms), found)
            self.__dict__["_cached_transforms"] = cached
        for m in cached[2]:
            # (what ``m._cached_x_y = None, None`` does, without nn.Module.__setattr__)
            m.__dict__["_cached_x_y"] = None, None

    def _transforms(self, context: Tensor | None) -> list[Transform]:
        self._reset_caches()
        return [t.condition(context) if _is_conditional(t) else _unwrap(t)
                for t in self.transforms]

    def _base(self) -> dist.Distribution:
        normal = dist.Normal(self.base_loc, self.base_scale, validate_args=False)
        return normal.to_event(len(self.base_loc.shape))

    def _base_rsample(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        # The numbers of ``self._base().rsample(shape)`` (drawn from ``generator``), without
        # building Pyro distributions; on the base's device whatever the generator's.
        eps = standard_normal(shape + self.base_loc.shape, self.base_loc, generator)
        return self.base_loc + eps * self.base_scale

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

        Pyro's ``TransformedDistribution.log_prob`` (one pass in the normalising direction,
        data -> base), so any Pyro or torch transform composes (e.g. Pyro's ``BatchNorm``,
        whose log|det J| has no batch dimensions, or ``Permute``). When every transform is
        one of probgen's (which give ``x`` and log|det J| in one call), a fused loop computes
        the same numbers with less bookkeeping.

        Raises:
            TypeError: ``x`` is not a floating tensor.
            ValueError: wrong trailing shape, NaN/Inf, or a missing/unexpected context.
        """
        x = check_tensor(x, "x", event_shape=tuple(self._event_shape))
        context = self._check_context(context)
        transforms = self._transforms(context)
        if not all(isinstance(t, _CachedLadjMixin) for t in transforms):
            return dist.TransformedDistribution(self._base(), transforms,
                                                validate_args=False).log_prob(x)
        batch = x.dim() - len(self._event_shape)
        total = x.new_zeros(x.shape[:batch])
        y = x
        for t in reversed(transforms):
            y, ladj = t._bwd(y)
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
        z = self._base_rsample(shape, generator)
        total = self._base_log_prob(z)
        event_dim = self.base_loc.dim()
        for t in self._transforms(context):
            z, ladj = _forward_and_ladj(t, z)
            # as TransformedDistribution does: sum the event dimensions t leaves in ladj
            total = total - _sum_rightmost(ladj, event_dim - t.domain.event_dim)
            event_dim += t.codomain.event_dim - t.domain.event_dim
        return z, total

    def rsample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
        """Reparametrised samples, shape ``(*shape, *event_shape)`` (no log-density); the base
        draws come from ``generator`` when one is given."""
        context = self._check_context(context)
        shape = _check_shape(shape)
        if context is not None:
            shape = shape + context.shape[:-1]
        z = self._base_rsample(shape, generator)
        for t in self._transforms(context):
            # probgen's transforms in one fused call, others through ``Transform.__call__``
            z = t._fwd(z)[0] if isinstance(t, _CachedLadjMixin) else t(z)
        return z

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples without gradients, shape ``(*shape, *event_shape)``; the base draws come
        from ``generator`` when one is given."""
        return self.rsample(shape, context, generator=generator)

    def to_base(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Maps data to the base: :math:`z = f^{-1}(x)` and
        :math:`\text{ladj} = \log|\det \partial z / \partial x|`, the log-determinant of the
        *inverse* map, so that ``log_prob(x) = log N(z) + ladj``.

        The pass of Pyro's ``TransformedDistribution.log_prob`` (data -> base, each
        transform's log|det J| summed over the event dimensions it leaves), keeping ``z``.

        Args:
            x: data ``(*batch, *event_shape)``.
            context: ``(*batch, context)`` for a conditional flow, else None.

        Returns:
            ``(z, ladj)`` of shapes ``(*batch, *base_shape)`` and ``(*batch,)``.

        Raises:
            TypeError: ``x`` is not a floating tensor.
            ValueError: wrong trailing shape, NaN/Inf, or a missing/unexpected context.

        Example:
            >>> from probgen.transforms import LULinear
            >>> flow = NormalizingFlow([LULinear(2)], (2,))
            >>> x = torch.randn(4, 2)
            >>> z, ladj = flow.to_base(x)
            >>> log_n = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            >>> torch.allclose(log_n + ladj, flow.log_prob(x))
            True
        """
        x = check_tensor(x, "x", event_shape=tuple(self._event_shape))
        context = self._check_context(context)
        event_dim = len(self._event_shape)
        ladj = x.new_zeros(x.shape[: x.dim() - event_dim])
        y = x
        for t in reversed(self._transforms(context)):
            z = t.inv(y)
            event_dim += t.domain.event_dim - t.codomain.event_dim
            ladj = ladj - _sum_rightmost(t.log_abs_det_jacobian(z, y),
                                         event_dim - t.domain.event_dim)
            y = z
        return y, ladj

    def from_base(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Maps base points to data, :math:`x = f(z)` (the sampling direction).

        Args:
            z: base points ``(*batch, *base_shape)``.
            context: ``(*batch, context)`` for a conditional flow, else None.

        Returns:
            ``x`` of shape ``(*batch, *event_shape)``.

        Raises:
            TypeError: ``z`` is not a floating tensor.
            ValueError: wrong trailing shape, NaN/Inf, or a missing/unexpected context.
        """
        z = check_tensor(z, "z", event_shape=tuple(self.base_loc.shape))
        context = self._check_context(context)
        for t in self._transforms(context):
            z = t(z)
        return z

    def as_vae(self, rtol: float | None = None) -> FlowVAE:
        """This flow as a latent-variable model with deterministic (Delta) sites, whose ELBO
        is exactly :meth:`log_prob` (see :class:`probgen.flow_vae.FlowVAE`).

        Args:
            rtol: tolerance of the decoder's observation check (``None``: the square root
                of the dtype's machine epsilon; see :class:`probgen.flow_vae.TolerantDelta`).
        """
        from probgen.flow_vae import FlowVAE

        return FlowVAE(self, rtol=rtol)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, context)

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={tuple(self._event_shape)}, context={self.context}"


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
