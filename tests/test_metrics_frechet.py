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
