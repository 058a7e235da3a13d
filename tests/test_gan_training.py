"""The adversarial objective against mathematics: each loss on a known critic, the optimal
discriminator p/(p+q), WGAN-GP's unit gradient norm, weight clipping, R1/R2 on a linear
critic, the exact alternation schedule inside fit, and the CLI registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal
from torch.optim.optimizer import register_optimizer_step_post_hook

from probgen.inference import Adversarial, fit, registry
from probgen.models import MLPGAN


class _LinearPair(nn.Module):
    """A protocol GAN: x = z + shift, critic D(x) = w . x (known gradients)."""

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.critic_weight = nn.Parameter(torch.tensor(w))
        self.shift = nn.Parameter(torch.zeros(len(w)))
        self.generator = nn.ParameterList([self.shift])
        self.critic = _Dot(self.critic_weight)
        self.fixed_noise: torch.Tensor | None = None

    def rsample(self, shape, labels=None):
        z = self.fixed_noise if self.fixed_noise is not None else torch.randn(*shape, 2)
        return z + self.shift


class _Dot(nn.Module):
    def __init__(self, w: nn.Parameter) -> None:
        super().__init__()
        self.w = w

    def forward(self, x):
        return x @ self.w


def _known(loss: str, **kw) -> dict[str, float]:
    model = _LinearPair([0.5, -1.0])
    real = torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 1.0]])
    model.fixed_noise = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    out = Adversarial(model, loss, **kw)(real)
    return {k: float(v) for k, v in out.items()}


R = torch.tensor([0.5, 1.0, 0.0])  # critic on the real points
F_ = torch.tensor([-1.0, -0.5, -0.5])  # critic on the fake points


def _mean(x):
    return float(x.mean())


@pytest.mark.parametrize(
    ("loss", "critic", "generator", "divergence"),
    [
        ("minimax", -_mean(torch.log(torch.sigmoid(R))) - _mean(torch.log(1 - torch.sigmoid(F_))),
         _mean(torch.log(1 - torch.sigmoid(F_))), None),
        ("non_saturating",
         -_mean(torch.log(torch.sigmoid(R))) - _mean(torch.log(1 - torch.sigmoid(F_))),
         -_mean(torch.log(torch.sigmoid(F_))), None),
        ("wasserstein", _mean(F_) - _mean(R), -_mean(F_), _mean(R) - _mean(F_)),
        ("hinge", _mean(torch.clamp(1 - R, min=0)) + _mean(torch.clamp(1 + F_, min=0)),
         -_mean(F_), None),
        ("least_squares", 0.5 * _mean((R - 1) ** 2) + 0.5 * _mean(F_**2),
         0.5 * _mean((F_ - 1) ** 2), None),
        ("kl", -(_mean(R) - _mean(torch.exp(F_ - 1))), -_mean(F_), None),
        ("reverse_kl", -(_mean(-torch.exp(-R)) - _mean(-1 - torch.log(torch.exp(-F_)))),
         _mean(torch.exp(-F_)), None),
        ("pearson", -(_mean(R) - _mean(F_**2 / 4 + F_)), -_mean(F_), None),
        ("tv", -(_mean(0.5 * torch.tanh(R)) - _mean(0.5 * torch.tanh(F_))),
         -_mean(0.5 * torch.tanh(F_)), None),
    ],
)
def test_losses_on_a_known_critic(loss, critic, generator, divergence):
    out = _known(loss)
    assert out["critic_loss"] == pytest.approx(critic, abs=1e-6)
    assert out["generator_loss"] == pytest.approx(generator, abs=1e-6)
    if divergence is not None:
        assert out["divergence"] == pytest.approx(divergence, abs=1e-6)
    if loss in ("minimax", "non_saturating"):  # JS lower bound log 2 - L_D / 2
        assert out["divergence"] == pytest.approx(math.log(2) - critic / 2, abs=1e-6)


def test_penalties_on_a_linear_critic():
    # grad D = w everywhere: |w| = sqrt(1.25); GP = (|w| - 1)^2, R1 = R2 = |w|^2.
    out = _known("wasserstein", gradient_penalty=10.0, r1=1.0, r2=2.0)
    norm = math.sqrt(1.25)
    assert out["gp_grad_norm"] == pytest.approx(norm, abs=1e-6)
    assert out["gradient_penalty"] == pytest.approx((norm - 1) ** 2, abs=1e-6)
    assert out["r1"] == pytest.approx(1.25) and out["r2"] == pytest.approx(1.25)
    base = _mean(F_) - _mean(R)
    assert out["loss"] == pytest.approx(base + 10 * (norm - 1) ** 2 + 0.5 * 1.25
                                        + 0.5 * 2 * 1.25, abs=1e-5)


def _fixed_generator(mean: float, std: float, features: int = 1, **kw) -> MLPGAN:
    gan = MLPGAN(features, latent_dim=features, hidden_features=[], **kw)
    with torch.no_grad():
        gan.generator.net[0].weight.copy_(std * torch.eye(features))
        gan.generator.net[0].bias.fill_(0.0).add_(torch.tensor([mean] + [0.0] * (features - 1)))
    return gan


def test_trained_discriminator_approaches_the_optimal_one():
    # p = 0.5 N(-1, 0.5^2) + 0.5 N(1.5, 0.7^2) (data), q = N(0, 1.2^2) (frozen generator).
    torch.manual_seed(0)
    comps = [Normal(-1.0, 0.5), Normal(1.5, 0.7)]

    def data(n, generator=None):
        k = torch.randint(0, 2, (n,), generator=generator)
        eps = torch.randn(n, generator=generator)
        return torch.where(k == 0, -1.0 + 0.5 * eps, 1.5 + 0.7 * eps).unsqueeze(1)

    gan = _fixed_generator(0.0, 1.2, critic_hidden_features=[64, 64])
    objective = Adversarial(gan, "non_saturating", train_generator=False)
    fit(objective, data, steps=1500, batch_size=1024, lr=2e-3, progress=False, log_every=500)
    x = torch.linspace(-2.0, 2.5, 91)
    p = 0.5 * (comps[0].log_prob(x).exp() + comps[1].log_prob(x).exp())
    q = Normal(0.0, 1.2).log_prob(x).exp()
    d_star = p / (p + q)
    with torch.no_grad():
        d = torch.sigmoid(gan.critic(x.unsqueeze(1)))
    assert float((d - d_star).abs().max()) < 0.06, float((d - d_star).abs().max())
    assert float((d - d_star).abs().mean()) < 0.02


@pytest.mark.parametrize("weight", [10.0, 50.0])
def test_wgan_gp_critic_has_unit_gradient_norm_on_interpolates(weight):
    # P = N(0, I), Q = N((2, 0), I): W1 = 2. A critic of slope a along the shift scores
    # 2a - weight (a - 1)^2, so the penalized optimum has |grad| = 1 + 2 / (2 weight) on the
    # interpolates: 1.1 for the paper's weight 10, 1.02 for 50 (-> 1 as the weight grows).
    # (2-D on purpose: in 1-D a critic that starts with the wrong sign cannot turn round
    # without crossing |grad| = 0 and sits in the local optimum a = 1 - 2 / (2 weight).)
    torch.manual_seed(0)
    gan = _fixed_generator(2.0, 1.0, features=2, critic_hidden_features=[64, 64])
    objective = Adversarial(gan, "wasserstein", gradient_penalty=weight, train_generator=False)
    history = fit(objective, lambda n, generator=None: torch.randn(n, 2, generator=generator),
                  steps=800, batch_size=512, lr=1e-3, betas=(0.0, 0.9), progress=False,
                  log_every=100)
    assert history.final["gp_grad_norm"] == pytest.approx(1 + 1 / weight, abs=0.02)
    with torch.no_grad():
        out = objective(torch.randn(20000, 2))
    assert float(out["gp_grad_norm"]) == pytest.approx(1.0, abs=0.1)
    assert float(out["divergence"]) == pytest.approx(2.0, abs=0.2)  # W1 estimate


def test_weight_clipping_keeps_every_critic_weight_in_range():
    torch.manual_seed(0)
    gan = MLPGAN(2, latent_dim=2, hidden_features=[16])
    with torch.no_grad():
        for p in gan.critic.parameters():
            p.uniform_(-1.0, 1.0)  # far outside [-c, c]
    c = 0.01
    objective = Adversarial(gan, "wasserstein", clip=c, n_critic=3)
    seen = []

    def update(name, loss):  # a plain optimizer step, checking bounds before each one
        if name == "critic" and seen:
            seen.append(max(float(p.detach().abs().max()) for p in gan.critic.parameters()))
        else:
            seen.append(0.0)
        loss.backward()
        with torch.no_grad():
            for p in (gan.critic if name == "critic" else gan.generator).parameters():
                p -= 0.1 * p.grad
                p.grad = None

    for step in range(4):
        objective.training_step(torch.randn(30, 2), step + 1, update)
        params = torch.cat([p.detach().flatten() for p in gan.critic.parameters()])
        assert float(params.abs().max()) <= c
    assert max(seen) <= c
    assert (params.abs() == c).float().mean() > 0.3  # clipping was active


@pytest.mark.parametrize("n_critic", [1, 5])
def test_fit_does_exactly_n_critic_steps_per_generator_step(n_critic):
    torch.manual_seed(0)
    gan = MLPGAN(2, latent_dim=2, hidden_features=[8])
    critic_params = {id(p) for p in gan.critic.parameters()}
    order: list[str] = []
    sizes: list[int] = []

    def on_step(optimizer, args, kwargs):
        first = optimizer.param_groups[0]["params"][0]
        order.append("critic" if id(first) in critic_params else "generator")

    handle = register_optimizer_step_post_hook(on_step)
    hook = gan.critic.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    try:
        objective = Adversarial(gan, "non_saturating", n_critic=n_critic)
        fit(objective, lambda n, generator=None: torch.randn(n, 2, generator=generator),
            steps=7, batch_size=10 * n_critic, progress=False, log_every=7)
    finally:
        handle.remove()
        hook.remove()
    assert order == (["critic"] * n_critic + ["generator"]) * 7
    assert set(sizes) == {10}  # each critic step sees its own chunk of the batch


def test_generator_learns_a_gaussian():
    # The non-saturating GAN moves an affine generator onto N(2, 0.5^2).
    torch.manual_seed(0)
    gan = _fixed_generator(0.0, 1.0, critic_hidden_features=[32, 32])
    objective = Adversarial(gan, "non_saturating")
    fit(objective, lambda n, generator=None: 2.0 + 0.5 * torch.randn(n, 1, generator=generator),
        steps=1000, batch_size=128, lr=2e-3, betas=(0.0, 0.9), progress=False, log_every=100)
    x = gan.sample((20000,))
    assert float(x.mean()) == pytest.approx(2.0, abs=0.1)
    assert float(x.std()) == pytest.approx(0.5, abs=0.1)


def test_objective_argument_errors():
    gan = MLPGAN(2)
    with pytest.raises(ValueError, match=r"loss: expected one of \['minimax'"):
        Adversarial(gan, "wgan")
    with pytest.raises(ValueError, match="n_critic: expected a positive int, got 0"):
        Adversarial(gan, n_critic=0)
    with pytest.raises(ValueError, match="clip: expected a positive float or None"):
        Adversarial(gan, "wasserstein", clip=-1.0)
    with pytest.raises(ValueError, match="generator_loss applies to the f-GAN losses"):
        Adversarial(gan, "hinge", generator_loss="minimax")
    with pytest.raises(TypeError, match="model: expected a GAN with .critic"):
        Adversarial(nn.Linear(2, 2))
    objective = Adversarial(gan, n_critic=4)
    with pytest.raises(ValueError, match="3 examples cannot be split into n_critic = 4"):
        objective.training_step(torch.randn(3, 2), 1, lambda name, loss: None)
    with pytest.raises(ValueError, match=r"critic: expected integer labels of shape \(3,\)"):
        Adversarial(MLPGAN(2, num_classes=3))(torch.randn(3, 2))


def test_registered_objectives_build_with_their_defaults():
    class Data:
        preprocess = None

    gan = MLPGAN(2)
    wgan = registry.build_registered("wgan", gan, Data(), {})
    assert (wgan.loss_name, wgan.clip, wgan.n_critic) == ("wasserstein", 0.01, 5)
    gp = registry.build_registered("wgan_gp", gan, Data(), {"n_critic": 3})
    assert (gp.gp, gp.n_critic, gp.clip) == (10.0, 3, None)
    assert registry.build_registered("gan", gan, Data(), {}).loss_name == "non_saturating"
    assert registry.build_registered("fgan", gan, Data(), {"divergence": "kl"}).loss_name == "kl"
    with pytest.raises(ValueError, match=r"divergence: expected one of \['kl'"):
        registry.build_registered("fgan", gan, Data(), {"divergence": "gan"})
    with pytest.raises(ValueError, match=r"keys \['clip'\] do not apply to 'wgan_gp'"):
        registry.build_registered("wgan_gp", gan, Data(), {"clip": 0.1})
