"""Parameter initialisation helpers shared by the building blocks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["zero_init_"]


def zero_init_(module: nn.Module) -> nn.Module:
    """Sets every parameter of ``module`` to zero, in place, and returns it.

    Used on the last layer of coupling conditioners so a fresh coupling is the identity.

    Args:
        module: any module (a ``Linear``, a ``Conv2d``, a whole ``Sequential``...).

    Returns:
        The same module.

    Example:
        >>> layer = zero_init_(torch.nn.Linear(3, 2))
        >>> float(layer(torch.ones(1, 3)).detach().abs().sum())
        0.0
    """
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module
