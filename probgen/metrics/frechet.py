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
Eigenvalues below the rounding level of float64 (``D * eps * max eigenvalue``) are taken
as zero; directions where :math:`\Sigma_1` vanishes are dropped before the second
decomposition. This replaces the usual ``scipy.linalg.sqrtm(S1 @ S2)`` (an iterative Schur
method on a non-symmetric matrix, which can return complex values and large errors for
singular covariances) and costs a fraction of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from probgen.metrics.streaming import RunningMoments, Source, feature_moments

__all__ = ["frechet_distance", "trace_sqrt_product", "fid", "gaussian_moments"]

_EPS = torch.finfo(torch.float64).eps


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
        >>> trace_sqrt_product(torch.eye(3) * 4, torch.eye(3))  # tr sqrt(4 I) = 3 * 2
        tensor(6., dtype=torch.float64)
    """
    cov1 = 0.5 * (cov1 + cov1.T).to(torch.float64)
    cov2 = 0.5 * (cov2 + cov2.T).to(torch.float64)
    d = cov1.shape[0]
    w, v = torch.linalg.eigh(cov1)
    keep = w > d * _EPS * w.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    if not keep.any():
        return cov1.new_zeros(())
    a = v[:, keep] * w[keep].sqrt()  # Sigma_1 = A A^T on its numerical range
    inner = a.T @ cov2 @ a
    lam = torch.linalg.eigvalsh(0.5 * (inner + inner.T))
    floor = d * _EPS * lam.abs().max()
    return torch.where(lam > floor, lam, 0.0).sqrt().sum()


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
        >>> frechet_distance(torch.zeros(2), 4 * torch.eye(2), torch.tensor([2.0, 0]),
        ...                  torch.eye(2))
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


Statistics = RunningMoments | tuple[Tensor, Tensor]


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
    if isinstance(source, RunningMoments):
        return source.mean, source.covariance
    if isinstance(source, tuple) and len(source) == 2 and all(
        isinstance(s, Tensor) for s in source
    ) and source[0].dim() == 1 and source[1].dim() == 2:
        return source[0], source[1]
    moments = feature_moments(source, extractor, num_samples=num_samples,
                              batch_size=batch_size, device=device)
    return moments.mean, moments.covariance


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
        float: the squared Frechet distance (FID is conventionally this squared value).

    Example:
        >>> x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
        >>> fid(x, x)
        0.0
    """
    m1, c1 = gaussian_moments(real, extractor, num_samples=num_samples,
                              batch_size=batch_size, device=device)
    m2, c2 = gaussian_moments(fake, extractor, num_samples=num_samples,
                              batch_size=batch_size, device=device)
    return float(frechet_distance(m1, c1, m2, c2))
