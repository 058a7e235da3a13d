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
wrong is redone in float64 (so results are float64 results at about float32 cost; plain
float64 or float32 on request), a block of rows at a time, so ``N x M`` matrices never sit
in memory whole. torch has no such estimators (scikit-learn's
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
           dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
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
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected None, torch.float32 or torch.float64, got {dtype}.")
    return x.detach().cpu(), y.detach().cpu()


def _sq_dist(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    return ((a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _exact_pairs(a: Tensor, b: Tensor, rows: Tensor, cols: Tensor,
                 chunk: int = 2048) -> Tensor:
    """Squared distances ``|a[rows] - b[cols]|^2`` from float64 differences, pair by pair
    (the difference of two float32 numbers is exact in float64)."""
    out = torch.empty(rows.shape[0], dtype=torch.float64)
    for s in range(0, rows.shape[0], chunk):
        diff = a[rows[s : s + chunk]].double()
        diff -= b[cols[s : s + chunk]]
        out[s : s + chunk] = torch.linalg.vector_norm(diff, dim=1).square_()
    return out


_U32 = 2.0 ** -24  # unit roundoff of float32


#: A row with more than 1/_DENSE_FRACTION of its pairs undecided is redone as one float64 row.
_DENSE_FRACTION = 16

#: Below this many features the matrix product no longer dominates the cost, so the default
#: computes in float64 directly instead of screening in float32.
_SCREEN_MIN_FEATURES = 64


def _resolve(dtype: torch.dtype | None, features: int) -> torch.dtype | None:
    return torch.float64 if dtype is None and features < _SCREEN_MIN_FEATURES else dtype


class _Screen:
    """Squared distances screened in float32 and certified against float64 (the default).

    A float32 matrix product is about twice as fast as a float64 one, but its rounding can
    put a point on the wrong side of a ball's boundary. By the classical bound on a dot
    product of length D (Higham, *Accuracy and Stability of Numerical Algorithms*,
    Sec. 3.1), ``|a|^2 + |b|^2 - 2 a.b`` computed in float32 is off by at most
    ``gamma_{D+2} (|a| + |b|)^2 <= 2 gamma_{D+2} (|a|^2 + |b|^2)``, with ``u = 2^-24`` and
    ``gamma_n = nu / (1 - nu)``; a further ``16u`` in gamma and ``4u r`` per radius cover
    rounding float64 inputs to float32 and the float32 comparisons themselves. The bound
    splits into a term per row and a term per column, so a whole block is screened with a
    few float32 passes; every comparison it cannot decide is redone on float64 differences
    of the two points (near-ties, typically well under 0.1% of pairs). The decisions are
    thus those of float64 arithmetic at about the cost of float32.
    """

    def __init__(self, a: Tensor, b: Tensor, dtype: torch.dtype | None) -> None:
        self.a, self.b = a, b
        dtype = _resolve(dtype, a.shape[1])
        self.certify = dtype is None
        work = torch.float32 if dtype is None else dtype
        self.a_w, self.b_w = a.to(work), b.to(work)
        self.b_sq = (self.b_w * self.b_w).sum(1)
        n = a.shape[1] + 2
        self.gamma = n * _U32 / (1 - n * _U32) + 16 * _U32
        # Per-row and per-column halves of the bound, rounded up when stored in float32.
        self._b64: Tensor | None = None
        self._b64_sq: Tensor | None = None
        self.a_tol = (2 * self.gamma * a.double().square().sum(1) * (1 + 8 * _U32)).float()
        self.b_tol = (2 * self.gamma * b.double().square().sum(1) * (1 + 8 * _U32)).float()

    def block(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of the (working-precision) squared-distance matrix."""
        return _sq_dist(self.a_w[start:stop], self.b_w, self.b_sq)

    def leq(self, d: Tensor, start: int, radii: Tensor, around: str) -> Tensor:
        """``|a_i - b_j|^2 <= radii`` for the block ``d`` of rows from ``start``, with
        float64 decisions; ``radii`` is ``(1, N)`` for balls ``around="cols"`` or ``(B, 1)``
        for balls ``around="rows"``."""
        if not self.certify:
            return d <= radii.to(d.dtype)
        stop = start + d.shape[0]
        r32 = radii.float()
        row, col = self.a_tol[start:stop, None], self.b_tol[None, :]
        ball = 4 * _U32 * r32 + (radii - r32.double()).abs().float()
        if around == "cols":
            col = col + ball
        else:
            row = row + ball
        excess = d - r32
        threshold = row + col
        inside = excess <= -threshold
        unsure = excess.abs_() <= threshold
        unsure &= ~inside
        if unsure.any():
            # Rows with many undecided pairs (concentrated high-dimensional data) are cheaper
            # as whole float64 rows of a matrix product than as gathered pairs.
            dense = (unsure.sum(1) > d.shape[1] // _DENSE_FRACTION).nonzero().flatten()
            if dense.numel():
                r = radii if around == "cols" else radii[dense]
                inside[dense] = self.rows64(start + dense) <= r
                unsure[dense] = False
            rows, cols = unsure.nonzero(as_tuple=True)
            r = radii.expand(d.shape)[rows, cols]
            inside[rows, cols] = _exact_pairs(self.a, self.b, rows + start, cols) <= r
        return inside

    def rows64(self, rows: Tensor) -> Tensor:
        """Float64 squared distances from ``a[rows]`` to every ``b``."""
        if self._b64 is None:
            self._b64 = self.b.double()
            self._b64_sq = (self._b64 * self._b64).sum(1)
        return _sq_dist(self.a[rows].double(), self._b64, self._b64_sq)


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
    dtype = _resolve(dtype, x.shape[1])
    screen = _Screen(x, x, dtype)
    extra = 0 if dtype is not None else 2  # float32 candidates beyond the k + 1 needed
    m = min(k + 1 + extra, x.shape[0])
    out = []
    for start in range(0, x.shape[0], block_size):
        d = screen.block(start, start + block_size)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = -1.0  # the point itself is the 0-th neighbour, drop it below
        values, idx = d.topk(m, dim=1, largest=False)
        if dtype is not None:
            out.append(values[:, k])
            continue
        # The k-th neighbour among the m float32 candidates, from float64 differences.
        own = rows[:, None] + start
        cand = _exact_pairs(x, x, own.expand_as(idx).reshape(-1), idx.reshape(-1))
        cand = cand.view(idx.shape).masked_fill(idx == own, -1.0)
        radius = cand.sort(dim=1).values[:, k]
        # Certified when no other point can be closer: a true distance is at least the
        # float32 one minus its rounding bound. Rows where some point fails that test get
        # its distance from float64 differences too (near-ties only, so rare).
        lower = d - screen.b_tol[None, :]
        lower.scatter_(1, idx, float("inf"))
        r32 = radius.float()
        slack = screen.a_tol[start : start + d.shape[0]] + 4 * _U32 * r32 + (
            radius - r32.double()).abs().float()
        need = lower <= (r32 + slack)[:, None]
        fail = need.any(1).nonzero().flatten()
        if fail.numel():
            # Near-ties: the candidates plus every point that might be closer, exactly (a
            # whole float64 row where many points might be).
            sub = need[fail]
            many = sub.sum(1) > x.shape[0] // _DENSE_FRACTION
            full = torch.full(sub.shape, float("inf"), dtype=torch.float64)
            if many.any():
                full[many] = screen.rows64(fail[many] + start)
                sub[many] = False
            rows_f, cols_f = sub.nonzero(as_tuple=True)
            full[rows_f, cols_f] = _exact_pairs(x, x, fail[rows_f] + start, cols_f)
            full.scatter_(1, idx[fail], cand[fail])
            full[torch.arange(fail.numel()), fail + start] = -1.0  # the point itself
            radius[fail] = full.topk(k + 1, dim=1, largest=False).values[:, k]
        out.append(radius)
    return torch.cat(out)


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
    rx = knn_radii(x, k, block_size=block_size, dtype=dtype)
    ry = knn_radii(y, k, block_size=block_size, dtype=dtype)
    # One pass over the fake-to-real distances serves both: rows give precision (is the
    # fake sample in some real ball?), columns give recall (is the real sample in some
    # fake ball?).
    screen = _Screen(y, x, dtype)
    in_real = torch.zeros(y.shape[0], dtype=torch.bool)
    in_fake = torch.zeros(x.shape[0], dtype=torch.bool)
    for start in range(0, y.shape[0], block_size):
        d = screen.block(start, start + block_size)
        stop = start + d.shape[0]
        in_real[start:stop] = screen.leq(d, start, rx[None, :], "cols").any(1)
        in_fake |= screen.leq(d, start, ry[start:stop, None], "rows").any(0)
    return PrecisionRecall(float(in_real.double().mean()), float(in_fake.double().mean()))


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
    rx = knn_radii(x, k, block_size=block_size, dtype=dtype)
    density = _inside_counts(_Screen(y, x, dtype), rx, block_size).double().sum() / (
        k * y.shape[0])
    # A real ball is covered when some fake sample lies inside it.
    screen = _Screen(x, y, dtype)
    covered = torch.cat([
        screen.leq(screen.block(s, s + block_size), s, rx[s : s + block_size, None],
                   "rows").any(1)
        for s in range(0, x.shape[0], block_size)
    ])
    return DensityCoverage(float(density), float(covered.double().mean()))
