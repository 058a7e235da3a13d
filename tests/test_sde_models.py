"""Score SDE models: DDPM and NCSN scores as VP/VE-SDE scores (exact on Gaussian data), a
trained VectorScoreSDE reproducing a Gaussian by every sampler and its exact likelihood,
guidance algebra, images, save/load and errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from probgen.data import ImagePreprocess
from probgen.diffusion import NoiseSchedule, VEScore, gaussian_epsilon
from probgen.inference import (
    ContinuousScoreMatching,
    fit,
    predictor_corrector_sample,
    probability_flow_sample,
    reverse_sde_sample,
)
from probgen.models import (
    MODELS,
    ImageScoreSDE,
    NoiseLevelScore,
    ScoreSDE,
    VectorScoreSDE,
)
from probgen.sde import VESDE, VPSDE, SubVPSDE

DT = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=DT)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=DT)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 20.0)],
                         ids=["vp", "subvp", "ve"])
def test_ddpm_noise_predictor_is_an_sde_score(sde):
    # The exact DDPM noise predictor of N(mu, Sigma) data (T = 1000, linear betas: the VP
    # SDE's discretization) turned into this SDE's score equals the analytic score, at
    # every time whose noise level lies within the DDPM's range.
    schedule = NoiseSchedule.linear(1000)
    score = NoiseLevelScore(VEScore(gaussian_epsilon(schedule, MEAN, COV), schedule), sde)
    t = torch.linspace(0.02, 0.98, 25, dtype=DT)
    _, s = sde.alpha_sigma(t)
    a, _ = sde.alpha_sigma(t)
    levels = schedule.sigma_ve(torch.tensor([0, 999]))
    inside = ((s / a) > levels[0]) & ((s / a) < levels[1])
    x = torch.randn(25, 2, dtype=DT) + MEAN
    got, want = score(x, t), sde.gaussian_prediction(x, t, MEAN, COV)
    torch.testing.assert_close(got[inside], want[inside], rtol=1e-6, atol=1e-6)
    assert inside.sum() >= 20


@pytest.mark.parametrize("sde", [VESDE(0.01, 20.0), VPSDE()], ids=["ve", "vp"])
def test_ncsn_score_is_an_sde_score(sde):
    # NCSN estimates the score of the data blurred by N(0, sigma^2 I): exactly
    # -(Sigma + sigma^2 I)^{-1}(y - mu) for Gaussian data.
    def ncsn(y, sigma):
        c = COV + sigma[:, None, None] ** 2 * torch.eye(2, dtype=DT)
        return -torch.linalg.solve(c, (y - MEAN).unsqueeze(-1)).squeeze(-1)

    score = NoiseLevelScore(ncsn, sde)
    t = torch.rand(16, dtype=DT) * 0.98 + 0.01
    x = torch.randn(16, 2, dtype=DT)
    torch.testing.assert_close(score(x, t), sde.gaussian_prediction(x, t, MEAN, COV))


def test_from_diffusion_uses_the_models_ve_score():
    class Fake(nn.Module):
        def ve_score(self):
            return lambda y, sigma: -y / (1 + sigma[:, None] ** 2)

    score = NoiseLevelScore.from_diffusion(Fake(), VPSDE())
    x = torch.randn(4, 2)
    torch.testing.assert_close(score(x, torch.rand(4)), -x)  # VP keeps N(0, I) data fixed
    with pytest.raises(TypeError, match="ve_score"):
        NoiseLevelScore.from_diffusion(nn.Linear(2, 2), VPSDE())


class _Stub(nn.Module):
    """net(x, t, labels) = x * (1 + t) + labels (so outputs are known)."""

    def forward(self, x, t, labels=None):
        out = x * (1 + t[:, None])
        return out if labels is None else out + labels[:, None].to(x.dtype)


def test_parametrizations_and_guidance():
    sde = VPSDE()
    x, t = torch.randn(5, 2), torch.rand(5)
    _, sigma = sde.alpha_sigma(t)
    eps_model = ScoreSDE(_Stub(), sde, (2,))
    torch.testing.assert_close(eps_model(x, t), -x * (1 + t[:, None]) / sigma[:, None])
    score_model = ScoreSDE(_Stub(), sde, (2,), parametrization="score")
    torch.testing.assert_close(score_model(x, t), x * (1 + t[:, None]))
    cond = ScoreSDE(_Stub(), sde, (2,), parametrization="score", num_classes=3)
    labels = torch.tensor([0, 1, 2, 1, 0])
    guided = cond.guided_score(labels, 3.0)(x, t)
    base = x * (1 + t[:, None])
    # (base + null) + w ((base + y) - (base + null)) with the null class 3, w = 3
    torch.testing.assert_close(guided, base + 3.0 * labels[:, None] - 2.0 * 3.0)
    with pytest.raises(ValueError, match="needs labels"):
        cond.guided_score(None, 2.0)
    with pytest.raises(ValueError, match="unconditional"):
        eps_model.sample((2,), labels=1)
    with pytest.raises(ValueError, match="sampler"):
        eps_model.sample((2,), sampler="euler")  # a method, not a sampler
    with pytest.raises(ValueError, match="parametrization"):
        ScoreSDE(_Stub(), sde, (2,), parametrization="v")
    with pytest.raises(TypeError, match="probgen.sde.SDE"):
        ScoreSDE(_Stub(), "vp", (2,))
    with pytest.raises(ValueError, match="expected shape"):
        eps_model(torch.randn(3, 3), torch.rand(3))
    with pytest.raises(ValueError, match="sde"):
        VectorScoreSDE(2, sde="vpp")
    assert {"VectorScoreSDE", "ImageScoreSDE"} <= set(MODELS)


def _gaussian_batches(n, generator=None):
    z = torch.randn(n, 2, generator=generator, dtype=DT)
    return (MEAN + z @ torch.linalg.cholesky(COV).T).float()


def test_trained_vector_score_sde_reproduces_gaussian_and_its_density():
    torch.manual_seed(0)
    model = VectorScoreSDE(2, sde="vp", hidden_features=[64, 64], embedding_dim=32)
    objective = ContinuousScoreMatching(model, model.sde)
    fit(objective, _gaussian_batches, steps=600, batch_size=256, lr=3e-3,
        lr_schedule="cosine", progress=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for kwargs in ({"sampler": "pc", "steps": 200, "snr": 0.1},
                       {"sampler": "sde", "steps": 200, "method": "euler"},
                       {"sampler": "ode"}):
            x = model.sample((3000,), generator=g, **kwargs).double()
            assert (x.mean(0) - MEAN).abs().max() < 0.12, (kwargs, x.mean(0))
            assert (torch.cov(x.T) - COV).abs().max() < 0.12, (kwargs, torch.cov(x.T))
            assert model.last_nfe > 0
        held_out = _gaussian_batches(500, torch.Generator().manual_seed(9))
        lp = model.log_prob(held_out)
    exact = torch.distributions.MultivariateNormal(MEAN.float(), COV.float()).log_prob(
        held_out)
    assert abs(float((lp - exact).mean())) < 0.15, float((lp - exact).mean())
    assert model.last_solve.nfe > 0


def test_image_model_samples_likelihood_and_state_dict():
    torch.manual_seed(0)
    model = ImageScoreSDE((1, 8, 8), sde="ve", sigma_max=5.0, base_channels=8,
                          channel_mults=(1, 2), num_classes=10)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert model(x, torch.rand(3), torch.tensor([0, 5, 10])).shape == x.shape
    with torch.no_grad():
        for kwargs in ({"sampler": "pc", "steps": 3}, {"sampler": "sde", "steps": 3,
                                                      "method": "heun"},
                       {"sampler": "ode", "method": "euler", "steps": 3}):
            out = model.sample((2,), labels=[1, 7], guidance=1.5, **kwargs)
            assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
        pre = ImagePreprocess(levels=17, transform="signed", shape=(1, 8, 8))
        bpd = model.bits_per_dim(torch.randint(0, 17, (2, 1, 8, 8)), pre, method="rk4",
                                 step_size=0.25)
    assert bpd.shape == (2,) and torch.isfinite(bpd).all()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    copy = ImageScoreSDE((1, 8, 8), sde="ve", sigma_max=5.0, base_channels=8,
                         channel_mults=(1, 2), num_classes=10)
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    t = torch.rand(3)
    torch.testing.assert_close(copy(x, t), model(x, t))
    assert "num_classes=10" in repr(model)


def test_trained_ddpm_samples_through_the_vp_sde():
    # DDPM (T = 1000, linear betas = the VP SDE's discretization) trained on the Gaussian,
    # then used as a VP-SDE score: the SDE's predictor-corrector and probability-flow
    # samplers reproduce the data.
    from probgen.inference import DiffusionLoss
    from probgen.models import VectorDDPM

    torch.manual_seed(0)
    ddpm = VectorDDPM(2, num_steps=1000, schedule="linear", hidden_features=[64, 64],
                      embedding_dim=32)
    fit(DiffusionLoss(ddpm), _gaussian_batches, steps=600, batch_size=256, lr=3e-3,
        lr_schedule="cosine", progress=False)
    sde = VPSDE()
    score = NoiseLevelScore.from_diffusion(ddpm, sde)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for x in (predictor_corrector_sample(sde, score, 3000, (2,), steps=200, snr=0.1,
                                             generator=g).samples,
                  probability_flow_sample(sde, score, 3000, (2,), generator=g).samples):
            x = x.double()
            assert (x.mean(0) - MEAN).abs().max() < 0.12, x.mean(0)
            assert (torch.cov(x.T) - COV).abs().max() < 0.12, torch.cov(x.T)


def test_trained_ncsn_samples_through_the_ve_sde():
    # NCSN's ladder is the VE SDE's discretization: a noise-conditional ScoreMLP trained on
    # VESDE.discrete_sigmas serves as the VE SDE's score for its reverse SDE.
    from probgen.inference import NoiseConditionalScoreMatching
    from probgen.models import ScoreMLP

    torch.manual_seed(0)
    sde = VESDE(0.01, 10.0)
    net = ScoreMLP(2, [64, 64], noise_conditional=True)
    fit(NoiseConditionalScoreMatching(net, sde.discrete_sigmas(30)), _gaussian_batches,
        steps=600, batch_size=256, lr=3e-3, lr_schedule="cosine", progress=False)
    score = NoiseLevelScore(net, sde, source=net)
    with torch.no_grad():
        x = reverse_sde_sample(sde, score, 3000, (2,), steps=200,
                               generator=torch.Generator().manual_seed(5)).samples.double()
    assert (x.mean(0) - MEAN).abs().max() < 0.12, x.mean(0)
    assert (torch.cov(x.T) - COV).abs().max() < 0.12, torch.cov(x.T)
