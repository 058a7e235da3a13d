"""Flow matching against mathematics: the CFM loss at the exact marginal field (its closed
form, and Lipman et al.'s Theorem 2: any other field costs E||delta||^2 more); the closed-form
and a learned field carry the source onto a Gaussian; solvers converge at their orders with
the stated NFE; exact log-likelihoods and a trained model's density integrating to 1;
guidance; reflow straightens exactly; the objective from the CLI registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from probgen.couplings import ExactOTCoupling
from probgen.inference import (
    ConditionalFlowMatching,
    fit,
    guided,
    ode_sample,
    reflow_pairs,
    straightness,
)
from probgen.inference.registry import OBJECTIVES, build_registered
from probgen.metrics import integrate_density_2d
from probgen.models import MODELS, FlowMatching, VectorFlowMatching
from probgen.paths import CondOTPath, LinearPath, VEPath, VPPath

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.8, 0.3], [0.3, 0.4]], dtype=torch.float64)


class GaussianField(nn.Module):
    """The exact marginal field of a path for N(MEAN, COV) data (float64)."""

    def __init__(self, path: object) -> None:
        super().__init__()
        self.path = path
        self.register_buffer("mean", MEAN.clone())
        self.register_buffer("cov", COV.clone())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.path.gaussian_prediction(x, t, self.mean, self.cov, "velocity")


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.mean(0), torch.cov(x.T)


def test_cfm_loss_at_the_marginal_field_is_its_closed_form_and_minimal():
    """N(0, I) data on the OT path: the loss at the exact field u is pi/2 per dimension,
    and L(u + delta) - L(u) = E||delta||^2 / D (the CFM and FM losses differ by a constant,
    so the conditional loss is minimized by the marginal field)."""
    def exact(x, t):
        return ((2 * t - 1) / (t**2 + (1 - t) ** 2))[:, None] * x

    delta = torch.tensor([0.3, -0.2])
    data = torch.randn(400000, 2)
    cfm = ConditionalFlowMatching(exact, CondOTPath())
    with torch.random.fork_rng():
        torch.manual_seed(1)
        base = float(cfm(data)["loss"])
    moved = ConditionalFlowMatching(lambda x, t: exact(x, t) + delta, CondOTPath())
    with torch.random.fork_rng():
        torch.manual_seed(1)  # the same x0 and t: the difference has little noise
        other = float(moved(data)["loss"])
    assert base == pytest.approx(math.pi / 2, abs=0.015)
    assert other - base == pytest.approx(float(delta.pow(2).mean()), abs=0.004)


@pytest.mark.parametrize("path", [CondOTPath(), CondOTPath(sigma_min=0.05), LinearPath(),
                                  VPPath(), VEPath(sigma_max=4.0)], ids=repr)
def test_closed_form_field_sampled_by_dopri5_reproduces_the_gaussian(path):
    """Samples of the path's law at t = 0 (N(0, I) for the OT paths), transported by the
    exact field with dopri5, have the law of the path's end (MC tolerance)."""
    g = torch.Generator().manual_seed(0)
    m0, c0 = path.gaussian_marginal(0.0, MEAN, COV)
    x0 = m0 + torch.randn(20000, 2, generator=g, dtype=torch.float64) @ \
        torch.linalg.cholesky(c0).T
    res = ode_sample(GaussianField(path), x0, method="dopri5", t1=path.t_end, rtol=1e-6,
                     atol=1e-8)
    mean, cov = _moments(res.samples)
    want_mean, want_cov = path.gaussian_marginal(path.t_end, MEAN, COV)
    torch.testing.assert_close(mean, want_mean, atol=0.03, rtol=0)
    torch.testing.assert_close(cov, want_cov, atol=0.04, rtol=0)
    assert res.nfe > 0


def test_fixed_step_solvers_converge_at_their_orders_with_their_nfe():
    path = CondOTPath()
    field = GaussianField(path)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    ref = ode_sample(field, x0, method="dopri5", rtol=1e-12, atol=1e-12).samples
    for method, order, per_step in (("euler", 1, 1), ("midpoint", 2, 2), ("heun2", 2, 2),
                                    ("rk4", 4, 4)):
        errors = []
        for steps in (16, 32):
            res = ode_sample(field, x0, method=method, steps=steps)
            assert res.nfe == per_step * steps, method
            errors.append(float((res.samples - ref).abs().max()))
        ratio = errors[0] / errors[1]
        assert ratio > 0.75 * 2**order, (method, ratio)  # at least the method's order


def test_log_prob_of_the_closed_form_field_is_the_exact_gaussian_density():
    model = FlowMatching(GaussianField(CondOTPath()), CondOTPath(), (2,), rtol=1e-8,
                         atol=1e-8)
    x = MEAN + torch.randn(50, 2, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(MEAN, COV).log_prob(x)
    torch.testing.assert_close(model.log_prob(x), exact, rtol=0, atol=1e-5)
    assert model.last_solve.kind == "log_prob" and model.last_solve.nfe > 0


def test_trained_model_transports_to_the_data_and_its_density_integrates_to_one():
    torch.manual_seed(0)
    chol = torch.linalg.cholesky(COV).float()

    def data(n: int, generator: torch.Generator | None = None) -> Tensor:
        return MEAN.float() + torch.randn(n, 2, generator=generator) @ chol.T

    model = VectorFlowMatching(2, hidden_features=[32, 32], embedding_dim=32, rtol=1e-4,
                               atol=1e-4)
    objective = ConditionalFlowMatching(model, model.path, ExactOTCoupling())
    fit(objective, data, steps=500, batch_size=256, lr=3e-3, progress=False)
    x = model.sample((4000,))
    mean, cov = _moments(x.double())
    torch.testing.assert_close(mean, MEAN, atol=0.08, rtol=0)
    torch.testing.assert_close(cov, COV, atol=0.08, rtol=0)
    with torch.no_grad():
        total = integrate_density_2d(model.log_prob, bounds=((-2.5, 4.5), (-3.5, 2.5)),
                                     resolution=36)
    assert total == pytest.approx(1.0, abs=0.01)


def test_guided_field_is_classifier_free_guidance():
    def field(x, t, labels=None):
        y = torch.full((x.shape[0],), 9) if labels is None else labels
        return x * (1.0 + y.to(x.dtype))[:, None] + t[:, None]

    x, t = torch.randn(4, 2), torch.rand(4)
    labels = torch.tensor([0, 1, 2, 3])
    for null in (None, 9):  # weight 3: v(. | null) + 3 (v(. | y) - v(. | null))
        v = guided(field, labels, 3.0, null)(x, t)
        want = 3.0 * field(x, t, labels) - 2.0 * field(x, t, torch.full((4,), 9))
        torch.testing.assert_close(v, want)
    torch.testing.assert_close(guided(field, labels, None, 9)(x, t), field(x, t, labels))
    torch.testing.assert_close(guided(field, labels, 0.0, 9)(x, t),
                               field(x, t, torch.full((4,), 9)))  # w = 0: unconditional
    with pytest.raises(ValueError, match="needs labels"):
        guided(field, None, 1.0, 9)


def test_class_conditional_field_with_label_dropout_samples_each_class():
    torch.manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])

    def data(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, 2, (n,), generator=generator)
        return centres[y] + 0.3 * torch.randn(n, 2, generator=generator), y

    model = VectorFlowMatching(2, num_classes=2, hidden_features=[64, 64], embedding_dim=32)
    objective = ConditionalFlowMatching(model, model.path, conditional=True,
                                        label_dropout=0.2, num_classes=2)
    fit(objective, data, steps=400, batch_size=256, lr=3e-3, progress=False)
    for label, sign in ((0, -1), (1, 1)):
        x = model.sample((500,), method="midpoint", steps=20, labels=label)
        assert float((sign * x[:, 0] > 0).float().mean()) > 0.97
        sharp = model.sample((500,), method="midpoint", steps=20, labels=label, guidance=3.0)
        assert float((sign * sharp[:, 0] > 0).float().mean()) > 0.97
        assert model.last_nfe == 40
    both = model.sample((1000,), method="midpoint", steps=20)  # the null class: p(x)
    assert 0.35 < float((both[:, 0] > 0).float().mean()) < 0.65
    mixed = model.sample((4,), method="euler", steps=5, labels=[0, 1])
    assert mixed.shape == (4, 2)


def test_reflow_pairs_give_a_straight_field_exactly():
    """Pairs (x0, T(x0)) of the curved Gaussian flow (T affine: T(x) = M x + c) define the
    straight field v(x, t) = (M - I)((1 - t) I + t M)^{-1}(x - t c) + c: its paired CFM
    loss on the pairs is 0 and its straightness is 0; the original field is curved."""
    path = CondOTPath()
    curved = GaussianField(path)
    x0 = torch.randn(2000, 2, dtype=torch.float64)
    _, x1 = reflow_pairs(curved, x0, rtol=1e-10, atol=1e-10, batch_size=700)
    c = ode_sample(curved, torch.zeros(1, 2, dtype=torch.float64), rtol=1e-10,
                   atol=1e-10).samples[0]
    m = torch.linalg.lstsq(x0, x1 - c).solution.T  # T is affine: recovered exactly
    torch.testing.assert_close(x0 @ m.T + c, x1, rtol=0, atol=1e-7)
    eye = torch.eye(2, dtype=torch.float64)

    def straight(x, t):
        a = (1 - t)[:, None, None] * eye + t[:, None, None] * m
        y = torch.linalg.solve(a, (x - t[:, None] * c).unsqueeze(-1)).squeeze(-1)
        return y @ (m - eye).T + c

    paired = ConditionalFlowMatching(straight, LinearPath(), paired=True)
    assert float(paired((x0, x1))["loss"]) < 1e-20
    assert float(ConditionalFlowMatching(curved, LinearPath(), paired=True)((x0, x1))["loss"]
                 ) > 1e-3
    assert straightness(straight, x0[:500], steps=20) < 1e-12
    assert straightness(curved, x0[:500], steps=20) > 1e-3


def test_registered_objective_and_errors():
    assert "cfm" in OBJECTIVES and "VectorFlowMatching" in MODELS
    model = VectorFlowMatching(2, hidden_features=[8])

    class Data:
        preprocess = None

    obj = build_registered("cfm", model, Data(), {"coupling": "sinkhorn", "reg": 0.1})
    assert obj.coupling.reg == 0.1 and obj.likelihood is not None
    with torch.no_grad():
        out = obj(torch.randn(16, 2))
    assert set(out) == {"loss", "cfm", "nll"}
    with pytest.raises(ValueError, match="do not apply"):
        build_registered("cfm", model, Data(), {"sigma": 0.1})
    with pytest.raises(ValueError, match="needs .x, labels. batches"):
        ConditionalFlowMatching(VectorFlowMatching(2, num_classes=2, hidden_features=[8]),
                                CondOTPath(), conditional=True)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="paired objective"):
        ConditionalFlowMatching(model, CondOTPath(), ExactOTCoupling(), paired=True)
    with pytest.raises(ValueError, match="num_classes"):
        ConditionalFlowMatching(model, CondOTPath(), conditional=True, label_dropout=0.1)
    with pytest.raises(TypeError, match="AffinePath"):
        ConditionalFlowMatching(model, "ot")
    with pytest.raises(ValueError, match="method"):
        model.sample((2,), method="rk45")
    with pytest.raises(ValueError, match="adaptive"):
        ode_sample(model, torch.randn(2, 2), method="dopri5", steps=4)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample((2,), labels=1)
    with pytest.raises(ValueError, match="shape of x"):
        ode_sample(lambda x, t: x[:, :1], torch.randn(2, 2), method="euler", steps=1)
