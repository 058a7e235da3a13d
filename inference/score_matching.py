r"""Score matching: implicit, sliced, denoising, and NCSN's noise-conditional multi-scale loss.

Each objective trains a score network :math:`s_\theta` without a normalizing constant. The
network is called ``score(x)`` when no noise level is involved, else
``score(x, sigma)`` with ``sigma`` of shape ``(batch,)`` (DESIGN.md's network of x and a
time-like input; an unconditional network may ignore it). All losses are means over the
batch of per-example sums over the event dimensions; for data from :math:`p` each is
minimized by the true score (of :math:`p`, or of :math:`p` convolved with
:math:`N(0, \sigma^2 I)` for the denoising ones).

Divergences go through :mod:`probgen.divergence` (the one exact/Hutchinson implementation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probgen.divergence import (
    NOISES,
    exact_divergence,
    hutchinson_divergence,
    hutchinson_noise,
)
from probgen.inference.denoising import DiscreteTimes, NoiseLevelPath, denoise, split_batch
from probgen.inference.registry import register_objective
from probgen.score import geometric_sigmas
from probgen.utils import check_choice, check_int

__all__ = [
    "DIVERGENCES",
    "ImplicitScoreMatching",
    "SlicedScoreMatching",
    "DenoisingScoreMatching",
    "NoiseConditionalScoreMatching",
]

#: How :class:`ImplicitScoreMatching` takes the Jacobian trace.
DIVERGENCES: tuple[str, ...] = ("auto", "exact", "hutchinson")
_LEVELS = NoiseLevelPath()


def _call(score: Callable[..., Tensor], x: Tensor, sigma: Tensor | None) -> Tensor:
    s = score(x) if sigma is None else score(x, sigma)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"score: expected an output of the shape of x {tuple(x.shape)}, got "
                         f"{got}.")
    return s


def _level(x: Tensor, sigma: float | None) -> Tensor | None:
    if sigma is None:
        return None
    return torch.full(x.shape[:1], float(sigma), dtype=x.dtype, device=x.device)


def _sq(x: Tensor) -> Tensor:
    return x.pow(2).flatten(1).sum(-1)


def _check_sigma(sigma: object, name: str, optional: bool = False) -> float | None:
    if sigma is None and optional:
        return None
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"{name}: expected a positive float, got {sigma!r}.")
    return float(sigma)


class ImplicitScoreMatching(nn.Module):
    r"""Creates Hyvarinen's implicit score-matching loss
    :math:`E_p[\operatorname{tr}\nabla_x s(x) + \tfrac12\|s(x)\|^2]`.

    It equals :math:`\tfrac12 E_p\|s - \nabla\log p\|^2 - \tfrac12 E_p\|\nabla\log p\|^2`
    (integration by parts), so it is minimized by the true score with value
    :math:`-\tfrac12 E_p\|\nabla \log p\|^2`. The trace is exact (one batched backward pass
    per dimension, :func:`probgen.divergence.exact_divergence`) or Hutchinson's estimate
    (:func:`probgen.divergence.hutchinson_divergence`, one pass): ``"auto"`` is exact up
    to ``max_exact_dims`` dimensions.

    Outputs: ``loss`` and ``ism`` (the same value).

    Args:
        score: the network, ``score(x)`` (or ``score(x, sigma)`` when ``sigma`` is set).
        divergence: ``"auto"``, ``"exact"`` or ``"hutchinson"``.
        noise: Hutchinson's probe, ``"rademacher"`` or ``"gaussian"``.
        sigma: evaluate a noise-conditional network at this level.
        max_exact_dims: the ``"auto"`` threshold.
        preprocess: maps each batch to model space (an image pipeline), or ``None``.

    References:
        Estimation of Non-Normalized Statistical Models by Score Matching (Hyvarinen, 2005),
        https://jmlr.org/papers/v6/hyvarinen05a.html

    Example:
        >>> ism = ImplicitScoreMatching(lambda x: -x)  # N(0, I)'s score, loss -D/2
        >>> round(ism(torch.randn(100000, 2))["loss"].item(), 1)
        -1.0
    """

    def __init__(
        self,
        score: Callable[..., Tensor],
        *,
        divergence: str = "auto",
        noise: str = "rademacher",
        sigma: float | None = None,
        max_exact_dims: int = 16,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("divergence", divergence, DIVERGENCES)
        self.score, self.divergence = score, divergence
        check_choice("noise", noise, NOISES)
        self.noise = noise
        self.sigma = _check_sigma(sigma, "sigma", optional=True)
        self.max_exact_dims, self.preprocess = int(max_exact_dims), preprocess

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch`` (``x`` of shape ``(batch, *event)``, or ``(x, labels)``)."""
        x = split_batch(batch, self.preprocess)[0]
        level = _level(x, self.sigma)

        def field(y: Tensor) -> Tensor:
            return _call(self.score, y, level)

        exact = self.divergence == "exact" or (
            self.divergence == "auto" and x[0].numel() <= self.max_exact_dims)
        if exact:
            res = exact_divergence(field, x)
        else:
            res = hutchinson_divergence(field, x, hutchinson_noise(x, self.noise))
        loss = (res.divergence + 0.5 * _sq(res.value)).mean()
        return {"loss": loss, "ism": loss}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return f"divergence={self.divergence!r}, noise={self.noise!r}, sigma={self.sigma}"


class SlicedScoreMatching(nn.Module):
    r"""Creates the sliced score-matching loss
    :math:`E_{p, v}[v^\top \nabla_x s(x)\, v + \tfrac12 (v^\top s(x))^2]`.

    Random projections :math:`v` (:math:`E[vv^\top] = I`) replace the trace by one
    vector-Jacobian product (through :func:`probgen.divergence.hutchinson_divergence`).
    With ``variance_reduction`` the second term is its expectation
    :math:`\tfrac12\|s(x)\|^2` (SSM-VR); either way the expected loss is that of
    :class:`ImplicitScoreMatching`, so both are minimized by the true score.

    Outputs: ``loss`` and ``ssm``.

    Args:
        score: the network, ``score(x)`` (or ``score(x, sigma)`` when ``sigma`` is set).
        num_projections: projections per example.
        noise: ``"gaussian"`` or ``"rademacher"`` projections.
        variance_reduction: use :math:`\tfrac12\|s\|^2` for the second term.
        sigma: evaluate a noise-conditional network at this level.
        preprocess: maps each batch to model space, or ``None``.

    References:
        Sliced Score Matching: A Scalable Approach to Density and Score Estimation (Song,
        Garg, Shi & Ermon, 2019), https://arxiv.org/abs/1905.07088
    """

    def __init__(
        self,
        score: Callable[..., Tensor],
        *,
        num_projections: int = 1,
        noise: str = "gaussian",
        variance_reduction: bool = True,
        sigma: float | None = None,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        check_int("num_projections", num_projections)
        self.score, self.num_projections = score, num_projections
        check_choice("noise", noise, NOISES)
        self.noise = noise
        self.variance_reduction = bool(variance_reduction)
        self.sigma = _check_sigma(sigma, "sigma", optional=True)
        self.preprocess = preprocess

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch`` (``x`` of shape ``(batch, *event)``, or ``(x, labels)``)."""
        x = split_batch(batch, self.preprocess)[0]
        x = x.repeat(self.num_projections, *([1] * (x.dim() - 1)))
        level = _level(x, self.sigma)
        v = hutchinson_noise(x, self.noise)
        res = hutchinson_divergence(lambda y: _call(self.score, y, level), x, v)
        if self.variance_reduction:
            second = 0.5 * _sq(res.value)
        else:
            second = 0.5 * (res.value * v).flatten(1).sum(-1).pow(2)
        loss = (res.divergence + second).mean()
        return {"loss": loss, "ssm": loss}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return (f"num_projections={self.num_projections}, noise={self.noise!r}, "
                f"variance_reduction={self.variance_reduction}, sigma={self.sigma}")


class DenoisingScoreMatching(nn.Module):
    r"""Creates Vincent's denoising score-matching loss at one noise level :math:`\sigma`.

    :math:`\tilde x = x + \sigma z`, :math:`z \sim N(0, I)`, and the loss is
    :math:`\tfrac12 E\|s(\tilde x, \sigma) + z/\sigma\|^2`: the target
    :math:`-z/\sigma = \nabla_{\tilde x} \log N(\tilde x; x, \sigma^2 I)`. It is minimized
    by the score of the perturbed data :math:`p * N(0, \sigma^2 I)`, with value
    :math:`\tfrac12(D/\sigma^2 - E\|\nabla \log p_\sigma\|^2)`. No derivative of the
    network is needed, so it scales to images. It is the denoising objective
    (:func:`probgen.inference.denoising.denoise`) on the noise-level path at :math:`\sigma`,
    score target, weight 1/2.

    Outputs: ``loss`` and ``dsm``.

    Args:
        score: the network, ``score(x, sigma)`` (``sigma`` of shape ``(batch,)``; a network
            without a noise input may ignore it).
        sigma: the noise level.
        preprocess: maps each batch to model space, or ``None``.

    References:
        A Connection Between Score Matching and Denoising Autoencoders (Vincent, 2011).
    """

    def __init__(
        self,
        score: Callable[..., Tensor],
        sigma: float = 0.1,
        *,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        self.score, self.sigma = score, _check_sigma(sigma, "sigma")
        self.preprocess = preprocess
        self._times = DiscreteTimes(torch.tensor([self.sigma], dtype=torch.float64))

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch`` (``x`` of shape ``(batch, *event)``, or ``(x, labels)``)."""
        out = denoise(self.score, _LEVELS, split_batch(batch, self.preprocess)[0], self._times,
                      prediction="score", weighting=0.5, name="score", per_example=False)
        loss = out.loss
        return {"loss": loss, "dsm": loss}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return f"sigma={self.sigma:g}"


class NoiseConditionalScoreMatching(nn.Module):
    r"""Creates NCSN's multi-scale denoising loss over a geometric noise ladder.

    Each example gets a level :math:`\sigma_i` drawn uniformly from the ladder and the
    denoising loss weighted by :math:`\lambda(\sigma) = \sigma^2`:
    :math:`\tfrac12 E\,\sigma^2\|s(\tilde x, \sigma) + z/\sigma\|^2
    = \tfrac12 E\|\sigma s(\tilde x, \sigma) + z\|^2`, which keeps every level's term of
    order one. Minimized by the perturbed scores at every level, the input of
    :func:`probgen.inference.annealed_langevin`.
    Computed by :func:`probgen.inference.denoising.denoise` over the ladder
    (:class:`~probgen.inference.denoising.DiscreteTimes`) with the error in noise space.

    Outputs: ``loss`` and ``ncsn``.

    Args:
        score: the network, ``score(x, sigma)``, ``sigma`` of shape ``(batch,)``.
        sigmas: the ladder, decreasing (e.g. :func:`probgen.score.choose_sigmas`); or
        sigma_max, sigma_min, num_sigmas: :func:`probgen.score.geometric_sigmas`.
        preprocess: maps each batch to model space, or ``None``.

    References:
        Generative Modeling by Estimating Gradients of the Data Distribution (Song & Ermon,
        2019), https://arxiv.org/abs/1907.05600
    """

    def __init__(
        self,
        score: Callable[..., Tensor],
        sigmas: Sequence[float] | Tensor | None = None,
        *,
        sigma_max: float = 1.0,
        sigma_min: float = 0.01,
        num_sigmas: int = 10,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        if sigmas is None:
            sigmas = geometric_sigmas(sigma_max, sigma_min, num_sigmas)
        sig = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
        if sig.numel() < 1 or not (sig > 0).all() or (sig[1:] > sig[:-1]).any():
            raise ValueError(f"sigmas: expected a non-empty, positive, decreasing ladder, got "
                             f"{sig.tolist()}.")
        self.score, self.preprocess = score, preprocess
        self.register_buffer("sigmas", sig)
        self._times: DiscreteTimes | None = None

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch`` (``x`` of shape ``(batch, *event)``, or ``(x, labels)``)."""
        # sigma^2 ||s + z/sigma||^2 = ||eps_hat - z||^2: the error in noise space
        if self._times is None or self._times.values is not self.sigmas:
            # kept across steps (the ladder's support is checked once); a moved or cast
            # ladder is a new tensor and gets a new one
            self._times = DiscreteTimes(self.sigmas)
        out = denoise(self.score, _LEVELS, split_batch(batch, self.preprocess)[0],
                      self._times, prediction="score", target="eps",
                      weighting=0.5, name="score", per_example=False)
        loss = out.loss
        return {"loss": loss, "ncsn": loss}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        s = self.sigmas
        return f"num_sigmas={s.numel()}, sigma_max={float(s[0]):g}, sigma_min={float(s[-1]):g}"


def _score_builder(name: str, cls: type[nn.Module], keys: dict[str, Any], summary: str) -> None:
    """Registers ``cls(model, preprocess=..., **table)`` as the score objective ``name``."""

    def build(model: nn.Module, data: Any, **table: Any) -> nn.Module:
        return cls(model, preprocess=data.preprocess, **table)

    build.__qualname__ = f"_build_{name}"
    build.__doc__ = summary
    register_objective(name, keys=keys, summary=summary, langevin=True)(build)


_score_builder("ism", ImplicitScoreMatching,
               {"divergence": str, "noise": str, "sigma": (int, float)},
               "implicit score matching (Hyvarinen), exact or Hutchinson divergence")
_score_builder("ssm", SlicedScoreMatching,
               {"num_projections": int, "noise": str, "sigma": (int, float)},
               "sliced score matching (random projections)")
_score_builder("dsm", DenoisingScoreMatching, {"sigma": (int, float)},
               "denoising score matching at one noise level 'sigma'")
_score_builder("ncsn", NoiseConditionalScoreMatching,
               {"sigma_max": (int, float), "sigma_min": (int, float), "num_sigmas": int},
               "NCSN: denoising score matching over a geometric ladder of noise levels")
