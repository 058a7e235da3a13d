"""Frechet distance and FID against closed forms: isotropic, commuting and 2x2 Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.metrics import (
    RunningMoments,
    fid,
    frechet_distance,
    gaussian_moments,
    trace_sqrt_product,
)


def _random_orthogonal(d: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("d", [1, 3, 64])
def test_isotropic_closed_form(d):
    # Course formula: ||mu1 - mu2||^2 + d (s1 - s2)^2 for N(mu, s^2 I).
    g = torch.Generator().manual_seed(d)
    mu1 = torch.randn(d, generator=g, dtype=torch.float64)
    mu2 = torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = 0.7, 2.3
    eye = torch.eye(d, dtype=torch.float64)
    value = frechet_distance(mu1, s1**2 * eye, mu2, s2**2 * eye)
    expected = float(((mu1 - mu2) ** 2).sum()) + d * (s1 - s2) ** 2
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("d", [4, 256])
def test_commuting_covariances_closed_form(d):
    # Shared eigenvectors: tr sqrt(S1^(1/2) S2 S1^(1/2)) = sum_i sqrt(a_i b_i); zeros allowed.
    g = torch.Generator().manual_seed(0)
    q = _random_orthogonal(d, g)
    a = torch.rand(d, generator=g, dtype=torch.float64) * 3
    b = torch.rand(d, generator=g, dtype=torch.float64) * 3
    a[: d // 4] = 0.0  # a singular first covariance
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu1 = torch.randn(d, generator=g, dtype=torch.float64)
    mu2 = torch.randn(d, generator=g, dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + a.sum() + b.sum() - 2 * (a * b).sqrt().sum())
    # From covariances, a singular Sigma_1 costs the square root of rounding (~1e-8).
    assert float(frechet_distance(mu1, s1, mu2, s2)) == pytest.approx(expected, rel=1e-7)
    assert float(trace_sqrt_product(s1, s2)) == pytest.approx(
        float((a * b).sqrt().sum()), rel=1e-7)


def _exact_samples(n, v, s, mean, g):
    # Rows with sample mean `mean` and sample covariance V diag(s^2) V^T exactly (to
    # rounding): orthonormal columns orthogonal to the ones vector, scaled by sqrt(n - 1).
    q = torch.linalg.qr(torch.cat([torch.ones(n, 1, dtype=torch.float64),
                                   torch.randn(n, len(s), generator=g, dtype=torch.float64)],
                                  dim=1)).Q[:, 1:]
    return math.sqrt(n - 1) * (q * s) @ v.T + mean


def test_fid_from_samples_is_exact_for_rank_deficient_features():
    # Rank 20 in 100 dimensions: the covariance route takes square roots of rounded zero
    # eigenvalues; the square-root factors of RunningMoments do not.
    g = torch.Generator().manual_seed(5)
    d, r, n = 100, 20, 3000
    v = _random_orthogonal(d, g)[:, :r]
    s1 = torch.rand(r, generator=g, dtype=torch.float64) * 3 + 0.1
    s2 = torch.rand(r, generator=g, dtype=torch.float64) * 3 + 0.1
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    x = _exact_samples(n, v, s1, torch.zeros(d, dtype=torch.float64), g)
    y = _exact_samples(n, v, s2, shift, g)
    expected = float(shift @ shift + (s1 * s1).sum() + (s2 * s2).sum() - 2 * (s1 * s2).sum())
    assert fid(x, y, batch_size=700) == pytest.approx(expected, rel=1e-12)
    mx, cx = gaussian_moments(x)
    my, cy = gaussian_moments(y)
    assert float(frechet_distance(mx, cx, my, cy)) == pytest.approx(expected, rel=1e-6)


def test_two_by_two_non_commuting_closed_form():
    # For 2x2 PSD M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); here M = S1^(1/2) S2 S1^(1/2),
    # tr M = tr(S1 S2), det M = det S1 det S2.
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        a = torch.randn(2, 2, generator=g, dtype=torch.float64)
        b = torch.randn(2, 2, generator=g, dtype=torch.float64)
        s1, s2 = a @ a.T + 0.1 * torch.eye(2), b @ b.T
        tr = math.sqrt(float(torch.trace(s1 @ s2))
                       + 2 * math.sqrt(float(torch.det(s1) * torch.det(s2))))
        assert float(trace_sqrt_product(s1, s2)) == pytest.approx(tr, rel=1e-12)
        assert float(trace_sqrt_product(s2, s1)) == pytest.approx(tr, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 32, generator=g) @ torch.randn(32, 32, generator=g)
    y = torch.randn(3000, 32, generator=g) * 1.5 + 0.3
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9 * float(x.var(0).sum()))
    assert fid(x, y) == pytest.approx(fid(y, x), rel=1e-10)
    assert fid(x, y) > 1.0


def test_fid_of_samples_converges_to_the_population_value():
    g = torch.Generator().manual_seed(1)
    n, d = 200_000, 3
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + torch.eye(d), torch.diag(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    mu2 = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = torch.randn(n, d, generator=g, dtype=torch.float64) @ s2.sqrt().T + mu2
    exact = float(frechet_distance(torch.zeros(d), s1, mu2, s2))
    assert fid(x, y, batch_size=7000) == pytest.approx(exact, rel=0.02)


def test_fid_accepts_samplers_iterables_and_precomputed_statistics():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4000, 5, generator=g), torch.randn(4000, 5, generator=g) + 1
    full = fid(x, y)
    stats = RunningMoments().update(x)
    assert fid(stats, y) == pytest.approx(full, rel=1e-12)
    pair = (stats.mean, stats.covariance)
    assert fid(pair, list(y.split(700))) == pytest.approx(full, rel=1e-12)
    dist = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    assert fid(x, dist.sample, num_samples=4000) < 0.1  # a sampler: sample(shape)
    assert fid(x, dist, num_samples=4000) < 0.1  # an object with .sample
    mean, cov = gaussian_moments(x, lambda b: b[:, :2] * 2)  # an extractor
    assert mean.shape == (2,) and cov.shape == (2, 2)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"mean \(D,\) and a covariance \(D, D\)"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.tensor([0.0, math.nan]), torch.eye(2), torch.zeros(2),
                         torch.eye(2))
    with pytest.raises(TypeError, match="floating-point"):
        frechet_distance(torch.zeros(2, dtype=torch.long), torch.eye(2), torch.zeros(2),
                         torch.eye(2))
    with pytest.raises(ValueError, match="num_samples: required"):
        fid(torch.randn(10, 2), lambda shape: torch.randn(*shape, 2))


@pytest.mark.parametrize("log_condition", [0, 2, 4, 6, 9])
def test_fid_is_exact_across_conditioning_and_column_scales(log_condition):
    # Full-rank features whose covariance spans 10^-2k..1 (k = log_condition), then columns
    # scaled by 1..1000 and one dead unit: the factor comes from the Gram's Cholesky when
    # its scaled condition number passes the check (small k) and from Householder QR when
    # it does not (large k); the FID must equal the closed form either way.
    from probgen.metrics._factor import gram_factor

    g = torch.Generator().manual_seed(10 + log_condition)
    d, n = 48, 2000
    v = _random_orthogonal(d, g)
    s1 = torch.logspace(0, -log_condition, d, dtype=torch.float64)
    s2 = s1 * (1 + 0.5 * torch.rand(d, generator=g, dtype=torch.float64))
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    x = _exact_samples(n, v, s1, torch.zeros(d, dtype=torch.float64), g)
    y = _exact_samples(n, v, s2, shift, g)
    scale = torch.logspace(0, 3, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    dead = torch.zeros(n, 1, dtype=torch.float64)
    x, y = torch.cat([x * scale, dead], 1), torch.cat([y * scale, dead + 2.0], 1)
    # Closed form in the original coordinates: the scaling is D V diag(s^2) V^T D, which
    # no longer shares eigenvectors between the sets; use the square-root identity instead:
    # tr sqrt(S1^(1/2) S2 S1^(1/2)) = || (D V diag(s1))^T (D V diag(s2)) ||_* (exact data).
    a, b = scale[:, None] * v * s1, scale[:, None] * v * s2
    trace = float(torch.linalg.svdvals(a.T @ b).sum())
    expected = float(shift @ (scale**2 * shift) + 4.0 + (a * a).sum() + (b * b).sum()
                     - 2 * trace)
    centred = x - x.mean(0)
    accepted = gram_factor(centred) is not None
    assert accepted == (log_condition <= 4)  # scaled condition ~10^k vs the 1e6 bound
    assert fid(x, y, batch_size=700) == pytest.approx(expected, rel=1e-12)
    assert fid(x, y) == pytest.approx(fid(y, x), rel=1e-12)


def test_gram_factor_is_a_triangular_square_root_with_zero_columns():
    from probgen.metrics._factor import gram_factor, gram_matrix

    g = torch.Generator().manual_seed(7)
    # Integers: every product and sum is exact in float64, so the panelled Gram must equal
    # the plain product exactly, for panel sizes that do and do not divide D.
    ints = torch.randint(-50, 50, (300, 70), generator=g).double()
    for panel in (7, 64, 70, 100):
        assert torch.equal(gram_matrix(ints, panel), ints.T @ ints)
    rows = torch.randn(500, 30, generator=g, dtype=torch.float64)
    rows[:, [3, 17]] = 0.0
    r = gram_factor(rows)
    assert r is not None and r.shape == (30, 30)
    assert torch.equal(r, r.triu())
    assert (r[:, [3, 17]] == 0).all() and (r[[3, 17]] == 0).all()
    torch.testing.assert_close(r.T @ r, rows.T @ rows, rtol=1e-12, atol=1e-10)
    tiny = rows.clone()
    tiny[0, 3] = 1e-170  # its square underflows to 0: not a zero column, so no Gram route
    assert gram_factor(tiny) is None
    collinear = torch.cat([rows, rows[:, :1] * 2.0], 1)
    assert gram_factor(collinear) is None
