r"""Exact linear assignment, warm-started by an auction: ``scipy``'s solver on reduced costs.

The square assignment problem :math:`\min_\sigma \sum_i C_{i\sigma(i)}` over permutations
is unchanged when a constant is subtracted from each row and each column: :math:`C'_{ij} =
C_{ij} - u_i - v_j` has the same optimal assignments. ``scipy.optimize.linear_sum_assignment``
(a shortest-augmenting-path solver started from zero potentials) solves :math:`C'` exactly
whatever :math:`u, v` are, but its time depends on them: from zero potentials on a 512 x 512
squared-distance matrix of 2-D points each augmenting path scans a large part of the matrix
(40-100 ms on one core), while from nearly optimal potentials most rows find a free column
at once (a few ms). :func:`linear_assignment` gets such potentials in three steps: scipy
solves a strided 64 x 64 sample exactly, whose optimal potentials, extended to all columns
(:func:`sample_prices`), start a short auction with :math:`\varepsilon`-scaling (Bertsekas,
1988) from a small :math:`\varepsilon` (the coarse phases from zero prices are what the
sample saves); the auction's prices are nearly optimal column potentials, each phase stopping
when all but a few rows are assigned; scipy then finishes on the reduced costs. The sample
and the auction only speed scipy up: the returned assignment is scipy's exact optimum of
:math:`C'`, hence of :math:`C` (up to one rounding per reduced entry).

References:
    The auction algorithm: a distributed relaxation method for the assignment problem
    (Bertsekas, 1988), https://doi.org/10.1007/BF02186476
    On implementing 2D rectangular assignment algorithms (Crouse, 2016),
    https://doi.org/10.1109/TAES.2016.140952
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["auction_prices", "linear_assignment", "sample_prices"]

#: From this many rows the auction pays (measured on 2-D squared distances: 1.7x faster than
#: scipy alone at 256 rows, 5x at 512); from ``2 * SAMPLE`` rows to here the sample's prices
#: alone start scipy (1.5x faster at 128 rows), below scipy runs alone.
MIN_WARM_START = 256
#: The rows and columns of the exactly solved sample whose potentials start the auction.
SAMPLE = 64


def auction_prices(cost: np.ndarray, *, eps_start: float, eps_end: float, factor: float = 5.0,
                   leave: int = 0, max_rounds: int = 2000,
                   prices: np.ndarray | None = None) -> np.ndarray:
    r"""Column prices of a Jacobi auction with :math:`\varepsilon`-scaling, for minimum cost.

    Every unassigned row bids for its cheapest column :math:`j_1` (cost plus price),
    raising its price by the gap to its second cheapest plus :math:`\varepsilon`; each
    column goes to its highest bidder. A phase ends when at most ``leave`` rows are
    unassigned; :math:`\varepsilon` is then divided by ``factor`` (down to ``eps_end``) and
    the pairs that break :math:`\varepsilon`-complementary slackness are released. At the
    end :math:`-p` is a column potential within about :math:`n\varepsilon` of optimal.

    Args:
        cost: ``(n, m)`` finite costs, ``n <= m`` (any float dtype; float32 is faster).
        eps_start: the first :math:`\varepsilon` (> 0).
        eps_end: the last :math:`\varepsilon` (> 0).
        factor: the division of :math:`\varepsilon` between phases (> 1).
        leave: a phase stops with this many rows still unassigned.
        max_rounds: bidding rounds at most, over all phases (the prices are then returned
            as they are).
        prices: ``(m,)`` starting prices (default zeros); a good start saves whole phases.

    Returns:
        The prices :math:`p`, ``(m,)`` of ``cost``'s dtype.

    Example:
        >>> p = auction_prices(np.array([[0.0, 1.0], [1.0, 0.0]]), eps_start=0.1,
        ...                    eps_end=0.01)
        >>> bool(p[0] == p[1])
        True
    """
    n, m = cost.shape
    rows = np.arange(n)
    prices = np.zeros(m, cost.dtype) if prices is None else prices.astype(cost.dtype)
    owner = np.full(m, -1)  # row of each column
    col = np.full(n, -1)  # column of each row
    eps = cost.dtype.type(eps_start)
    rounds = 0
    while True:
        assigned = rows[col >= 0]
        if assigned.size:  # keep the pairs that are eps-optimal at this eps
            value = cost[assigned] + prices
            k = rows[:assigned.size]
            slack = value[k, col[assigned]] - value[k, value.argmin(1)]  # argmin: faster than min
            bad = assigned[slack > eps]
            owner[col[bad]] = -1
            col[bad] = -1
        free = rows[col < 0]
        while free.size > leave and rounds < max_rounds:
            rounds += 1
            value = cost[free] + prices
            k = rows[:free.size]
            best = value.argmin(1)
            first = value[k, best]
            value[k, best] = np.inf
            bid = value[k, value.argmin(1)] + (prices[best] - first + eps)
            order = np.lexsort((bid, best))  # by column, then bid: the last of each
            best, free, bid = best[order], free[order], bid[order]  # column is its winner
            top = np.append(best[1:] != best[:-1], True)
            cols, winners = best[top], free[top]
            losers = owner[cols]
            col[losers[losers >= 0]] = -1
            owner[cols] = winners
            col[winners] = cols
            prices[cols] = bid[top]
            free = rows[col < 0]
        if eps <= eps_end or rounds >= max_rounds:
            return prices
        eps = max(eps / cost.dtype.type(factor), cost.dtype.type(eps_end))


def sample_prices(cost: np.ndarray, size: int) -> np.ndarray:
    r"""Column prices from an exactly solved ``size x size`` strided sample of ``cost``.

    Scipy solves the sampled rows and columns; their optimal row potentials :math:`u` are
    the largest solution of the difference constraints :math:`u_i - u_k \le C_{i\sigma(k)} -
    C_{k\sigma(k)}` of the sample's optimum :math:`\sigma` (Bellman-Ford, one vectorized
    relaxation of all pairs a round; no negative cycle since :math:`\sigma` is optimal),
    extended to every column by the c-transform :math:`p_j = \max_i (u_i - C_{ij})` over the
    sampled rows: the prices the auction would reach on the sample, for all columns.

    Args:
        cost: ``(n, m)`` finite costs, ``size <= min(n, m)``.
        size: the sample's rows and columns.

    Returns:
        The prices :math:`p`, ``(m,)`` float64.

    Example:
        >>> sample_prices(np.array([[0.0, 1.0], [1.0, 0.0]]), 2)
        array([0., 0.])
    """
    rows = cost[::cost.shape[0] // size][:size]
    sub = rows[:, ::cost.shape[1] // size][:, :size]
    _, sigma = linear_sum_assignment(sub)
    slack = sub[:, sigma] - sub[np.arange(size), sigma]  # [i, k]: u_i <= u_k + slack[i, k]
    u = np.zeros(size)
    for _ in range(size):
        relaxed = np.minimum(u, (u + slack).min(1))
        if np.array_equal(relaxed, u):
            break
        u = relaxed
    return (u[:, None] - rows).max(0)


def linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""An optimal assignment of the rows of ``cost`` to distinct columns (minimum sum).

    As ``scipy.optimize.linear_sum_assignment`` (same result type, an exact optimum), but
    warm-started by :func:`sample_prices` (square costs from 128 rows on) and
    :func:`auction_prices` (from 256; module docstring). Rectangular costs go to scipy
    alone: when some columns stay unused, column potentials change which columns are
    chosen, so only square problems are reduced.

    Args:
        cost: ``(n, m)`` costs, finite (non-finite entries: scipy's own error).

    Returns:
        ``(rows, cols)``: int arrays, ``rows`` sorted; with ``n <= m`` ``rows`` is
        ``0..n-1`` and ``cols`` is injective.

    Example:
        >>> linear_assignment(np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]))
        (array([0, 1, 2]), array([1, 0, 2]))
    """
    cost = np.asarray(cost, dtype=np.float64)
    if (cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2 * SAMPLE
            or not np.isfinite(cost).all()):
        return linear_sum_assignment(cost)
    prices = sample_prices(cost, SAMPLE)
    # Potentials are invariant to a shift of the costs; scale the epsilons by their spread
    # (a strided sample's median: the full one costs milliseconds).
    step = cost.shape[0] // SAMPLE
    low = cost.min()
    spread = float(np.median(cost[::step, ::step]) - low)
    if not spread > 0:
        spread = float(cost.max() - low)
    if cost.shape[0] >= MIN_WARM_START and spread > 0:  # below, the sample's prices alone
        c32 = (cost - low).astype(np.float32)
        prices = auction_prices(c32, eps_start=0.06 * spread,
                                eps_end=max(1e-3 * spread, 1e-6 * float(c32.max())),
                                leave=16,  # measured best from 256 to 2048 rows
                                prices=prices).astype(np.float64)
    reduced = cost + prices  # column potentials v = -prices
    reduced -= reduced.min(1, keepdims=True)  # row potentials u = min_j (C_ij - v_j)
    reduced -= reduced.min(0)  # and v again: v_j = min_i (C_ij - u_i)
    return linear_sum_assignment(reduced)
