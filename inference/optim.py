"""Optimizers by name and learning-rate schedules as plain functions of the step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probgen.utils import check_choice

__all__ = ["OPTIMIZERS", "LR_SCHEDULES", "make_optimizer", "LRSchedule"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine", "linear")


def make_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    name: str,
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """Builds the optimizer ``name`` (one of ``OPTIMIZERS``).

    ``adam`` adds ``weight_decay`` as an L2 term to the gradient, ``adamw`` decouples it;
    ``sgd`` uses ``momentum`` (``betas`` are ignored); so does ``rmsprop`` (WGAN with weight
    clipping, Arjovsky et al. 2017), with torch's smoothing constant 0.99.

    Raises:
        ValueError: unknown name (the message lists the allowed ones) or a bad value.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr: expected a positive finite float, got {lr!r}.")
    if len(tuple(betas)) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f"betas: expected two floats in [0, 1), got {betas!r}.")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay: expected a float >= 0, got {weight_decay!r}.")
    if name not in ("sgd", "rmsprop") and momentum != 0.0:
        raise ValueError(f"momentum: applies to optimizers 'sgd' and 'rmsprop' only, got it "
                         f"with {name!r}.")
    params = list(params)
    b1, b2 = (float(b) for b in betas)
    # torch picks its multi-tensor ("foreach") kernels by default on CUDA only; on CPU they
    # are also faster for the many small tensors of a flow (about 0.6 ms of a 5 ms RealNVP
    # step on one core) and give the same update. Adam and AdamW have fused kernels (one
    # pass over each tensor, no per-tensor host reads of the step count) on CPU and CUDA:
    # 0.19 ms instead of 0.61 for a 2-D RealNVP's 56 tensors on one core; used when every
    # parameter is a floating tensor there.
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        kernel = {"fused": True} if _fusable(params) else {"foreach": True}
        return cls(params, lr=lr, betas=(b1, b2), weight_decay=weight_decay, **kernel)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum,
                                   weight_decay=weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           foreach=True)


def _fusable(params: list) -> bool:
    """Whether torch's fused Adam kernels take every parameter (floating, on CPU or CUDA)."""
    tensors: list[torch.Tensor] = []
    for group in params:
        ps = group["params"] if isinstance(group, dict) else group
        tensors += [ps] if isinstance(ps, torch.Tensor) else list(ps)
    return bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                                 for t in tensors)


@dataclass(frozen=True)
class LRSchedule:
    r"""The learning-rate factor as a function of the step index ``s`` (0-based).

    Warm-up: :math:`(s + 1) / W` for :math:`s < W`. After it, with
    :math:`p = (s - W) / (T - W) \in [0, 1)`: ``constant`` 1, ``linear`` :math:`1 - p`,
    ``cosine`` :math:`\tfrac12 (1 + \cos \pi p)`. The rate of step ``s`` is
    ``initial_lr * factor(s)``; being stateless, it resumes exactly from the step alone.

    Args:
        name: one of ``LR_SCHEDULES`` (``None`` means ``constant``).
        total_steps: ``T``, the run's number of steps.
        warmup_steps: ``W``, in ``[0, T)``.

    Example:
        >>> sched = LRSchedule("cosine", total_steps=10, warmup_steps=2)
        >>> [round(sched(s), 3) for s in (0, 1, 2, 6)]
        [0.5, 1.0, 1.0, 0.5]
    """

    name: str | None
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule: expected one of {list(LR_SCHEDULES)} or None, got {self.name!r}."
            )
        if not isinstance(self.warmup_steps, int) or not (
            0 <= self.warmup_steps < max(self.total_steps, 1)
        ):
            raise ValueError(
                f"warmup_steps: expected an int in [0, steps={self.total_steps}), "
                f"got {self.warmup_steps!r}."
            )

    def __call__(self, step: int) -> float:
        """The factor multiplying the initial learning rate at step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        p = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        if self.name == "linear":
            return 1.0 - p
        if self.name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Sets every group's ``lr`` for step ``step``; returns the first group's rate."""
        factor = self(step)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
        return float(optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """A plain description (the schedule has no other state)."""
        return {
            "name": self.name,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }
