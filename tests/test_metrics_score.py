"""Inception-style score: its closed forms at the extremes and on a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.metrics import inception_score


def test_extremes():
    # Confident and uniform over C classes: C. One class for everything: 1.
    assert inception_score(torch.eye(7).repeat(3, 1), splits=3).mean == pytest.approx(7.0)
    assert inception_score(torch.tensor([[0.2, 0.8]]).repeat(10, 1)).mean == pytest.approx(1.0)


def test_hand_computed_value_and_classifier_path():
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)
    marginal = p.mean(0)
    kl = sum(float((p[i] * (p[i] / marginal).log()).sum()) for i in range(2)) / 2
    assert inception_score(p, splits=1).mean == pytest.approx(math.exp(kl), rel=1e-12)
    logits = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    via = inception_score(logits, lambda b: torch.softmax(b, -1), splits=4, batch_size=13)
    direct = inception_score(torch.softmax(logits, -1), splits=4)
    assert via.mean == pytest.approx(direct.mean) and via.std == pytest.approx(direct.std)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(torch.randn(10, 3))
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.eye(3), splits=5)
