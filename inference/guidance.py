r"""Classifier-free guidance and label dropout: one convention for every family.

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

References:
    Classifier-Free Diffusion Guidance (Ho & Salimans, 2021), https://arxiv.org/abs/2207.12598
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["classifier_free", "drop_labels", "guided"]


def classifier_free(cond: Tensor, uncond: Tensor, weight: float) -> Tensor:
    r"""The guided prediction :math:`\hat f_\varnothing + w(\hat f_y - \hat f_\varnothing)`.

    Example:
        >>> guided = classifier_free(torch.tensor([2.0]), torch.tensor([1.0]), 3.0)
        >>> torch.allclose(guided, torch.tensor([4.0]))  # 1 + 3 (2 - 1)
        True
    """
    return uncond + float(weight) * (cond - uncond)


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
