r"""Couplings of source and data minibatches for flow matching: independent, exact OT, Sinkhorn.

Conditional flow matching learns the marginal field of whatever joint law :math:`\pi(x_0,
x_1)` its pairs come from. Drawing the pairs independently gives crossing conditional paths
and a curved marginal field; pairing each minibatch by optimal transport for the squared
distance (OT-CFM, Tong et al., 2024; multisample flow matching, Pooladian et al., 2023)
straightens the field, so ODE solvers need fewer steps.

A coupling maps two minibatches ``x0`` ``(n, *event)`` and ``x1`` ``(m, *event)`` to index
pairs ``(i, j)``: the pairs are ``(x0[i], x1[j])`` (labels of ``x1`` follow ``j``). The
transport plan :math:`P` (an ``(n, m)`` matrix of masses summing to 1 with uniform
marginals) is turned into pairs in one of two ways:

- ``pairs="rows"``: every source point once, its partner drawn from its row
  :math:`P_{i\cdot}/P_{i\cdot}\mathbf 1` (for the exact plan of equal batches: the optimal
  permutation itself, no randomness);
- ``pairs="plan"``: ``n`` pairs drawn i.i.d. from :math:`P` (OT-CFM's sampler).

References:
    Improving and generalizing flow-based generative models with minibatch optimal
    transport (Tong et al., 2024), https://arxiv.org/abs/2302.00482
    Multisample Flow Matching: Straightening Flows with Minibatch Couplings (Pooladian et
    al., 2023), https://arxiv.org/abs/2304.14772
    Sinkhorn Distances: Lightspeed Computation of Optimal Transport (Cuturi, 2013),
    https://arxiv.org/abs/1306.0895
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from probgen.assignment import linear_assignment
from probgen.processes import check_batches
from probgen.utils import build_named, check_choice, check_int

__all__ = [
    "Coupling",
    "IndependentCoupling",
    "ExactOTCoupling",
    "SinkhornCoupling",
    "cost_matrix",
    "pairing_cost",
    "sinkhorn",
    "COUPLINGS",
    "PAIRS",
    "get_coupling",
]

#: How a transport plan becomes pairs (module docstring).
PAIRS: tuple[str, ...] = ("rows", "plan")


def cost_matrix(x0: Tensor, x1: Tensor) -> Tensor:
    r"""Squared Euclidean costs :math:`C_{ij} = \|x_{0,i} - x_{1,j}\|^2`, float64 ``(n, m)``.

    Up to 16 features computed from differences (not :math:`|a|^2 + |b|^2 - 2ab`), so exact
    up to one rounding per entry; above, the product form (BLAS: 10x faster at 784
    features, errors of a rounding of :math:`|a|^2 + |b|^2`). Never negative.
    """
    check_batches(x0, x1)
    a = x0.detach().reshape(x0.shape[0], -1).double()
    b = x1.detach().reshape(x1.shape[0], -1).double()
    mode = "donot_use_mm_for_euclid_dist" if a.shape[1] <= 16 else "use_mm_for_euclid_dist"
    return torch.cdist(a, b, compute_mode=mode).pow(2)


def pairing_cost(x0: Tensor, x1: Tensor) -> float:
    r"""The mean squared distance :math:`\frac1n\sum_k \|x_{0,k} - x_{1,k}\|^2` of paired rows.

    Example:
        >>> round(pairing_cost(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0]])), 6)
        2.5
    """
    check_batches(x0, x1, paired=True)
    return float((x0.double() - x1.double()).pow(2).flatten(1).sum(-1).mean())


def sinkhorn(cost: Tensor, reg: float, *, max_iter: int = 2000, tol: float = 1e-8
             ) -> Tensor:
    r"""The entropic optimal transport plan between uniform marginals, by log-domain Sinkhorn.

    Minimizes :math:`\langle P, C\rangle - \text{reg}\,H(P)` over plans with marginals
    :math:`a = \mathbf 1/n`, :math:`b = \mathbf 1/m`. The solution is :math:`P_{ij} =
    \exp((f_i + g_j - C_{ij})/\text{reg})`; the potentials are updated in turn by
    :math:`f_i = \text{reg}\log a_i - \text{reg}\,\mathrm{LSE}_j((g_j - C_{ij})/\text{reg})`
    and the same for :math:`g`, until the row marginals are within ``tol`` (L1) of
    :math:`a` (columns are exact after each update). Written here in the log domain (with
    ``logsumexp``) because the kernel :math:`e^{-C/\text{reg}}` of the plain scaling
    algorithm underflows for small ``reg``, and POT is not a dependency of probgen.

    Args:
        cost: ``(n, m)`` costs.
        reg: the entropic regularization (> 0), in the units of ``cost``.
        max_iter: at most this many pairs of updates.
        tol: stop when :math:`\|P\mathbf 1 - a\|_1 <` ``tol``.

    Returns:
        The plan, float64 ``(n, m)``, summing to 1.

    Raises:
        ValueError: a non-positive ``reg`` or a non-finite cost.

    Example:
        >>> plan = sinkhorn(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), reg=0.01)
        >>> [[round(v, 3) for v in row] for row in plan.tolist()]
        [[0.5, 0.0], [0.0, 0.5]]
    """
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
        raise ValueError(f"reg: expected a positive number, got {reg!r}.")
    c = cost.double()
    if c.dim() != 2 or not torch.isfinite(c).all():
        raise ValueError(f"cost: expected a finite (n, m) matrix, got shape {tuple(c.shape)}.")
    n, m = c.shape
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(n, dtype=torch.float64, device=c.device)
    g = torch.zeros(m, dtype=torch.float64, device=c.device)
    for _ in range(max_iter):
        f = reg * (log_a - torch.logsumexp((g[None, :] - c) / reg, dim=1))
        g = reg * (log_b - torch.logsumexp((f[:, None] - c) / reg, dim=0))
        log_p = (f[:, None] + g[None, :] - c) / reg
        if float((log_p.exp().sum(1) - 1.0 / n).abs().sum()) < tol:
            break
    return ((f[:, None] + g[None, :] - c) / reg).exp()


class Coupling(ABC):
    """Abstract class of a coupling of two minibatches (module docstring)."""

    @abstractmethod
    def indices(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        """Index pairs ``(i, j)``, int64 on ``x0``'s device: the pairs are ``(x0[i], x1[j])``.

        Args:
            x0: source batch ``(n, *event)``.
            x1: data batch ``(m, *event)``.
            generator: for randomized pairings.
        """

    def __call__(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        """The paired batches ``(x0[i], x1[j])`` (see :meth:`indices`)."""
        i, j = self.indices(x0, x1, generator)
        return x0[i], x1[j]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IndependentCoupling(Coupling):
    """Creates the independent coupling: ``x0[k]`` goes with ``x1[k]`` (both drawn at random).

    Example:
        >>> IndependentCoupling().indices(torch.zeros(3, 2), torch.ones(3, 2))
        (tensor([0, 1, 2]), tensor([0, 1, 2]))
    """

    def indices(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:  # noqa: D102
        check_batches(x0, x1)
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(f"x0 and x1: the independent coupling pairs rows one to one; "
                             f"got batches of {x0.shape[0]} and {x1.shape[0]}.")
        k = torch.arange(x0.shape[0], device=x0.device)
        return k, k


def _check_pairs(pairs: str) -> str:
    check_choice("pairs", pairs, PAIRS)
    return pairs


def _pairs_from_plan(plan: Tensor, pairs: str, generator: torch.Generator | None,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    n, m = plan.shape
    p = plan.to("cpu", torch.float64).clamp_min(0)
    if pairs == "rows":
        i = torch.arange(n)
        rows = p / p.sum(1, keepdim=True)
        j = torch.multinomial(rows, 1, generator=generator).squeeze(1)
    else:
        flat = torch.multinomial(p.flatten(), n, replacement=True, generator=generator)
        i, j = flat // m, flat % m
    return i.to(device), j.to(device)


class ExactOTCoupling(Coupling):
    r"""Creates the minibatch exact optimal-transport coupling for the squared distance.

    The plan minimizing :math:`\sum_{ij} P_{ij} \|x_{0,i} - x_{1,j}\|^2` between uniform
    marginals. For batches of one size it is a permutation (Birkhoff-von Neumann), an
    optimal assignment; for sizes :math:`n \ne m` each point is repeated to :math:`L =
    \mathrm{lcm}(n, m)` copies in all, whose optimal assignment is an optimal plan with
    masses in multiples of :math:`1/L` (exact, for :math:`L` up to ``max_size``). The
    assignment is :func:`probgen.assignment.linear_assignment`: scipy's exact solver,
    warm-started by a solved sample's prices and an auction (4-5x faster than scipy alone
    at 512 2-D points, benchmarks/fm_ot_speed.py).

    Args:
        pairs: ``"rows"`` (default; for equal sizes the optimal permutation) or ``"plan"``
            (i.i.d. draws from the plan, as OT-CFM).
        max_size: the largest :math:`L` solved (an :math:`O(L^3)` assignment).

    Example:
        >>> x0 = torch.tensor([[0.0], [1.0]])
        >>> ExactOTCoupling().indices(x0, torch.tensor([[1.1], [0.1]]))
        (tensor([0, 1]), tensor([1, 0]))
    """

    def __init__(self, pairs: str = "rows", max_size: int = 4096) -> None:
        self.pairs = _check_pairs(pairs)
        check_int("max_size", max_size)
        self.max_size = max_size

    def _support(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The optimal plan's nonzero entries: rows, columns (int64) and masses (float64),
        on the CPU, the rows ascending."""
        cost = cost_matrix(x0, x1).cpu().numpy()
        n, m = cost.shape
        if n == m:
            rows, cols = linear_assignment(cost)
            mass = np.full(n, 1.0 / n)
        else:
            size = math.lcm(n, m)
            if size > self.max_size:
                raise ValueError(f"x0 and x1: batches of {n} and {m} need an assignment of "
                                 f"size lcm = {size} > max_size = {self.max_size}; use equal "
                                 "batch sizes or raise max_size.")
            rn, rm = size // n, size // m
            big_rows, big_cols = linear_assignment(
                np.repeat(np.repeat(cost, rn, axis=0), rm, axis=1))
            flat, count = np.unique((big_rows // rn) * m + big_cols // rm, return_counts=True)
            rows, cols, mass = flat // m, flat % m, count / size
        return (torch.from_numpy(np.asarray(rows, dtype=np.int64)),
                torch.from_numpy(np.asarray(cols, dtype=np.int64)), torch.from_numpy(mass))

    def plan(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The optimal plan, float64 ``(n, m)`` summing to 1."""
        rows, cols, mass = self._support(x0, x1)
        plan = torch.zeros(x0.shape[0], x1.shape[0], dtype=torch.float64)
        plan[rows, cols] = mass
        return plan.to(x0.device)

    def indices(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:  # noqa: D102
        rows, cols, mass = self._support(x0, x1)
        n, device = x0.shape[0], x0.device
        if self.pairs == "plan":  # n i.i.d. draws from the plan's support
            k = torch.multinomial(mass, n, replacement=True, generator=generator)
            return rows[k].to(device), cols[k].to(device)
        if x0.shape[0] == x1.shape[0]:  # a permutation: row i's one partner
            return rows.to(device), cols.to(device)
        plan = torch.zeros(n, x1.shape[0], dtype=torch.float64)
        plan[rows, cols] = mass
        return _pairs_from_plan(plan, "rows", generator, device)

    def __repr__(self) -> str:
        return f"ExactOTCoupling(pairs={self.pairs!r})"


class SinkhornCoupling(Coupling):
    r"""Creates the minibatch entropic optimal-transport coupling (Sinkhorn).

    The plan of :func:`sinkhorn` on the squared-distance costs, divided by their largest
    entry when ``normalize_cost`` (so ``reg`` is relative to the batch's spread and one
    value serves 2-D points and images alike). As ``reg -> 0`` it tends to the exact plan;
    large ``reg`` tends to the independent coupling.

    Args:
        reg: entropic regularization.
        normalize_cost: divide the costs by their maximum first.
        pairs: ``"rows"`` (default) or ``"plan"`` (as OT-CFM).
        max_iter: Sinkhorn iterations at most; tol: on the row marginals (L1).
    """

    def __init__(self, reg: float = 0.05, *, normalize_cost: bool = True, pairs: str = "rows",
                 max_iter: int = 2000, tol: float = 1e-8) -> None:
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise ValueError(f"reg: expected a positive number, got {reg!r}.")
        self.reg, self.normalize_cost = float(reg), bool(normalize_cost)
        self.pairs, self.max_iter, self.tol = _check_pairs(pairs), int(max_iter), float(tol)

    def plan(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The entropic plan, float64 ``(n, m)`` summing to 1."""
        cost = cost_matrix(x0, x1)
        if self.normalize_cost and cost.max() > 0:
            cost = cost / cost.max()
        return sinkhorn(cost, self.reg, max_iter=self.max_iter, tol=self.tol)

    def indices(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:  # noqa: D102
        return _pairs_from_plan(self.plan(x0, x1), self.pairs, generator, x0.device)

    def __repr__(self) -> str:
        return (f"SinkhornCoupling(reg={self.reg:g}, normalize_cost={self.normalize_cost}, "
                f"pairs={self.pairs!r})")


#: The couplings by name (the CLI's ``[objective] coupling``).
COUPLINGS: dict[str, type[Coupling]] = {
    "independent": IndependentCoupling,
    "exact_ot": ExactOTCoupling,
    "sinkhorn": SinkhornCoupling,
}


def get_coupling(name: str, **kwargs: object) -> Coupling:
    """Builds the coupling called ``name`` (see :data:`COUPLINGS`) with its parameters.

    Raises:
        ValueError: an unknown name, or parameters the coupling does not take.
    """
    return build_named("coupling", COUPLINGS, name, **kwargs)
