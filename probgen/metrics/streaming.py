r"""Streaming statistics: samples in batches, running mean and covariance in float64.

Sample metrics need features of many samples (50 000 for FID), more than should sit in
memory as images at once. :func:`iter_batches` turns any *source* of samples into batches:

- a tensor ``(N, *event)``, cut into batches;
- an iterable of tensors (a ``DataLoader``; of ``(x, y)`` pairs the first entry is used);
- a sampler: a callable ``sample(shape)`` such as a probgen model's ``sample`` or a
  ``torch.distributions.Distribution``'s, or an object with such a ``.sample`` method,
  called with ``(batch_size,)`` until ``num_samples`` are drawn.

:class:`RunningMoments` accumulates the mean and covariance of feature batches with the
pairwise update of Chan, Golub & LeVeque (1979): each block is centred at its own mean in
float64 and merged as

.. math::
    M_2 \leftarrow M_2 + M_2^{(b)} + \delta\delta^\top \frac{n\,n_b}{n + n_b},
    \qquad \delta = \bar x_b - \bar x,

which avoids the cancellation of the textbook ``E[xx^T] - mu mu^T`` formula, and keeps
:math:`M_2` in square-root form (:math:`M_2 = R^\top R`), so that
:func:`probgen.metrics.fid` needs no square root of a rounded eigenvalue. ``R`` is
updated by a checked Cholesky factorization of the Gram matrix when the data are well
conditioned and by Householder QR when they are not. torch has no streaming covariance,
hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from probgen.metrics._factor import gram_factor, qr_factor
from probgen.utils import all_finite, check_int

__all__ = ["RunningMoments", "iter_batches", "collect_features", "feature_moments", "Source"]

#: Samples: a tensor, an iterable of tensor batches, or a sampler ``sample(shape)``.
Source = Tensor | Iterable[Any] | Callable[..., Tensor]


def iter_batches(
    source: Source,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
) -> Iterator[Tensor]:
    """Yields batches ``(b, *event)`` of samples from a tensor, an iterable or a sampler.

    Args:
        source: a tensor ``(N, *event)``; an iterable of tensors (or of tuples whose first
            entry is the samples, as a labelled ``DataLoader`` gives); a callable
            ``sample(shape)`` returning ``(shape[0], *event)``, or an object with such a
            ``sample`` method (a probgen model, a Distribution).
        num_samples: how many samples to yield in all; required for a sampler, optional
            otherwise (``None``: all of them). A tensor or iterable with fewer is an error.
        batch_size: the size of each batch drawn from a tensor or a sampler (an iterable's
            own batches are kept, the last one cut to ``num_samples``).

    Yields:
        Tensor: detached batches; samplers are called under ``torch.no_grad()``.

    Raises:
        ValueError: a sampler without ``num_samples``, too few samples, a batch that is
            not a tensor with a batch dimension, or a sampler returning the wrong count.
        TypeError: ``source`` is none of the above.
    """
    num_samples = check_int("num_samples", num_samples, allow_none=True)
    batch_size = check_int("batch_size", batch_size)
    if isinstance(source, Tensor):
        if source.dim() < 1:
            raise ValueError("source: expected samples (N, *event), got a 0-d tensor.")
        n = source.shape[0] if num_samples is None else num_samples
        if n > source.shape[0]:
            raise ValueError(
                f"num_samples: {n} requested but the tensor holds {source.shape[0]} samples."
            )
        for start in range(0, n, batch_size):
            yield source[start : min(start + batch_size, n)].detach()
        return
    sampler = getattr(source, "sample", None)
    if callable(sampler) and not isinstance(source, Iterable):
        source = sampler
    if callable(source) and not isinstance(source, Iterable):
        if num_samples is None:
            raise ValueError("num_samples: required when the source is a sampler.")
        drawn = 0
        while drawn < num_samples:
            m = min(batch_size, num_samples - drawn)
            with torch.no_grad():
                batch = source((m,))
            if not isinstance(batch, Tensor) or batch.dim() < 1 or batch.shape[0] != m:
                got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
                raise ValueError(
                    f"source: the sampler was asked for shape ({m},) and returned {got}; "
                    "expected a tensor (m, *event)."
                )
            drawn += m
            yield batch.detach()
        return
    if not isinstance(source, Iterable):
        raise TypeError(
            "source: expected a tensor, an iterable of tensors or a sampler sample(shape), "
            f"got {type(source).__name__}."
        )
    drawn = 0
    for item in source:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(batch, Tensor) or batch.dim() < 1:
            raise ValueError(
                f"source: expected batches of samples (b, *event), got {type(batch).__name__}"
                + (f" of shape {tuple(batch.shape)}" if isinstance(batch, Tensor) else "")
                + "."
            )
        if num_samples is not None:
            batch = batch[: num_samples - drawn]
        drawn += batch.shape[0]
        if batch.shape[0]:
            yield batch.detach()
        if num_samples is not None and drawn >= num_samples:
            return
    if num_samples is not None and drawn < num_samples:
        raise ValueError(f"num_samples: {num_samples} requested but the source gave {drawn}.")


def _flat(features: Tensor, name: str = "features") -> Tensor:
    if not isinstance(features, Tensor) or not features.is_floating_point():
        kind = features.dtype if isinstance(features, Tensor) else type(features).__name__
        raise TypeError(f"{name}: expected a floating-point tensor (N, D), got {kind}.")
    if features.dim() < 2:
        raise ValueError(f"{name}: expected (N, D) (or (N, *event)), got {tuple(features.shape)}.")
    return features.reshape(features.shape[0], -1)


class RunningMoments:
    r"""Running mean and covariance of vectors, kept as a square-root factor in float64.

    The scatter matrix :math:`\sum_i (x_i - \bar x)(x_i - \bar x)^\top` is kept as an
    upper-triangular :math:`R` with :math:`R^\top R` equal to it, updated as blocks of
    rows arrive from the stacked rows :math:`A = [R;\ X_b - \bar x_b;\
    \sqrt{n n_b/(n+n_b)}\,\delta^\top]` (Chan, Golub & LeVeque's pairwise update in
    square-root form): the new ``R`` is the Cholesky factor of :math:`A^\top A` when that
    Gram matrix, scaled to unit diagonal, passes a condition check (about half the flops
    of a QR, all in matrix-matrix kernels), and the R of a Householder QR of :math:`A`
    otherwise (ill-conditioned or rank-deficient features, fewer rows than columns; once
    the check has failed, later blocks go straight to QR). Quantities that depend on
    small eigenvalues (the Frechet distance's trace term) are then computed from ``R``
    without the square root of a rounded eigenvalue. Rows are buffered and folded in
    blocks of ``block_rows``.

    Args:
        dim: the vector size ``D``; ``None`` takes it from the first batch.
        device: where the float64 accumulators live (the first batch's device if ``None``).
        block_rows: rows buffered (in the batches' own dtype) before a fold; default
            ``max(4 D, 2**22 // D)`` (about 16 MB of float32 rows for small ``D``): each
            fold refactors ``R`` with the new rows, and narrow folds are dominated by
            per-call costs.


    Example:
        >>> m = RunningMoments()
        >>> for batch in torch.randn(1000, 3).split(128):
        ...     _ = m.update(batch)
        >>> m.count, m.mean.shape, m.covariance.shape, m.factor.shape
        (1000, torch.Size([3]), torch.Size([3, 3]), torch.Size([3, 3]))
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        device: torch.device | str | None = None,
        block_rows: int | None = None,
    ) -> None:
        self.dim = check_int("dim", dim, allow_none=True)
        self.device = torch.device(device) if device is not None else None
        self.block_rows = check_int("block_rows", block_rows, allow_none=True)
        self._n = 0
        self._mean: Tensor | None = None
        self._factor: Tensor | None = None
        self._buffer: list[Tensor] = []
        self._buffered = 0
        self._try_gram = True

    def update(self, batch: Tensor) -> RunningMoments:
        """Adds a batch ``(b, D)`` (or ``(b, *event)``, flattened); returns ``self``.

        Raises:
            TypeError: not a floating-point tensor.
            ValueError: wrong feature size, or NaN/Inf values.
        """
        x = _flat(batch, "batch")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(
                f"batch: expected vectors of size {self.dim}, got shape {tuple(batch.shape)}."
            )
        if self.device is None:
            self.device = x.device
        if not all_finite(x):
            raise ValueError("batch: contains NaN or Inf values.")
        block = self.block_rows or max(4 * self.dim, 2**22 // self.dim)
        x = x.detach()
        start = 0
        while start < x.shape[0]:
            left = x.shape[0] - start
            if self._buffered == 0 and left >= block:
                # The caller's rows are folded straight from its tensor, never copied, in
                # chunks of up to 2**25 float64 values (256 MB) or two blocks, whichever is
                # more; a remainder shorter than a block joins the last chunk.
                chunk = max(2 * block, 2**25 // self.dim)
                take = left if left < chunk + block else chunk
                self._fold_batches([x[start : start + take].to(self.device)], take)
                start += take
                continue
            take = min(left, block - self._buffered)
            piece = x[start : start + take]
            start += take
            # Buffered rows are copied in their own dtype (the caller may reuse its
            # tensor); the float64 conversion happens once, fused with the centring.
            self._buffer.append(piece.to(device=self.device, copy=True))
            self._buffered += take
            if self._buffered >= block:
                self._fold()
        return self

    def _combine(self, count: int, mean: Tensor, factor: Tensor) -> None:
        """Merges a group (count, mean, R of its centred rows) into the accumulator."""
        if self._n == 0:
            self._n, self._mean, self._factor = count, mean, factor
            return
        rows, block = self._stacked(factor.shape[0])
        block.copy_(factor)
        self._absorb(rows, count, mean)

    def _fold(self) -> None:
        if not self._buffer:
            return
        batches, count = self._buffer, self._buffered
        self._buffer, self._buffered = [], 0
        self._fold_batches(batches, count)

    def _fold_batches(self, batches: list[Tensor], count: int) -> None:
        """Merges ``count`` rows, given as ``batches``, into the mean and the factor."""
        rows, block = self._stacked(count)
        at = 0
        for b in batches:
            block[at : at + b.shape[0]].copy_(b)
            at += b.shape[0]
        # Converting first and summing in float64 is several times faster than a float64
        # sum of float32.
        mean = block.sum(dim=0) / count
        block.sub_(mean)
        self._absorb(rows, count, mean)

    def _stacked(self, count: int) -> tuple[Tensor, Tensor]:
        """A float64 array for the rows ``[R; count new rows; delta]`` (only the new rows
        while the accumulator is empty) and the view of the new rows, filled in place by
        the caller: no concatenated copy, no separate centred copy."""
        head = 0 if self._n == 0 else self._factor.shape[0]
        rows = torch.empty(head + count + (self._n > 0), self.dim, dtype=torch.float64,
                           device=self.device)
        return rows, rows[head : head + count]

    def _absorb(self, rows: Tensor, count: int, mean: Tensor) -> None:
        """Chan, Golub & LeVeque's update from :meth:`_stacked`'s array, its new rows
        (``count`` of them, centred at ``mean``) already in place."""
        if self._n == 0:
            self._n, self._mean, self._factor = count, mean, self._factorize(rows)
            return
        total = self._n + count
        delta = mean - self._mean
        rows[: self._factor.shape[0]] = self._factor
        rows[-1] = math.sqrt(self._n * count / total) * delta
        self._factor = self._factorize(rows)
        self._mean = self._mean + delta * (count / total)
        self._n = total

    def _factorize(self, rows: Tensor) -> Tensor:
        """``R`` of ``rows`` (see :mod:`probgen.metrics._factor`), remembering when the Gram
        route declined (the features are ill conditioned, so later blocks go straight to
        Householder QR)."""
        if self._try_gram and rows.shape[0] > rows.shape[1]:
            factor = gram_factor(rows)
            if factor is not None:
                return factor
            self._try_gram = False
        return qr_factor(rows)

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Adds another accumulator's vectors to this one (e.g. from another process)."""
        other._fold()
        if other._n == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise ValueError(f"other: expected vectors of size {self.dim}, got {other.dim}.")
        self._fold()
        if self._n == 0:
            self.dim, self.device = other.dim, other.device
        self._combine(other._n, other._mean.to(self.device), other._factor.to(self.device))
        return self

    @property
    def count(self) -> int:
        """How many vectors have been added."""
        return self._n + self._buffered

    def _need(self, n: int) -> None:
        self._fold()
        if self._n < n:
            raise ValueError(f"RunningMoments: needs at least {n} vectors, has {self._n}.")

    @property
    def mean(self) -> Tensor:
        """The mean, float64 ``(D,)``."""
        self._need(1)
        return self._mean

    @property
    def factor(self) -> Tensor:
        """``R`` (float64, ``(r, D)`` upper-trapezoidal, ``r = min(count, D)``) with
        ``R^T R`` the scatter matrix, so ``covariance = R^T R / (count - 1)``."""
        self._need(1)
        return self._factor

    @property
    def covariance(self) -> Tensor:
        """The unbiased sample covariance (divisor ``count - 1``), float64 ``(D, D)``."""
        self._need(2)
        cov = self._factor.T @ self._factor / (self._n - 1)
        return 0.5 * (cov + cov.T)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and ints (``torch.save`` it; reload with ``weights_only=True``)."""
        self._need(1)
        return {"count": self._n, "mean": self._mean.cpu(), "factor": self._factor.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningMoments:
        """The accumulator saved by :meth:`state_dict`."""
        missing = {"count", "mean", "factor"} - set(state)
        if missing:
            raise ValueError(f"state: missing keys {sorted(missing)}.")
        out = cls(int(state["mean"].shape[0]), device="cpu")
        out._n = int(state["count"])
        out._mean = state["mean"].to(torch.float64)
        out._factor = state["factor"].to(torch.float64)
        return out

    def __repr__(self) -> str:
        return f"RunningMoments(dim={self.dim}, count={self._n + self._buffered})"


def _apply(extractor: Callable[[Tensor], Tensor] | None, batch: Tensor,
           device: torch.device | str | None) -> Tensor:
    if device is not None:
        batch = batch.to(device)
    if extractor is None:
        return _flat(batch, "samples")
    with torch.no_grad():
        out = extractor(batch)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != batch.shape[0]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"extractor: expected features ({batch.shape[0]}, D) for a batch of shape "
            f"{tuple(batch.shape)}, got {got}."
        )
    return out


def feature_moments(
    source: Source,
    extractor: Callable[[Tensor], Tensor] | None = None,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> RunningMoments:
    """Mean and covariance of ``extractor(samples)``, one batch in memory at a time.

    Args:
        source: samples, see :func:`iter_batches`.
        extractor: maps a batch ``(b, *event)`` to features ``(b, D)``; ``None`` uses the
            flattened samples themselves.
        num_samples: how many samples (required for a sampler).
        batch_size: samples per batch (a tensor of features, with no extractor and no
            device, is passed whole: the accumulator folds it in blocks of its own).
        device: where batches are moved before the extractor runs.

    Returns:
        RunningMoments: the float64 accumulator (``.mean``, ``.covariance``, ``.count``).
    """
    moments = RunningMoments()
    if extractor is None and device is None and isinstance(source, Tensor):
        # Features already in memory: RunningMoments takes them in blocks of its own.
        batch_size = max(batch_size, source.shape[0] if source.dim() else 1)
    for batch in iter_batches(source, num_samples=num_samples, batch_size=batch_size):
        moments.update(_apply(extractor, batch, device))
    return moments


def collect_features(
    source: Source,
    extractor: Callable[[Tensor], Tensor] | None = None,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> Tensor:
    """All features ``extractor(samples)`` as one CPU tensor ``(N, D)`` (samples in batches).

    Features are small next to images (50 000 x 128 floats is 25 MB), so the metrics that
    need every feature vector (KID, precision/recall) gather them here while the samples
    themselves pass one batch at a time. Arguments as in :func:`feature_moments`.
    """
    parts = [_apply(extractor, b, device).detach().cpu()
             for b in iter_batches(source, num_samples=num_samples, batch_size=batch_size)]
    if not parts:
        raise ValueError("source: gave no samples.")
    return torch.cat(parts)
