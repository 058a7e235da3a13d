"""Couplings against mathematics: the exact OT pairing is the brute-force optimum (all
permutations) and never costs more than the independent one; unequal batches against an LP
solver; Sinkhorn's plan has the right marginals, the Gibbs form of the entropic optimum and
the right limits; pairs drawn from a plan follow it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from probgen.couplings import (
    COUPLINGS,
    ExactOTCoupling,
    IndependentCoupling,
    SinkhornCoupling,
    cost_matrix,
    get_coupling,
    pairing_cost,
    sinkhorn,
)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_exact_ot_equals_brute_force_over_all_permutations(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(5):
        x0, x1 = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
        c = cost_matrix(x0, x1)
        best = min(float(c[torch.arange(n), list(p)].mean())
                   for p in itertools.permutations(range(n)))
        a, b = ExactOTCoupling()(x0, x1)
        assert pairing_cost(a, b) == pytest.approx(best, rel=1e-12, abs=1e-12)
        # Every source and data point is used exactly once.
        i, j = ExactOTCoupling().indices(x0, x1)
        assert sorted(i.tolist()) == list(range(n)) and sorted(j.tolist()) == list(range(n))


def test_exact_ot_never_costs_more_than_independent():
    g = torch.Generator().manual_seed(0)
    for k in range(40):
        n, d = 2 + k % 30, 1 + k % 5
        x0 = torch.randn(n, d, generator=g)
        x1 = 3 * torch.rand(n, d, generator=g) - 1
        independent = pairing_cost(*IndependentCoupling()(x0, x1))
        assert pairing_cost(*ExactOTCoupling()(x0, x1)) <= independent + 1e-12


def test_images_are_paired_by_flattened_distance():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(6, 1, 3, 3, generator=g), torch.randn(6, 1, 3, 3, generator=g)
    a, b = ExactOTCoupling()(x0, x1)
    flat = ExactOTCoupling()(x0.flatten(1), x1.flatten(1))
    torch.testing.assert_close(a.flatten(1), flat[0])
    torch.testing.assert_close(b.flatten(1), flat[1])


def _lp_ot(cost: np.ndarray) -> float:
    """Exact OT between uniform marginals by the transport LP (HiGHS)."""
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones(m))
    cols = np.kron(np.ones(n), np.eye(m))
    res = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]),
                  b_eq=np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)]),
                  bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("n, m", [(4, 6), (5, 3), (7, 2)])
def test_exact_plan_for_unequal_batches_is_the_lp_optimum(n, m):
    g = torch.Generator().manual_seed(n * m)
    x0, x1 = torch.randn(n, 2, generator=g), torch.randn(m, 2, generator=g)
    plan = ExactOTCoupling().plan(x0, x1)
    torch.testing.assert_close(plan.sum(1), torch.full((n,), 1 / n, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(0), torch.full((m,), 1 / m, dtype=torch.float64))
    cost = cost_matrix(x0, x1)
    assert float((plan * cost).sum()) == pytest.approx(_lp_ot(cost.numpy()), rel=1e-9)
    i, j = ExactOTCoupling().indices(x0, x1, torch.Generator().manual_seed(0))
    assert i.tolist() == list(range(n))
    assert bool((plan[i, j] > 0).all())  # every pair lies in the plan's support


def test_sinkhorn_plan_is_the_entropic_optimum():
    """Marginals 1/n and 1/m, and log P = (f_i + g_j - C_ij)/reg: after removing C/reg,
    the log-plan is additive in rows and columns (its double centering vanishes), which
    characterizes the unique minimizer of <P, C> - reg H(P)."""
    g = torch.Generator().manual_seed(2)
    c = cost_matrix(torch.randn(7, 2, generator=g), torch.randn(5, 2, generator=g))
    reg = 0.3
    plan = sinkhorn(c, reg, tol=1e-12)
    torch.testing.assert_close(plan.sum(1), torch.full((7,), 1 / 7, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(0), torch.full((5,), 1 / 5, dtype=torch.float64))
    r = plan.log() + c / reg
    r = r - r.mean(0, keepdim=True) - r.mean(1, keepdim=True) + r.mean()
    assert float(r.abs().max()) < 1e-9


def test_sinkhorn_limits():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(12, 2, generator=g), torch.randn(12, 2, generator=g)
    cost = cost_matrix(x0, x1)
    exact = float((ExactOTCoupling().plan(x0, x1) * cost).sum())
    small = float((sinkhorn(cost, 1e-3 * float(cost.max())) * cost).sum())
    assert small == pytest.approx(exact, rel=1e-2)  # reg -> 0: exact OT
    flat = sinkhorn(cost, 1e4 * float(cost.max()))
    torch.testing.assert_close(flat, torch.full((12, 12), 1 / 144, dtype=torch.float64),
                               rtol=1e-3, atol=0)  # reg -> inf: independent
    # The coupling normalizes the costs by their maximum: reg is relative.
    scaled = SinkhornCoupling(0.1).plan(10 * x0, 10 * x1)
    torch.testing.assert_close(scaled, SinkhornCoupling(0.1).plan(x0, x1))


def test_pairs_drawn_from_the_plan_follow_it():
    """OT-CFM's sampler: n i.i.d. pairs from P; frequencies over many draws match P."""
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    coupling = SinkhornCoupling(0.5, pairs="plan")
    plan = coupling.plan(x0, x1)
    counts = torch.zeros(4, 4, dtype=torch.float64)
    draws = torch.Generator().manual_seed(5)
    for _ in range(2000):
        i, j = coupling.indices(x0, x1, draws)
        counts.index_put_((i, j), torch.ones(4, dtype=torch.float64), accumulate=True)
    freq = counts / counts.sum()
    # Binomial standard error of each cell with 8000 draws is below 0.0055.
    assert float((freq - plan).abs().max()) < 0.025
    rows = SinkhornCoupling(0.5).indices(x0, x1, draws)[0]
    assert rows.tolist() == [0, 1, 2, 3]  # "rows": every source point once


def test_registry_and_errors():
    assert set(COUPLINGS) == {"independent", "exact_ot", "sinkhorn"}
    assert isinstance(get_coupling("sinkhorn", reg=0.1), SinkhornCoupling)
    with pytest.raises(ValueError, match="expected one of"):
        get_coupling("emd")
    with pytest.raises(ValueError, match=r"parameters \['reg'\] do not apply"):
        get_coupling("exact_ot", reg=0.1)
    with pytest.raises(ValueError, match="one to one"):
        IndependentCoupling().indices(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="max_size"):
        ExactOTCoupling(max_size=10).plan(torch.zeros(4, 2), torch.zeros(6, 2))
    with pytest.raises(ValueError, match="one event shape"):
        ExactOTCoupling()(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="pairs"):
        SinkhornCoupling(pairs="rowwise")
    with pytest.raises(ValueError, match="reg"):
        sinkhorn(torch.zeros(2, 2), 0.0)


@pytest.mark.parametrize("dataset", ["moons", "8gaussians", "checkerboard"])
def test_exact_ot_at_batch_512_is_the_pot_optimum(dataset):
    """On OT-CFM's working size the pairing is a permutation whose cost is POT's exact
    network-simplex optimum (``ot.emd2``, a benchmark-only peer) to 1e-9 relative."""
    ot = pytest.importorskip("ot")
    from probgen.data import toy_sample

    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(512, 2, generator=g), toy_sample(dataset, 512, generator=g)
    i, j = ExactOTCoupling().indices(x0, x1)
    assert i.tolist() == list(range(512)) and sorted(j.tolist()) == list(range(512))
    cost = cost_matrix(x0, x1).numpy()
    uniform = np.full(512, 1 / 512)
    assert pairing_cost(x0[i], x1[j]) == pytest.approx(ot.emd2(uniform, uniform, cost),
                                                       rel=1e-9)
    # "plan" draws lie on the permutation's support.
    pi, pj = ExactOTCoupling(pairs="plan").indices(x0, x1, torch.Generator().manual_seed(0))
    assert torch.equal(j[pi], pj)
    plan = ExactOTCoupling().plan(x0, x1)
    assert float((plan * cost_matrix(x0, x1)).sum()) == pytest.approx(
        pairing_cost(x0[i], x1[j]), rel=1e-12)


def test_exact_plan_for_unequal_batches_above_the_warm_start():
    """lcm(256, 384) = 768 copies: the warm-started assignment, against POT's plan."""
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(8)
    x0, x1 = torch.randn(256, 2, generator=g), torch.rand(384, 2, generator=g)
    plan = ExactOTCoupling().plan(x0, x1)
    torch.testing.assert_close(plan.sum(1), torch.full((256,), 1 / 256, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(0), torch.full((384,), 1 / 384, dtype=torch.float64))
    cost = cost_matrix(x0, x1)
    ref = ot.emd2(np.full(256, 1 / 256), np.full(384, 1 / 384), cost.numpy())
    assert float((plan * cost).sum()) == pytest.approx(ref, rel=1e-9)
