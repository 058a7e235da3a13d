r"""Classifier-free and classifier guidance, and label dropout: one convention for every
family.

A class-conditional network is trained with its labels replaced by a *null* class with
some probability (:func:`drop_labels`), so that it is both conditional and unconditional.
Sampling with guidance weight :math:`w` then uses

.. math:: \hat f_w(x, t \mid y) = \hat f(x, t \mid \varnothing)
          + w\,\bigl(\hat f(x, t \mid y) - \hat f(x, t \mid \varnothing)\bigr),

whatever :math:`\hat f` is (noise, data, v, score or velocity prediction): ``w = 0`` is
the unconditional model, ``w = 1`` the conditional one (the default when labels are
given), ``w > 1`` sharpens the classes. This is Ho & Salimans' rule with their
:math:`1 + w` written as :math:`w` (diffusers' ``guidance_scale``). Every conversion
between predictions is affine in the prediction with weights that do not depend on the
class (:mod:`probgen.processes`), so guiding the noise, the score or the velocity at
weight ``w`` gives one and the same guided model: the DDPM, score-SDE and flow-matching
samplers all mean the same thing by ``guidance=w``.

Classifier guidance (:func:`classifier_guided`) tilts any model's marginal by a
noise-conditional classifier :math:`p_\phi(y \mid x_t, t)` (probgen time):
:math:`p_t(x)\,p_\phi(y \mid x, t)^\lambda`, whose score is :math:`\nabla\log p_t(x) +
\lambda\nabla_x\log p_\phi(y \mid x, t)`; the prediction is turned into the score on its
path, the gradient added, and the result turned back (:meth:`GaussianPath.convert
<probgen.processes.GaussianPath.convert>`), so one formula serves every prediction and path.

References:
    Classifier-Free Diffusion Guidance (Ho & Salimans, 2021), https://arxiv.org/abs/2207.12598
    Diffusion Models Beat GANs on Image Synthesis (Dhariwal & Nichol, 2021),
    https://arxiv.org/abs/2105.05233
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from probgen.processes import GaussianPath, check_path_prediction, check_time

__all__ = ["classifier_free", "classifier_guided", "drop_labels", "guided", "sample_labels"]


def classifier_free(cond: Tensor, uncond: Tensor, weight: float) -> Tensor:
    r"""The guided prediction :math:`\hat f_\varnothing + w(\hat f_y - \hat f_\varnothing)`.

    Example:
        >>> guided = classifier_free(torch.tensor([2.0]), torch.tensor([1.0]), 3.0)
        >>> torch.allclose(guided, torch.tensor([4.0]))  # 1 + 3 (2 - 1)
        True
    """
    return uncond + float(weight) * (cond - uncond)


def sample_labels(labels: Any, n: int, device: Any = None, num_classes: int | None = None
                  ) -> Tensor | None:
    """Class labels ``(n,)`` to sample: an int for all, or a sequence/tensor cycled over the
    ``n`` samples (``None`` stays ``None``), checked to be classes in
    ``0..num_classes-1`` (any non-negative class when ``num_classes`` is ``None``).

    Example:
        >>> sample_labels([0, 2], 5).tolist()
        [0, 2, 0, 2, 0]
    """
    if labels is None:
        return None
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels]
    y = torch.as_tensor(labels).flatten()
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels: expected integer classes, got dtype {y.dtype}.")
    if y.numel() == 0 or y.min() < 0 or (num_classes and y.max() >= num_classes):
        raise ValueError(f"labels: expected classes in 0..{(num_classes or 1) - 1}, got "
                         f"{y.tolist()[:20]}.")
    return y.long().repeat(math.ceil(n / y.numel()))[:n].to(device)


def drop_labels(labels: Tensor, probability: float, null_label: int,
                generator: torch.Generator | None = None) -> Tensor:
    """``labels`` with each replaced by ``null_label`` with probability ``probability``
    (the training side of classifier-free guidance)."""
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"label_dropout: expected a probability in [0, 1], got "
                         f"{probability!r}.")
    if not probability:
        return labels
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def guided(predict: Callable[..., Tensor], labels: Tensor | None, weight: float | None,
           null_label: int | None) -> Callable[[Tensor, Tensor], Tensor]:
    r"""``f(x, t)``: the prediction conditional on ``labels`` and guided at ``weight``.

    Args:
        predict: ``predict(x, t, labels=None)``; ``labels=None`` is the unconditional
            (null-class) prediction.
        labels: classes ``(n,)``, or ``None`` for an unconditional model.
        weight: :math:`w` (``None``: 1, the conditional model); with ``w != 1`` both
            halves come from one batched call.
        null_label: the null class passed for the unconditional half (``None``: the
            unconditional half is called with ``labels=None``).

    Raises:
        ValueError: a weight without labels.
    """
    if weight is not None and labels is None:
        raise ValueError("guidance: classifier-free guidance needs labels (and a "
                         "class-conditional model).")
    w = 1.0 if weight is None else float(weight)

    def f(x: Tensor, t: Tensor) -> Tensor:
        if labels is None:
            return predict(x, t)
        if w == 1.0:
            return predict(x, t, labels=labels)
        if null_label is None:
            cond, uncond = predict(x, t, labels=labels), predict(x, t, labels=None)
        else:
            both = predict(torch.cat([x, x]), torch.cat([t, t]),
                           labels=torch.cat([labels, torch.full_like(labels, null_label)]))
            cond, uncond = both.chunk(2)
        return classifier_free(cond, uncond, w)

    return f


def classifier_guided(predict: Callable[[Tensor, Tensor], Tensor], path: GaussianPath,
                      classifier: Callable[[Tensor, Tensor], Tensor], labels: Tensor | int,
                      scale: float, *, prediction: str = "eps"
                      ) -> Callable[[Tensor, Tensor], Tensor]:
    r"""``f(x, t)``: ``predict`` guided by a noise-conditional classifier, in the same kind.

    The guided model is :math:`p_t(x)\,p_\phi(y \mid x, t)^\lambda`: the prediction is
    converted to the score on ``path``, :math:`\lambda\nabla_x \log\mathrm{softmax}
    (\text{classifier}(x, t))_y` is added, and the sum is converted back to ``prediction``.
    With the exact class posterior as classifier and :math:`\lambda = 1` this is the exact
    class-conditional prediction; :math:`\lambda = 0` returns ``predict`` unchanged (for
    the noise, :math:`\hat\epsilon - \lambda\sigma_t\nabla_x\log p_\phi(y \mid x_t)`,
    Dhariwal & Nichol's rule).

    Args:
        predict: ``predict(x, t)``, ``x`` of shape ``(batch, *event)``, ``t`` of shape
            ``(batch,)`` in probgen time, returning a ``prediction`` of the shape of ``x``.
        path: the :class:`probgen.processes.GaussianPath` the prediction lives on.
        classifier: ``classifier(x, t) -> logits`` of shape ``(batch, K)``, probgen time.
        labels: the classes to guide towards, ``(batch,)`` (an int for all).
        scale: :math:`\lambda`.
        prediction: the kind of ``predict``'s output, one of :data:`PREDICTIONS`
            (``"velocity"`` needs a path with time derivatives).

    Returns:
        ``f(x, t)`` returning the guided prediction of the shape of ``x``.

    Raises:
        ValueError: an unknown prediction kind; (when called) labels or logits of the
            wrong shape.

    Example:
        >>> from probgen.paths import CondOTPath
        >>> logits = lambda x, t: torch.stack([-x[:, 0], x[:, 0]], 1)  # class 1 to the right
        >>> f = classifier_guided(lambda x, t: -x, CondOTPath(), logits, 1, 2.0,
        ...                       prediction="score")
        >>> score = f(torch.zeros(1, 2), torch.full((1,), 0.5))  # -x + 2 grad log p(1 | x)
        >>> [round(v, 4) for v in score[0].tolist()]
        [2.0, 0.0]
    """
    check_path_prediction(path, prediction)
    scale = float(scale)

    def f(x: Tensor, t: Tensor) -> Tensor:
        t = check_time(t, x)
        pred = predict(x, t)
        if not scale:
            return pred
        y = torch.as_tensor(labels, device=x.device).long()
        if y.dim() == 0:
            y = y.expand(x.shape[0])
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels: expected shape ({x.shape[0]},) or an int, got "
                             f"{tuple(y.shape)}.")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = classifier(xg, t)
            if not isinstance(logits, Tensor) or logits.dim() != 2 \
                    or logits.shape[0] != x.shape[0]:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(
                    logits).__name__
                raise ValueError(f"classifier: expected logits of shape ({x.shape[0]}, K), "
                                 f"got {got}.")
            chosen = F.log_softmax(logits, dim=-1).gather(1, y[:, None]).sum()
            grad, = torch.autograd.grad(chosen, xg)
        score = path.convert(pred, x, t, source=prediction, target="score")
        return path.convert(score + scale * grad.to(score.dtype), x, t, source="score",
                            target=prediction)

    return f
