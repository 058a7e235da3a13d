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
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from scipy.linalg import blas
from threadpoolctl import threadpool_limits
from torch import Tensor

from probgen.utils import all_finite

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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}.")
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
    sums = _PolySums(gamma, float(coef0), int(degree), m)
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
            workers = torch.get_num_threads()
            values = torch.from_numpy(_subset_values(sums, x, y, ix, iy, workers))
        return KID(float(values.mean()), float(values.std(correction=0)), values)
    for s in range(ix.shape[0]):
        a, b = x[ix[s]], y[iy[s]]
        values[s] = ((sums.within(a) + sums.within(b)) / (m * (m - 1))
                     - 2.0 * sums.between(a, b) / (m * m))
    return KID(float(values.mean()), float(values.std(correction=0)), values)


class _PolySums:
    """Sums of polynomial-kernel matrices of one subset size, in float64.

    The products run in the features' dtype; on the CPU they go through the BLAS that
    numpy and scipy ship (OpenBLAS: faster than torch's MKL on many CPUs; see
    ``_subset_values`` for the per-subset loop, ``by_indicators`` for all subsets at
    once). The kernel values
    and their sums are then computed in float64.
    """

    def __init__(self, gamma: float, coef0: float, degree: int, m: int) -> None:
        self.gamma, self.coef0, self.degree, self.m = gamma, coef0, degree, m

    def _kernel(self, dots: np.ndarray | Tensor) -> np.ndarray | Tensor:
        # float64 from here on: the products' rounding is the only float32 error left.
        k = dots.astype(np.float64) if isinstance(dots, np.ndarray) else dots.double()
        k *= self.gamma
        k += self.coef0
        return k * k * k if self.degree == 3 else k**self.degree

    def within(self, a: Tensor) -> float:
        """Sum of ``k(a_i, a_j)`` over ``i != j`` (torch tensors: GPUs and other dtypes)."""
        k = self._kernel(a @ a.T)
        return float(k.sum() - k.diagonal().sum())

    def _gemm(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        gemm = blas.sgemm if a.dtype == np.float32 else blas.dgemm
        return gemm(1.0, a.T, b.T, trans_a=1)  # a b^T, scipy's BLAS

    def by_indicators(self, x: np.ndarray, y: np.ndarray, ix: np.ndarray, iy: np.ndarray,
                      block: int = 512) -> np.ndarray:
        """KID of every subset at once, from the kernel matrices of all rows, by blocks.

        With ``V[i, s]`` the number of times row ``i`` is in subset ``s``, subset ``s``'s
        sums are ``v_s^T K v_s`` (minus the diagonal) and ``u_s^T K_xy v_s``: each kernel
        block is multiplied by ``V`` as it is made, so every pair is computed once (the
        symmetric ones in one triangle of blocks) instead of once per subset holding it.
        """
        num, m = ix.shape
        vx = np.zeros((x.shape[0], num))
        vy = np.zeros((y.shape[0], num))
        np.add.at(vx, (ix, np.arange(num)[:, None]), 1.0)
        np.add.at(vy, (iy, np.arange(num)[:, None]), 1.0)

        def within(z: np.ndarray, v: np.ndarray) -> np.ndarray:
            out = np.zeros(num)
            for r0 in range(0, z.shape[0], block):
                r1 = min(r0 + block, z.shape[0])
                k = self._kernel(self._gemm(z[r0:r1], z[r0:]))
                vr = v[r0:r1]
                out += np.einsum("is,is->s", vr, k[:, : r1 - r0] @ vr)  # diagonal block
                out -= np.einsum("is,i->s", vr, np.diagonal(k[:, : r1 - r0]).copy())
                if r1 < z.shape[0]:
                    out += 2.0 * np.einsum("is,is->s", vr, k[:, r1 - r0 :] @ v[r1:])
            return out

        kxy = np.zeros(num)
        for r0 in range(0, x.shape[0], block):
            k = self._kernel(self._gemm(x[r0 : r0 + block], y))
            kxy += np.einsum("is,is->s", vx[r0 : r0 + block], k @ vy)
        return (within(x, vx) + within(y, vy)) / (m * (m - 1)) - 2.0 * kxy / (m * m)

    def between(self, a: Tensor, b: Tensor) -> float:
        """Sum of ``k(a_i, b_j)`` over all pairs (torch tensors: GPUs and other dtypes)."""
        return float(self._kernel(a @ b.T).sum())


class _SubsetWorker:
    """KID's per-subset sums on the CPU, with every array allocated once for all subsets.

    A subset's rows are gathered into fixed buffers (in index order, for locality), numpy's
    ``matmul`` writes the Gram matrices into one fixed buffer (``a @ a.T`` goes to
    ``syrk``, which computes one triangle), and the kernel values are made and summed in
    float64 a few rows at a time, in work arrays small enough to stay in cache. Fresh
    arrays per subset (for 1000 rows of 2048-d features: 16 MB of rows, 12 MB of Gram
    matrices, 24 MB of float64 kernel values, each first touched page by page) cost
    about 13% more time, all outside the products, which do the same flops.
    """

    def __init__(self, sums: _PolySums, dim: int, dtype: np.dtype, rows: int = 32) -> None:
        m = sums.m
        self.sums, self.rows = sums, min(rows, m)
        self._a = np.empty((m, dim), dtype)
        self._b = np.empty((m, dim), dtype)
        self._gram = np.empty((m, m), dtype)
        self._work = np.empty(m * self.rows)
        self._power = np.empty(m * self.rows)

    def _sum(self, block: np.ndarray) -> float:
        """Sum of ``(gamma g + c0)^p`` over a (rows, cols) block, in float64."""
        rows, cols = block.shape
        if rows == 0 or cols == 0:
            return 0.0
        work = self._work[: rows * cols].reshape(rows, cols)
        np.multiply(block, self.sums.gamma, out=work)
        np.add(work, self.sums.coef0, out=work)
        power = self._power[: rows * cols].reshape(rows, cols)
        if self.sums.degree == 3:
            np.multiply(work, work, out=power)
            np.multiply(power, work, out=power)
        else:
            np.power(work, self.sums.degree, out=power)
        return float(power.sum())

    def _within(self, rows: np.ndarray) -> float:
        """Sum of ``k(a_i, a_j)`` over ``i != j`` (twice the strict upper triangle)."""
        gram = np.matmul(rows, rows.T, out=self._gram)
        m, total = gram.shape[0], 0.0
        for i0 in range(0, m, self.rows):
            i1 = min(i0 + self.rows, m)
            upper = np.triu_indices(i1 - i0, 1)
            total += self._sum(gram[i0:i1, i0:i1][upper][None])  # the diagonal block's
            total += self._sum(gram[i0:i1, i1:])  # right of the diagonal block
        return 2.0 * total

    def _between(self) -> float:
        """Sum of ``k(a_i, b_j)`` over all pairs."""
        gram = np.matmul(self._a, self._b.T, out=self._gram)
        return sum(self._sum(gram[i : i + self.rows]) for i in range(0, gram.shape[0], self.rows))

    def value(self, x: np.ndarray, y: np.ndarray, rows_x: np.ndarray,
              rows_y: np.ndarray) -> float:
        """The unbiased MMD² of ``x[rows_x]`` and ``y[rows_y]``."""
        m = self.sums.m
        # mode="clip": the indices were checked; "raise" would buffer the copy.
        np.take(x, np.sort(rows_x), axis=0, out=self._a, mode="clip")
        np.take(y, np.sort(rows_y), axis=0, out=self._b, mode="clip")
        within = self._within(self._a) + self._within(self._b)
        return within / (m * (m - 1)) - 2.0 * self._between() / (m * m)


def _subset_values(sums: _PolySums, x: np.ndarray, y: np.ndarray, ix: np.ndarray,
                   iy: np.ndarray, workers: int) -> np.ndarray:
    """The unbiased MMD² of every subset pair ``(x[ix[s]], y[iy[s]])``, on ``workers``
    threads.

    With several workers each takes every ``workers``-th subset with one-thread BLAS
    (numpy's ``matmul`` releases the GIL; scipy's BLAS wrappers do not): the products run
    side by side without a multi-threaded BLAS's synchronisation, and each thread's
    gathering and kernel sums (single-threaded numpy) overlap the other's products instead
    of leaving a core idle. The BLAS thread limit (threadpoolctl) holds for the call only.
    """
    values = np.empty(ix.shape[0])
    workers = max(1, min(workers, ix.shape[0]))

    def task(first: int) -> None:
        worker = _SubsetWorker(sums, x.shape[1], x.dtype)
        for s in range(first, ix.shape[0], workers):
            values[s] = worker.value(x, y, ix[s], iy[s])

    if workers == 1:
        task(0)
        return values
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(task, w) for w in range(workers)]:
            done.result()
    return values
