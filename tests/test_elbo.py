"""ELBO, IWAE and Renyi bounds through Pyro's estimators, against closed forms: probabilistic
PCA's exact log-evidence, Pyro's own Renyi gradients, the beta/annealing/free-bits algebra,
and the seminar's posterior collapse."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO

from probgen.inference import ELBO, DifferentiableRenyiELBO, fit
from probgen.inference.registry import OBJECTIVES
from probgen.latent import active_units, evidence_lower_bound, kl_per_dimension
from probgen.models import VAE

D, LATENT, N = 5, 2, 2000


def _ppca_data():
    """x = W z + mu + 0.5 eps, z ~ N(0, I_2) in R^5 (float64)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, LATENT, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(N, LATENT, generator=g, dtype=torch.float64)
    return z @ w.T + mu + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)


def _ppca_max_log_likelihood(x):
    """Tipping & Bishop (1999): the maximum mean log-likelihood of PPCA in closed form."""
    ev = torch.linalg.eigvalsh(torch.cov(x.T, correction=0)).flip(0)
    s2 = ev[LATENT:].mean()
    return float(-0.5 * (D * math.log(2 * math.pi) + ev[:LATENT].log().sum()
                         + (D - LATENT) * s2.log() + D))


def _linear_vae():
    # Linear encoder and decoder, a learned per-dimension noise scale: the linear Gaussian
    # model p(x) = N(b, W W^T + diag(sigma^2)), whose evidence is known exactly.
    return VAE((D,), LATENT, hidden_features=[], likelihood="gaussian", scale="learned").double()


def _exact_log_evidence(vae, x):
    lin = vae.decoder.net[0]
    cov = lin.weight @ lin.weight.T + torch.diag(vae.likelihood.log_scale.exp() ** 2)
    return torch.distributions.MultivariateNormal(lin.bias, cov).log_prob(x)


def _closed_form_elbo(vae, x):
    """E_q[log p(x | z)] - KL(q || N(0, I)) for the linear Gaussian decoder, exactly:
    with q = N(m, diag(s^2)), E_q log N(x; W z + b, diag(sigma^2)) =
    log N(x; W m + b, diag(sigma^2)) - sum_j (W diag(s^2) W^T)_jj / (2 sigma_j^2)."""
    q = vae.posterior(x).base_dist
    m, s = q.loc, q.scale
    lin = vae.decoder.net[0]
    sigma = vae.likelihood.log_scale.exp()
    fit_term = torch.distributions.Normal(m @ lin.weight.T + lin.bias, sigma).log_prob(x).sum(-1)
    spread = ((s**2) @ (lin.weight.T**2) / (2 * sigma**2)).sum(-1)
    kl = 0.5 * (m**2 + s**2 - 1 - (s**2).log()).sum(-1)
    return fit_term - spread - kl


def test_ppca_elbo_never_exceeds_the_evidence_and_a_linear_vae_reaches_it():
    x = _ppca_data()
    vae = _linear_vae()
    objective = ELBO(vae, estimator="meanfield")
    for trained in (False, True):
        if trained:
            fit(objective, x, steps=800, batch_size=N, lr=3e-2, lr_schedule="cosine",
                progress=False)
        with torch.no_grad():
            exact = _exact_log_evidence(vae, x)
            elbo = _closed_form_elbo(vae, x)
            estimate = evidence_lower_bound(vae.model, vae.guide, x, num_samples=200)
            reported = ELBO(vae, num_particles=50).eval()(x)["elbo"]
        # the bound, point by point (exact arithmetic: no Monte Carlo in either side)
        assert (elbo <= exact + 1e-9).all(), float((elbo - exact).max())
        # Pyro's estimators are unbiased for it
        assert float(estimate.mean()) == pytest.approx(float(elbo.mean()), abs=2e-3)
        assert float(reported) == pytest.approx(float(elbo.mean()), abs=0.02)
        gap = float((exact - elbo).mean())
        assert gap > 1.0 if not trained else gap < 0.05, gap
    # and the trained linear VAE reaches PPCA's maximum likelihood (Tipping & Bishop)
    best = _ppca_max_log_likelihood(x)
    assert abs(best - float(elbo.mean())) < 0.05, (best, float(elbo.mean()))


def test_iwae_bound_rises_with_k_toward_the_evidence():
    x = _ppca_data()[:500]
    vae = _linear_vae()
    fit(ELBO(vae), x, steps=300, batch_size=500, lr=3e-2, progress=False)
    torch.manual_seed(7)
    vae.encoder = _linear_vae().encoder  # a fresh, poor guide for the trained decoder
    with torch.no_grad():
        exact = float(_exact_log_evidence(vae, x).mean())
    bounds = []
    for k in (1, 10, 100, 2000):
        objective = ELBO(vae, estimator="renyi", num_particles=k).eval()
        with torch.no_grad():
            bounds.append(float(objective(x)["elbo"]))
    assert bounds == sorted(bounds), bounds
    assert bounds[-1] <= exact + 1e-3
    assert exact - bounds[-1] < 0.1 * (exact - bounds[0]), (exact, bounds)
    # the objective's evaluation reports the same importance-sampled estimate
    with torch.no_grad():
        out = ELBO(vae, eval_samples=2000).eval()(x)
    assert exact - 0.1 * (exact - bounds[0]) < float(out["log_likelihood"]) <= exact + 1e-3
    assert float(out["log_likelihood"]) > float(out["elbo"])


@pytest.mark.parametrize("alpha,vectorize", [(0.0, True), (0.0, False), (0.5, True)])
def test_renyi_differentiable_loss_matches_pyros_loss_and_grads(alpha, vectorize):
    vae = VAE((4,), 2, hidden_features=[8], likelihood="gaussian", scale=1.0)
    x = torch.randn(16, 4)
    kw = {"alpha": alpha, "num_particles": 6, "vectorize_particles": vectorize,
          "max_plate_nesting": 1}
    torch.manual_seed(5)
    loss = DifferentiableRenyiELBO(**kw).differentiable_loss(vae.model, vae.guide, x)
    grads = torch.autograd.grad(loss, list(vae.parameters()))

    # Pyro's loss_and_grads only differentiates parameters registered as param sites
    def model(x):
        pyro.module("vae", vae)
        vae.model(x)

    def guide(x):
        pyro.module("vae", vae)
        vae.guide(x)

    torch.manual_seed(5)
    value = RenyiELBO(**kw).loss_and_grads(model, guide, x)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-5)
    for g, p in zip(grads, vae.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)


def _small():
    return VAE((4,), 3, hidden_features=[8], likelihood="gaussian", scale=0.5)


def test_beta_scales_only_the_kl_and_annealing_follows_its_schedule():
    x = torch.randn(32, 4)
    objective = ELBO(_small(), beta=4.0, anneal_steps=10)
    for step in range(1, 13):
        out = {k: v.detach() for k, v in objective(x).items()}
        weight = 4.0 * min(1.0, step / 10)
        assert float(out["kl_weight"]) == pytest.approx(weight)
        # closed-form KL (meanfield): loss = -recon + weight * KL exactly, per example
        assert float(out["loss"]) == pytest.approx(float(-out["recon"] + weight * out["kl"]),
                                                   rel=1e-5)
        assert float(out["elbo"]) == pytest.approx(float(out["recon"] - out["kl"]), rel=1e-5)
    with torch.no_grad():  # a held-out pass neither weighs the KL nor advances the schedule
        out = objective(x)
    assert float(out["kl_weight"]) == 1.0
    objective.eval()
    assert objective.kl_weight() == 1.0
    assert int(objective.state_dict()["step"]) == 12  # resumes continue the schedule


def test_free_bits_stop_the_kl_gradient_below_the_threshold():
    vae, x = _small(), torch.randn(32, 4)
    torch.manual_seed(1)
    out = ELBO(vae, free_bits=100.0)(x)
    out["loss"].backward()
    free = [p.grad.clone() for p in vae.encoder.parameters()]
    # every dimension is under 100 nats: the loss is -recon + D * lambda ...
    assert out["loss"].item() == pytest.approx(float(-out["recon"] + 3 * 100.0), rel=1e-5)
    # ... and the encoder's gradient is that of the reconstruction term alone
    vae.zero_grad()
    torch.manual_seed(1)
    ELBO(vae, beta=1e-9)(x)["loss"].backward()
    for a, p in zip(free, vae.encoder.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-5)
    # lambda = 0 is the plain ELBO
    torch.manual_seed(2)
    a = ELBO(vae, free_bits=0.0)(x)["loss"]
    torch.manual_seed(2)
    b = ELBO(vae)(x)["loss"]
    assert a.item() == pytest.approx(b.item())


def test_posterior_collapse_on_an_axis_aligned_gaussian():
    """The seminar's case: data N((2, 3), diag(3, 1)^2) needs no latent, so a Gaussian
    decoder with learned variance explains it alone and the posterior falls onto the prior."""
    torch.manual_seed(0)
    x = torch.randn(5000, 2) * torch.tensor([3.0, 1.0]) + torch.tensor([2.0, 3.0])
    vae = VAE((2,), 2, hidden_features=[32, 32], likelihood="gaussian", scale="decoder")
    fit(ELBO(vae), x, steps=1500, batch_size=256, lr=3e-3, progress=False)
    with torch.no_grad():
        kl = kl_per_dimension(vae.posterior(x))
        count, _ = active_units(vae.encode(x))
        out = vae.decoder(torch.randn(2000, 2))
        loc, scale = out[:, 0], vae.likelihood.scale(out)
    assert (kl < 0.05).all(), kl
    assert count == 0
    assert (loc.std(0) < torch.tensor([0.3, 0.2])).all(), "the decoder mean follows z"
    assert torch.allclose(loc.mean(0), torch.tensor([2.0, 3.0]), atol=0.15)
    assert torch.allclose(scale.mean(0), torch.tensor([3.0, 1.0]), rtol=0.08)


def test_objectives_are_registered_and_bad_settings_are_rejected():
    assert {"elbo", "iwae", "vr"} <= set(OBJECTIVES)
    vae = _small()
    with pytest.raises(ValueError, match="estimator: expected one of"):
        ELBO(vae, estimator="tracegraph")
    with pytest.raises(ValueError, match="free_bits: needs estimator='meanfield'"):
        ELBO(vae, estimator="trace", free_bits=0.5)
    with pytest.raises(ValueError, match="alpha: the Renyi order 1"):
        ELBO(vae, estimator="renyi", alpha=1.0)
    with pytest.raises(ValueError, match="beta: expected a positive"):
        ELBO(vae, beta=0.0)
    with pytest.raises(TypeError, match="model: expected an nn.Module with model"):
        ELBO(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="batch: expected a Tensor"):
        ELBO(vae)("x")


def test_a_generic_pyro_model_trains_to_the_conjugate_posterior():
    """Normal-Normal: z ~ N(0, 1), x_i | z ~ N(z, 1); the exact posterior is known."""

    class Conjugate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(()))
            self.log_scale = torch.nn.Parameter(torch.zeros(()))

        def model(self, x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0], dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

        def guide(self, x):
            pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()))

    x = torch.full((9,), 2.0)
    m = Conjugate()
    fit(ELBO(m, num_particles=16), x, steps=600, batch_size=9, lr=0.05, lr_schedule="cosine",
        progress=False)
    assert m.loc.item() == pytest.approx(18.0 / 10.0, abs=0.05)
    assert m.log_scale.exp().item() == pytest.approx(math.sqrt(1 / 10), abs=0.03)


def test_a_preprocess_carries_the_bound_to_data_space():
    """With y = f(x) and log|det df/dx| = ladj, log p(x) >= ELBO(y) + ladj; integer data
    scaled by 1/levels lose D log(levels) more, as in MaximumLikelihood."""

    class Scale:
        levels = 4

        def __call__(self, x):
            return x / 2.0, torch.full((x.shape[0],), -4 * math.log(2.0))

    vae = _small()
    x = torch.randn(16, 4)
    torch.manual_seed(3)
    plain = ELBO(vae).eval()(x / 2.0)
    torch.manual_seed(3)
    mapped = ELBO(vae, preprocess=Scale()).eval()(x)
    expected = plain["elbo"] - 4 * math.log(2.0) - 4 * math.log(4)
    assert float(mapped["elbo"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(mapped["nll"]) == pytest.approx(-float(expected), rel=1e-6)
