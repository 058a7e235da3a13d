"""Squared distances screened in float32 and certified against float64 differences.

The machinery behind :mod:`probgen.metrics.manifold`: a point set in working precision with
its share of the rounding bound (:class:`_Points`), the screened distance blocks and their
sure/undecided split (:class:`_Screen`), and the fallbacks (float64 rows with their own bound,
then pair-by-pair float64 differences) that make every decision one of exact float64
distances. torch has no certified distance comparisons, hence this module.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []  # private: the helpers of probgen.metrics.manifold


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
        out[s : s + chunk] = diff.square_().sum(1)
    return out


_U32 = 2.0 ** -24  # unit roundoff of float32
_U64 = 2.0 ** -53  # unit roundoff of float64


#: A row with more than 1/_DENSE_FRACTION of its pairs undecided is redone as one float64 row.
_DENSE_FRACTION = 16

#: Rows of float64 distances built at once when redoing dense rows.
_DENSE_CHUNK = 256

#: Below this many features the matrix product no longer dominates the cost, so the default
#: computes in float64 directly instead of screening in float32.
_SCREEN_MIN_FEATURES = 64


def _resolve(dtype: torch.dtype | None, features: int) -> torch.dtype | None:
    return torch.float64 if dtype is None and features < _SCREEN_MIN_FEATURES else dtype


class _Points:
    """A point set in working precision, with its squared norms and, when certifying, its
    per-point half of the float32 rounding bound of :class:`_Screen` (computed once per set
    and shared by every distance matrix the set takes part in)."""

    def __init__(self, x: Tensor, dtype: torch.dtype | None) -> None:
        dtype = _resolve(dtype, x.shape[1])
        self.x = x
        self.certify = dtype is None
        self.w = x.to(torch.float32 if dtype is None else dtype)
        self.sq = (self.w * self.w).sum(1)
        self.tol = torch.empty(0)
        if self.certify:
            n = x.shape[1] + 2
            gamma = n * _U32 / (1 - n * _U32) + 16 * _U32
            sq64 = torch.cat([c.double().square_().sum(1) for c in x.split(4096)])
            # Rounded up when stored in float32 (the factor covers rounding to nearest).
            self.tol = (2 * gamma * sq64 * (1 + 8 * _U32)).float()


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

    def __init__(self, a: _Points, b: _Points) -> None:
        self.a, self.b = a.x, b.x
        self.certify = a.certify
        self.a_w, self.b_w = a.w, b.w
        self.b_sq = b.sq
        self.a_tol, self.b_tol = a.tol, b.tol
        self._b64: Tensor | None = None
        self._b64_sq: Tensor | None = None

    def block(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of the (working-precision) squared-distance matrix."""
        return _sq_dist(self.a_w[start:stop], self.b_w, self.b_sq)

    def split(self, d: Tensor, start: int, radii: Tensor, around: str
              ) -> tuple[Tensor, Tensor | None]:
        """Pairs of the block ``d`` (rows from ``start``) surely inside their ball
        ``|a_i - b_j|^2 <= radii``, and the pairs float32 rounding leaves undecided (``None``
        when not certifying); ``radii`` is ``(1, N)`` for balls ``around="cols"`` or
        ``(B, 1)`` for balls ``around="rows"``."""
        if not self.certify:
            return d <= radii.to(d.dtype), None
        stop = start + d.shape[0]
        r32 = radii.float()
        ball = 4 * _U32 * r32 + (radii - r32.double()).abs().float()
        # The pair's bound ``a_tol[i] + b_tol[j]`` with the block's largest ``a_tol`` (or
        # the set's largest ``b_tol``), so that each test is one comparison with a vector.
        if around == "cols":
            slack = self.b_tol[None, :] + self.a_tol[start:stop].max() + ball
        else:
            slack = self.a_tol[start:stop, None] + self.b_tol.max() + ball
        inside = d <= r32 - slack
        unsure = d <= r32 + slack
        unsure ^= inside
        return inside, unsure

    def leq(self, d: Tensor, start: int, radii: Tensor, around: str) -> Tensor:
        """``|a_i - b_j|^2 <= radii`` for every pair of the block ``d`` (as in
        :meth:`split`), with float64 decisions."""
        inside, unsure = self.split(d, start, radii, around)
        if unsure is not None and unsure.any():
            rows, cols = unsure.nonzero(as_tuple=True)
            r = radii.expand(d.shape)[rows, cols]
            inside[rows, cols] = self.exact_leq(rows + start, cols, r)
        return inside

    def rows_any(self, d: Tensor, start: int, radii: Tensor, around: str) -> Tensor:
        """Whether each row of the block ``d`` has some pair inside its ball (as in
        :meth:`split`); undecided pairs are redone in float64 only for rows that no sure
        pair has settled."""
        inside, unsure = self.split(d, start, radii, around)
        hit = inside.any(1)
        if unsure is None:
            return hit
        open_rows = (unsure.any(1) & ~hit).nonzero().flatten()
        if open_rows.numel():
            sub, cols = unsure[open_rows].nonzero(as_tuple=True)
            rows = open_rows[sub]
            r = radii.expand(d.shape)[rows, cols]
            hit[rows[self.exact_leq(rows + start, cols, r)]] = True
        return hit

    def exact_leq(self, rows: Tensor, cols: Tensor, radii: Tensor) -> Tensor:
        """Decisions ``|a_rows - b_cols|^2 <= radii`` of float64 differences, pair by pair."""
        out = torch.empty(rows.shape[0], dtype=torch.bool)
        if rows.numel() == 0:
            return out
        # Rows with many undecided pairs (concentrated high-dimensional data) are cheaper
        # screened again as float64 rows of a matrix product, whose own rounding bound
        # leaves only true near-ties to the pair-by-pair differences.
        counts = torch.bincount(rows, minlength=self.a.shape[0])
        dense_rows = (counts > self.b.shape[0] // _DENSE_FRACTION).nonzero().flatten()
        exact = torch.ones(rows.shape[0], dtype=torch.bool)
        if dense_rows.numel():
            slot = torch.full((self.a.shape[0],), -1, dtype=torch.long)
            slot[dense_rows] = torch.arange(dense_rows.numel())
            pair_slot = slot[rows]
            for s in range(0, dense_rows.numel(), _DENSE_CHUNK):
                full, tol = self.rows64(dense_rows[s : s + _DENSE_CHUNK])
                sel = ((pair_slot >= s) & (pair_slot < s + _DENSE_CHUNK)).nonzero().flatten()
                i, j = pair_slot[sel] - s, cols[sel]
                excess = full[i, j] - radii[sel]
                out[sel] = excess <= 0
                exact[sel] = excess.abs() <= tol[i, j]
        pick = exact.nonzero().flatten()
        if pick.numel():
            out[pick] = _exact_pairs(self.a, self.b, rows[pick], cols[pick]) <= radii[pick]
        return out

    def rows64(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Float64 squared distances from ``a[rows]`` to every ``b`` by a matrix product,
        and a bound on their difference from :func:`_exact_pairs`' values.

        Both sets are shifted by ``b``'s mean first: distances do not change, and the
        products' rounding (which scales with the squared norms) shrinks for data far from
        the origin. The bound is the dot-product bound of :class:`_Screen` in float64 plus
        the rounding of the shift and of the exact pairs' own sums, with a factor 2 to spare.
        """
        if self._b64 is None:
            b64 = self.b.double()
            self._shift = b64.mean(0)
            b64 -= self._shift
            self._b64, self._b64_sq = b64, (b64 * b64).sum(1)
        a = self.a[rows].double() - self._shift
        a_sq = (a * a).sum(1)
        n = self.a.shape[1] + 2
        gamma = n * _U64 / (1 - n * _U64)
        scale = 2 * (2 * gamma + 8 * _U64) * (1 + 16 * _U64)
        tol = scale * (a_sq[:, None] + self._b64_sq[None, :])
        # Distances from the pairs' own float64 sums are off by up to gamma_D of their
        # value, so the comparison allows for that as well.
        d = _sq_dist(a, self._b64, self._b64_sq)
        tol += 2 * gamma * d
        return d, tol
