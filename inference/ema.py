"""Exponential moving average (EMA) of a module's parameters, for evaluation and sampling."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    r"""Keeps a shadow copy of a module's floating-point parameters, averaged over steps.

    After each optimizer step, :meth:`update` sets
    :math:`\bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta`, starting from
    :math:`\bar\theta_0 = \theta_0`. Buffers are not averaged (the live ones are used).

    Args:
        module: the module whose parameters are averaged (names from ``named_parameters``).
        decay: the decay ``d`` in ``[0, 1)``.

    Example:
        >>> net = torch.nn.Linear(1, 1)
        >>> _ = torch.nn.init.zeros_(net.bias)
        >>> ema = EMA(net, decay=0.9)
        >>> _ = torch.nn.init.ones_(net.bias)
        >>> ema.update(net)
        >>> round(float(ema.shadow["bias"]), 4)
        0.1
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not isinstance(decay, (int, float)) or not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ema_decay: expected a float in [0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone()
            for name, p in module.named_parameters()
            if p.is_floating_point()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Moves the shadow weights one step towards ``module``'s current parameters."""
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"decay": float, "num_updates": int, "shadow": {name: Tensor}}``."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict` (the names must match this EMA's)."""
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(
                "EMA state: parameter names differ; missing "
                f"{sorted(set(self.shadow) - set(shadow))}, unexpected "
                f"{sorted(set(shadow) - set(self.shadow))}."
            )
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])

    def copy_to(self, module: nn.Module) -> None:
        """Overwrites ``module``'s parameters with the averaged ones."""
        EMA.copy_state_to({"shadow": self.shadow}, module)

    @staticmethod
    @torch.no_grad()
    def copy_state_to(state: Mapping[str, Any], module: nn.Module) -> None:
        """Copies the averaged weights of a saved EMA state (``checkpoint["ema"]``) into
        ``module``, e.g. to sample from the EMA model after :func:`load_checkpoint`."""
        params = dict(module.named_parameters())
        missing = sorted(set(state["shadow"]) - set(params))
        if missing:
            raise ValueError(f"EMA state: the module has no parameters named {missing}.")
        for name, value in state["shadow"].items():
            params[name].copy_(value)

    @contextmanager
    def average_parameters(self, module: nn.Module) -> Iterator[nn.Module]:
        """Context manager: ``module`` holds the EMA weights inside, its own ones after."""
        params = dict(module.named_parameters())
        saved = {name: params[name].detach().clone() for name in self.shadow}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)
