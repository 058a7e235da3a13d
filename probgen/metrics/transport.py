r"""Exact Wasserstein-2 distance between two equal-size point sets.

Between the empirical measures of ``x_1..x_n`` and ``y_1..y_n`` (uniform weights) an
optimal transport plan is a permutation (Birkhoff-von Neumann), so

.. math::
    W_2^2 = \min_\sigma \frac 1n \sum_i \lVert x_i - y_{\sigma(i)} \rVert^2,

an assignment problem solved exactly by ``scipy.optimize.linear_sum_assignment`` (a
Jonker-Volgenant solver, :math:`O(n^3)`: up to a few thousand points per set).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["wasserstein2"]


def wasserstein2(
    x: Tensor, y: Tensor, *, squared: bool = False, return_plan: bool = False
) -> float | tuple[float, Tensor]:
    r"""Exact :math:`W_2` between the empirical measures of two point sets of one size.

    Args:
        x: points ``(n, D)`` (or ``(n, *event)``, flattened).
        y: points ``(n, D)``.
        squared: return :math:`W_2^2` instead of :math:`W_2`.
        return_plan: also return the optimal matching.

    Returns:
        float, or ``(float, Tensor)``: the distance and, with ``return_plan``, the
        permutation ``sigma`` (int64 ``(n,)``): ``x[i]`` is sent to ``y[sigma[i]]``.

    Raises:
        TypeError: non-floating inputs.
        ValueError: sets of different sizes or dimensions, empty sets, NaN/Inf.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
        >>> round(wasserstein2(x, x.flip(0) + torch.tensor([0.0, 2.0]), squared=True), 6)
        4.0
    """
    for value, name in ((x, "x"), (y, "y")):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name}: expected a floating-point tensor (n, D), got {kind}.")
        if value.dim() < 2 or value.shape[0] == 0:
            raise ValueError(f"{name}: expected points (n, D) with n >= 1, "
                             f"got {tuple(value.shape)}.")
    a = x.detach().reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)
    b = y.detach().reshape(y.shape[0], -1).to(device="cpu", dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"x and y: expected sets of one size and dimension, got {tuple(a.shape)} and "
            f"{tuple(b.shape)} (an exact assignment needs equal sizes)."
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("x or y: contains NaN or Inf values.")
    # Differences, not |a|^2 + |b|^2 - 2ab: exact up to one rounding per entry.
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    value = float(math.fsum(cost[rows, cols].tolist()) / a.shape[0])
    if not squared:
        value = math.sqrt(value)
    if return_plan:
        plan = np.empty(a.shape[0], dtype=np.int64)
        plan[rows] = cols
        return value, torch.from_numpy(plan)
    return value
