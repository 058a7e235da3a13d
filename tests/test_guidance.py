"""Classifier-free and classifier guidance: one formula for every family and every
prediction, classifier guidance checked against the exact posterior of a Gaussian mixture."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from probgen.diffusion import NoiseSchedule, SchedulePath
from probgen.inference import (
    classifier_free,
    classifier_guided,
    drop_labels,
    guided,
    guided_epsilon,
)
from probgen.models import DiffusionModel, FlowMatching, ScoreSDE
from probgen.paths import CondOTPath
from probgen.processes import PREDICTIONS
from probgen.sde import VESDE, VPSDE

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


# ----------------------------------------------------------------------- classifier guidance
CLASS_MEANS = torch.tensor([[-1.5, 0.5], [1.0, -1.0]], dtype=DT)
CLASS_COVS = torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 1.2]]], dtype=DT)


def _class_laws(path, x, t):
    """The law of x_t given each class, N(alpha_t m_k, alpha_t^2 C_k + sigma_t^2 I), as a
    batch of (batch, 2) Gaussians."""
    a, s = path.schedule(t)[:2]
    eye = torch.eye(2, dtype=DT)
    cov = a[:, None, None, None] ** 2 * CLASS_COVS + s[:, None, None, None] ** 2 * eye
    return torch.distributions.MultivariateNormal(a[:, None, None] * CLASS_MEANS, cov)


def _posterior_logits(path):
    """The exact class posterior log p(k | x_t) + const (equal class weights), probgen time."""
    return lambda x, t: _class_laws(path, x, t).log_prob(x[:, None, :])


def _conditional(path, kind, k, x, t):
    return path.gaussian_prediction(x, t, CLASS_MEANS[k], CLASS_COVS[k], kind)


def _mixture(path, kind):
    """The exact unconditional prediction of the equal-weight mixture: every prediction is
    affine in (E[data | x], E[eps | x]), so it is the posterior-weighted class predictions."""
    def predict(x, t):
        resp = _posterior_logits(path)(x, t).softmax(-1)
        return sum(resp[:, k, None] * _conditional(path, kind, k, x, t) for k in range(2))
    return predict


GUIDANCE_PATHS = {"vp-sde": VPSDE, "ve-sde": lambda: VESDE(0.01, 5.0), "ot": CondOTPath,
                  "ddpm-linear": lambda: SchedulePath(NoiseSchedule.linear(100, 1e-3, 0.05))}


@pytest.mark.parametrize("kind", ["eps", "data", "v", "score", "velocity"])
@pytest.mark.parametrize("name", GUIDANCE_PATHS)
def test_classifier_guidance_with_the_exact_posterior_is_the_conditional_model(name, kind):
    """p_t(x) p(y | x_t)^1 = p(y) p_t(x | y): guiding the mixture's exact prediction with the
    exact class posterior at scale 1 gives the exact class-conditional prediction."""
    path = GUIDANCE_PATHS[name]()
    g = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(8, 2, generator=g, dtype=DT)
    t = 0.1 + 0.8 * torch.rand(8, generator=g, dtype=DT)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    f = classifier_guided(_mixture(path, kind), path, _posterior_logits(path), labels, 1.0,
                          prediction=kind)
    want = torch.where((labels == 0)[:, None], _conditional(path, kind, 0, x, t),
                       _conditional(path, kind, 1, x, t))
    torch.testing.assert_close(f(x, t), want, rtol=1e-9, atol=1e-9)
    # scale 0 is the unguided model; the guidance is linear in the scale on the score
    torch.testing.assert_close(classifier_guided(_mixture(path, kind), path,
                                                 _posterior_logits(path), labels, 0.0,
                                                 prediction=kind)(x, t),
                               _mixture(path, kind)(x, t))


def test_ddpm_classifier_guidance_is_the_one_rule_in_probgen_time():
    """DDPM's guided_epsilon with the exact posterior (called at t = 1 - step/(T-1)) on the
    mixture's exact noise predictor gives the class-conditional noise at that time."""
    sched = NoiseSchedule.linear(100, 1e-3, 0.05)
    path = SchedulePath(sched)

    class MixtureEps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=DT))

        def forward(self, x, t):
            return _mixture(path, "eps")(x, t)

    model = DiffusionModel(MixtureEps(), sched, (2,)).double()
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(6, 2, generator=g, dtype=DT)
    step = torch.tensor([0, 5, 30, 60, 90, 99])
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    eps, _ = guided_epsilon(model, x, step, labels=labels, classifier=_posterior_logits(path),
                            classifier_scale=1.0)
    t = 1 - step.to(DT) / 99
    want = torch.where((labels == 0)[:, None], _conditional(path, "eps", 0, x, t),
                       _conditional(path, "eps", 1, x, t))
    torch.testing.assert_close(eps, want, rtol=1e-9, atol=1e-9)


def test_classifier_guided_errors_say_what_was_expected():
    path = CondOTPath()
    x, t = torch.zeros(2, 2, dtype=DT), torch.full((2,), 0.5, dtype=DT)
    with pytest.raises(ValueError, match="prediction: expected one of"):
        classifier_guided(lambda x, t: x, path, _posterior_logits(path), 0, 1.0,
                          prediction="noise")
    with pytest.raises(TypeError, match="GaussianPath"):
        classifier_guided(lambda x, t: x, "ot", _posterior_logits(path), 0, 1.0)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        classifier_guided(lambda x, t: x, path, _posterior_logits(path), torch.tensor([0]),
                          1.0)(x, t)
    with pytest.raises(ValueError, match=r"classifier: expected logits of shape \(2, K\)"):
        classifier_guided(lambda x, t: x, path, lambda x, t: x.sum(), 0, 1.0)(x, t)
