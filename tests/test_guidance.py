"""Classifier-free guidance: one formula for every family and every prediction."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from probgen.diffusion import NoiseSchedule
from probgen.inference import classifier_free, drop_labels, guided, guided_epsilon
from probgen.models import DiffusionModel, FlowMatching, ScoreSDE
from probgen.paths import CondOTPath
from probgen.processes import PREDICTIONS
from probgen.sde import VPSDE

DT = torch.float64
MEANS = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, 0.0]], dtype=DT)  # class 2: the null


class _ClassGaussians(nn.Module):
    """The exact `target` prediction of N(MEANS[y], I) data on `path`, as a network."""

    def __init__(self, path, target: str) -> None:
        super().__init__()
        self.path, self.target = path, target
        self.dummy = nn.Parameter(torch.zeros((), dtype=DT))

    def forward(self, x, t, labels=None):
        y = torch.full(x.shape[:1], 2) if labels is None else labels
        a, s = self.path.coefficients(t, x)[:2]
        eps = s * (x - a * MEANS[y]) / (a**2 + s**2)  # E[eps | x_t = x] for N(mu, I) data
        return self.path.convert(eps, x, t, source="eps", target=self.target)


@pytest.mark.parametrize(("source", "target"),
                         list(itertools.permutations(["eps", "data", "v", "score",
                                                      "velocity"], 2)))
def test_guiding_any_prediction_then_converting_is_guiding_the_converted_one(source, target):
    path = VPSDE()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g, dtype=DT)
    t = 0.1 + 0.8 * torch.rand(6, generator=g, dtype=DT)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    src, tgt = _ClassGaussians(path, source), _ClassGaussians(path, target)
    for w in (0.0, 1.0, 2.5):
        a = path.convert(guided(src, labels, w, 2)(x, t), x, t, source=source, target=target)
        torch.testing.assert_close(a, guided(tgt, labels, w, 2)(x, t))
    assert set(PREDICTIONS) == {"eps", "data", "v", "score", "velocity"}


def test_every_family_guides_by_the_same_rule():
    """At weight w, DDPM's noise, the score SDE's score and flow matching's velocity are
    each f(null) + w (f(y) - f(null)) of their own network's outputs."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, generator=g, dtype=DT)
    labels = torch.tensor([0, 1, 1, 0])
    null = torch.full_like(labels, 2)
    w = 2.0
    # Score SDE.
    sde = VPSDE()
    net = _ClassGaussians(sde, "score")
    model = ScoreSDE(net, sde, (2,), parametrization="score", num_classes=2)
    t = torch.full((4,), 0.4, dtype=DT)
    torch.testing.assert_close(model.guided_score(labels, w)(x, t),
                               classifier_free(net(x, t, labels), net(x, t, null), w))
    # Flow matching.
    path = CondOTPath()
    field = _ClassGaussians(path, "velocity")
    fm = FlowMatching(field, path, (2,), num_classes=2)
    torch.testing.assert_close(guided(fm, labels, w, 2)(x, t),
                               classifier_free(field(x, t, labels), field(x, t, null), w))
    # DDPM (network time: the step's probgen time 1 - step / (T - 1)).
    sched = NoiseSchedule.linear(50)

    class Eps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=DT))

        def forward(self, x, t, labels=None):
            return x * (1 + t[:, None]) + labels[:, None].to(x.dtype)

    ddpm = DiffusionModel(Eps(), sched, (2,), num_classes=2).double()
    step = torch.tensor([10, 20, 30, 40])
    eps, _ = guided_epsilon(ddpm, x, step, labels=labels, guidance=w)
    tt = 1 - step.to(DT) / 49
    want = classifier_free(x * (1 + tt[:, None]) + labels[:, None], x * (1 + tt[:, None]) + 2, w)
    torch.testing.assert_close(eps, want)


def test_label_dropout_replaces_labels_at_its_rate():
    labels = torch.zeros(20000, dtype=torch.long)
    out = drop_labels(labels, 0.1, 7, generator=torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {0, 7}
    assert abs(float((out == 7).float().mean()) - 0.1) < 0.01  # binomial sd 0.002
    assert torch.equal(drop_labels(labels, 0.0, 7), labels)
    with pytest.raises(ValueError, match="label_dropout"):
        drop_labels(labels, 1.5, 7)
