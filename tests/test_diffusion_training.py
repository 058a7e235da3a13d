"""Diffusion objectives through the one trainer, parametrizations, label dropout, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from probgen.cli import main
from probgen.diffusion import NoiseSchedule, gaussian_epsilon
from probgen.inference import DiffusionLoss, NoisyClassifierLoss, fit
from probgen.models import DDPM, DiffusionModel, VectorDDPM
from probgen.nn import ConditionalMLP, UNetClassifier

MU = torch.tensor([1.0, -2.0])
L = torch.tensor([[1.2, 0.0], [0.5, 0.4]])  # cov = L L^T = [[1.44, 0.6], [0.6, 0.41]]


def _gaussian(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return MU + torch.randn(n, 2, generator=generator) @ L.T


def test_vector_ddpm_learns_a_gaussian_through_fit():
    torch.manual_seed(0)
    # user betas: linear 1e-3 -> 0.2 over T = 100 ends at alpha_bar = 3e-5 (noise)
    model = VectorDDPM(2, num_steps=100, betas=torch.linspace(1e-3, 0.2, 100).tolist(),
                       hidden_features=[64, 64], embedding_dim=32)
    data = _gaussian(4096, torch.Generator().manual_seed(1))
    history = fit(DiffusionLoss(model), data, steps=600, batch_size=256, lr=3e-3,
                  progress=False, log_every=100)
    assert history.final["loss"] < 0.4  # from 1.0 (a zero network's MSE)
    for kw in ({}, {"sampler": "ddim", "steps": 50}):  # 600 steps only: loose tolerances
        x = model.sample((3000,), generator=torch.Generator().manual_seed(0), **kw)
        assert torch.allclose(x.mean(0), MU, atol=0.3), x.mean(0)
        assert torch.allclose(torch.cov(x.T), L @ L.T, atol=0.35), torch.cov(x.T)


class _ExactGaussian(nn.Module):
    """The exact epsilon of N(MU, LL^T) turned into the parametrization asked for."""

    def __init__(self, sched: NoiseSchedule, parametrization: str) -> None:
        super().__init__()
        self.sched, self.p = sched, parametrization
        self.eps = gaussian_epsilon(sched, MU.double(), (L @ L.T).double())
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        step = self.sched.step_of_time(t.double()).round().long()  # t = 1 - step / (T - 1)
        return self.sched.convert(self.eps(x, step), x, step, "eps", self.p)


@pytest.mark.parametrize("parametrization", ["x0", "v"])
def test_x0_and_v_parametrizations_sample_the_same_gaussian(parametrization):
    sched = NoiseSchedule.cosine(100)
    model = DiffusionModel(_ExactGaussian(sched, parametrization), sched, (2,),
                           parametrization=parametrization).double()
    reference = DiffusionModel(_ExactGaussian(sched, "eps"), sched, (2,)).double()
    z = torch.randn(500, 2, dtype=torch.float64)
    a = model.run(500, noise=z, sampler="ddim", steps=25).samples
    b = reference.run(500, noise=z, sampler="ddim", steps=25).samples
    assert torch.allclose(a, b, atol=1e-8)
    step = torch.full((500,), 40)
    assert torch.allclose(model.eps(z, step), reference.eps(z, step), atol=1e-10)
    # the DDPM's score: -eps / sqrt(1 - alpha_bar)
    ab = sched.alphas_cumprod[40]
    assert torch.allclose(model.score(z, step), -reference.eps(z, step) / (1 - ab).sqrt())


def test_training_targets_per_parametrization():
    """The MSE is taken against eps, x0 or v: a network returning the target has zero loss."""
    sched = NoiseSchedule.linear(50)
    x0 = _gaussian(64).double()

    class Oracle(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p, self.dummy = p, nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return {"eps": noise, "x0": x0, "v": sched.convert(noise, x, step, "eps", "v")}[self.p]

    for p in ("eps", "x0", "v"):
        model = DiffusionModel(Oracle(p), sched, (2,), parametrization=p).double()
        torch.manual_seed(3)
        step = torch.randint(0, 50, (64,))
        noise = torch.randn_like(x0)
        torch.manual_seed(3)
        out = DiffusionLoss(model)(x0)
        assert float(out["mse"]) < 1e-20, p


def test_label_dropout_and_hybrid_loss():
    torch.manual_seed(0)
    model = VectorDDPM(2, num_steps=50, hidden_features=[16], num_classes=3,
                       variance="learned_range")
    seen = []
    original = model.output

    def spy(x, step, labels=None):
        seen.append(labels.clone())
        return original(x, step, labels)

    model.output = spy
    objective = DiffusionLoss(model, "hybrid", label_dropout=0.3)
    x, y = torch.randn(20000, 2), torch.randint(0, 3, (20000,))
    out = objective((x, y))
    dropped = (seen[-1] == 3).float().mean()
    assert abs(float(dropped) - 0.3) < 0.02
    assert torch.equal(seen[-1][seen[-1] != 3], y[seen[-1] != 3])
    objective.eval()
    objective((x, y))
    assert not (seen[-1] == 3).any()  # no dropout when evaluating
    out["loss"].backward()
    assert model.network.head.weight.grad.abs().sum() > 0
    assert set(out) >= {"loss", "mse", "bpd_estimate", "nll"}


def test_hybrid_loss_trains_learned_variances():
    """The bound's gradient reaches only the variance output in the hybrid loss (the mean is
    stopped), and the 'vlb' loss reaches both."""
    torch.manual_seed(0)
    model = VectorDDPM(2, num_steps=20, hidden_features=[16], variance="learned_range")
    x = _gaussian(256)
    grads = {}
    for loss in ("simple", "hybrid", "vlb"):
        model.zero_grad()
        torch.manual_seed(1)  # the same steps and noise for the three losses
        DiffusionLoss(model, loss, vlb_weight=1.0)(x)["loss"].backward()
        grads[loss] = model.network.head.weight.grad.clone()  # rows 0-1 eps, 2-3 variance
    assert torch.equal(grads["simple"][2:], torch.zeros(2, 16))
    assert grads["hybrid"][2:].abs().sum() > 0
    assert torch.allclose(grads["hybrid"][:2], grads["simple"][:2])  # mean: MSE only
    assert not torch.allclose(grads["vlb"][:2], grads["simple"][:2])


def test_noisy_classifier_trains_and_guides():
    torch.manual_seed(0)
    sched = NoiseSchedule.linear(100)
    clf = ConditionalMLP(2, [32, 32], out_features=2)
    y = torch.randint(0, 2, (4096,))
    x = torch.randn(4096, 2) * 0.3 + torch.stack([2 * y - 1.0, torch.zeros(4096)], 1)
    history = fit(NoisyClassifierLoss(clf, sched), (x, y), steps=200, batch_size=256,
                  lr=3e-3, progress=False, log_every=50)
    assert history.final["accuracy"] > 0.75  # averaged over noise levels
    img = UNetClassifier((1, 8, 8), num_classes=10, base_channels=8)
    out = NoisyClassifierLoss(img, sched, levels=17)((torch.randint(0, 17, (4, 1, 8, 8)),
                                                      torch.tensor([0, 1, 2, 3])))
    assert out["loss"].isfinite()


def test_objective_errors():
    model = VectorDDPM(2, num_steps=10, hidden_features=[8])
    with pytest.raises(ValueError, match="loss: expected one of"):
        DiffusionLoss(model, "kl")
    with pytest.raises(ValueError, match="learned_range"):
        DiffusionLoss(model, "hybrid")
    with pytest.raises(ValueError, match="unconditional"):
        DiffusionLoss(model, label_dropout=0.1)
    images = DDPM((1, 8, 8), num_steps=10, base_channels=8)
    with pytest.raises(ValueError, match=r"integer pixels in 0..16"):
        DiffusionLoss(images, levels=17)(torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="variance: expected one of"):
        VectorDDPM(2, variance="learned")


def test_cli_digits_preset_and_its_errors(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fit", "ddpm-digits", "--out", str(out), "--quiet", "--set", "train.steps=3",
            "--set", "sample.n=4", "--set", "sample.steps=3", "--set", "eval.num_samples=20",
            "--set", "model.base_channels=8"]
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert {"test/bits_per_dim", "test/mse", "sample/seconds"} <= set(result)
    assert (out / "samples.png").is_file()
    bad = ["fit", "ddpm-digits", "--out", str(tmp_path / "bad"), "--quiet",
           "--set", "train.steps=1", "--set", 'data.preprocess="logit"']
    assert main(bad) != 0
    assert 'preprocess = "signed"' in capsys.readouterr().err
