"""VAE building blocks and the VAE Pyro program: shapes, normalized likelihoods, priors and
posteriors as distributions, gradients to every parameter, the parameter store untouched."""

from __future__ import annotations

import io
import itertools
import math

import pyro
import pytest
import torch

from probgen.inference import ELBO
from probgen.models import (
    MODELS,
    VAE,
    CategoricalLikelihood,
    ConvDecoder,
    ConvEncoder,
    GaussianLikelihood,
    make_likelihood,
)

pytestmark = pytest.mark.threads(2)
SHAPE = (1, 8, 8)


def _binary(n=6):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.3))


@pytest.mark.parametrize("prior,posterior", list(itertools.product(
    ["normal", "vamp", "maf", "realnvp"], ["gaussian", "iaf", "planar"])))
def test_every_prior_and_posterior_trains_every_parameter(prior, posterior):
    vae = VAE(SHAPE, 3, hidden_features=[16], prior=prior, posterior=posterior,
              prior_components=4, prior_transforms=2, prior_hidden=[8],
              posterior_transforms=2, posterior_hidden=[8], context_features=4)
    out = ELBO(vae, estimator="trace")(_binary())
    out["loss"].backward()
    missing = [n for n, p in vae.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert len(pyro.get_param_store()) == 0, "the VAE must not use Pyro's global param store"
    # the posterior and prior are distributions over R^3 whose log_prob is finite
    q = vae.posterior(_binary(2))
    z = q.rsample()
    assert z.shape == (2, 3) and torch.isfinite(q.log_prob(z)).all()
    assert torch.isfinite(vae.prior_distribution().log_prob(z)).all()
    assert vae.sample((5,)).shape == (5, *SHAPE)


@pytest.mark.parametrize("likelihood,extra", [
    ("bernoulli", {}), ("continuous_bernoulli", {}), ("gaussian", {"scale": 0.3}),
    ("gaussian", {"scale": "learned"}), ("gaussian", {"scale": "decoder"}),
    ("categorical", {"levels": 17}),
])
@pytest.mark.parametrize("nets", ["mlp", "conv"])
def test_likelihoods_with_mlp_and_conv_networks(likelihood, extra, nets):
    vae = VAE(SHAPE, 2, encoder=nets, decoder=nets, hidden_features=[16], channels=4,
              likelihood=likelihood, **extra)
    if likelihood == "categorical":
        x = torch.randint(0, 17, (4, *SHAPE)).float()
    elif likelihood == "bernoulli":
        x = _binary(4)
    else:
        x = torch.rand(4, *SHAPE)
    out = ELBO(vae)(x)
    assert torch.isfinite(out["loss"]) and out["kl"] >= 0
    s = vae.sample((3,))
    assert s.shape == (3, *SHAPE)
    if likelihood == "categorical":
        assert 0 <= s.min() and s.max() <= 16
    assert vae.sample((2,), mean=False).shape == (2, *SHAPE)
    assert vae.reconstruct(x).shape == x.shape
    assert vae.interpolate(x[:2], x[2:4], 5).shape == (2, 5, *SHAPE)
    assert vae.traverse(x[:1], dims=[1], values=[-1.0, 0.0, 1.0]).shape == (1, 3, *SHAPE)
    assert vae.encode(x).shape == (4, 2)


def test_categorical_likelihood_sums_to_one_by_enumeration():
    lik = CategoricalLikelihood((2,), levels=3)
    out = torch.randn(1, 3, 2)
    grid = torch.tensor(list(itertools.product(range(3), repeat=2))).float()
    total = lik(out.expand(len(grid), 3, 2)).log_prob(grid).exp().sum()
    assert total == pytest.approx(1.0, abs=1e-6)
    probs = out[0].softmax(0)
    assert lik.mean(out)[0] == pytest.approx((probs * torch.arange(3.0)[:, None]).sum(0))


def test_continuous_bernoulli_is_normalized_on_the_unit_interval():
    lik = make_likelihood("continuous_bernoulli", (1,))
    out = torch.tensor([[[1.7]]])
    u = torch.linspace(0, 1, 20001)[:, None]
    density = lik(out.expand(len(u), 1, 1)).log_prob(u).exp()
    assert torch.trapezoid(density, u[:, 0]) == pytest.approx(1.0, abs=1e-4)


def test_gaussian_likelihood_scales():
    out = torch.zeros(2, 2, 3)
    lik = GaussianLikelihood((3,), scale="decoder")
    x = torch.zeros(2, 3)
    expected = 3 * (-math.log(math.log(2) + 1e-3) - 0.5 * math.log(2 * math.pi))
    assert lik(out).log_prob(x) == pytest.approx(torch.full((2,), expected), abs=1e-5)
    fixed = GaussianLikelihood((3,), scale=2.0)
    expected = 3 * (-math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert fixed(out[:, :1]).log_prob(x) == pytest.approx(torch.full((2,), expected))


def test_conv_networks_shapes_and_feature_maps():
    enc = ConvEncoder((1, 28, 28), None, channels=4)
    h = enc(torch.rand(3, 1, 28, 28))
    assert h.shape == (3, 16, 7, 7)
    dec = ConvDecoder(None, (1, 28, 28), params=2, channels=4, in_channels=16)
    assert dec(h).shape == (3, 2, 1, 28, 28)
    # leading particle dimensions pass through
    assert ConvDecoder(5, (1, 8, 8), channels=4)(torch.randn(2, 3, 5)).shape == (2, 3, 1, 1, 8, 8)


def test_vae_is_registered_and_round_trips_through_state_dict():
    assert MODELS["VAE"] is VAE
    vae = VAE(SHAPE, 2, hidden_features=[8], prior="vamp", prior_components=3)
    buf = io.BytesIO()
    torch.save(vae.state_dict(), buf)
    buf.seek(0)
    other = VAE(SHAPE, 2, hidden_features=[8], prior="vamp", prior_components=3)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = _binary(3)
    assert torch.equal(vae.encode(x), other.encode(x))
    assert "prior='vamp'" in repr(vae)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="prior: expected one of"):
        VAE(SHAPE, prior="gauss")
    with pytest.raises(ValueError, match="posterior: expected one of"):
        VAE(SHAPE, posterior="nsf")
    with pytest.raises(ValueError, match="likelihood: expected one of"):
        VAE(SHAPE, likelihood="poisson")
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE((1, 6, 6), encoder="conv")
    with pytest.raises(ValueError, match="scale: expected a positive float"):
        GaussianLikelihood((2,), scale=-1.0)
    vae = VAE(SHAPE, 2, hidden_features=[8])
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 1, 8, 8\)"):
        ELBO(vae)(torch.rand(4, 64))
    with pytest.raises(ValueError, match="dims: expected indices"):
        vae.traverse(dims=[5])


def test_flow_prior_is_the_flow_and_flow_posterior_obeys_the_change_of_variables():
    vae = VAE(SHAPE, 3, hidden_features=[8], prior="maf", prior_transforms=2, prior_hidden=[8])
    z = torch.randn(5, 3)
    assert torch.allclose(vae.prior_distribution().log_prob(z), vae.prior.log_prob(z), atol=1e-5)
    for kind in ("iaf", "planar"):
        torch.manual_seed(1)
        vae = VAE(SHAPE, 3, hidden_features=[8], posterior=kind, posterior_transforms=2,
                  posterior_hidden=[8], context_features=4).double()
        x = _binary(1).double()
        q = vae.posterior(x)
        z0 = q.base_dist.sample()
        transforms = q.transforms

        def push(u, transforms=transforms):
            for t in transforms:
                u = t(u)
            return u

        jac = torch.autograd.functional.jacobian(lambda u, push=push: push(u[None])[0], z0[0])
        expected = q.base_dist.log_prob(z0) - torch.linalg.slogdet(jac)[1]
        assert torch.allclose(q.log_prob(push(z0)), expected, atol=1e-8), kind


def _mixture_log_prob_by_hand(logits, loc, scale, z):
    """log sum_k pi_k prod_d N(z_d; loc_kd, scale_kd), one point and one component at a time
    in float64 (the definition, no broadcasting tricks)."""
    logits, loc, scale = logits.double(), loc.double(), scale.double()
    log_pi = logits - torch.logsumexp(logits, -1)
    out = torch.empty(z.shape[0], dtype=torch.float64)
    for i, zi in enumerate(z.double()):
        terms = [log_pi[k] + sum(-0.5 * ((zi[d] - loc[k, d]) / scale[k, d]) ** 2
                                 - torch.log(scale[k, d]) - 0.5 * math.log(2 * math.pi)
                                 for d in range(loc.shape[1]))
                 for k in range(loc.shape[0])]
        out[i] = torch.logsumexp(torch.stack(terms), 0)
    return out


def test_diagonal_normal_mixture_log_prob_is_the_mixture_density():
    from probgen.models import DiagonalNormalMixture

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, generator=g)
    loc = 3 * torch.randn(4, 3, generator=g)
    scale = torch.rand(4, 3, generator=g) + 0.05
    z = 3 * torch.randn(7, 3, generator=g)
    mix = DiagonalNormalMixture(logits, loc, scale)
    expected = _mixture_log_prob_by_hand(logits, loc, scale, z)
    assert torch.allclose(mix.log_prob(z).double(), expected, rtol=1e-5, atol=1e-5)
    # leading sample dimensions and the density integrating to 1 (1-D, a fine quadrature)
    assert mix.log_prob(z.reshape(7, 1, 3).expand(7, 2, 3)).shape == (7, 2)
    one_d = DiagonalNormalMixture(logits, loc[:, :1].double(), scale[:, :1].double())
    grid = torch.linspace(-25, 25, 200001, dtype=torch.float64)
    mass = torch.trapezoid(one_d.log_prob(grid[:, None]).exp(), grid)
    assert mass.item() == pytest.approx(1.0, abs=1e-8)


def test_diagonal_normal_mixture_small_scales_and_gradients_match_pyro():
    """Tiny scales far from the origin (where the expanded quadratic form cancels) and the
    gradients w.r.t. every parameter agree with Pyro's MixtureSameFamily in float64."""
    import pyro.distributions as dist

    from probgen.models import DiagonalNormalMixture

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (100 + torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    scale = (1e-3 + 1e-2 * torch.rand(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    z = (loc.detach()[torch.tensor([0, 2, 4])]
         + 0.01 * torch.randn(3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    ours = DiagonalNormalMixture(logits, loc, scale).log_prob(z)
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                 dist.Normal(loc, scale).to_event(1)).log_prob(z)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-6)
    grads = torch.autograd.grad(ours.sum(), (logits, loc, scale, z))
    ref_grads = torch.autograd.grad(ref.sum(), (logits, loc, scale, z))
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_diagonal_normal_mixture_batch_shape_expand_and_errors():
    import pyro.distributions as dist

    from probgen.models import DiagonalNormalMixture

    g = torch.Generator().manual_seed(2)
    logits, loc = torch.randn(2, 3, generator=g), torch.randn(2, 3, 4, generator=g)
    scale = torch.rand(2, 3, 4, generator=g) + 0.2
    mix = DiagonalNormalMixture(logits, loc, scale)
    assert mix.batch_shape == (2,) and mix.event_shape == (4,)
    z = torch.randn(5, 2, 4, generator=g)
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                 dist.Normal(loc, scale).to_event(1)).log_prob(z)
    assert torch.allclose(mix.log_prob(z), ref, atol=1e-5)
    wide = DiagonalNormalMixture(logits[0], loc[0], scale[0]).expand((6,))
    assert isinstance(wide, DiagonalNormalMixture) and wide.batch_shape == (6,)
    assert wide.sample((2,)).shape == (2, 6, 4)
    z6 = torch.randn(3, 6, 4, generator=g)
    narrow = DiagonalNormalMixture(logits[0], loc[0], scale[0])
    assert torch.allclose(wide.log_prob(z6), narrow.log_prob(z6))
    assert torch.allclose(wide.log_prob(z6[0, 0]), narrow.log_prob(z6[0, 0]).expand(6))
    with pytest.raises(ValueError, match="last dimension 4"):
        mix.log_prob(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match=r"\(\*batch, K, D\)"):
        DiagonalNormalMixture(torch.zeros(3), torch.zeros(3, 4), torch.ones(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        DiagonalNormalMixture(torch.zeros(3), torch.zeros(3, 4, dtype=torch.long),
                              torch.ones(3, 4))


def test_vamp_prior_is_the_mixture_of_the_pseudo_inputs_posteriors():
    vae = VAE(SHAPE, 3, hidden_features=[8], prior="vamp", prior_components=4)
    prior = vae.prior_distribution()
    loc, scale, _ = vae._encode(vae.prior.pseudo_inputs)
    z = torch.randn(6, 3)
    expected = _mixture_log_prob_by_hand(torch.zeros(4), loc.detach(), scale.detach(), z)
    assert torch.allclose(prior.log_prob(z).double(), expected, atol=1e-5)
