r"""Frechet distance between Gaussians, and FID from any feature extractor.

The Frechet (Wasserstein-2) distance between :math:`\mathcal N(\mu_1, \Sigma_1)` and
:math:`\mathcal N(\mu_2, \Sigma_2)` is (Dowson & Landau 1982)

.. math::
    d^2 = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
          - 2 \operatorname{tr}\big(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)^{1/2}.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) is this distance between the
Gaussians fitted to features of real and generated samples.

The trace term is computed exactly, in float64, from two symmetric eigendecompositions and
never goes complex: with :math:`\Sigma_1 = V \Lambda V^\top` and
:math:`A = V\Lambda^{1/2}` (so :math:`\Sigma_1 = AA^\top`), the matrices
:math:`\Sigma_1\Sigma_2`, :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` and the symmetric
positive semi-definite :math:`A^\top \Sigma_2 A` have the same eigenvalues
:math:`\lambda_i \ge 0`, and the trace term is :math:`\sum_i \sqrt{\lambda_i}`.
Rounding can leave eigenvalues of a singular product slightly negative; they are taken
as zero. This replaces the usual ``scipy.linalg.sqrtm(S1 @ S2)`` (an iterative Schur
method on a non-symmetric matrix, which can return complex values and large errors for
singular covariances) and costs a fraction of it.

From samples, :func:`fid` does better still: the covariances are never formed. With the
square-root factors :math:`R_i` of the scatter matrices that
:class:`~probgen.metrics.RunningMoments` keeps (:math:`\Sigma_i = R_i^\top R_i/(n_i-1)`),

.. math::
    \operatorname{tr}\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)^{1/2}
    = \frac{\lVert R_1 R_2^\top \rVert_*}{\sqrt{(n_1-1)(n_2-1)}},

the nuclear norm (sum of singular values) of a product of factors: no square root of a
rounded eigenvalue is taken, where a route through the covariance and the eigenvalues of
:math:`\Sigma_1\Sigma_2` loses up to half the digits of the small ones. The factors come
from a Cholesky factorization of the float64 Gram matrix when its column-scaled
condition number passes a check, and from Householder QR of the centred data otherwise
(see :class:`~probgen.metrics.RunningMoments`); both agree with a QR-only float64
reference to about 1e-13 relative in the tests and the metrics benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from probgen.metrics.streaming import RunningMoments, Source, feature_moments

__all__ = ["frechet_distance", "frechet_distance_from_moments", "trace_sqrt_product", "fid",
           "gaussian_moments"]

def _check_gaussian(mean: Tensor, cov: Tensor, name: str) -> tuple[Tensor, Tensor]:
    for value, what in ((mean, "mean"), (cov, "covariance")):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name} {what}: expected a floating-point tensor, got {kind}.")
    if mean.dim() != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise ValueError(
            f"{name}: expected a mean (D,) and a covariance (D, D), got {tuple(mean.shape)} "
            f"and {tuple(cov.shape)}."
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError(f"{name}: the mean or covariance contains NaN or Inf values.")
    cov = cov.to(torch.float64)
    return mean.to(torch.float64), 0.5 * (cov + cov.T)


def trace_sqrt_product(cov1: Tensor, cov2: Tensor) -> Tensor:
    r""":math:`\operatorname{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}`, exactly, in float64.

    Args:
        cov1: a symmetric positive semi-definite matrix ``(D, D)``.
        cov2: a symmetric positive semi-definite matrix ``(D, D)`` (same device).

    Returns:
        Tensor: a float64 scalar; equals :math:`\sum_i \sqrt{\lambda_i(\Sigma_1\Sigma_2)}`.

    Example:
        >>> # tr sqrt(4 I) = 3 * 2, up to the eigensolver's rounding
        >>> trace_sqrt_product(torch.eye(3) * 4, torch.eye(3)).round(decimals=6)
        tensor(6., dtype=torch.float64)
    """
    cov1 = 0.5 * (cov1 + cov1.T).to(torch.float64)
    cov2 = 0.5 * (cov2 + cov2.T).to(torch.float64)
    w, v = torch.linalg.eigh(cov1)
    keep = w > 0
    if not keep.any():
        return cov1.new_zeros(())
    a = v[:, keep] * w[keep].sqrt()  # Sigma_1 = A A^T (directions with w <= 0 add nothing)
    inner = a.T @ cov2 @ a
    lam = torch.linalg.eigvalsh(0.5 * (inner + inner.T))
    return lam.clamp_min(0.0).sqrt().sum()


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    r"""Squared Frechet (W2) distance between two Gaussians, in float64.

    Args:
        mean1: mean of the first Gaussian, ``(D,)``.
        cov1: its covariance, ``(D, D)``, symmetric positive semi-definite.
        mean2: mean of the second Gaussian, ``(D,)``.
        cov2: its covariance, ``(D, D)``.

    Returns:
        Tensor: a float64 scalar
        :math:`\lVert\mu_1-\mu_2\rVert^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
        - 2\operatorname{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}`, clipped at 0
        (the true value is never negative; rounding could make it so).

    Raises:
        TypeError: non-floating inputs.
        ValueError: mismatched shapes or NaN/Inf entries.

    Example:
        >>> # isotropic: ||mu1 - mu2||^2 + D (s1 - s2)^2 = 4 + 2 * (2 - 1)^2
        >>> d = frechet_distance(torch.zeros(2), 4 * torch.eye(2), torch.tensor([2.0, 0]),
        ...                      torch.eye(2))
        >>> d.round(decimals=6)  # exact up to the eigensolver's rounding
        tensor(6., dtype=torch.float64)
    """
    mean1, cov1 = _check_gaussian(mean1, cov1, "first Gaussian")
    mean2, cov2 = _check_gaussian(mean2, cov2, "second Gaussian")
    if mean1.shape != mean2.shape:
        raise ValueError(
            f"the Gaussians have different dimensions: {mean1.shape[0]} and {mean2.shape[0]}."
        )
    cov2 = cov2.to(cov1.device)
    diff = mean1 - mean2.to(mean1.device)
    value = (diff @ diff + torch.trace(cov1) + torch.trace(cov2)
             - 2.0 * trace_sqrt_product(cov1, cov2))
    return value.clamp_min(0.0)


def frechet_distance_from_moments(first: RunningMoments, second: RunningMoments) -> Tensor:
    r"""Squared Frechet distance of two sets' Gaussians from their square-root factors.

    Uses :math:`\lVert R_1R_2^\top\rVert_* / \sqrt{(n_1-1)(n_2-1)}` for the trace term
    (see the module docstring): no square root of a rounded eigenvalue is taken, so the
    small singular values keep their digits.

    Args:
        first: accumulated features of the first set (at least 2 vectors).
        second: accumulated features of the second set, same dimension.

    Returns:
        Tensor: a float64 scalar, clipped at 0.

    Example:
        >>> x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
        >>> a, b = RunningMoments().update(x), RunningMoments().update(2 * x)
        >>> d = frechet_distance_from_moments(a, b)
        >>> bool(torch.isclose(d, frechet_distance(a.mean, a.covariance, b.mean, b.covariance)))
        True
    """
    for m, name in ((first, "first"), (second, "second")):
        if not isinstance(m, RunningMoments):
            raise TypeError(f"{name}: expected a RunningMoments, got {type(m).__name__}.")
    mean1, mean2, r1, r2 = first.mean, second.mean, first.factor, second.factor
    if first.count < 2 or second.count < 2:
        raise ValueError(f"the Frechet distance needs >= 2 vectors per set, got "
                         f"{first.count} and {second.count}.")
    if mean1.shape != mean2.shape:
        raise ValueError(
            f"the sets have different dimensions: {mean1.shape[0]} and {mean2.shape[0]}."
        )
    r2 = r2.to(r1.device)
    n1, n2 = first.count - 1, second.count - 1
    diff = mean1 - mean2.to(mean1.device)
    trace_sqrt = torch.linalg.svdvals(r1 @ r2.T).sum() / math.sqrt(n1 * n2)
    value = (diff @ diff + (r1 * r1).sum() / n1 + (r2 * r2).sum() / n2 - 2.0 * trace_sqrt)
    return value.clamp_min(0.0)


Statistics = RunningMoments | tuple[Tensor, Tensor]


def _statistics(
    source: Source | Statistics,
    extractor: Callable[[Tensor], Tensor] | None,
    num_samples: int | None,
    batch_size: int,
    device: torch.device | str | None,
) -> Statistics:
    if isinstance(source, RunningMoments):
        return source
    if isinstance(source, tuple) and len(source) == 2 and all(
        isinstance(s, Tensor) for s in source
    ) and source[0].dim() == 1 and source[1].dim() == 2:
        return source
    return feature_moments(source, extractor, num_samples=num_samples, batch_size=batch_size,
                           device=device)


def gaussian_moments(
    source: Source | Statistics,
    extractor: Callable[[Tensor], Tensor] | None = None,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The float64 ``(mean, covariance)`` of features of ``source``, streamed in batches.

    ``source`` may also be precomputed statistics: a :class:`RunningMoments` or a
    ``(mean, covariance)`` pair, returned as they are (so reference statistics of real
    data are computed once). Other arguments as in
    :func:`probgen.metrics.feature_moments`.
    """
    stats = _statistics(source, extractor, num_samples, batch_size, device)
    if isinstance(stats, RunningMoments):
        return stats.mean, stats.covariance
    return stats


def fid(
    real: Source | Statistics,
    fake: Source | Statistics,
    extractor: Callable[[Tensor], Tensor] | None = None,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> float:
    """Frechet distance between the Gaussians fitted to features of two sets of samples.

    With ``extractor=probgen.metrics.mnist_classifier().features`` this is the FID of the
    bundled MNIST classifier (call it that: it is not the Inception FID); with
    :func:`probgen.metrics.inception_extractor` it is the FID of Heusel et al.; with no
    extractor the samples' own coordinates are used (fine for 2-D data).

    Args:
        real: reference samples (a tensor, an iterable of batches, a sampler; see
            :func:`probgen.metrics.iter_batches`), or their precomputed statistics.
        fake: samples to evaluate, the same kinds (e.g. ``model.sample``).
        extractor: features of a batch ``(b, *event) -> (b, D)``; ``None``: flattened
            samples.
        num_samples: samples drawn from each source (required for samplers).
        batch_size: samples per batch (memory holds one batch of samples at a time).
        device: where the extractor runs.

    Returns:
        float: the squared Frechet distance (FID is conventionally this squared value),
        from square-root factors when both sides are samples or :class:`RunningMoments`
        (:func:`frechet_distance_from_moments`), else from covariances.

    Example:
        >>> x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
        >>> round(fid(x, x), 6)  # identical samples: 0 up to rounding (~1e-15)
        0.0
    """
    a = _statistics(real, extractor, num_samples, batch_size, device)
    b = _statistics(fake, extractor, num_samples, batch_size, device)
    if isinstance(a, RunningMoments) and isinstance(b, RunningMoments):
        return float(frechet_distance_from_moments(a, b))
    m1, c1 = (a.mean, a.covariance) if isinstance(a, RunningMoments) else a
    m2, c2 = (b.mean, b.covariance) if isinstance(b, RunningMoments) else b
    return float(frechet_distance(m1, c1, m2, c2))
