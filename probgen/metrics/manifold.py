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

Distances are screened in float32 and every comparison that float32 rounding could get
wrong is redone from float64 differences of the two points (so the decisions are those of
exact float64 distances, at about float32 cost; plain float64 or float32 on request), a
block of rows at a time, so ``N x M`` matrices never sit in memory whole. The k-NN radii
use each block of the symmetric within-set matrix for both of its row sets (half the
products), and "is there some ball" questions redo only the comparisons that no sure one
has already settled. torch has no such estimators (scikit-learn's
neighbours would hold the ``N x M`` distances or a tree that is slow in 128+ dimensions),
hence this module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from probgen.metrics._screen import (
    _DENSE_CHUNK,
    _U32,
    _exact_pairs,
    _Points,
    _Screen,
    _sq_dist,
)
from probgen.utils import all_finite, check_int

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
           dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    for value, name in ((x, "real"), (y, "fake")):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name}: expected a floating-point tensor (N, D), got {kind}.")
        if value.dim() != 2:
            raise ValueError(f"{name}: expected features (N, D), got {tuple(value.shape)}.")
        if not all_finite(value):
            raise ValueError(f"{name}: contains NaN or Inf values.")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real and fake: feature sizes differ: {x.shape[1]} vs {y.shape[1]}.")
    check_int("k", k)
    if min(x.shape[0], y.shape[0]) <= k:
        raise ValueError(
            f"k: each set needs more than k = {k} samples, got {x.shape[0]} real and "
            f"{y.shape[0]} fake."
        )
    check_int("block_size", block_size)
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected None, torch.float32 or torch.float64, got {dtype}.")
    return x.detach().cpu(), y.detach().cpu()


#: Undecided recall pairs held back (in case a sure pair settles their column) before
#: they are redone in float64.
_PENDING_MAX = 1 << 21


def knn_radii(x: Tensor, k: int, *, block_size: int = 1024,
              dtype: torch.dtype | None = None) -> Tensor:
    """Squared distance from each point to its ``k``-th nearest other point of the set.

    Args:
        x: points ``(N, D)``.
        k: which neighbour (1 = nearest), ``k < N``.
        block_size: rows of the distance matrix built at once.
        dtype: ``None`` (default): float32 screening with the candidates' distances
            recomputed from float64 differences and certified by the float32 rounding bound
            (rows the bound cannot settle are redone in float64), so the radii are float64
            radii; or ``torch.float64`` / ``torch.float32`` arithmetic throughout.

    Returns:
        Tensor: ``(N,)`` squared radii (float64 unless ``dtype`` is float32).
    """
    x = x.detach().cpu()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < x.shape[0]:
        raise ValueError(f"k: expected an int in [1, {x.shape[0] - 1}], got {k!r}.")
    return _knn_radii(_Points(x, dtype), k, block_size)


#: Float32 candidates kept per point beyond the k needed: the next one's distance must
#: clear the k-th radius by the rounding bound, which a margin of 5 did on every point of
#: the 2048-d random and MNIST-feature benchmark sets.
_EXTRA_CANDIDATES = 5


def _merge(vals: Tensor, idx: Tensor, new_vals: Tensor, new_idx: Tensor, floor: Tensor,
           keep: int) -> None:
    """Fold a block's smallest values per row into the running ``keep`` smallest (in place);
    the smallest value left out lowers ``floor``, so every point off the list of a row is at
    least ``floor`` away (the block's points beyond those passed are no closer than the
    largest passed, which is in the union)."""
    v, j = torch.cat([vals, new_vals], 1).topk(keep + 1, dim=1, largest=False)
    torch.minimum(floor, v[:, keep], out=floor)
    idx.copy_(torch.cat([idx, new_idx], 1).gather(1, j[:, :keep]))
    vals.copy_(v[:, :keep])


def _knn_radii(points: _Points, k: int, block_size: int) -> Tensor:
    """k-th neighbour radii through the upper triangle of the distance matrix.

    The matrix is symmetric, so each block pair ``(i <= j)`` is built once and serves the
    rows of block ``i`` and (transposed) those of block ``j``: half the matrix products of
    building full rows. Every point keeps a running list of its smallest distances and the
    smallest distance that fell off it (``floor``).
    """
    x, n = points.x, points.x.shape[0]
    keep = min(k + (_EXTRA_CANDIDATES if points.certify else 0), n - 1)
    work = points.w.dtype
    vals = torch.full((n, keep), float("inf"), dtype=work)
    idx = torch.zeros((n, keep), dtype=torch.long)
    floor = torch.full((n,), float("inf"), dtype=work)
    starts = list(range(0, n, block_size))
    for i in starts:
        rows_i = slice(i, min(i + block_size, n))
        a_i = points.w[rows_i]
        for j in starts:
            if j < i:
                continue
            rows_j = slice(j, min(j + block_size, n))
            d = _sq_dist(a_i, points.w[rows_j], points.sq[rows_j])
            if i == j:
                d.fill_diagonal_(float("inf"))  # a point is not its own neighbour
            v, c = d.topk(min(keep + 1, d.shape[1]), dim=1, largest=False)
            _merge(vals[rows_i], idx[rows_i], v, c + j, floor[rows_i], keep)
            if i != j:
                v, c = d.topk(min(keep + 1, d.shape[0]), dim=0, largest=False)
                _merge(vals[rows_j], idx[rows_j], v.T, c.T + i, floor[rows_j], keep)
    if not points.certify:
        return vals[:, k - 1] if work == torch.float32 else vals[:, k - 1].double()
    # The k-th neighbour among the float32 candidates, from float64 differences of only
    # those candidates whose rounding interval reaches the k-th one's: ``below`` are surely
    # closer, the rest surely farther.
    v64 = vals.double()
    tol = (points.tol[:, None] + points.tol[idx]).double() * (1 + 1e-6) + 4 * _U32 * v64
    lower, upper = v64 - tol, v64 + tol
    below = upper < lower.kthvalue(k, dim=1, keepdim=True).values
    near = ~below & (lower <= upper.kthvalue(k, dim=1, keepdim=True).values)
    i, j = near.nonzero(as_tuple=True)
    cand = torch.full(idx.shape, float("inf"), dtype=torch.float64)
    cand[i, j] = _exact_pairs(x, x, i, idx[i, j])
    rank = k - 1 - below.sum(1)
    radius = cand.sort(dim=1).values.gather(1, rank[:, None]).squeeze(1)
    # Certified when no other point can be closer: every point off the candidate list has
    # a float32 distance of at least ``floor``, so a true distance of at least ``floor``
    # minus the largest rounding bound. Points where that fails (near-ties, rare) get
    # their whole float64 row.
    r32 = radius.float()
    slack = points.tol + points.tol.max() + 4 * _U32 * r32 + (radius - r32.double()).abs(
        ).float()
    fail = (floor <= r32 + slack).nonzero().flatten()
    if fail.numel():
        screen = _Screen(points, points)
        for s in range(0, fail.numel(), _DENSE_CHUNK):
            rows = fail[s : s + _DENSE_CHUNK]
            here = torch.arange(rows.numel())
            full, tol = screen.rows64(rows)
            full[here, rows] = float("inf")
            # Every point whose distance could be among the k smallest, redone exactly:
            # at least k points are within the k-th smallest upper bound.
            upper = (full + tol).topk(k, dim=1, largest=False).values[:, k - 1]
            maybe = full - tol <= upper[:, None]
            maybe[here, rows] = False
            i, j = maybe.nonzero(as_tuple=True)
            exact = torch.full(full.shape, float("inf"), dtype=torch.float64)
            exact[i, j] = _exact_pairs(x, x, rows[i], j)
            radius[rows] = exact.topk(k, dim=1, largest=False).values[:, k - 1]
    return radius


def _inside_counts(screen: _Screen, radii: Tensor, block_size: int) -> Tensor:
    """For each row point ``a_i``, how many balls ``|a_i - b_j|^2 <= radii_j`` contain it."""
    counts = []
    for start in range(0, screen.a.shape[0], block_size):
        d = screen.block(start, start + block_size)
        counts.append(screen.leq(d, start, radii[None, :], "cols").sum(1))
    return torch.cat(counts)


def precision_recall(
    real: Tensor,
    fake: Tensor,
    *,
    k: int = 3,
    block_size: int = 1024,
    dtype: torch.dtype | None = None,
) -> PrecisionRecall:
    """Improved precision and recall of Kynkaanniemi et al. (2019) from k-NN manifolds.

    Args:
        real: features of real samples ``(N, D)``.
        fake: features of generated samples ``(M, D)``.
        k: the neighbour that sets each ball's radius (3 in the paper).
        block_size: rows of a distance matrix built at once.
        dtype: arithmetic of the distances: ``None`` (default) screens in float32 and
            redoes in float64 every comparison that float32 rounding could decide wrongly
            (float64 results at about float32 cost); ``torch.float64`` or
            ``torch.float32`` throughout (float32: a point within rounding of a ball's
            boundary may change side).

    Returns:
        PrecisionRecall: ``precision`` (share of ``fake`` inside the real manifold) and
        ``recall`` (share of ``real`` inside the generated manifold).

    Example:
        >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        >>> precision_recall(x, x)
        PrecisionRecall(precision=1.0, recall=1.0)
    """
    x, y = _check(real, fake, k, block_size, dtype)
    px, py = _Points(x, dtype), _Points(y, dtype)
    rx = _knn_radii(px, k, block_size)
    ry = _knn_radii(py, k, block_size)
    # One pass over the fake-to-real distances serves both: rows give precision (is the
    # fake sample in some real ball?), columns give recall (is the real sample in some
    # fake ball?).
    # Only "is there some ball" matters, so a float32 comparison that rounding could get
    # wrong is redone in float64 only while no sure one has settled its point; for recall
    # such pairs are held back until every block has had its say.
    screen = _Screen(py, px)
    in_real = torch.zeros(y.shape[0], dtype=torch.bool)
    in_fake = torch.zeros(x.shape[0], dtype=torch.bool)
    held: list[tuple[Tensor, Tensor]] = []
    size = 0
    for start in range(0, y.shape[0], block_size):
        d = screen.block(start, start + block_size)
        stop = start + d.shape[0]
        in_real[start:stop] = screen.rows_any(d, start, rx[None, :], "cols")
        inside, unsure = screen.split(d, start, ry[start:stop, None], "rows")
        in_fake |= inside.any(0)
        if unsure is not None:
            unsure &= ~in_fake[None, :]
            rows, cols = unsure.nonzero(as_tuple=True)
            held.append((rows + start, cols))
            size += rows.numel()
            if size > _PENDING_MAX or stop == y.shape[0]:
                _settle(screen, held, ry, in_fake)
                held, size = [], 0
    return PrecisionRecall(float(in_real.double().mean()), float(in_fake.double().mean()))


def _settle(screen: _Screen, held: list[tuple[Tensor, Tensor]], radii: Tensor,
            hit: Tensor) -> None:
    """Mark ``hit[col]`` for held-back pairs ``(row, col)`` inside the ball of their row
    (float64 decisions), skipping columns that are already hit."""
    rows = torch.cat([r for r, _ in held])
    cols = torch.cat([c for _, c in held])
    keep = (~hit[cols]).nonzero().flatten()
    rows, cols = rows[keep], cols[keep]
    hit[cols[screen.exact_leq(rows, cols, radii[rows])]] = True


def density_coverage(
    real: Tensor,
    fake: Tensor,
    *,
    k: int = 5,
    block_size: int = 1024,
    dtype: torch.dtype | None = None,
) -> DensityCoverage:
    """Density and coverage of Naeem et al. (2020), from k-NN balls around real samples.

    Args:
        real: features of real samples ``(N, D)``.
        fake: features of generated samples ``(M, D)``.
        k: the neighbour that sets each real ball's radius (5 in the paper).
        block_size: rows of a distance matrix built at once.
        dtype: as in :func:`precision_recall`: ``None`` (certified float32 screening,
            the default), ``torch.float64`` or ``torch.float32``.

    Returns:
        DensityCoverage: ``density`` = (1 / kM) * sum over fake samples of the number of
        real balls holding them; ``coverage`` = share of real balls holding a fake sample.
    """
    x, y = _check(real, fake, k, block_size, dtype)
    px, py = _Points(x, dtype), _Points(y, dtype)
    rx = _knn_radii(px, k, block_size)
    density = _inside_counts(_Screen(py, px), rx, block_size).double().sum() / (
        k * y.shape[0])
    # A real ball is covered when some fake sample lies inside it.
    screen = _Screen(px, py)
    covered = torch.cat([
        screen.rows_any(screen.block(s, s + block_size), s, rx[s : s + block_size, None],
                        "rows")
        for s in range(0, x.shape[0], block_size)
    ])
    return DensityCoverage(float(density), float(covered.double().mean()))
