r"""Kernel two-sample statistics: MMD with Gaussian kernels, and KID.

The squared maximum mean discrepancy between distributions :math:`P, Q` under a kernel
:math:`k` is :math:`\mathrm{MMD}^2 = \mathbb E k(x, x') + \mathbb E k(y, y') - 2\mathbb E
k(x, y)` (Gretton et al. 2012, https://jmlr.org/papers/v13/gretton12a.html). From samples
:math:`x_{1..n}, y_{1..m}` the *unbiased* U-statistic leaves out the diagonal terms
:math:`k(x_i, x_i)`; the *biased* V-statistic keeps them (it is never negative).

KID (Binkowski et al. 2018, https://arxiv.org/abs/1801.01401) is the unbiased
:math:`\mathrm{MMD}^2` under the cubic polynomial kernel
:math:`k(a, b) = (a^\top b / D + 1)^3`, averaged over random subsets of both feature
sets; its spread over subsets is reported with it.

Kernel matrices are built block by block (never more than ``block_size`` rows at once) and
summed in float64. torch and scipy have no MMD estimator, hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from probgen.metrics._kid import PolySums, subset_values
from probgen.utils import all_finite, check_int

__all__ = ["KID", "kid", "mmd2", "polynomial_kernel", "gaussian_kernel", "median_bandwidth"]


class KID(NamedTuple):
    """KID over subsets: the mean, the standard deviation over subsets, and every value."""

    mean: float
    std: float
    values: Tensor


def _features(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a floating-point tensor (N, D), got {kind}.")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {tuple(x.shape)}.")
    if not all_finite(x):
        raise ValueError(f"{name}: contains NaN or Inf values.")
    return x


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y: expected features of the same size, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}."
        )
    return x, y


def polynomial_kernel(
    x: Tensor, y: Tensor, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> Tensor:
    r"""The polynomial kernel matrix :math:`(\gamma\, x_i^\top y_j + c_0)^{p}`.

    Args:
        x: ``(N, D)``.
        y: ``(M, D)``.
        degree: ``p``.
        gamma: ``None`` for ``1 / D``.
        coef0: ``c_0``.

    Returns:
        Tensor: ``(N, M)``, the dtype of the inputs.
    """
    x, y = _pair(x, y)
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def gaussian_kernel(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> Tensor:
    r"""A sum of Gaussian kernels :math:`\sum_h \exp(-\lVert x_i - y_j\rVert^2 / (2h^2))`.

    Args:
        x: ``(N, D)``.
        y: ``(M, D)``.
        bandwidths: the standard deviations ``h`` (positive), one kernel each.

    Returns:
        Tensor: ``(N, M)``, the dtype of the inputs.
    """
    x, y = _pair(x, y)
    return _gaussian_from_sq(_sq_dist(x, y), _check_bandwidths(bandwidths))


def _check_bandwidths(bandwidths: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(h) for h in bandwidths)
    if not values or not all(math.isfinite(h) and h > 0 for h in values):
        raise ValueError(f"bandwidths: expected positive finite numbers, got {bandwidths!r}.")
    return values


def _sq_dist(x: Tensor, y: Tensor) -> Tensor:
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return sq.clamp_min_(0.0)


def _gaussian_from_sq(sq: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    out = torch.zeros_like(sq)
    for h in bandwidths:
        out += torch.exp(sq / (-2.0 * h * h))
    return out


def median_bandwidth(x: Tensor, y: Tensor, *, max_points: int = 2000) -> float:
    """The median heuristic: the median distance between points of the pooled sample.

    Args:
        x: ``(N, D)``.
        y: ``(M, D)``.
        max_points: at most this many points (the first of each set, half each) are used.

    Returns:
        float: the median of the pairwise Euclidean distances (``i < j``).
    """
    x, y = _pair(x, y)
    half = max(1, max_points // 2)
    z = torch.cat([x[:half], y[:half]]).to(torch.float64)
    d = _sq_dist(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return float(d[iu[0], iu[1]].median().sqrt())


def _block_sum(a: Tensor, b: Tensor, kernel: Callable[[Tensor, Tensor], Tensor],
               block_size: int) -> Tensor:
    total = a.new_zeros((), dtype=torch.float64)
    for start in range(0, a.shape[0], block_size):
        total += kernel(a[start : start + block_size], b).sum(dtype=torch.float64)
    return total


def _mmd2(x: Tensor, y: Tensor, kernel: Callable[[Tensor, Tensor], Tensor],
          diag_x: Tensor, diag_y: Tensor, unbiased: bool, block_size: int) -> Tensor:
    n, m = x.shape[0], y.shape[0]
    kxx = _block_sum(x, x, kernel, block_size)
    kyy = _block_sum(y, y, kernel, block_size)
    kxy = _block_sum(x, y, kernel, block_size)
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError(f"the unbiased MMD needs >= 2 samples per set, got {n} and {m}.")
        return ((kxx - diag_x.sum(dtype=torch.float64)) / (n * (n - 1))
                + (kyy - diag_y.sum(dtype=torch.float64)) / (m * (m - 1))
                - 2.0 * kxy / (n * m))
    return kxx / (n * n) + kyy / (m * m) - 2.0 * kxy / (n * m)


def mmd2(
    x: Tensor,
    y: Tensor,
    *,
    bandwidths: Sequence[float] | None = None,
    unbiased: bool = True,
    dtype: torch.dtype = torch.float64,
    block_size: int = 2048,
) -> float:
    r"""Squared MMD between two samples under a sum of Gaussian kernels.

    Args:
        x: samples or features ``(N, D)``.
        y: samples or features ``(M, D)``.
        bandwidths: standard deviations ``h`` of the Gaussian kernels
            :math:`\exp(-\lVert a-b\rVert^2/(2h^2))`, summed; ``None`` uses the median
            heuristic ``h_med`` (:func:`median_bandwidth`) times (0.5, 1, 2).
        unbiased: the U-statistic (diagonal left out; can be slightly negative) or the
            biased V-statistic (``False``; never negative).
        dtype: arithmetic dtype of the kernel matrices (sums are always float64).
        block_size: rows of a kernel matrix built at once.

    Returns:
        float: the estimate of :math:`\mathrm{MMD}^2`.

    Raises:
        ValueError: mismatched feature sizes, NaN/Inf, or bad bandwidths.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 1
        >>> mmd2(x, y, bandwidths=[1.0]) > 0.1
        True
    """
    x, y = _pair(x, y)
    if bandwidths is None:
        h = median_bandwidth(x, y)
        bandwidths = (0.5 * h, h, 2.0 * h)
    hs = _check_bandwidths(bandwidths)
    x, y = x.to(dtype), y.to(dtype)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return _gaussian_from_sq(_sq_dist(a, b), hs)

    diag_x = x.new_full((x.shape[0],), float(len(hs)))
    diag_y = y.new_full((y.shape[0],), float(len(hs)))
    return float(_mmd2(x, y, kernel, diag_x, diag_y, unbiased, block_size))


def kid(
    x: Tensor,
    y: Tensor,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
    subsets: tuple[Tensor, Tensor] | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> KID:
    r"""Kernel Inception Distance: unbiased polynomial-kernel MMD² averaged over subsets.

    For each of ``num_subsets`` subsets, ``subset_size`` rows of ``x`` and of ``y`` are
    drawn without replacement and the unbiased :math:`\mathrm{MMD}^2` under
    :math:`(\gamma a^\top b + c_0)^{p}` is computed; the mean over subsets is an unbiased
    estimate of the population value (0 when both come from one distribution).

    Args:
        x: features of real samples ``(N, D)`` (e.g. ``mnist_classifier().features``).
        y: features of generated samples ``(M, D)``.
        num_subsets: how many subsets.
        subset_size: rows per subset (cut to ``min(N, M)`` when larger, as torch-fidelity
            does).
        degree: ``p`` (3 in the paper).
        gamma: ``None`` for ``1 / D``.
        coef0: ``c_0`` (1 in the paper).
        generator: the random subsets' generator.
        subsets: explicit row indices ``(ix, iy)``, each ``(num_subsets, subset_size)``
            (overrides the three arguments above; used to reproduce another tool's draw).
        matmul_dtype: dtype of the dot products ``a^T b`` (the matrix products, where all
            the time goes); ``None`` keeps the features' own dtype (float32 features:
            float32 products). The kernel values and every sum are then taken in float64.

    Returns:
        KID: ``mean``, ``std`` (population standard deviation over subsets, as in
        Binkowski et al.'s code and torch-fidelity) and ``values`` (float64, one per
        subset).

    Raises:
        ValueError: mismatched feature sizes, NaN/Inf, bad subset sizes or indices.
    """
    x, y = _pair(x, y)
    if subsets is None:
        for value, name in ((num_subsets, "num_subsets"), (subset_size, "subset_size")):
            check_int(name, value)
        m = min(subset_size, x.shape[0], y.shape[0])
        ix = torch.stack([torch.randperm(x.shape[0], generator=generator)[:m]
                          for _ in range(num_subsets)])
        iy = torch.stack([torch.randperm(y.shape[0], generator=generator)[:m]
                          for _ in range(num_subsets)])
    else:
        ix, iy = (torch.as_tensor(s, dtype=torch.long) for s in subsets)
        if ix.dim() != 2 or ix.shape != iy.shape:
            raise ValueError(
                "subsets: expected two index tensors of one shape (num_subsets, subset_size), "
                f"got {tuple(ix.shape)} and {tuple(iy.shape)}."
            )
        if ix.numel() and (int(ix.max()) >= x.shape[0] or int(iy.max()) >= y.shape[0]
                           or int(ix.min()) < 0 or int(iy.min()) < 0):
            raise ValueError("subsets: indices out of range of x or y.")
    if ix.shape[1] < 2:
        raise ValueError(f"subset_size: the unbiased MMD needs >= 2 rows, got {ix.shape[1]}.")
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    if matmul_dtype is not None:
        x, y = x.to(matmul_dtype), y.to(matmul_dtype)
    m = ix.shape[1]
    sums = PolySums(gamma, float(coef0), int(degree), m)
    values = torch.empty(ix.shape[0], dtype=torch.float64)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # All in numpy/scipy: alternating torch and BLAS kernels makes their two thread
        # pools fight over the cores.
        x, y, ix, iy = x.numpy(), y.numpy(), ix.numpy(), iy.numpy()
        subsets_cost = 2 * ix.shape[0] * m * m
        full_cost = (x.shape[0] + y.shape[0]) ** 2 / 2
        if full_cost < subsets_cost:
            # Fewer products: every pair once, then each subset's sums by indicator vectors.
            values = torch.from_numpy(sums.by_indicators(x, y, ix, iy))
        else:
            # Worker threads pay off once the products take milliseconds (about 1e8
            # flops); below that, starting them and limiting BLAS cost more.
            flops = 4.0 * ix.shape[0] * m * m * x.shape[1]
            workers = torch.get_num_threads() if flops >= 1e8 else 1
            values = torch.from_numpy(subset_values(sums, x, y, ix, iy, workers))
        return KID(float(values.mean()), float(values.std(correction=0)), values)
    for s in range(ix.shape[0]):
        a, b = x[ix[s]], y[iy[s]]
        values[s] = ((sums.within(a) + sums.within(b)) / (m * (m - 1))
                     - 2.0 * sums.between(a, b) / (m * m))
    return KID(float(values.mean()), float(values.std(correction=0)), values)
