r"""Precision and recall, density and coverage: fidelity and diversity from k-NN balls.

Both pairs estimate the supports of the real and the generated distributions by the union
of balls around each sample whose radius is the distance to its ``k``-th nearest
neighbour within its own set.

- Precision and recall (Kynkaanniemi et al. 2019, https://arxiv.org/abs/1904.06991,
  ``k = 3``): precision is the share of generated samples that fall in the real manifold
  (fidelity), recall the share of real samples that fall in the generated manifold
  (diversity). A model that drops part of the support loses recall; one that adds
  support outside the data loses precision.
- Density and coverage (Naeem et al. 2020, https://arxiv.org/abs/2002.09797, ``k = 5``):
  density counts how many real balls contain each generated sample, divided by ``k``
  (about 1 when the distributions match, robust to outliers of the real set); coverage
  is the share of real balls that contain at least one generated sample.

Distances are computed in float64 (float32 on request), a block of rows at a time, so
``N x M`` matrices never sit in memory whole. torch has no such estimators (scikit-learn's
neighbours would hold the ``N x M`` distances or a tree that is slow in 128+ dimensions),
hence this module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["PrecisionRecall", "DensityCoverage", "precision_recall", "density_coverage",
           "knn_radii"]


class PrecisionRecall(NamedTuple):
    """Improved precision (fidelity) and recall (diversity), each in [0, 1]."""

    precision: float
    recall: float


class DensityCoverage(NamedTuple):
    """Density (>= 0, about 1 for matching distributions) and coverage (in [0, 1])."""

    density: float
    coverage: float


def _check(x: Tensor, y: Tensor, k: int, block_size: int,
           dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    for value, name in ((x, "real"), (y, "fake")):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name}: expected a floating-point tensor (N, D), got {kind}.")
        if value.dim() != 2:
            raise ValueError(f"{name}: expected features (N, D), got {tuple(value.shape)}.")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name}: contains NaN or Inf values.")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real and fake: feature sizes differ: {x.shape[1]} vs {y.shape[1]}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}.")
    if min(x.shape[0], y.shape[0]) <= k:
        raise ValueError(
            f"k: each set needs more than k = {k} samples, got {x.shape[0]} real and "
            f"{y.shape[0]} fake."
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}.")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}.")
    return x.to(dtype), y.to(dtype)


def _sq_dist(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    return ((a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def knn_radii(x: Tensor, k: int, *, block_size: int = 1024) -> Tensor:
    """Squared distance from each point to its ``k``-th nearest other point of the set.

    Args:
        x: points ``(N, D)``, float64 preferred.
        k: which neighbour (1 = nearest), ``k < N``.
        block_size: rows of the distance matrix built at once.

    Returns:
        Tensor: ``(N,)`` squared radii, the dtype of ``x``.
    """
    x_sq = (x * x).sum(1)
    out = []
    for start in range(0, x.shape[0], block_size):
        d = _sq_dist(x[start : start + block_size], x, x_sq)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = -1.0  # the point itself is the 0-th neighbour, drop it below
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _inside_counts(points: Tensor, centres: Tensor, radii: Tensor, block_size: int) -> Tensor:
    """For each point, how many balls ``|p - c_i|^2 <= r_i`` contain it."""
    c_sq = (centres * centres).sum(1)
    counts = []
    for start in range(0, points.shape[0], block_size):
        d = _sq_dist(points[start : start + block_size], centres, c_sq)
        counts.append((d <= radii[None, :]).sum(1))
    return torch.cat(counts)


def precision_recall(
    real: Tensor,
    fake: Tensor,
    *,
    k: int = 3,
    block_size: int = 1024,
    dtype: torch.dtype = torch.float64,
) -> PrecisionRecall:
    """Improved precision and recall of Kynkaanniemi et al. (2019) from k-NN manifolds.

    Args:
        real: features of real samples ``(N, D)``.
        fake: features of generated samples ``(M, D)``.
        k: the neighbour that sets each ball's radius (3 in the paper).
        block_size: rows of a distance matrix built at once.
        dtype: arithmetic of the distances: float64 (default), or float32 (about twice as
            fast; a point within rounding of a ball's boundary may then change side).

    Returns:
        PrecisionRecall: ``precision`` (share of ``fake`` inside the real manifold) and
        ``recall`` (share of ``real`` inside the generated manifold).

    Example:
        >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        >>> precision_recall(x, x)
        PrecisionRecall(precision=1.0, recall=1.0)
    """
    x, y = _check(real, fake, k, block_size, dtype)
    rx, ry = knn_radii(x, k, block_size=block_size), knn_radii(y, k, block_size=block_size)
    # One pass over the fake-to-real distances serves both: rows give precision (is the
    # fake sample in some real ball?), columns give recall (is the real sample in some
    # fake ball?).
    x_sq = (x * x).sum(1)
    in_real = torch.zeros(y.shape[0], dtype=torch.bool)
    in_fake = torch.zeros(x.shape[0], dtype=torch.bool)
    for start in range(0, y.shape[0], block_size):
        d = _sq_dist(y[start : start + block_size], x, x_sq)
        in_real[start : start + d.shape[0]] = (d <= rx[None, :]).any(1)
        in_fake |= (d <= ry[start : start + d.shape[0], None]).any(0)
    return PrecisionRecall(float(in_real.double().mean()), float(in_fake.double().mean()))


def density_coverage(
    real: Tensor,
    fake: Tensor,
    *,
    k: int = 5,
    block_size: int = 1024,
    dtype: torch.dtype = torch.float64,
) -> DensityCoverage:
    """Density and coverage of Naeem et al. (2020), from k-NN balls around real samples.

    Args:
        real: features of real samples ``(N, D)``.
        fake: features of generated samples ``(M, D)``.
        k: the neighbour that sets each real ball's radius (5 in the paper).
        block_size: rows of a distance matrix built at once.
        dtype: arithmetic of the distances, float64 (default) or float32.

    Returns:
        DensityCoverage: ``density`` = (1 / kM) * sum over fake samples of the number of
        real balls holding them; ``coverage`` = share of real balls holding a fake sample.
    """
    x, y = _check(real, fake, k, block_size, dtype)
    rx = knn_radii(x, k, block_size=block_size)
    density = _inside_counts(y, x, rx, block_size).double().sum() / (k * y.shape[0])
    # A real ball is covered when its nearest fake sample lies inside it.
    y_sq = (y * y).sum(1)
    nearest = torch.cat([
        _sq_dist(x[s : s + block_size], y, y_sq).min(dim=1).values
        for s in range(0, x.shape[0], block_size)
    ])
    coverage = (nearest <= rx).double().mean()
    return DensityCoverage(float(density), float(coverage))
