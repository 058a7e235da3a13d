"""MMD and KID: brute-force U/V-statistics, Gaussian closed forms, unbiasedness of KID."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from probgen.metrics import gaussian_kernel, kid, median_bandwidth, mmd2, polynomial_kernel


def _brute_mmd2(x, y, k, unbiased):
    n, m = len(x), len(y)
    pairs = (lambda a: itertools.permutations(range(len(a)), 2)) if unbiased else (
        lambda a: itertools.product(range(len(a)), repeat=2))
    kxx = math.fsum(k(x[i], x[j]) for i, j in pairs(x)) / (n * (n - 1) if unbiased else n * n)
    kyy = math.fsum(k(y[i], y[j]) for i, j in pairs(y)) / (m * (m - 1) if unbiased else m * m)
    kxy = math.fsum(k(a, b) for a in x for b in y) / (n * m)
    return kxx + kyy - 2 * kxy


def _gauss(a, b, hs):
    d2 = math.fsum((float(u) - float(v)) ** 2 for u, v in zip(a, b, strict=True))
    return math.fsum(math.exp(-d2 / (2 * h * h)) for h in hs)


def _cubic(a, b):
    return (math.fsum(float(u) * float(v) for u, v in zip(a, b, strict=True)) / len(a) + 1) ** 3


@pytest.mark.parametrize("unbiased", [True, False])
def test_gaussian_mmd_matches_brute_force(unbiased):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 0.4
    hs = (0.5, 1.0, 3.0)
    expected = _brute_mmd2(x.tolist(), y.tolist(), lambda a, b: _gauss(a, b, hs), unbiased)
    assert mmd2(x, y, bandwidths=hs, unbiased=unbiased, block_size=3) == pytest.approx(
        expected, rel=1e-6, abs=1e-7)


def test_kid_of_one_subset_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g)
    y = y.double() + 0.3
    idx = torch.arange(6)[None]
    value = kid(x, y, subsets=(idx, idx.flip(1)))
    assert value.mean == pytest.approx(_brute_mmd2(x.tolist(), y.tolist(), _cubic, True),
                                       rel=1e-12)
    assert value.std == 0.0 and value.values.shape == (1,)
    k = polynomial_kernel(x, y)
    assert float(k[2, 3]) == pytest.approx(_cubic(x[2].tolist(), y[3].tolist()), rel=1e-12)


@pytest.mark.parametrize("n", [6, 40])
def test_kid_of_overlapping_subsets_matches_brute_force(n):
    # Many subsets of a small set: KID then computes every pair once and sums subsets by
    # indicator vectors (n = 6); with few subsets it loops over them (n = 40). Both must
    # equal the brute-force U-statistics averaged over the subsets.
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) + 0.2
    ix = torch.stack([torch.randperm(n, generator=g)[:5] for _ in range(4)])
    iy = torch.stack([torch.randperm(n, generator=g)[:5] for _ in range(4)])
    result = kid(x, y, subsets=(ix, iy))
    brute = [_brute_mmd2(x[a].tolist(), y[b].tolist(), _cubic, True)
             for a, b in zip(ix, iy, strict=True)]
    torch.testing.assert_close(result.values, torch.tensor(brute, dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)


def test_unbiased_gaussian_mmd_has_the_closed_form_mean():
    # X ~ N(0, I_2), Y ~ N(mu, s^2 I_2), kernel exp(-|a-b|^2 / (2h^2)):
    # E k = (h^2 / (h^2 + v))^(d/2) exp(-|m|^2 / (2 (h^2 + v))), v the variance of a - b.
    d, s, h = 2, 1.2, 1.0
    mu = torch.tensor([0.5, 0.0])

    def ek(mean_sq, var):
        return (h * h / (h * h + var)) ** (d / 2) * math.exp(-mean_sq / (2 * (h * h + var)))

    exact = ek(0, 2) + ek(0, 2 * s * s) - 2 * ek(float(mu @ mu), 1 + s * s)
    g = torch.Generator().manual_seed(2)
    unbiased, biased = [], []
    for _ in range(200):
        x = torch.randn(50, d, generator=g, dtype=torch.float64)
        y = torch.randn(50, d, generator=g, dtype=torch.float64) * s + mu
        unbiased.append(mmd2(x, y, bandwidths=[h]))
        biased.append(mmd2(x, y, bandwidths=[h], unbiased=False))
    u = torch.tensor(unbiased)
    se = float(u.std()) / math.sqrt(len(u))
    assert abs(float(u.mean()) - exact) < 4 * se
    b = torch.tensor(biased)
    assert float(b.mean()) - exact > 8 * se  # the V-statistic is biased upwards
    assert (b >= u).all() and (b >= 0).all()


def test_kid_is_zero_on_average_for_one_distribution_and_positive_when_shifted():
    g = torch.Generator().manual_seed(3)
    same, shifted = [], []
    for _ in range(40):
        x = torch.randn(400, 16, generator=g)
        y = torch.randn(400, 16, generator=g)
        one = kid(x, y, num_subsets=10, subset_size=200, generator=g)
        assert abs(one.mean) < 3 * one.std  # 0 within its spread over subsets
        same.append(one.mean)
        shifted.append(kid(x, y + 0.5, num_subsets=10, subset_size=200, generator=g).mean)
    s = torch.tensor(same)
    se = float(s.std()) / math.sqrt(len(s))
    assert abs(float(s.mean())) < 4 * se
    t = torch.tensor(shifted)
    assert float(t.mean()) > 20 * float(t.std()) / math.sqrt(len(t)) > 0


def test_median_bandwidth_and_kernel_shapes():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert median_bandwidth(x[:1], x[1:]) == pytest.approx(5.0)
    k = gaussian_kernel(x, x, [1.0, 2.0])
    assert k.shape == (2, 2) and float(k[0, 0]) == pytest.approx(2.0)
    assert mmd2(torch.randn(300, 2), torch.randn(300, 2) + 3) > 0.3  # median heuristic


def test_errors_say_what_was_expected():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="same size"):
        mmd2(x, torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kid(torch.randn(10), x)
    with pytest.raises(ValueError, match="NaN"):
        kid(torch.full((10, 3), math.nan), x)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd2(x, x, bandwidths=[0.0])
    with pytest.raises(ValueError, match="num_subsets: expected a positive int"):
        kid(x, x, num_subsets=0)
    with pytest.raises(ValueError, match="needs >= 2 rows"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="out of range"):
        kid(x, x, subsets=(torch.tensor([[0, 11]]), torch.tensor([[0, 1]])))


def _poly_mmd2_float64(a, b, degree, gamma, coef0):
    """The unbiased MMD^2 by its definition, every kernel value in float64."""
    a, b = a.double(), b.double()
    m = a.shape[0]
    kaa = (gamma * a @ a.T + coef0) ** degree
    kbb = (gamma * b @ b.T + coef0) ** degree
    kab = (gamma * a @ b.T + coef0) ** degree
    return float((kaa.sum() - kaa.diagonal().sum() + kbb.sum() - kbb.diagonal().sum())
                 / (m * (m - 1)) - 2 * kab.sum() / (m * m))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [2, 31, 32, 33, 70])
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_kid_subset_loop_matches_the_definition(dtype, m, degree, threads):
    # The CPU loop reuses its row, Gram and work buffers across subsets and sums the
    # kernel a few rows at a time (the upper triangle only for a a^T): subset sizes on
    # both sides of its 32-row blocks, 5 subsets on 1 worker thread or on 3 (each worker
    # reuses its buffers for the next subset it takes). kid() itself uses one worker on
    # problems this small, so the loop is also called directly with `threads` workers.
    from probgen.metrics._kid import PolySums, subset_values

    g = torch.Generator().manual_seed(m + 10 * degree)
    n = 80
    x = torch.randn(n, 6, generator=g, dtype=torch.float64).to(dtype)
    y = (0.9 * torch.randn(n, 6, generator=g, dtype=torch.float64) + 0.2).to(dtype)
    ix = torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(5)])
    iy = torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(5)])
    gamma, coef0 = 0.3, 0.7
    result = kid(x, y, subsets=(ix, iy), degree=degree, gamma=gamma, coef0=coef0)
    expected = torch.tensor([_poly_mmd2_float64(x[a], y[b], degree, gamma, coef0)
                             for a, b in zip(ix, iy, strict=True)], dtype=torch.float64)
    # float32 features: float32 dot products (relative rounding ~1e-7 of each product).
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    scale = float(expected.abs().max()) + (1 + gamma * 6) ** degree * 1e-3
    torch.testing.assert_close(result.values, expected, rtol=0, atol=tol * scale)
    direct = subset_values(PolySums(gamma, coef0, degree, m), x.numpy(), y.numpy(),
                           ix.numpy(), iy.numpy(), threads)
    torch.testing.assert_close(torch.from_numpy(direct), expected, rtol=0, atol=tol * scale)
