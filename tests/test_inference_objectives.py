"""Objectives against closed forms: Gaussian NLL, reverse KL to a Gaussian; the 2-D energies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probgen.energies import (
    ENERGIES,
    get_energy,
    log_density_ring,
    potential_u1,
    potential_u2,
    potential_u3,
    potential_u4,
)
from probgen.inference import MaximumLikelihood, ReverseKL, fit
from probgen.protocols import DensityModel


class DiagGaussian(nn.Module):
    """A learnable diagonal Gaussian implementing the DensityModel protocol."""

    def __init__(self, loc, scale):
        super().__init__()
        self.loc = nn.Parameter(torch.as_tensor(loc, dtype=torch.float64).clone())
        self.log_scale = nn.Parameter(torch.as_tensor(scale, dtype=torch.float64).log())

    def distribution(self, context=None):
        shift = 0.0 if context is None else context
        base = torch.distributions.Normal(self.loc + shift, self.log_scale.exp())
        return torch.distributions.Independent(base, 1)

    def log_prob(self, x, context=None):
        return self.distribution(context).log_prob(x)

    def sample(self, shape=(), context=None):
        return self.distribution(context).sample(shape)

    def rsample_and_log_prob(self, shape=(), context=None):
        d = self.distribution(context)
        x = d.rsample(shape)
        return x, d.log_prob(x)


def _normal_nll(x, loc, scale):
    loc, scale = torch.as_tensor(loc, dtype=x.dtype), torch.as_tensor(scale, dtype=x.dtype)
    return (0.5 * ((x - loc) / scale) ** 2 + scale.log() + 0.5 * math.log(2 * math.pi)).sum(-1)


def test_protocol_is_satisfied_by_test_model():
    assert isinstance(DiagGaussian([0.0], [1.0]), DensityModel)


def test_ml_gives_closed_form_nll_and_bits_per_dim():
    model = DiagGaussian([1.0, -2.0], [0.5, 3.0])
    x = torch.randn(50, 2, dtype=torch.float64)
    expected = _normal_nll(x, torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])).mean()
    out = MaximumLikelihood(model)(x)
    assert set(out) == {"loss", "nll"}
    assert out["nll"].item() == pytest.approx(float(expected), rel=1e-12)
    out = MaximumLikelihood(model, num_dims=2, ladj_offset=0.3)(x)
    assert out["nll"].item() == pytest.approx(float(expected) - 0.3, rel=1e-12)
    assert out["bits_per_dim"].item() == pytest.approx((float(expected) - 0.3) / (2 * math.log(2)))


def test_ml_with_preprocess_and_levels():
    model = DiagGaussian([0.0, 0.0], [1.0, 1.0])
    x = torch.randint(0, 4, (6, 2)).double()

    def preprocess(v):
        y = v / 4.0 * 2 - 1  # to [-1, 1): log|det| = D log 2 from the [0, 1) scale
        return y, torch.full((v.shape[0],), 2 * math.log(2.0), dtype=v.dtype)

    out = MaximumLikelihood(model, preprocess=preprocess, levels=4)(x)
    y, ladj = preprocess(x)
    nll = (_normal_nll(y, torch.zeros(2), torch.ones(2)) - ladj + 2 * math.log(4)).mean()
    assert out["nll"].item() == pytest.approx(float(nll))
    assert out["bits_per_dim"].item() == pytest.approx(float(nll) / (2 * math.log(2)))


def test_ml_passes_context_or_ignores_labels():
    model = DiagGaussian([0.0], [1.0])
    x, c = torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)
    with_context = MaximumLikelihood(model)((x, c))["nll"]
    assert with_context.item() == pytest.approx(0.5 + 0.5 * math.log(2 * math.pi))
    ignored = MaximumLikelihood(model, use_context=False)((x, torch.arange(4)))["nll"]
    assert ignored.item() == pytest.approx(0.5 * math.log(2 * math.pi))


def test_ml_errors():
    with pytest.raises(TypeError, match="model: expected an nn.Module with log_prob"):
        MaximumLikelihood(torch.distributions.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="num_dims: expected a positive int"):
        MaximumLikelihood(DiagGaussian([0.0], [1.0]), num_dims=0)

    class PerDim(nn.Module):
        def log_prob(self, x, context=None):
            return -x**2

    with pytest.raises(ValueError, match="sum over the event dimensions"):
        MaximumLikelihood(PerDim())(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="batch: expected a Tensor x or a pair"):
        MaximumLikelihood(PerDim())([torch.zeros(1)] * 3)


def _gauss_kl(m1, s1, m2, s2):
    return float((torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum())


def test_reverse_kl_equals_closed_form_gaussian_kl():
    m_t, s_t = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 2.0],
                                                                             dtype=torch.float64)
    target = torch.distributions.Independent(torch.distributions.Normal(m_t, s_t), 1)
    q = DiagGaussian([0.0, 0.0], [1.0, 1.0])
    out = ReverseKL(q, target.log_prob)(200_000)
    expected = _gauss_kl(q.loc.detach(), q.log_scale.exp().detach(), m_t, s_t)
    assert set(out) == {"loss", "kl", "log_q", "log_p"}
    assert out["kl"].item() == pytest.approx(expected, rel=0.01)
    assert out["loss"].item() == out["kl"].item()  # one tensor: the loss is the estimate
    # mean(log q - log p) and mean(log q) - mean(log p) round differently (~1e-15)
    assert (out["log_q"] - out["log_p"]).item() == pytest.approx(out["kl"].item(), rel=1e-12)
    # At the target itself, every sample has log q = log p: the KL is exactly 0.
    at_target = DiagGaussian(m_t, s_t)
    assert ReverseKL(at_target, target.log_prob, num_samples=64)()["kl"].item() == pytest.approx(
        0.0, abs=1e-12)


def test_reverse_kl_fit_reaches_the_target():
    m_t, s_t = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 2.0],
                                                                             dtype=torch.float64)
    target = torch.distributions.Independent(torch.distributions.Normal(m_t, s_t), 1)
    q = DiagGaussian([0.0, 0.0], [1.0, 1.0])
    fit(ReverseKL(q, target.log_prob), None, steps=400, batch_size=256, lr=0.05,
        lr_schedule="cosine", progress=False, log_every=100)
    assert torch.allclose(q.loc.detach(), m_t, atol=0.05)
    assert torch.allclose(q.log_scale.exp().detach(), s_t, rtol=0.05)


def test_reverse_kl_with_named_energy_and_distribution_fallback():
    class OnlyDistribution(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(2))

        def distribution(self, context=None):
            return torch.distributions.Independent(torch.distributions.Normal(self.loc, 1.0), 1)

    objective = ReverseKL(OnlyDistribution(), "u1", num_samples=32)
    out = objective()
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert list(objective.parameters()) == [objective.model.loc]


def test_reverse_kl_errors():
    q = DiagGaussian([0.0], [1.0])
    with pytest.raises(ValueError, match=r"target: unknown energy 'banana'; expected one of"):
        ReverseKL(q, "banana")
    with pytest.raises(TypeError, match="target: expected a callable"):
        ReverseKL(q, 3.0)
    with pytest.raises(TypeError, match="batch: ReverseKL draws its own samples"):
        ReverseKL(q, lambda x: -x.pow(2).sum(-1))(torch.zeros(3))
    with pytest.raises(ValueError, match="target: expected log-densities of shape"):
        ReverseKL(q, lambda x: -x.pow(2))(4)


# Hand-computed from Rezende & Mohamed (2015), Table 1.
_S = 1.0 / (1.0 + math.exp(-(0.5 - 1.0) / 0.3))


@pytest.mark.parametrize(
    "fn,z,expected",
    [
        # U1 at (0, 2): ring term 0; -log(2 exp(-0.5 (2/0.6)^2)).
        (potential_u1, (0.0, 2.0), 0.5 * (2 / 0.6) ** 2 - math.log(2.0)),
        # U1 at (1, 1): ||z|| = sqrt 2.
        (potential_u1, (1.0, 1.0), 0.5 * ((math.sqrt(2) - 2) / 0.4) ** 2
         - math.log(math.exp(-0.5 * (1 / 0.6) ** 2) + math.exp(-0.5 * (3 / 0.6) ** 2))),
        # U2 at (1, 0): w1 = sin(pi/2) = 1.
        (potential_u2, (1.0, 0.0), 0.5 * (1 / 0.4) ** 2),
        # U3 at (1, 1): w1 = 1, w2 = 3.
        (potential_u3, (1.0, 1.0), -math.log(1.0 + math.exp(-0.5 * (3 / 0.35) ** 2))),
        # U4 at (0.5, 0): w1 = sin(pi/4), w3 = 3 sigma(-0.5/0.3).
        (potential_u4, (0.5, 0.0), -math.log(
            math.exp(-0.5 * (math.sin(math.pi / 4) / 0.4) ** 2)
            + math.exp(-0.5 * ((-math.sin(math.pi / 4) + 3 * _S) / 0.35) ** 2))),
    ],
)
def test_energies_match_published_formulas(fn, z, expected):
    value = fn(torch.tensor(z, dtype=torch.float64))
    assert float(value) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_energies_are_normalizable(name):
    """exp(log density) integrates to a finite positive number; mass stays near the box."""
    log_p = get_energy(name)
    n, half = 801, 8.0
    grid = torch.linspace(-half, half, n, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    values = log_p(z)
    assert values.shape == (n, n) and torch.isfinite(values).all()
    density = values.exp()
    cell = (2 * half / (n - 1)) ** 2
    mass = float(density.sum()) * cell
    assert math.isfinite(mass) and mass > 0
    inside = float(density[(grid.abs() <= 5.0)][:, (grid.abs() <= 5.0)].sum()) * cell
    assert inside / mass > 0.999
    if name == "ring":
        assert mass == pytest.approx(1.0, abs=1e-4)
    # Inside the paper's box, the confined densities equal -U exactly.
    point = torch.tensor([0.3, -0.7], dtype=torch.float64)
    potential = {"u1": potential_u1, "u2": potential_u2, "u3": potential_u3, "u4": potential_u4}
    if name in potential:
        assert float(log_p(point)) == pytest.approx(-float(potential[name](point)))


def test_energy_errors_and_shapes():
    with pytest.raises(ValueError, match=r"target: unknown energy 'u9'; expected one of \['ring'"):
        get_energy("u9")
    with pytest.raises(ValueError, match=r"z: expected shape \(\.\.\., 2\), got \(3,\)"):
        potential_u1(torch.zeros(3))
    assert log_density_ring(torch.zeros(5, 7, 2)).shape == (5, 7)


def test_ml_bits_per_dim_agrees_with_image_preprocess():
    from probgen.data import ImagePreprocess

    pre = ImagePreprocess(levels=256, transform="logit", flatten=True)
    model = DiagGaussian([0.0] * 16, [2.0] * 16)
    x = torch.randint(0, 256, (5, 1, 4, 4)).double()
    with torch.random.fork_rng():
        out = MaximumLikelihood(model, preprocess=pre)(x)
    y, ladj = pre(x)  # the same dequantization noise
    expected = pre.bits_per_dim(model.log_prob(y), ladj).mean()
    assert out["bits_per_dim"].item() == pytest.approx(expected.item(), rel=1e-10)
