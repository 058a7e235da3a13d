"""Structural protocols that the inference layer relies on (never concrete model classes)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["DensityModel", "Objective", "BatchSampler"]


@runtime_checkable
class DensityModel(Protocol):
    """An ``nn.Module`` with an explicit density (flows, autoregressive models).

    ``distribution(context)`` returns a :class:`torch.distributions.Distribution` whose
    event shape is the data's; ``log_prob(x, context)`` has shape ``x.shape[:-len(event)]``;
    ``sample(shape, context)`` has shape ``(*shape, *event_shape)``;
    ``rsample_and_log_prob(shape, context)`` returns reparameterized samples together with
    their log-density computed on the sampling pass (what reverse KL needs).
    """

    def distribution(self, context: Tensor | None = None) -> Distribution: ...

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor: ...

    def sample(
        self, shape: tuple[int, ...] = (), context: Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...

    def rsample_and_log_prob(
        self, shape: tuple[int, ...] = (), context: Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Objective(Protocol):
    """A training objective: an ``nn.Module`` mapping a batch to named scalar tensors.

    The returned dict always has a ``"loss"`` entry (what is minimized); other entries
    (``"nll"``, ``"kl"``, ...) are logged. ``objective.parameters()`` are what is trained.
    """

    def __call__(self, batch: Any) -> dict[str, Tensor]: ...

    def parameters(self, recurse: bool = True) -> Any: ...


@runtime_checkable
class BatchSampler(Protocol):
    """An infinite data source: ``sampler(n, generator=g)`` draws ``n`` fresh examples."""

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...
