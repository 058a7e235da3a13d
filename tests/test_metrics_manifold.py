"""Precision/recall and density/coverage: identities, dropped and added support, brute force."""

from __future__ import annotations

import pytest
import torch

from probgen.metrics import density_coverage, knn_radii, precision_recall


def _clusters(n: int, centres: list[float], g: torch.Generator) -> torch.Tensor:
    c = torch.tensor(centres)[torch.arange(n) % len(centres)]
    return torch.randn(n, 4, generator=g) * 0.3 + c[:, None]


def test_identical_sets_give_one_and_one():
    x = torch.randn(800, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert density_coverage(x, x).coverage == 1.0


def test_dropped_support_lowers_recall_added_support_lowers_precision():
    g = torch.Generator().manual_seed(1)
    real = _clusters(2000, [0.0, 10.0], g)       # two clusters
    # 1000 samples per cluster everywhere, so only the support differs.
    dropped = _clusters(1000, [0.0], g)          # the model misses the second cluster
    added = _clusters(3000, [0.0, 10.0, -10.0], g)  # the model adds a third one
    # A fresh sample of the same distribution: both near 1 (finite-sample k-NN balls).
    fresh = _clusters(2000, [0.0, 10.0], g)
    p0, r0 = precision_recall(real, fresh)
    assert p0 > 0.9 and r0 > 0.9
    d0, c0 = density_coverage(real, fresh)
    assert d0 == pytest.approx(1.0, abs=0.1) and c0 > 0.95
    p, r = precision_recall(real, dropped)
    assert p == pytest.approx(p0, abs=0.03) and r == pytest.approx(r0 / 2, abs=0.03)
    p, r = precision_recall(real, added)
    assert p == pytest.approx(2 * p0 / 3, abs=0.03) and r == pytest.approx(r0, abs=0.03)
    # Density counts real balls around each fake sample: unchanged where the fake samples
    # lie on the data, 0 off it; coverage halves when a cluster is missed.
    d, c = density_coverage(real, dropped)
    assert c == pytest.approx(c0 / 2, abs=0.03) and d == pytest.approx(d0, abs=0.1)
    d, c = density_coverage(real, added)
    assert c == pytest.approx(c0, abs=0.03) and d == pytest.approx(2 * d0 / 3, abs=0.1)


def test_matches_brute_force_on_a_tiny_problem():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 2, generator=g), torch.randn(9, 2, generator=g) * 1.5
    k = 3
    dxx, dyy, dyx = torch.cdist(x, x).double(), torch.cdist(y, y).double(), torch.cdist(y, x)
    rx = dxx.sort(1).values[:, k]  # column 0 is the point itself
    ry = dyy.sort(1).values[:, k]
    precision = sum(any(dyx[j, i] <= rx[i] for i in range(12)) for j in range(9)) / 9
    recall = sum(any(dyx[j, i] <= ry[j] for j in range(9)) for i in range(12)) / 12
    p, r = precision_recall(x, y, k=k, block_size=5)
    assert (p, r) == (pytest.approx(precision), pytest.approx(recall))
    torch.testing.assert_close(knn_radii(x.double(), k, block_size=5), rx**2, rtol=1e-6,
                               atol=1e-6)
    k = 2
    rx = dxx.sort(1).values[:, k]
    inside = torch.tensor([[float(dyx[j, i]) <= rx[i] for i in range(12)] for j in range(9)])
    d, c = density_coverage(x, y, k=k, block_size=4)
    assert d == pytest.approx(float(inside.sum()) / (k * 9))
    assert c == pytest.approx(float(inside.any(0).double().mean()))


def test_errors_say_what_was_expected():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="more than k = 3"):
        precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="feature sizes differ"):
        precision_recall(x, torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"features \(N, D\)"):
        density_coverage(torch.randn(10), x)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        precision_recall(x, x, k=0)


def _brute(x: torch.Tensor, y: torch.Tensor, k: int):
    """Float64 difference-based reference: radii, precision/recall, density/coverage."""
    x, y = x.double(), y.double()
    sq = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
    dxx, dyy, dyx = sq(x, x), sq(y, y), sq(y, x)
    rx, ry = dxx.sort(1).values[:, k], dyy.sort(1).values[:, k]
    in_real = (dyx <= rx[None, :])  # fake j inside real ball i
    in_fake = (dyx <= ry[:, None])  # real i inside fake ball j
    return rx, in_real.any(1).double().mean(), in_fake.any(0).double().mean(), in_real


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_default_screening_gives_float64_decisions(offset):
    # A large common offset makes |a|^2 + |b|^2 - 2 a.b cancel catastrophically in float32
    # (errors ~ u |a|^2 ~ 0.3 against squared distances ~ 130): plain float32 decisions go
    # wrong, the certified default must still agree with float64 differences exactly.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 64, generator=g) + offset
    y = torch.randn(250, 64, generator=g) * 1.1 + offset
    k = 3
    rx, precision, recall, in_real = _brute(x, y, k)
    # float64 rounding of |a|^2 + |b|^2 - 2 a.b (rows redone as one matrix product) is at most
    # ~D u64 (|a| + |b|)^2 ~ 2e-9 relative here; float32's is ~1e-3.
    torch.testing.assert_close(knn_radii(x, k, block_size=64), rx, rtol=1e-8, atol=0)
    p, r = precision_recall(x, y, k=k, block_size=64)
    assert (p, r) == (float(precision), float(recall))
    d, c = density_coverage(x, y, k=k, block_size=64)
    assert d == pytest.approx(float(in_real.sum()) / (k * 250), rel=1e-12)
    assert c == float(in_real.any(0).double().mean())
    if offset:
        r32 = knn_radii(x, k, block_size=64, dtype=torch.float32).double()
        assert (r32 - rx).abs().max() > 1e-3  # float32 alone is visibly off here


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_exact_ties_on_an_integer_lattice(forced, offset, monkeypatch):
    # Integer coordinates make every difference-based squared distance exact in float64, so
    # the reference is unambiguous even though ties are everywhere: many points sit exactly
    # on a ball's boundary (inside, since the balls are closed), and the fake set repeats
    # real points. The offset makes float32 products useless (|a|^2 ~ 1e8), so everything
    # near a boundary goes through the fallbacks; ``forced`` takes them for every row.
    from probgen.metrics import _screen, manifold

    if forced:
        monkeypatch.setattr(_screen, "_DENSE_FRACTION", 10**9)
        monkeypatch.setattr(manifold, "_EXTRA_CANDIDATES", 0)
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 3, (150, 96), generator=g).float() + offset
    y = torch.cat([x[:40], torch.randint(0, 3, (90, 96), generator=g).float() + offset])
    for k in (1, 3, 5):
        rx, precision, recall, in_real = _brute(x, y, k)
        assert torch.equal(knn_radii(x, k, block_size=37), rx)
        assert precision_recall(x, y, k=k, block_size=37) == (float(precision), float(recall))
        d, c = density_coverage(x, y, k=k, block_size=37)
        assert d == float(in_real.sum()) / (k * y.shape[0])
        assert c == float(in_real.any(0).double().mean())
