"""Base classes for probgen's transform modules: one call gives y and log|det J| together."""

from __future__ import annotations

from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import Transform, constraints

__all__ = ["FlowTransformModule", "ConditionedFlowTransform", "Invert"]


class _CachedLadjMixin:
    """Caches the forward log|det J| computed by the last call in either direction.

    Pyro's ``TransformedDistribution`` calls ``t.inv(y)`` and then
    ``t.log_abs_det_jacobian(x, y)``; computing both in one pass halves the cost.
    """

    _cached_ladj: Tensor | None = None
    # Users of the mixin define ``_fwd(x) -> (y, ladj)`` and ``_bwd(y) -> (x, ladj)``.

    def _call(self, x: Tensor) -> Tensor:
        y, self._cached_ladj = self._fwd(x)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        x, self._cached_ladj = self._bwd(y)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        x_old, y_old = self._cached_x_y  # type: ignore[attr-defined]
        if x is x_old and y is y_old and self._cached_ladj is not None:
            return self._cached_ladj
        return self._fwd(x)[1]


class FlowTransformModule(_CachedLadjMixin, TransformModule):
    r"""Base class of probgen's bijections: subclasses implement ``call_and_ladj`` and
    ``inv_and_ladj``, both returning the *forward* log|det J| summed over the event.

    A subclass with ``self.context > 0`` is conditional: it must be ``.condition(c)``-ed
    (giving a :class:`ConditionedFlowTransform`) before use, as Pyro's
    ``ConditionalTransformModule``\ s are.

    Args:
        event_dim: number of rightmost dimensions forming one event (1 for vectors, 3 for
            ``(C, H, W)`` images).
    """

    bijective = True

    def __init__(self, event_dim: int = 1) -> None:
        super().__init__(cache_size=1)
        self._event_dim = event_dim
        self.context = 0

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns ``(y, log|det dy/dx|)``; the log-determinant has the batch shape."""
        raise NotImplementedError

    def inv_and_ladj(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns ``(x, log|det dy/dx|)`` where ``x`` is the preimage of ``y``."""
        raise NotImplementedError

    def _needs_no_context(self) -> None:
        if self.context:
            raise ValueError(
                f"context: {type(self).__name__} is conditional (context={self.context}); "
                "call .condition(context) first."
            )

    def _fwd(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._needs_no_context()
        return self.call_and_ladj(x)

    def _bwd(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._needs_no_context()
        return self.inv_and_ladj(y)

    def condition(self, context: Tensor) -> ConditionedFlowTransform:
        """Returns the transform for a fixed ``context`` of shape ``(*batch, context)``."""
        return ConditionedFlowTransform(self, context)

    def __hash__(self) -> int:
        return TransformModule.__hash__(self)


class ConditionedFlowTransform(_CachedLadjMixin, Transform):
    """A :class:`FlowTransformModule` with its context fixed (a plain torch Transform).

    Args:
        module: the conditional module.
        context: the context tensor, shape ``(*batch, module.context)``.
    """

    bijective = True

    def __init__(self, module: FlowTransformModule, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.module, self.ctx = module, context
        self.domain = module.domain
        self.codomain = module.codomain

    def _fwd(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.module.call_and_ladj(x, self.ctx)

    def _bwd(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.module.inv_and_ladj(y, self.ctx)

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        return self.module.forward_shape(shape)

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        return self.module.inverse_shape(shape)


class Invert(FlowTransformModule):
    """Wraps a transform module to swap its directions (and negate its log|det J|).

    Pyro's ``t.inv`` is a plain ``Transform``, not an ``nn.Module``, so its parameters would
    not be registered by the flow holding it; this wrapper is a module. Conditional inner
    modules (Pyro ``ConditionalTransformModule`` or probgen conditional ones) are supported.
    MAF is ``Invert(AffineAutoregressive)``: density evaluation is then one network pass.

    Args:
        base: the transform module to invert.
        context: context size when ``base`` is conditional (0: unconditional).
    """

    def __init__(self, base: nn.Module, context: int = 0) -> None:
        event_dim = getattr(getattr(base, "domain", None), "event_dim", 1)
        super().__init__(event_dim)
        self.base = base
        self.context = context or getattr(base, "context", 0) or 0

    def _inner(self, context: Tensor | None) -> Transform:
        if context is None:
            return self.base
        return self.base.condition(context)

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        t = self._inner(context)
        if isinstance(t, _CachedLadjMixin):  # one fused pass, no transform caches
            y, ladj = t._bwd(x)
            return y, -ladj
        y = t.inv(x)
        return y, -t.log_abs_det_jacobian(y, x)

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        t = self._inner(context)
        if isinstance(t, _CachedLadjMixin):
            x, ladj = t._fwd(y)
            return x, -ladj
        x = t(y)
        return x, -t.log_abs_det_jacobian(y, x)

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        inner = getattr(self.base, "inverse_shape", None)  # Pyro conditional modules lack it
        return inner(shape) if inner is not None else shape

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        inner = getattr(self.base, "forward_shape", None)
        return inner(shape) if inner is not None else shape
