r"""Inception-style score from any classifier's class probabilities.

Salimans et al. (2016, https://arxiv.org/abs/1606.03498) score generated samples by
:math:`\exp \mathbb E_x \mathrm{KL}(p(y \mid x) \,\Vert\, p(y))`, with
:math:`p(y) = \mathbb E_x p(y \mid x)`: high when each sample is classified confidently
(sharp :math:`p(y \mid x)`) and the classes are used evenly (flat :math:`p(y)`). It lies in
``[1, C]`` for ``C`` classes. With the Inception network it is the Inception Score; with
``probgen.metrics.mnist_classifier().probabilities`` it is an *MNIST classifier score*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from probgen.metrics.streaming import Source, collect_features

__all__ = ["ClassifierScore", "inception_score"]


class ClassifierScore(NamedTuple):
    """The score's mean over splits and its standard deviation over splits."""

    mean: float
    std: float


def inception_score(
    source: Source,
    classifier: Callable[[Tensor], Tensor] | None = None,
    *,
    splits: int = 10,
    num_samples: int | None = None,
    batch_size: int = 500,
    eps: float = 0.0,
) -> ClassifierScore:
    r"""Inception-style score :math:`\exp \mathbb E_x \mathrm{KL}(p(y|x) \Vert p(y))`.

    Args:
        source: class probabilities ``(N, C)`` when ``classifier`` is ``None``; else
            samples (a tensor, an iterable of batches or a sampler, see
            :func:`probgen.metrics.iter_batches`) that ``classifier`` maps to ``(b, C)``
            probabilities.
        classifier: samples to probabilities (rows summing to 1), e.g.
            ``mnist_classifier().probabilities``.
        splits: the samples are cut into this many equal parts; the score is computed on
            each (``p(y)`` estimated within the part) as Salimans et al. do.
        num_samples: samples drawn (required for a sampler).
        batch_size: samples per classifier call.
        eps: added inside the logarithms (0: terms with ``p(y|x) = 0`` contribute 0).

    Returns:
        ClassifierScore: ``mean`` and ``std`` (population) of the score over splits.

    Raises:
        ValueError: probabilities not ``(N, C)``, negative, not summing to 1, or fewer
            samples than ``splits``.

    Example:
        >>> score = inception_score(torch.eye(10).repeat(5, 1), splits=1)  # sharp, all classes
        >>> round(score.mean, 6), score.std
        (10.0, 0.0)
    """
    probs = collect_features(source, classifier, num_samples=num_samples,
                             batch_size=batch_size).to(torch.float64)
    if probs.dim() != 2:
        raise ValueError(f"probabilities: expected (N, C), got {tuple(probs.shape)}.")
    if (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(()).double(),
                                               atol=1e-4):
        raise ValueError("probabilities: expected non-negative rows that sum to 1 (apply a "
                         "softmax to logits).")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= len(probs):
        raise ValueError(f"splits: expected an int in 1..{len(probs)}, got {splits!r}.")
    scores = []
    for part in probs.tensor_split(splits):
        marginal = part.mean(0, keepdim=True)
        terms = torch.where(part > 0, part * (torch.log(part + eps) - torch.log(marginal + eps)),
                            0.0)
        scores.append(torch.exp(terms.sum(1).mean()))
    values = torch.stack(scores)
    return ClassifierScore(float(values.mean()), float(values.std(correction=0)))
