r"""Discrete-latent objectives: the VQ-VAE loss (one stage or with its code prior), the
straight-through estimator, codebook statistics, the Gumbel-softmax VAE's annealed ELBO.

**Why the VQ-VAE loss is not a Pyro ELBO.** A VQ-VAE's posterior is deterministic (a one-hot
on the nearest code) and its prior during the first stage is uniform over the ``K`` codes, so
the KL term of its ELBO is the constant :math:`\log K` per latent position and the ELBO
reduces to the reconstruction log-likelihood; the two terms that train the codebook and the
encoder (:math:`\|sg[z_e] - e\|^2` and :math:`\beta \|z_e - sg[e]\|^2`) are no ELBO term at
all, and the straight-through gradient is not the gradient of any Pyro estimator. So
:class:`VectorQuantizedLoss` is a plain ``nn.Module`` objective; it runs in the one trainer
like every other. The Gumbel-softmax VAE, whose relaxed posterior is a real distribution,
is trained through Pyro's own ELBOs (:class:`RelaxedCategoricalELBO`).

Protocols (inference never imports a concrete model):

- a *VQ model* has ``encode(x) -> z_e`` ``(N, D, h, w)``, ``quantizer(z_e) -> out`` with
  ``out.z_q`` (straight-through), ``out.codes`` (the chosen codes, differentiable in the
  codebook), ``out.indices`` ``(N, h, w)``, and ``quantizer.num_codes``,
  ``quantizer.learns_by_gradient``; ``decode(z_q)`` returns a Distribution over ``x`` with
  event shape the data's; ``encode_indices(x)`` gives code maps without touching the
  codebook; a two-stage model also has ``prior`` (a density over code maps with
  ``log_prob``);
- a *relaxed-categorical VAE* is a Pyro ``model(x)``/``guide(x)`` pair with a ``temperature``
  buffer that the guide reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from probgen.inference.elbo import ELBO
from probgen.inference.registry import register_objective
from probgen.utils import check_int

__all__ = [
    "straight_through",
    "vq_losses",
    "code_perplexity",
    "code_usage",
    "ExponentialTemperature",
    "VectorQuantizedLoss",
    "TwoStageVQLoss",
    "RelaxedCategoricalELBO",
    "encode_codes",
    "fit_code_prior",
]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``z_q`` exactly; backward: the incoming gradient to ``z_e`` unchanged."""

    @staticmethod
    def forward(ctx: Any, z_e: Tensor, z_q: Tensor) -> Tensor:  # noqa: D102
        return z_q.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad, None


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    r"""The straight-through estimator: returns ``z_q``, passes gradients to ``z_e`` unchanged.

    It has the gradient of the usual ``z_e + (z_q - z_e).detach()`` (van den Oord et al.,
    2017): :math:`\partial L / \partial z_e = \partial L / \partial z_q`, and nothing
    reaches ``z_q`` (the codebook learns from its own loss). Written as an autograd function
    because the formula's value ``z_e + (z_q - z_e)`` differs from ``z_q`` by rounding; this
    returns ``z_q`` bit for bit, so the decoder sees the code and the gradient is exact.

    Args:
        z_e: encoder outputs, any shape.
        z_q: their quantized values, the same shape.

    Returns:
        Tensor: ``z_q``'s values, differentiable in ``z_e`` with the identity Jacobian.

    Raises:
        ValueError: the shapes differ.

    Example:
        >>> z_e = torch.tensor([0.2, 0.9], requires_grad=True)
        >>> out = straight_through(z_e, torch.tensor([0.0, 1.0]))
        >>> (3 * out).sum().backward(); out.detach(), z_e.grad
        (tensor([0., 1.]), tensor([3., 3.]))
    """
    if z_e.shape != z_q.shape:
        raise ValueError(f"straight_through: z_e and z_q must have one shape, got "
                         f"{tuple(z_e.shape)} and {tuple(z_q.shape)}.")
    return _StraightThrough.apply(z_e, z_q)


def vq_losses(z_e: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
    r"""The codebook and commitment losses per example, :math:`\|sg[z_e] - e\|^2` and
    :math:`\|z_e - sg[e]\|^2` summed over every latent entry.

    The first moves only the codes (the encoder output is detached), the second only the
    encoder (the codes are detached); the objective weights the second by ``beta``.

    Args:
        z_e: encoder outputs ``(N, ...)``.
        codes: the codes chosen for them, ``(N, ...)``, differentiable in the codebook.

    Returns:
        tuple: ``(codebook, commitment)``, each ``(N,)``.
    """
    if z_e.shape != codes.shape:
        raise ValueError(f"vq_losses: z_e and codes must have one shape, got "
                         f"{tuple(z_e.shape)} and {tuple(codes.shape)}.")
    codebook = (z_e.detach() - codes).pow(2).flatten(1).sum(-1)
    commitment = (z_e - codes.detach()).pow(2).flatten(1).sum(-1)
    return codebook, commitment


def _counts(indices: Tensor, num_codes: int) -> Tensor:
    if indices.is_floating_point():
        raise TypeError(f"indices: expected integer code indices, got {indices.dtype}.")
    if indices.numel() and (indices.min() < 0 or indices.max() >= num_codes):
        raise ValueError(f"indices: expected values in 0..{num_codes - 1}, got "
                         f"[{int(indices.min())}, {int(indices.max())}].")
    return torch.bincount(indices.reshape(-1), minlength=num_codes)


def code_perplexity(indices: Tensor, num_codes: int) -> Tensor:
    r"""The perplexity :math:`\exp(-\sum_k p_k \log p_k)` of the codes' empirical frequencies.

    ``K`` when every code is used equally often, 1 when one code takes everything: the
    effective number of codes in use.

    Args:
        indices: code indices, any shape, integers in ``0..num_codes-1``.
        num_codes: ``K``.

    Returns:
        Tensor: a scalar.

    Example:
        >>> code_perplexity(torch.tensor([0, 1, 2, 3]), 4).round(decimals=4)  # exp(log 4)
        tensor(4.)
    """
    p = _counts(indices, num_codes).double()
    p = p / p.sum().clamp(min=1)
    entropy = -torch.special.xlogy(p, p).sum()
    return entropy.exp().float()


def code_usage(indices: Tensor, num_codes: int) -> Tensor:
    """The fraction of the ``K`` codes that ``indices`` use at least once (a scalar)."""
    return (_counts(indices, num_codes) > 0).float().mean()


class ExponentialTemperature:
    r"""The exponential temperature schedule :math:`\tau_s = \max(\tau_{min}, \tau_0 e^{-r s})`.

    Jang et al. (2017) anneal the Gumbel-softmax temperature this way (they update it every
    N steps; here it changes every step).

    Args:
        initial: :math:`\tau_0`.
        minimum: :math:`\tau_{min}`.
        rate: :math:`r` per step (0: constant).

    Example:
        >>> schedule = ExponentialTemperature(1.0, 0.5, rate=1e-3)
        >>> round(schedule(100), 4), schedule(10_000)
        (0.9048, 0.5)
    """

    def __init__(self, initial: float = 1.0, minimum: float = 0.5, rate: float = 3e-5) -> None:
        if not initial > 0 or not minimum > 0 or minimum > initial:
            raise ValueError(f"temperature: expected 0 < minimum <= initial, got "
                             f"initial={initial!r}, minimum={minimum!r}.")
        if not rate >= 0:
            raise ValueError(f"rate: expected a non-negative float, got {rate!r}.")
        self.initial, self.minimum, self.rate = float(initial), float(minimum), float(rate)

    def __call__(self, step: int) -> float:
        """The temperature after ``step`` updates."""
        return max(self.minimum, self.initial * math.exp(-self.rate * step))

    def __repr__(self) -> str:
        return (f"ExponentialTemperature(initial={self.initial}, minimum={self.minimum}, "
                f"rate={self.rate})")


def _inputs(batch: Any, preprocess: Callable[[Tensor], Any] | None) -> Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, Tensor):
        raise TypeError(f"batch: expected a Tensor or an (x, y) tuple, got {type(x).__name__}.")
    if preprocess is not None:
        x = preprocess(x)
        x = x[0] if isinstance(x, tuple) else x
    return x


class VectorQuantizedLoss(nn.Module):
    r"""Creates the VQ-VAE objective: reconstruction NLL + codebook loss + ``beta`` commitment.

    Per example, :math:`-\log p(x \mid z_q) + \|sg[z_e] - e\|^2 + \beta \|z_e - sg[e]\|^2`
    (van den Oord et al., 2017), with the decoder fed the straight-through ``z_q``. With an
    EMA codebook (``model.quantizer.learns_by_gradient`` False) the codes move by running
    averages inside the quantizer and the codebook loss is reported but not added. It is
    a plain module, not a Pyro ELBO (see the module docstring).

    Outputs (means over the batch): ``loss``, ``recon`` (nats per example: the decoder's
    NLL), ``codebook``, ``commitment``, ``perplexity`` (of the batch's codes, see
    :func:`code_perplexity`) and ``usage`` (fraction of codes used in the batch); ``mse``
    of the decoder mean.

    Args:
        model: a VQ model (see the module docstring).
        beta: commitment weight (0.25 in the paper).
        preprocess: maps a batch's ``x`` to model space (``(y, ladj)`` or ``y``).

    References:
        Neural discrete representation learning (van den Oord et al., 2017),
        https://arxiv.org/abs/1711.00937
    """

    def __init__(self, model: nn.Module, *, beta: float = 0.25,
                 preprocess: Callable[[Tensor], Any] | None = None) -> None:
        super().__init__()
        for name in ("encode", "decode", "quantizer"):
            if not hasattr(model, name):
                raise TypeError(f"model: expected a VQ model with encode, quantizer and decode, "
                                f"got {type(model).__name__} without {name!r}.")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ValueError(f"beta: expected a non-negative float, got {beta!r}.")
        self.model = model
        self.beta = float(beta)
        self.preprocess = preprocess

    def autoencoder_losses(self, x: Tensor) -> dict[str, Tensor]:
        """The first stage's outputs for model-space inputs ``x`` (see the class)."""
        model = self.model
        z_e = model.encode(x)
        out = model.quantizer(z_e)
        px = model.decode(out.z_q)
        recon = -px.log_prob(x)
        codebook, commitment = vq_losses(z_e, out.codes)
        loss = recon + self.beta * commitment
        if model.quantizer.learns_by_gradient:
            loss = loss + codebook
        k = model.quantizer.num_codes
        with torch.no_grad():
            mse = (px.mean - x).pow(2).flatten(1).mean(-1).mean()
        return {"loss": loss.mean(), "recon": recon.mean().detach(),
                "codebook": codebook.mean().detach(), "commitment": commitment.mean().detach(),
                "mse": mse, "perplexity": code_perplexity(out.indices, k),
                "usage": code_usage(out.indices, k)}

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The outputs for one batch (``x`` or ``(x, y)``)."""
        return self.autoencoder_losses(_inputs(batch, self.preprocess))


class TwoStageVQLoss(VectorQuantizedLoss):
    r"""Creates the two-stage VQ-VAE objective: the autoencoder, then a prior over its codes.

    Steps ``1..prior_start`` train the encoder, decoder and codebook
    (:class:`VectorQuantizedLoss`); later steps freeze them, encode each batch to code maps
    (no codebook update) and train ``model.prior`` by maximum likelihood on them, as in the
    paper's second stage. Both stages run in one :func:`probgen.inference.fit` call (two
    parameter groups, ``"autoencoder"`` and ``"prior"``, each with its own optimizer).

    Evaluation (``forward``) reports the first stage's outputs plus ``prior_nll`` (nats per
    code map) and ``nelbo = recon + prior_nll``: with the deterministic posterior
    :math:`q(z|x) = \delta_{z(x)}` the KL to the prior is :math:`-\log p(z(x))`, so ``nelbo``
    is the negative ELBO, an upper bound on :math:`-\log p(x)` for discrete ``x``.

    Args:
        model: a VQ model with a ``prior``.
        prior_start: the last step of the first stage.
        beta: commitment weight.
        preprocess: maps a batch's ``x`` to model space.
    """

    def __init__(self, model: nn.Module, *, prior_start: int, beta: float = 0.25,
                 preprocess: Callable[[Tensor], Any] | None = None) -> None:
        super().__init__(model, beta=beta, preprocess=preprocess)
        if getattr(model, "prior", None) is None:
            raise TypeError(f"model: {type(model).__name__} has no prior over code maps.")
        check_int("prior_start", prior_start, low=0)
        self.prior_start = prior_start

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"autoencoder": encoder, decoder and codebook parameters, "prior": the prior's}``."""
        prior = {id(p) for p in self.model.prior.parameters()}
        return {"autoencoder": [p for p in self.model.parameters() if id(p) not in prior],
                "prior": list(self.model.prior.parameters())}

    def prior_losses(self, x: Tensor) -> dict[str, Tensor]:
        """The prior's NLL (nats per code map) on the codes of model-space inputs ``x``."""
        with torch.no_grad():
            codes = self.model.encode_indices(x)
        nll = -self.model.prior.log_prob(codes.unsqueeze(1).to(x.dtype)).mean()
        return {"loss": nll, "prior_nll": nll.detach()}

    def training_step(self, batch: Any, step: int, update: Callable[..., None]
                      ) -> dict[str, Tensor]:
        """Updates the autoencoder up to ``prior_start``, the prior after it."""
        x = _inputs(batch, self.preprocess)
        if step <= self.prior_start:
            out = self.autoencoder_losses(x)
            update("autoencoder", out["loss"])
        else:
            out = self.prior_losses(x)
            update("prior", out["loss"])
        return {k: v.detach() for k, v in out.items()}

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Both stages' outputs on one batch (evaluation); ``loss`` is their sum."""
        x = _inputs(batch, self.preprocess)
        first = self.autoencoder_losses(x)
        second = self.prior_losses(x)
        return {**first, "loss": first["loss"] + second["loss"],
                "prior_nll": second["prior_nll"],
                "nelbo": first["recon"] + second["prior_nll"]}


class RelaxedCategoricalELBO(nn.Module):
    r"""Creates the Gumbel-softmax VAE's objective: Pyro's ELBO with an annealed temperature.

    Each training call (training mode, gradients enabled) first sets ``model.temperature``
    to ``schedule(step)`` (``step`` counts training calls from 0, a buffer saved with
    checkpoints), then returns the outputs
    of :class:`probgen.inference.ELBO` (Pyro's ``Trace_ELBO`` or ``TraceMeanField_ELBO``
    through ``differentiable_loss``: ``loss`` = negative ELBO in nats per example,
    ``elbo``, ``recon``, ``kl``, ``kl_weight``) and ``temperature``. Evaluation keeps the
    temperature where training left it.

    Args:
        model: a relaxed-categorical VAE (a ``PyroModule`` with ``model``, ``guide`` and a
            ``temperature`` buffer), e.g. :class:`probgen.models.GumbelSoftmaxVAE`.
        schedule: the temperature schedule (default: :class:`ExponentialTemperature`
            ``(1.0, 0.5, 3e-5)``).
        estimator: ``"trace"`` (Monte Carlo KL) or ``"meanfield"`` (registered closed-form
            KL where the model has one; needed by a model with ``kl == "categorical"``).
        num_particles, beta, anneal_steps: passed to :class:`probgen.inference.ELBO`.
        preprocess: maps a batch's ``x`` to model space.

    References:
        Categorical reparameterization with Gumbel-softmax (Jang et al., 2017),
        https://arxiv.org/abs/1611.01144;
        The Concrete distribution (Maddison et al., 2017), https://arxiv.org/abs/1611.00712
    """

    def __init__(self, model: nn.Module, *, schedule: ExponentialTemperature | None = None,
                 estimator: str = "trace", num_particles: int = 1, beta: float = 1.0,
                 anneal_steps: int = 0,
                 preprocess: Callable[[Tensor], Any] | None = None) -> None:
        super().__init__()
        temperature = getattr(model, "temperature", None)
        if not isinstance(temperature, Tensor):
            raise TypeError(f"model: expected a Pyro VAE with a temperature buffer, got "
                            f"{type(model).__name__} without one.")
        if estimator not in ("trace", "meanfield"):
            raise ValueError(f"estimator: expected 'trace' or 'meanfield', got {estimator!r}.")
        if getattr(model, "kl", None) == "categorical" and estimator != "meanfield":
            raise ValueError("estimator: a model with kl='categorical' needs "
                             "estimator='meanfield' (its KL is the registered closed form; a "
                             "Monte Carlo log q - log p would mix a density with a pmf).")
        self.schedule = schedule if schedule is not None else ExponentialTemperature()
        self.elbo = ELBO(model, estimator=estimator, num_particles=num_particles, beta=beta,
                         anneal_steps=anneal_steps, preprocess=preprocess)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def vae(self) -> nn.Module:
        """The model being trained."""
        return self.elbo.model

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The ELBO outputs and ``temperature``; a training call anneals first."""
        if self.training and torch.is_grad_enabled():  # not in a no-grad held-out pass
            self.vae.temperature.fill_(self.schedule(int(self.step)))
            self.step += 1
        out = self.elbo(batch)
        out["temperature"] = self.vae.temperature.detach().clone()
        return out


def encode_codes(model: nn.Module, data: Tensor, *, batch_size: int = 512,
                 preprocess: Callable[[Tensor], Any] | None = None) -> Tensor:
    """Encodes a data set to code maps ``(N, 1, h, w)`` (float, as the prior's pixels).

    Args:
        model: a VQ model (``encode_indices``).
        data: examples ``(N, *event)`` (or ``(x, y)``: the labels are dropped).
        batch_size: examples per encoder pass.
        preprocess: maps ``x`` to model space first.
    """
    x_all = data[0] if isinstance(data, (tuple, list)) else data
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, x_all.shape[0], batch_size):
                x = _inputs(x_all[start:start + batch_size], preprocess)
                out.append(model.encode_indices(x).unsqueeze(1).float())
    finally:
        model.train(was_training)
    return torch.cat(out)


def fit_code_prior(model: nn.Module, data: Tensor, *, steps: int, batch_size: int = 64,
                   preprocess: Callable[[Tensor], Any] | None = None,
                   **fit_kwargs: Any) -> Any:
    """The second stage on its own: encodes ``data`` once, then fits ``model.prior`` to the
    code maps by maximum likelihood with :func:`probgen.inference.fit`.

    Args:
        model: a trained VQ model with a ``prior``.
        data: training examples ``(N, *event)`` (or ``(x, y)``).
        steps: prior training steps.
        batch_size: code maps per step.
        preprocess: maps ``x`` to model space.
        **fit_kwargs: passed to :func:`probgen.inference.fit` (``lr``, ``progress``, ...).

    Returns:
        The :class:`probgen.inference.History` of the prior's training.
    """
    from probgen.inference.likelihood import MaximumLikelihood
    from probgen.inference.training import fit

    if getattr(model, "prior", None) is None:
        raise TypeError(f"model: {type(model).__name__} has no prior over code maps.")
    codes = encode_codes(model, data, preprocess=preprocess)
    return fit(MaximumLikelihood(model.prior), codes, steps=steps, batch_size=batch_size,
               **fit_kwargs)


@register_objective("vqvae", keys=("beta", "prior_start"))
def _build_vqvae(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """VQ-VAE: reconstruction + codebook + beta commitment (then its code prior)."""
    if "prior_start" in table:
        return TwoStageVQLoss(model, preprocess=data.preprocess, **table)
    return VectorQuantizedLoss(model, preprocess=data.preprocess, **table)


@register_objective("gumbel_elbo", keys=("temperature", "min_temperature", "anneal_rate",
                                         "estimator", "num_particles", "beta",
                                         "anneal_steps"))
def _build_gumbel(model: nn.Module, data: Any, *, temperature: float = 1.0,
                  min_temperature: float = 0.5, anneal_rate: float = 3e-5,
                  **table: Any) -> nn.Module:
    """Gumbel-softmax VAE: Pyro's ELBO with an exponentially annealed temperature."""
    return RelaxedCategoricalELBO(
        model, schedule=ExponentialTemperature(temperature, min_temperature, anneal_rate),
        preprocess=data.preprocess, **table)
