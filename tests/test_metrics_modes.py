"""Mode coverage on the 8-Gaussian ring and a 5x5 grid: true samples vs collapsed ones."""

from __future__ import annotations

import math

import pytest
import torch

from probgen.data import toy_sample
from probgen.metrics import grid_centres, mode_coverage, ring_centres


def test_true_samples_of_the_ring_capture_every_mode():
    x = toy_sample("8gaussians", 20000, generator=torch.Generator().manual_seed(0))
    result = mode_coverage(x, ring_centres(8), std=0.5 / 1.414)
    assert result.modes_captured == 8
    # In 2-D, P(|z| <= 3) = 1 - exp(-9/2) for a standard normal z.
    assert result.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    assert int(result.counts.sum()) == round(result.high_quality * 20000)


def test_collapsed_and_off_mode_samples():
    c = grid_centres(5, spacing=2.0)
    assert c.shape == (25, 2) and float(c.abs().max()) == 4.0
    g = torch.Generator().manual_seed(1)
    noise = 0.05 * torch.randn(300, 2, generator=g, dtype=torch.float64)
    collapsed = c[:3].repeat(100, 1) + noise
    result = mode_coverage(collapsed, c, std=0.05)
    assert result.modes_captured == 3 and result.high_quality > 0.95
    between = c[:10] + 1.0  # halfway between modes: no sample is of high quality
    off = mode_coverage(between, c, std=0.05)
    assert off.modes_captured == 0 and off.high_quality == 0.0 and not off.counts.any()
    assert mode_coverage(collapsed, c, std=0.05, min_count=101).modes_captured == 0


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"centres: expected \(K, 2\)"):
        mode_coverage(torch.zeros(4, 2), torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="positive"):
        mode_coverage(torch.zeros(4, 2), torch.zeros(3, 2), 0.0)
