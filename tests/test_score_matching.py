"""Score-matching losses against Gaussian closed forms: minimized by the true score (value
and zero gradient there), a wrong score ranks worse, implicit = sliced up to a constant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probgen.inference.score_matching import (
    DenoisingScoreMatching,
    ImplicitScoreMatching,
    NoiseConditionalScoreMatching,
    SlicedScoreMatching,
)
from probgen.nn import MLP
from probgen.score import geometric_sigmas

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
EYE = torch.eye(2, dtype=torch.float64)


def gaussian_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, dtype=torch.float64, generator=g)
    return MU + z @ torch.linalg.cholesky(COV).T


class LinearScore(nn.Module):
    """s(x) = -A (x - m): the score of N(m, A^-1) when A is symmetric positive definite."""

    def __init__(self, A, m):
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.m = nn.Parameter(m.clone())

    def forward(self, x, sigma=None):
        return -(x - self.m) @ self.A.T


class PerturbedScore(nn.Module):
    """s(x, sigma) = -(C + sigma^2 I)^-1 (x - m): the score of N(m, C) convolved with noise."""

    def __init__(self, C, m):
        super().__init__()
        self.C = nn.Parameter(C.clone())
        self.m = nn.Parameter(m.clone())

    def forward(self, x, sigma):
        cov = self.C + sigma[:, None, None] ** 2 * EYE
        return -torch.linalg.solve(cov, (x - self.m).unsqueeze(-1)).squeeze(-1)


def loss_and_grad(objective, batch):
    model = objective.score
    model.zero_grad()
    loss = objective(batch)["loss"]
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    return loss.item(), grad


def empirical_optimum(x):
    mean = x.mean(0)
    d = x - mean
    return torch.linalg.inv(d.T @ d / x.shape[0]), mean


def test_implicit_exact_is_minimized_by_the_true_score_with_the_fisher_value():
    x = gaussian_data(5000)
    A, m = empirical_optimum(x)  # the score of the data set's own Gaussian fit
    ism = ImplicitScoreMatching(LinearScore(A, m), divergence="exact")
    value, grad = loss_and_grad(ism, x)
    assert grad.abs().max().item() < 1e-10  # a stationary point, exactly
    # value = -1/2 E||grad log p||^2 = -1/2 tr(Sigma^-1)
    assert value == pytest.approx(-0.5 * torch.trace(A).item(), rel=1e-10)
    for wrong in (LinearScore(0.5 * A, m), LinearScore(A, m + 0.3), LinearScore(EYE, MU)):
        worse, wrong_grad = loss_and_grad(ImplicitScoreMatching(wrong, divergence="exact"), x)
        assert worse > value + 0.02 and wrong_grad.abs().max() > 0.05


def test_implicit_hutchinson_is_unbiased_for_the_exact_loss():
    torch.manual_seed(0)
    x = gaussian_data(200000)
    model = LinearScore(torch.tensor([[0.9, 0.2], [-0.1, 1.4]], dtype=torch.float64), MU)
    exact = ImplicitScoreMatching(model, divergence="exact")(x)["loss"].item()
    hutch = ImplicitScoreMatching(model, divergence="hutchinson")(x)["loss"].item()
    assert hutch == pytest.approx(exact, abs=0.01)
    # "auto" is exact in 2-D: the same value with no noise
    assert ImplicitScoreMatching(model)(x)["loss"].item() == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("variance_reduction", [True, False])
def test_sliced_is_minimized_by_the_true_score(variance_reduction):
    torch.manual_seed(1)
    x = gaussian_data(4000)
    A, m = empirical_optimum(x)
    ssm = SlicedScoreMatching(LinearScore(A, m), num_projections=100,
                              variance_reduction=variance_reduction)
    value, grad = loss_and_grad(ssm, x)
    assert value == pytest.approx(-0.5 * torch.trace(A).item(), abs=0.03)
    assert grad.abs().max().item() < 0.03  # zero up to Monte Carlo error over projections
    worse, wrong_grad = loss_and_grad(SlicedScoreMatching(
        LinearScore(0.5 * A, m + 0.3), num_projections=100,
        variance_reduction=variance_reduction), x)
    assert worse > value + 0.1 and wrong_grad.abs().max() > 0.2


def test_implicit_and_sliced_agree_up_to_a_constant_on_the_same_network():
    torch.manual_seed(2)
    x = gaussian_data(3000).float()
    gaps, cosines = [], []
    for seed in range(3):
        torch.manual_seed(10 + seed)
        net = MLP(2, 2, hidden_features=[32, 32], activation="tanh")
        ism = ImplicitScoreMatching(net, divergence="exact")
        ssm = SlicedScoreMatching(net, num_projections=200)
        (a, ga), (b, gb) = loss_and_grad(ism, x), loss_and_grad(ssm, x)
        gaps.append(a - b)
        cosines.append(torch.nn.functional.cosine_similarity(ga, gb, dim=0).item())
    # different networks have different losses, but the same gap (here 0) and gradients
    assert max(gaps) - min(gaps) < 0.02 and max(abs(g) for g in gaps) < 0.02
    assert min(cosines) > 0.98


def test_denoising_is_minimized_by_the_perturbed_score():
    torch.manual_seed(3)
    sigma = 0.5
    x = gaussian_data(200000)
    perturbed = torch.linalg.inv(COV + sigma**2 * EYE)
    dsm = DenoisingScoreMatching(LinearScore(perturbed, MU), sigma)
    value, grad = loss_and_grad(dsm, x)
    # value at the optimum: 1/2 (D / sigma^2 - E||grad log p_sigma||^2)
    expected = 0.5 * (2 / sigma**2 - torch.trace(perturbed).item())
    assert value == pytest.approx(expected, rel=0.01)
    assert grad.abs().max().item() < 0.05
    # a wrong score costs exactly 1/2 E||s - s*||^2 over the perturbed data N(mu, K)
    K = COV + sigma**2 * EYE
    shift = torch.tensor([0.3, 0.3], dtype=torch.float64)
    wrongs = [(LinearScore(torch.linalg.inv(COV), MU),
               0.5 * fisher_gap(torch.linalg.inv(COV), perturbed, K)),
              (LinearScore(perturbed, MU + shift), 0.5 * (perturbed @ shift).pow(2).sum())]
    for wrong, gap in wrongs:
        torch.manual_seed(3)  # the same noise draws
        worse, wrong_grad = loss_and_grad(DenoisingScoreMatching(wrong, sigma), x)
        assert worse - value == pytest.approx(gap.item(), rel=0.1, abs=0.003)
        assert wrong_grad.norm() > 5 * grad.norm()


def fisher_gap(P, P_star, K):
    """E||(P - P*) y||^2 for y ~ N(0, K): tr((P - P*) K (P - P*)^T)."""
    D = P - P_star
    return torch.trace(D @ K @ D.T)


def test_ncsn_loss_is_minimized_by_the_perturbed_scores_at_every_level():
    torch.manual_seed(4)
    sigmas = geometric_sigmas(3.0, 0.1, 6).double()
    x = gaussian_data(100000)
    ncsn = NoiseConditionalScoreMatching(PerturbedScore(COV, MU), sigmas)
    value, grad = loss_and_grad(ncsn, x)
    # weight sigma^2: each level contributes 1/2 (D - sigma^2 tr((Sigma + sigma^2 I)^-1))
    levels = [0.5 * (2 - s**2 * torch.trace(torch.linalg.inv(COV + s**2 * EYE)).item())
              for s in sigmas.tolist()]
    assert value == pytest.approx(sum(levels) / len(levels), rel=0.02)
    assert grad.abs().max().item() < 0.03
    torch.manual_seed(4)  # the same levels and noise draws
    worse, wrong_grad = loss_and_grad(NoiseConditionalScoreMatching(
        PerturbedScore(2 * COV, MU), sigmas), x)
    # the gap is the sigma^2-weighted Fisher divergence, averaged over the levels
    gaps = [0.5 * s**2 * fisher_gap(torch.linalg.inv(2 * COV + s**2 * EYE),
                                    torch.linalg.inv(COV + s**2 * EYE), COV + s**2 * EYE)
            for s in sigmas.tolist()]
    assert worse - value == pytest.approx(sum(gaps).item() / len(gaps), rel=0.1, abs=0.002)
    assert wrong_grad.norm() > 3 * grad.norm()


def test_ncsn_ladder_and_images():
    ncsn = NoiseConditionalScoreMatching(lambda x, s: -x, sigma_max=1.0, sigma_min=0.01,
                                         num_sigmas=3)
    assert torch.allclose(ncsn.sigmas, torch.tensor([1.0, 0.1, 0.01]))
    out = ncsn(torch.rand(4, 1, 5, 5))  # image batches broadcast sigma over (C, H, W)
    assert out["loss"].shape == () and torch.isfinite(out["loss"])


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="divergence: expected one of"):
        ImplicitScoreMatching(lambda x: x, divergence="trace")
    with pytest.raises(ValueError, match=r"score: expected an output of the shape of x"):
        DenoisingScoreMatching(lambda x, s: x[:, :1], 0.1)(torch.randn(3, 2))
    with pytest.raises(ValueError, match="sigma: expected a positive float"):
        DenoisingScoreMatching(lambda x, s: x, 0.0)
    with pytest.raises(ValueError, match="decreasing ladder"):
        NoiseConditionalScoreMatching(lambda x, s: x, [0.1, 1.0])
    with pytest.raises(TypeError, match=r"batch: expected a tensor x of shape"):
        SlicedScoreMatching(lambda x: x)("not a batch")


def test_cli_score_objectives_name_the_wrong_key(tmp_path, capsys):
    from probgen.cli import main

    def fit(*overrides):
        args = ["fit", "dsm-moons", "--out", str(tmp_path / "run"), "--quiet"]
        for o in overrides:
            args += ["--set", o]
        return main(args)

    assert fit("objective.num_sigmas=3") == 2
    assert "[objective] keys ['num_sigmas'] do not apply to 'dsm' (allowed: sigma)" in (
        capsys.readouterr().err)
    assert fit("train.steps=2", "sample.sampler=hmc", "sample.n=4") == 2
    from probgen.inference.langevin import SAMPLERS

    assert f"[sample] sampler: expected one of {list(SAMPLERS)}, got 'hmc'" in (
        capsys.readouterr().err)
    assert fit("train.steps=2", "sample.sampler=annealed", "sample.n=4") == 2
    assert "needs a noise ladder" in capsys.readouterr().err


def test_score_mlp_learns_a_perturbed_gaussian_score_through_fit():
    from probgen.inference import fit
    from probgen.models import ScoreMLP

    torch.manual_seed(0)
    net = ScoreMLP(2, [64, 64], noise_conditional=True)
    sigmas = [1.0, 0.3]
    fit(NoiseConditionalScoreMatching(net, sigmas), lambda n, generator=None: torch.randn(
        n, 2, generator=generator), steps=800, batch_size=512, lr=3e-3, progress=False)
    x = torch.randn(2000, 2)
    with torch.no_grad():
        for sigma in sigmas:  # N(0, I) * N(0, sigma^2 I): score -x / (1 + sigma^2)
            s = net(x, torch.full((2000,), sigma))
            err = (s + x / (1 + sigma**2)).pow(2).sum(-1).mean() / (x / (1 + sigma**2)).pow(
                2).sum(-1).mean()
            assert err < 0.02, (sigma, err)


def test_score_networks_check_their_inputs():
    from probgen.models import ConvScoreNet, ScoreMLP

    with pytest.raises(ValueError, match=r"call it as net\(x, sigma\)"):
        ScoreMLP(2, noise_conditional=True)(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"sigma: expected shape \(3,\)"):
        ScoreMLP(2, noise_conditional=True)(torch.randn(3, 2), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 2\)"):
        ScoreMLP(2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvScoreNet((1, 10, 10))
    net = ConvScoreNet((1, 8, 8), hidden_channels=8)
    assert net(torch.rand(2, 1, 8, 8), torch.tensor([1.0, 0.1])).shape == (2, 1, 8, 8)
