"""KID's kernel sums: the per-subset loop on the CPU and the all-subsets-at-once route.

Internal to :func:`probgen.metrics.kid` (kept apart from the public kernels and MMD in
:mod:`probgen.metrics.kernel`): sums of the polynomial kernel over a subset's pairs in
float64, from matrix products in the features' dtype, arranged for speed on the CPU
(reused buffers, cache-sized blocks, worker threads with one-thread BLAS).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits
from torch import Tensor

__all__ = ["PolySums", "SubsetWorker", "subset_values"]


class PolySums:
    """Sums of polynomial-kernel matrices of one subset size, in float64.

    The products run in the features' dtype; on the CPU they go through the BLAS that
    numpy ships (OpenBLAS: faster than torch's MKL on many CPUs; see
    :func:`subset_values` for the per-subset loop, ``by_indicators`` for all subsets at
    once). The kernel values and their sums are then computed in float64.
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

    @staticmethod
    def _gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b.T  # numpy's BLAS, the same thread pool as SubsetWorker's

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


class SubsetWorker:
    """KID's per-subset sums on the CPU, with every array allocated once for all subsets.

    A subset's rows are gathered into fixed buffers (in index order, for locality), numpy's
    ``matmul`` writes the Gram matrices into one fixed buffer (``a @ a.T`` goes to
    ``syrk``, which computes one triangle), and the kernel values are made and summed in
    float64 a few rows at a time, in work arrays small enough to stay in cache. Fresh
    arrays per subset (for 1000 rows of 2048-d features: 16 MB of rows, 12 MB of Gram
    matrices, 24 MB of float64 kernel values, each first touched page by page) cost
    about 13% more time, all outside the products, which do the same flops.
    """

    def __init__(self, sums: PolySums, dim: int, dtype: np.dtype, rows: int = 32) -> None:
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


def subset_values(sums: PolySums, x: np.ndarray, y: np.ndarray, ix: np.ndarray,
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
        worker = SubsetWorker(sums, x.shape[1], x.dtype)
        for s in range(first, ix.shape[0], workers):
            values[s] = worker.value(x, y, ix[s], iy[s])

    if workers == 1:
        task(0)
        return values
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(task, w) for w in range(workers)]:
            done.result()
    return values
