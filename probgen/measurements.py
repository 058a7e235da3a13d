r"""Linear-Gaussian measurements :math:`y = A x + \sigma n`, :math:`n \sim N(0, I)`: denoising,
inpainting, super-resolution by average pooling and any matrix, as Pyro likelihoods and as
the operators posterior samplers need.

A :class:`LinearMeasurement` maps a batch ``x`` ``(*batch, *event_shape)`` to :math:`A x`
``(*batch, *observation_shape)`` (:meth:`~LinearMeasurement.forward`) and back by the adjoint
:math:`A^\top` (:meth:`~LinearMeasurement.adjoint`), solves :math:`(r^2 A A^\top +
\sigma^2 I)^{-1} v` (:meth:`~LinearMeasurement.solve`, what pseudo-inverse guidance needs;
closed form where :math:`A A^\top` is a multiple of the identity: a mask, average pooling,
the identity), and is a Pyro likelihood:

.. code-block:: python

    pyro.sample("y", measurement.likelihood(x), obs=y)

is ``pyro.sample("y", dist.Normal(A x, sigma).to_event(len(observation_shape)), obs=y)``.
:meth:`~LinearMeasurement.gaussian_posterior` gives the closed-form posterior of a Gaussian
prior (the ground truth of the posterior samplers' tests).

References:
    Pseudoinverse-Guided Diffusion Models for Inverse Problems (Song, Vahdat, Mardani &
    Kautz, 2023), https://openreview.net/forum?id=9_gsMA8MRKQ
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probgen.utils import check_int

__all__ = ["LinearMeasurement", "Denoising", "Inpainting", "SuperResolution",
           "MatrixMeasurement"]


class LinearMeasurement(nn.Module, ABC):
    r"""Abstract class of a linear-Gaussian measurement :math:`y = A x + \sigma n`.

    Subclasses give :meth:`forward` (:math:`A x`), :meth:`adjoint` (:math:`A^\top y`) and,
    where :math:`A A^\top = c I`, the constant :attr:`gram_scale` :math:`c`; everything else
    (the Pyro likelihood, the solves, the dense matrix, the Gaussian posterior) is here.
    Tensors of the operator are buffers (they move with ``.to(device)``).

    Args:
        event_shape: the shape of one signal ``x``.
        observation_shape: the shape of one measurement ``y``.
        noise_std: :math:`\sigma > 0`.
    """

    #: :math:`c` with :math:`A A^\top = c I`, or ``None`` (a general :math:`A`).
    gram_scale: float | None = None

    def __init__(self, event_shape: Sequence[int], observation_shape: Sequence[int],
                 noise_std: float) -> None:
        super().__init__()
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) \
                or not math.isfinite(noise_std) or noise_std <= 0:
            raise ValueError(f"noise_std: expected a positive finite float, got {noise_std!r}.")
        self.event_shape = tuple(int(e) for e in event_shape)
        self.observation_shape = tuple(int(e) for e in observation_shape)
        self.noise_std = float(noise_std)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        r""":math:`A x`: ``(*batch, *event_shape)`` to ``(*batch, *observation_shape)``."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        r""":math:`A^\top y`: ``(*batch, *observation_shape)`` to ``(*batch, *event_shape)``."""

    # ------------------------------------------------------------------ shapes
    def _batch(self, x: Tensor, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
        """The batch shape of ``x`` whose trailing dims must be ``shape``."""
        if not isinstance(x, Tensor) or x.dim() < len(shape) or (
                len(shape) and tuple(x.shape[x.dim() - len(shape):]) != shape):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected shape (*batch, {', '.join(map(str, shape))}), "
                             f"got {got}.")
        return tuple(x.shape[: x.dim() - len(shape)])

    @property
    def event_size(self) -> int:
        """:math:`D`, the number of entries of one signal."""
        return math.prod(self.event_shape)

    @property
    def observation_size(self) -> int:
        """:math:`M`, the number of entries of one measurement."""
        return math.prod(self.observation_shape)

    # ------------------------------------------------------------------ Pyro likelihood
    def likelihood(self, x: Tensor) -> dist.Independent:
        r"""The Pyro distribution of :math:`y` given ``x`` ``(*batch, *event_shape)``:
        ``Normal(A x, sigma).to_event(len(observation_shape))``, batch shape ``batch``."""
        mean = self(x)
        return dist.Normal(mean, torch.full_like(mean, self.noise_std)).to_event(
            len(self.observation_shape))

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log N(y; A x, \sigma^2 I)`, shape ``batch`` (``y`` broadcast to it)."""
        return self.likelihood(x).log_prob(y)

    def simulate(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""A measurement :math:`A x + \sigma n` of ``x`` ``(*batch, *event_shape)``."""
        mean = self(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device="cpu" if generator is None or generator.device.type == "cpu"
                            else mean.device)
        return mean + self.noise_std * noise.to(mean.device)

    # ------------------------------------------------------------------ linear algebra
    def matrix(self, dtype: torch.dtype | None = None) -> Tensor:
        r"""The dense :math:`A`, ``(M, D)`` (from :meth:`forward` on the identity basis)."""
        ref = next(iter(self.buffers()), None)
        eye = torch.eye(self.event_size, dtype=dtype or torch.get_default_dtype(),
                        device=None if ref is None else ref.device)
        return self(eye.reshape(self.event_size, *self.event_shape)).reshape(
            self.event_size, self.observation_size).T

    def solve(self, v: Tensor, r2: Tensor | float) -> Tensor:
        r""":math:`(r^2 A A^\top + \sigma^2 I)^{-1} v`.

        Args:
            v: ``(batch, *observation_shape)``.
            r2: :math:`r^2 \ge 0`: a float or one per example ``(batch,)``.

        Returns:
            ``(batch, *observation_shape)``.
        """
        batch = self._batch(v, self.observation_shape, "v")
        r2 = torch.as_tensor(r2, dtype=v.dtype, device=v.device)
        if r2.dim() == 1:
            r2 = r2.reshape(r2.shape + (1,) * (v.dim() - 1))
        if self.gram_scale is not None:
            return v / (r2 * self.gram_scale + self.noise_std**2)
        a = self.matrix(v.dtype)
        gram = a @ a.T
        eye = torch.eye(gram.shape[0], dtype=v.dtype, device=v.device)
        flat = v.reshape(*batch, self.observation_size)
        lhs = r2.reshape(*r2.shape[: len(batch)], 1, 1) * gram + self.noise_std**2 * eye
        return torch.linalg.solve(lhs, flat.unsqueeze(-1)).squeeze(-1).reshape(v.shape)

    def covariance_solve(self, v: Tensor, cov: Tensor) -> Tensor:
        r""":math:`(A \Sigma A^\top + \sigma^2 I)^{-1} v` for covariances :math:`\Sigma`
        ``(D, D)`` or one per example ``(batch, D, D)`` (dense: small signals only).

        Args:
            v: ``(batch, *observation_shape)``.
            cov: :math:`\Sigma`, ``(D, D)`` or ``(batch, D, D)``.

        Returns:
            ``(batch, *observation_shape)``.
        """
        batch = self._batch(v, self.observation_shape, "v")
        d = self.event_size
        if not isinstance(cov, Tensor) or cov.shape[-2:] != (d, d):
            got = tuple(cov.shape) if isinstance(cov, Tensor) else type(cov).__name__
            raise ValueError(f"cov: expected shape ({d}, {d}) or (batch, {d}, {d}), got {got}.")
        a = self.matrix(v.dtype)
        eye = torch.eye(a.shape[0], dtype=v.dtype, device=v.device)
        lhs = a @ cov.to(v) @ a.T + self.noise_std**2 * eye
        flat = v.reshape(*batch, self.observation_size).unsqueeze(-1)
        return torch.linalg.solve(lhs, flat).squeeze(-1).reshape(v.shape)

    def gaussian_posterior(self, mean: Tensor, cov: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""The posterior of a Gaussian prior :math:`x \sim N(\mu, C)` given ``y``:
        :math:`N(\mu + K(y - A\mu),\ C - K A C)`, :math:`K = C A^\top (A C A^\top +
        \sigma^2 I)^{-1}` (on the flattened signal).

        Args:
            mean: :math:`\mu`, ``(D,)``; cov: :math:`C`, ``(D, D)``.
            y: one measurement, ``observation_shape``.

        Returns:
            The posterior mean ``(D,)`` and covariance ``(D, D)``.

        Example:
            >>> m = Denoising((2,), noise_std=1.0)
            >>> mu, cov = m.gaussian_posterior(torch.zeros(2), torch.eye(2), torch.ones(2))
            >>> [round(v, 4) for v in [*mu.tolist(), *torch.diagonal(cov).tolist()]]
            [0.5, 0.5, 0.5, 0.5]
        """
        self._batch(y, self.observation_shape, "y")
        d = self.event_size
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ValueError(f"mean, cov: expected shapes ({d},) and ({d}, {d}), got "
                             f"{tuple(mean.shape)} and {tuple(cov.shape)}.")
        a = self.matrix(mean.dtype).to(mean.device)
        s = a @ cov @ a.T + self.noise_std**2 * torch.eye(a.shape[0], dtype=mean.dtype,
                                                          device=mean.device)
        gain = torch.linalg.solve(s, a @ cov).T  # C A^T S^{-1} (S and C symmetric)
        post_mean = mean + gain @ (y.reshape(-1).to(mean) - a @ mean)
        post_cov = cov - gain @ a @ cov
        return post_mean, 0.5 * (post_cov + post_cov.T)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"event_shape={self.event_shape}, observation_shape={self.observation_shape}, "
                f"noise_std={self.noise_std:g}")


class Denoising(LinearMeasurement):
    r"""Creates the denoising measurement :math:`y = x + \sigma n` (:math:`A = I`).

    Args:
        event_shape: the shape of one signal.
        noise_std: :math:`\sigma`.

    Example:
        >>> m = Denoising((1, 4, 4), noise_std=0.1)
        >>> m.simulate(torch.zeros(3, 1, 4, 4)).shape
        torch.Size([3, 1, 4, 4])
    """

    gram_scale = 1.0

    def __init__(self, event_shape: Sequence[int], noise_std: float) -> None:
        super().__init__(event_shape, event_shape, noise_std)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        self._batch(x, self.event_shape, "x")
        return x

    def adjoint(self, y: Tensor) -> Tensor:  # noqa: D102
        self._batch(y, self.observation_shape, "y")
        return y


class Inpainting(LinearMeasurement):
    r"""Creates the inpainting measurement: the entries where ``mask`` is true, with noise
    (:math:`A` selects rows of the identity, so :math:`A A^\top = I`).

    Args:
        mask: a boolean tensor of the signal's shape (true: observed).
        noise_std: :math:`\sigma`.

    Example:
        >>> mask = torch.tensor([[True, False], [False, True]])
        >>> m = Inpainting(mask, noise_std=0.01)
        >>> m(torch.arange(4.0).reshape(1, 2, 2)).int().tolist()  # y: the observed entries
        [[0, 3]]
        >>> m.adjoint(torch.tensor([[1.0, 2.0]])).int().tolist()  # zeros where unobserved
        [[[1, 0], [0, 2]]]
    """

    gram_scale = 1.0

    def __init__(self, mask: Tensor, noise_std: float) -> None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() == 0:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a boolean tensor of the signal's shape, got {got}.")
        if not bool(mask.any()):
            raise ValueError("mask: expected at least one observed (true) entry.")
        super().__init__(mask.shape, (int(mask.sum()),), noise_std)
        self.register_buffer("mask", mask.clone())
        self.register_buffer("index", mask.flatten().nonzero().squeeze(-1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        batch = self._batch(x, self.event_shape, "x")
        return x.reshape(*batch, self.event_size).index_select(-1, self.index)

    def adjoint(self, y: Tensor) -> Tensor:  # noqa: D102
        batch = self._batch(y, self.observation_shape, "y")
        out = y.new_zeros(*batch, self.event_size)
        out[..., self.index] = y
        return out.reshape(*batch, *self.event_shape)


class SuperResolution(LinearMeasurement):
    r"""Creates the super-resolution measurement: average pooling of ``(C, H, W)`` images by
    ``factor`` (:math:`A A^\top = I/k^2`, ``k = factor``), with noise.

    Args:
        event_shape: ``(C, H, W)``, ``H`` and ``W`` multiples of ``factor``.
        factor: the pooling size :math:`k`.
        noise_std: :math:`\sigma`.

    Example:
        >>> m = SuperResolution((1, 4, 4), 2, noise_std=0.1)
        >>> m(torch.ones(2, 1, 4, 4)).shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, event_shape: Sequence[int], factor: int, noise_std: float) -> None:
        shape = tuple(int(e) for e in event_shape)
        check_int("factor", factor)
        if len(shape) != 3 or shape[1] % factor or shape[2] % factor:
            raise ValueError(f"event_shape: expected (C, H, W) with H and W multiples of "
                             f"factor {factor}, got {shape}.")
        c, h, w = shape
        super().__init__(shape, (c, h // factor, w // factor), noise_std)
        self.factor = factor
        self.gram_scale = 1.0 / factor**2

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        batch = self._batch(x, self.event_shape, "x")
        out = F.avg_pool2d(x.reshape(-1, *self.event_shape), self.factor)
        return out.reshape(*batch, *self.observation_shape)

    def adjoint(self, y: Tensor) -> Tensor:  # noqa: D102
        batch = self._batch(y, self.observation_shape, "y")
        k = self.factor
        up = y.reshape(-1, *self.observation_shape).repeat_interleave(k, -2).repeat_interleave(
            k, -1) / k**2
        return up.reshape(*batch, *self.event_shape)


class MatrixMeasurement(LinearMeasurement):
    r"""Creates the measurement :math:`y = A x + \sigma n` of vectors by a matrix ``A``.

    Args:
        matrix: :math:`A`, ``(M, D)``.
        noise_std: :math:`\sigma`.

    Example:
        >>> m = MatrixMeasurement(torch.tensor([[1.0, 1.0]]), noise_std=0.5)
        >>> m(torch.tensor([[1.0, 2.0]])).int().tolist(), m.event_shape, m.observation_shape
        ([[3]], (2,), (1,))
    """

    def __init__(self, matrix: Tensor, noise_std: float) -> None:
        if not isinstance(matrix, Tensor) or matrix.dim() != 2 \
                or not matrix.is_floating_point():
            got = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
            raise ValueError(f"matrix: expected a floating-point (M, D) tensor, got {got}.")
        super().__init__((matrix.shape[1],), (matrix.shape[0],), noise_std)
        self.register_buffer("weight", matrix.clone())

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        self._batch(x, self.event_shape, "x")
        return x @ self.weight.to(x.dtype).T

    def adjoint(self, y: Tensor) -> Tensor:  # noqa: D102
        self._batch(y, self.observation_shape, "y")
        return y @ self.weight.to(y.dtype)

    def matrix(self, dtype: torch.dtype | None = None) -> Tensor:  # noqa: D102
        return self.weight.to(dtype or self.weight.dtype)
