r"""Adversarial objectives: GAN, non-saturating GAN, WGAN(-GP), hinge, least squares, f-GANs.

:class:`Adversarial` trains a model with two parameter groups, ``critic`` and ``generator``,
inside the one trainer (:func:`probgen.inference.fit`): each trainer step does exactly
``n_critic`` critic updates, then one generator update. The model protocol (written against
no concrete class): ``model.critic(x, labels=None) -> (batch,)`` raw scores,
``model.generator`` (an ``nn.Module``) and ``model.rsample((n,), labels=None) -> x``,
differentiable in the generator's parameters (:class:`probgen.models.GAN` has all three).

With :math:`r = D(x)` on data and :math:`f = D(G(z))` on samples (both raw, per example),
the losses (critic :math:`L_D`, generator :math:`L_G`, both minimized) are:

================  =============================================  =========================
loss              :math:`L_D`                                    :math:`L_G`
================  =============================================  =========================
minimax           :math:`E[sp(-r)] + E[sp(f)]`                   :math:`-E[sp(f)]`
non_saturating    same                                           :math:`E[sp(-f)]`
wasserstein       :math:`E[f] - E[r]`                            :math:`-E[f]`
hinge             :math:`E[(1 - r)_+] + E[(1 + f)_+]`            :math:`-E[f]`
least_squares     :math:`\tfrac12 E[(r - 1)^2] + \tfrac12 E[f^2]`  :math:`\tfrac12 E[(f-1)^2]`
f-GAN ``name``    :math:`-(E[g_f(r)] - E[f^*(g_f(f))])`          :math:`-E[g_f(f)]`
================  =============================================  =========================

(:math:`sp` is softplus: :math:`sp(-r) = -\log\sigma(r)`, the sigmoid cross-entropy in a
stable form.) The f-GAN generator loss is Nowozin et al.'s alternative (their Sec. 3.2);
the saddle-point one, :math:`-E[f^*(g_f(f))]`, is ``generator_loss="minimax"``.
Penalties: ``clip`` (WGAN weight clipping of every critic parameter to ``[-c, c]`` after
each critic step), ``gradient_penalty`` (WGAN-GP, :math:`\lambda E[(\|\nabla D(\hat x)\|-1)^2]`
on random interpolates :math:`\hat x = \epsilon x + (1-\epsilon) G(z)`), ``r1`` and ``r2``
(:math:`\tfrac\gamma2 E\|\nabla D\|^2` on data, resp. samples; Mescheder et al. 2018).

Every step logs ``divergence``: the critic's variational lower bound on the divergence the
loss estimates, from the current batch (a training curve of the distance the critic
sees): Jensen-Shannon :math:`\log 2 - L_D/2` (minimax, non_saturating; in
:math:`[0, \log 2]`), Wasserstein-1 :math:`E[r] - E[f]` (times the critic's Lipschitz
constant), total variation :math:`1 - L_D/2` (hinge), the triangular discrimination
:math:`\int (p-q)^2/(p+q) \ge 2 - 8 L_D` (least squares), and :math:`D_f` (f-GANs, see
:mod:`probgen.fdivergences`). The course's default optimizer is Adam with betas (0, 0.9):
:data:`ADAM_BETAS`, set in the presets' ``[train]`` tables.

References:
    Generative Adversarial Nets (Goodfellow et al., 2014), https://arxiv.org/abs/1406.2661;
    Wasserstein GAN (Arjovsky et al., 2017), https://arxiv.org/abs/1701.07875; Improved
    Training of Wasserstein GANs (Gulrajani et al., 2017), https://arxiv.org/abs/1704.00028;
    f-GAN (Nowozin et al., 2016), https://arxiv.org/abs/1606.00709; Least Squares GANs (Mao
    et al., 2017), https://arxiv.org/abs/1611.04076; Geometric GAN (Lim & Ye, 2017; hinge),
    https://arxiv.org/abs/1705.02894; Which Training Methods for GANs do actually Converge?
    (Mescheder et al., 2018; R1/R2), https://arxiv.org/abs/1801.04406
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probgen.fdivergences import F_DIVERGENCES, get_f_divergence
from probgen.inference.registry import register_objective
from probgen.utils import append_dims, check_choice, check_int, check_tensor

__all__ = ["Adversarial", "GAN_LOSSES", "ADAM_BETAS", "gradient_penalty", "gradient_norms"]

#: The losses :class:`Adversarial` knows: the classic ones, then the f-GAN divergences.
GAN_LOSSES: tuple[str, ...] = ("minimax", "non_saturating", "wasserstein", "hinge",
                               "least_squares", "kl", "reverse_kl", "js", "pearson",
                               "hellinger", "tv")
_F_LOSSES = ("kl", "reverse_kl", "js", "pearson", "hellinger", "tv")
#: Adam's betas for GAN training, as in the course (and WGAN-GP's (0, 0.9)).
ADAM_BETAS: tuple[float, float] = (0.0, 0.9)
_LOG2 = math.log(2.0)


def gradient_norms(critic: Callable[..., Tensor], x: Tensor, labels: Tensor | None = None,
                   *, create_graph: bool = False) -> Tensor:
    r"""Per-example :math:`\|\nabla_x D(x)\|_2`, shape ``(batch,)``.

    Args:
        critic: ``critic(x[, labels]) -> (batch,)``.
        x: points ``(batch, *event)`` (a leaf is made of them; no gradient flows to ``x``).
        labels: class labels ``(batch,)`` for a conditional critic.
        create_graph: keep the graph, so the norms can be differentiated (penalties).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = critic(x) if labels is None else critic(x, labels)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph)
    return grad.flatten(1).norm(dim=1)


def gradient_penalty(critic: Callable[..., Tensor], real: Tensor, fake: Tensor,
                     labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""WGAN-GP's :math:`E[(\|\nabla D(\hat x)\|_2 - 1)^2]` on :math:`\hat x = \epsilon x +
    (1 - \epsilon)\tilde x`, :math:`\epsilon \sim U[0, 1]` per example.

    Returns:
        The penalty (differentiable in the critic's parameters) and the mean gradient norm
        on the interpolates (detached).
    """
    eps = append_dims(torch.rand(real.shape[0], device=real.device, dtype=real.dtype),
                      real.dim())
    mixed = eps * real.detach() + (1 - eps) * fake.detach()
    norms = gradient_norms(critic, mixed, labels, create_graph=True)
    return ((norms - 1) ** 2).mean(), norms.detach().mean()


def _split(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2 or not all(isinstance(b, Tensor) for b in batch):
            raise TypeError("batch: expected x or a pair (x, labels) of tensors, got a "
                            f"{type(batch).__name__} of {len(batch)}.")
        return batch[0], batch[1].long()
    if not isinstance(batch, Tensor) or batch.dim() < 2:
        got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(f"batch: expected x of shape (batch, *event) or (x, labels), got {got}.")
    return batch, None


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside (saves the critic's backward)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class Adversarial(nn.Module):
    r"""Creates the adversarial objective of a GAN: critic and generator losses, penalties
    and the alternation of their updates.

    Args:
        model: a GAN (see the module docstring for the protocol).
        loss: one of :data:`GAN_LOSSES`.
        n_critic: critic updates per generator update. The trainer's batch is split into
            ``n_critic`` equal chunks, one fresh chunk of data per critic update (so a
            critic update sees ``batch_size / n_critic`` examples, and so does the
            generator update, which draws that many samples).
        clip: WGAN weight clipping: every critic parameter is clamped to ``[-clip, clip]``
            after each critic update (``None``: no clipping).
        gradient_penalty: the WGAN-GP weight :math:`\lambda` (10 in the paper; 0: none).
        r1: the R1 weight :math:`\gamma` (gradient penalty on data; 0: none).
        r2: the R2 weight (gradient penalty on generated samples; 0: none).
        generator_loss: f-GANs only: ``"alternative"`` (:math:`-E[g_f(V)]`, the default)
            or ``"minimax"`` (:math:`E[-f^*(g_f(V))]`, the saddle-point objective itself).
        train_generator: ``False`` freezes the generator (only the critic trains; the
            critic then estimates the divergence between the data and a fixed model).
        preprocess: maps a batch of data to model space (images: ``(y, ladj) = pre(x)``).

    Returns (of ``forward`` and ``training_step``):
        ``{"loss", "critic_loss", "generator_loss", "divergence", ...}``; ``"loss"`` is the
        critic's loss including penalties; penalties and ``gp_grad_norm`` (the mean
        gradient norm on WGAN-GP interpolates) are logged when active.

    Example:
        >>> from probgen.models import MLPGAN
        >>> gan = MLPGAN(2, latent_dim=2, hidden_features=[16])
        >>> objective = Adversarial(gan, "wasserstein", n_critic=2, gradient_penalty=10.0)
        >>> sorted(objective.parameter_groups())
        ['critic', 'generator']
        >>> out = objective(torch.randn(8, 2))
        >>> sorted(out)[:3]
        ['critic_loss', 'divergence', 'generator_loss']
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str = "non_saturating",
        *,
        n_critic: int = 1,
        clip: float | None = None,
        gradient_penalty: float = 0.0,
        r1: float = 0.0,
        r2: float = 0.0,
        generator_loss: str = "alternative",
        train_generator: bool = True,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        for attr in ("critic", "generator", "rsample"):
            if not hasattr(model, attr):
                raise TypeError(f"model: expected a GAN with .critic, .generator and "
                                f".rsample, got {type(model).__name__} without .{attr}.")
        check_choice("loss", loss, GAN_LOSSES)
        check_int("n_critic", n_critic)
        if clip is not None and not (isinstance(clip, (int, float)) and 0 < clip < math.inf):
            raise ValueError(f"clip: expected a positive float or None, got {clip!r}.")
        for name, value in (("gradient_penalty", gradient_penalty), ("r1", r1), ("r2", r2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < math.inf:
                raise ValueError(f"{name}: expected a non-negative float, got {value!r}.")
        if generator_loss not in ("alternative", "minimax"):
            raise ValueError(f"generator_loss: expected 'alternative' or 'minimax', got "
                             f"{generator_loss!r}.")
        if generator_loss == "minimax" and loss not in _F_LOSSES:
            raise ValueError(f"generator_loss applies to the f-GAN losses {list(_F_LOSSES)}; "
                             f"loss {loss!r} has its own (use loss='minimax' for the "
                             "saturating GAN).")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess: expected a callable, got {type(preprocess).__name__}.")
        self.model, self.loss_name, self.n_critic = model, loss, n_critic
        self.clip = None if clip is None else float(clip)
        self.gp, self.r1, self.r2 = float(gradient_penalty), float(r1), float(r2)
        self.generator_loss_name, self.train_generator = generator_loss, bool(train_generator)
        self.preprocess = preprocess
        self.f_divergence = F_DIVERGENCES[loss] if loss in _F_LOSSES else None

    # -- the two players -------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"critic": ..., "generator": ...}`` (just the critic when the generator is
        frozen), one optimizer each in the trainer."""
        groups = {"critic": list(self.model.critic.parameters())}
        if self.train_generator:
            groups["generator"] = list(self.model.generator.parameters())
        return groups

    def _data(self, x: Tensor) -> Tensor:
        if self.preprocess is not None:
            out = self.preprocess(x)
            x = out[0] if isinstance(out, tuple) else out
        x = x if x.is_floating_point() else x.float()
        event_shape = getattr(self.model, "event_shape", None)
        return check_tensor(x, "batch", event_shape=None if event_shape is None
                            else tuple(event_shape))

    def _critic(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        out = self.model.critic(x) if labels is None else self.model.critic(x, labels)
        if not isinstance(out, Tensor) or out.shape != x.shape[:1]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"critic: expected one score per example, shape "
                             f"({x.shape[0]},), got {got}.")
        return out

    def _fake(self, n: int, labels: Tensor | None) -> Tensor:
        return self.model.rsample((n,), labels=labels)

    # -- losses ----------------------------------------------------------------------------
    def critic_terms(self, real: Tensor, fake: Tensor,
                     labels: Tensor | None = None) -> dict[str, Tensor]:
        r"""The critic's loss (with penalties, under ``"loss"``) and the divergence bound,
        for data ``real`` and (detached) samples ``fake`` of equal batch size."""
        fake = fake.detach()
        r, f = self._critic(real, labels), self._critic(fake, labels)
        name = self.loss_name
        if name in ("minimax", "non_saturating"):
            loss = F.softplus(-r).mean() + F.softplus(f).mean()
            divergence = _LOG2 - loss / 2
        elif name == "wasserstein":
            divergence = r.mean() - f.mean()
            loss = -divergence
        elif name == "hinge":
            loss = F.relu(1 - r).mean() + F.relu(1 + f).mean()
            divergence = 1 - loss / 2
        elif name == "least_squares":
            loss = 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()
            divergence = 2 - 8 * loss
        else:
            divergence = self.f_divergence.bound(r, f)
            loss = -divergence
        out = {"critic_loss": loss.detach(), "divergence": divergence.detach()}
        total = loss
        if self.gp > 0:
            penalty, norm = gradient_penalty(self._critic, real, fake, labels)
            total = total + self.gp * penalty
            out.update(gradient_penalty=penalty.detach(), gp_grad_norm=norm)
        if self.r1 > 0:
            r1 = (gradient_norms(self._critic, real, labels, create_graph=True) ** 2).mean()
            total = total + 0.5 * self.r1 * r1
            out["r1"] = r1.detach()
        if self.r2 > 0:
            r2 = (gradient_norms(self._critic, fake, labels, create_graph=True) ** 2).mean()
            total = total + 0.5 * self.r2 * r2
            out["r2"] = r2.detach()
        return {"loss": total, **out}

    def generator_terms(self, n: int, labels: Tensor | None = None) -> Tensor:
        """The generator's loss on ``n`` fresh samples (differentiable in its parameters)."""
        f = self._critic(self._fake(n, labels), labels)
        name = self.loss_name
        if name == "minimax":
            return -F.softplus(f).mean()  # E[log(1 - D(G(z)))]
        if name == "non_saturating":
            return F.softplus(-f).mean()  # -E[log D(G(z))]
        if name in ("wasserstein", "hinge"):
            return -f.mean()
        if name == "least_squares":
            return 0.5 * ((f - 1) ** 2).mean()
        div = self.f_divergence
        if self.generator_loss_name == "minimax":
            return -div.conjugate(div.activation(f)).mean()
        return -div.activation(f).mean()

    def _clip(self) -> None:
        if self.clip is not None:
            with torch.no_grad():
                for p in self.model.critic.parameters():
                    p.clamp_(-self.clip, self.clip)

    # -- the trainer's hooks ---------------------------------------------------------------
    def training_step(self, batch: Any, step: int, update: Callable[..., None]
                      ) -> dict[str, Tensor]:
        """``n_critic`` critic updates, each on its own chunk of ``batch``, then one
        generator update; ``update(name, loss)`` is the trainer's optimizer step."""
        x, labels = _split(batch)
        if x.shape[0] < self.n_critic:
            raise ValueError(f"batch: {x.shape[0]} examples cannot be split into n_critic = "
                             f"{self.n_critic} critic batches; raise batch_size.")
        x = self._data(x)
        xs = torch.tensor_split(x, self.n_critic)
        ys = torch.tensor_split(labels, self.n_critic) if labels is not None \
            else [None] * self.n_critic
        for real, y in zip(xs, ys, strict=True):
            with torch.no_grad():
                fake = self._fake(real.shape[0], y)
            out = self.critic_terms(real, fake, y)
            update("critic", out["loss"])
            self._clip()
        if self.train_generator:
            with _frozen(self.model.critic):
                g = self.generator_terms(xs[-1].shape[0], ys[-1])
                update("generator", g)
            out["generator_loss"] = g.detach()
        return {k: v.detach() for k, v in out.items()}

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Evaluates both losses and the divergence bound on ``batch`` (no update)."""
        x, labels = _split(batch)
        x = self._data(x)
        fake = self._fake(x.shape[0], labels)
        out = self.critic_terms(x, fake, labels)
        out["generator_loss"] = self.generator_terms(x.shape[0], labels)
        return {k: v.detach() for k, v in out.items()}


_KEYS = ("loss", "n_critic", "clip", "gradient_penalty", "r1", "r2", "generator_loss",
         "train_generator")


def _build(model: nn.Module, data: Any, defaults: dict[str, Any], table: dict[str, Any]
           ) -> Adversarial:
    return Adversarial(model, **{**defaults, **table},
                       preprocess=getattr(data, "preprocess", None))


@register_objective("gan", keys=_KEYS)
def _build_gan(model: nn.Module, data: Any, **table: Any) -> Adversarial:
    """GAN objective: 'loss' one of minimax, non_saturating (default), wasserstein, hinge,
    least_squares or an f-divergence; n_critic, clip, gradient_penalty, r1, r2."""
    return _build(model, data, {"loss": "non_saturating"}, table)


@register_objective("wgan", keys=("n_critic", "clip", "r1", "r2", "train_generator"))
def _build_wgan(model: nn.Module, data: Any, **table: Any) -> Adversarial:
    """WGAN: the Wasserstein loss with weight clipping (clip 0.01, n_critic 5)."""
    return _build(model, data, {"loss": "wasserstein", "clip": 0.01, "n_critic": 5}, table)


@register_objective("wgan_gp", keys=("n_critic", "gradient_penalty", "r1", "r2",
                                     "train_generator"))
def _build_wgan_gp(model: nn.Module, data: Any, **table: Any) -> Adversarial:
    """WGAN-GP: the Wasserstein loss with a gradient penalty (weight 10, n_critic 5)."""
    return _build(model, data, {"loss": "wasserstein", "gradient_penalty": 10.0,
                                "n_critic": 5}, table)


@register_objective("fgan", keys=("divergence", "n_critic", "r1", "r2", "generator_loss",
                                  "train_generator"))
def _build_fgan(model: nn.Module, data: Any, **table: Any) -> Adversarial:
    """f-GAN: 'divergence' one of kl, reverse_kl, js (default), pearson, hellinger, tv."""
    name = table.pop("divergence", "js")
    if name not in _F_LOSSES:
        get_f_divergence(name)  # unknown names: the table's own message
    check_choice("divergence", name, _F_LOSSES)
    return _build(model, data, {"loss": name}, table)
