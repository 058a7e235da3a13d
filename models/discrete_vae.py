r"""The Gumbel-softmax VAE: ``L`` categorical latents with ``K`` classes each, relaxed
one-hot (Concrete) posteriors with an annealed temperature, as a Pyro program."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.distributions import register_kl

from probgen.models.vae import (
    _check_data,
    _observed,
    make_decoder,
    make_encoder,
    make_likelihood,
)
from probgen.utils import check_choice, check_int

__all__ = ["GumbelSoftmaxVAE", "DISCRETE_LATENT_MODELS"]

_KL = ("relaxed", "categorical")


class _RelaxedPosterior(dist.RelaxedOneHotCategorical):
    """The soft guide distribution of :class:`GumbelSoftmaxVAE` with ``kl="categorical"``
    (a marker class: its KL to :class:`_UniformCategorical` is the categorical one)."""


class _HardRelaxedPosterior(dist.RelaxedOneHotCategoricalStraightThrough):
    """The straight-through guide distribution with ``kl="categorical"`` (a marker class)."""


class _UniformCategorical(dist.OneHotCategorical):
    """The uniform categorical prior with ``kl="categorical"``. Its ``log_prob`` of a relaxed
    point is the log-pmf at the point's argmax (Pyro scores every model site; the ELBO uses
    the registered KL instead)."""


def _categorical_kl(q: dist.RelaxedOneHotCategorical, p: dist.OneHotCategorical) -> Tensor:
    # KL(Cat(q) || Cat(p)) = sum_k q_k (log q_k - log p_k), per categorical variable.
    logq = torch.log_softmax(q.logits, -1)
    logp = torch.log_softmax(p.logits, -1)
    return (logq.exp() * (logq - logp)).sum(-1)


register_kl(_RelaxedPosterior, _UniformCategorical)(_categorical_kl)
register_kl(_HardRelaxedPosterior, _UniformCategorical)(_categorical_kl)


class GumbelSoftmaxVAE(PyroModule):
    r"""Creates a VAE with ``latents`` categorical variables of ``categories`` classes each.

    ``model(x)``: :math:`z_l \sim p(z_l)` uniform over the ``K`` classes, then
    :math:`x \sim p(x \mid z)` (the decoder reads the ``L x K`` one-hot, or relaxed, vectors
    flattened); ``guide(x)``: :math:`z_l \sim \mathrm{Concrete}(\pi_l(x), \tau)`, Pyro's
    ``RelaxedOneHotCategorical`` (Gumbel-softmax) with encoder logits, or with
    ``hard=True`` ``RelaxedOneHotCategoricalStraightThrough`` (one-hot values, the relaxed
    sample's gradient). The temperature :math:`\tau` is the buffer :attr:`temperature`; the
    objective :class:`probgen.inference.RelaxedCategoricalELBO` anneals it.

    **The KL term** (``kl``):

    - ``"relaxed"`` (default): the prior is relaxed too, a Concrete distribution with the
      uniform class probabilities at ``prior_temperature`` (default: the posterior's
      current temperature), and the ELBO's KL is Pyro's one-sample Monte Carlo
      :math:`\log q(z|x) - \log p(z)` at the relaxed sample. This is the ELBO of the
      relaxed model itself, a proper bound, as Maddison et al. (2017) recommend; mixing a
      relaxed sample with a discrete prior's pmf would not be one.
    - ``"categorical"``: the analytic :math:`KL(\mathrm{Cat}(\pi_l) \| \mathrm{Unif}) =
      \sum_k \pi_{lk} \log(K \pi_{lk})` of the discrete variables (Jang et al., 2017),
      relaxed samples only in the reconstruction term: lower variance, but the bound mixes
      the discrete KL with a relaxed reconstruction. Pyro uses it through
      ``TraceMeanField_ELBO`` (``estimator="meanfield"``) and a KL registered for this
      model's own distribution classes only.

    At test time the latents are discrete: :meth:`sample` draws one-hot ``z`` from the
    uniform prior, :meth:`reconstruct` decodes the posterior's most likely classes, and
    :meth:`log_likelihood` estimates :math:`\log p(x)` of the discrete model by importance
    sampling from the categorical posterior.

    Args:
        shape: data shape, ``(D,)`` or ``(C, H, W)``.
        latents: ``L``, the number of categorical variables.
        categories: ``K``, classes per variable.
        encoder, decoder: ``"mlp"``, ``"conv"`` or a module (see :mod:`probgen.models.vae`).
        hidden_features: MLP hidden sizes (the decoder mirrors them).
        channels, blocks: width and residual blocks of the convolutional networks.
        likelihood: ``"bernoulli"``, ``"continuous_bernoulli"``, ``"gaussian"`` or
            ``"categorical"`` (see :func:`probgen.models.vae.make_likelihood`).
        scale: the Gaussian likelihood's scale.
        hard: straight-through (one-hot) samples in the guide.
        kl: ``"relaxed"`` or ``"categorical"`` (see above).
        temperature: the initial temperature.
        prior_temperature: the relaxed prior's temperature (``None``: the posterior's).
        logit_bound: encoder logits are squashed to ``(-b, b)`` by ``b tanh(./b)`` so that
            relaxed samples at low temperature do not underflow to exact zeros in float32
            (whose log-density would be infinite); 0 disables.

    References:
        Categorical reparameterization with Gumbel-softmax (Jang et al., 2017),
        https://arxiv.org/abs/1611.01144;
        The Concrete distribution (Maddison et al., 2017), https://arxiv.org/abs/1611.00712

    Example:
        >>> vae = GumbelSoftmaxVAE((1, 8, 8), latents=4, categories=3, hidden_features=[16])
        >>> vae.sample((2,)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        latents: int = 20,
        categories: int = 10,
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        hidden_features: Sequence[int] = (512, 256),
        channels: int = 32,
        blocks: int = 1,
        likelihood: str = "bernoulli",
        scale: float | str = "decoder",
        hard: bool = False,
        kl: str = "relaxed",
        temperature: float = 1.0,
        prior_temperature: float | None = None,
        logit_bound: float = 10.0,
    ) -> None:
        super().__init__()
        for name, value, low in (("latents", latents, 1), ("categories", categories, 2)):
            check_int(name, value, low=low)
        check_choice("kl", kl, _KL)
        for name, value in (("temperature", temperature), ("prior_temperature",
                                                            prior_temperature)):
            if value is not None and not value > 0:
                raise ValueError(f"{name}: expected a positive float, got {value!r}.")
        if not logit_bound >= 0:
            raise ValueError(f"logit_bound: expected a float >= 0, got {logit_bound!r}.")
        self.shape = tuple(int(s) for s in shape)
        self.latents, self.categories = latents, categories
        self.hard, self.kl = bool(hard), kl
        self.prior_temperature = None if prior_temperature is None else float(prior_temperature)
        self.logit_bound = float(logit_bound)
        d = latents * categories
        hidden = [int(h) for h in hidden_features]
        net = {"hidden_features": hidden, "channels": channels, "blocks": blocks}
        self.likelihood = make_likelihood(likelihood, self.shape, scale=scale)
        self.encoder = make_encoder(encoder, self.shape, d, **net)
        self.decoder = make_decoder(decoder, d, self.shape, self.likelihood.params,
                                    hidden_features=hidden[::-1], channels=channels,
                                    blocks=blocks)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("prior_logits", torch.full((latents, categories),
                                                        -math.log(categories)))

    # ------------------------------------------------------------------ distributions
    def _check(self, x: Tensor) -> Tensor:
        return _check_data(x, self.shape).to(self.temperature.dtype)

    def logits(self, x: Tensor) -> Tensor:
        """Posterior logits ``(N, L, K)`` of images ``x``."""
        h = self.encoder(self._check(x)).unflatten(-1, (self.latents, self.categories))
        if self.logit_bound > 0:
            h = self.logit_bound * torch.tanh(h / self.logit_bound)
        return h

    def posterior(self, x: Tensor) -> dist.Distribution:
        r""":math:`q(z \mid x)`: Concrete (or straight-through) over ``L`` one-hot vectors,
        batch shape ``(N,)``, event ``(L, K)``."""
        logits = self.logits(x)
        cls: type = (dist.RelaxedOneHotCategoricalStraightThrough if self.hard
                     else dist.RelaxedOneHotCategorical)
        if self.kl == "categorical":
            cls = _HardRelaxedPosterior if self.hard else _RelaxedPosterior
        return cls(self.temperature, logits=logits, validate_args=False).to_event(1)

    def prior_distribution(self) -> dist.Distribution:
        """:math:`p(z)`, event ``(L, K)``: relaxed uniform, or uniform categorical."""
        if self.kl == "categorical":
            return _UniformCategorical(logits=self.prior_logits,
                                       validate_args=False).to_event(1)
        tau = (self.temperature if self.prior_temperature is None
               else torch.full_like(self.temperature, self.prior_temperature))
        cls = (dist.RelaxedOneHotCategoricalStraightThrough if self.hard
               else dist.RelaxedOneHotCategorical)
        return cls(tau, logits=self.prior_logits, validate_args=False).to_event(1)

    def decoder_distribution(self, z: Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z)` for latents ``(*batch, L, K)``."""
        return self.likelihood(self.decoder(z.flatten(-2)))

    # ------------------------------------------------------------------- Pyro program
    def model(self, x: Tensor | None = None, n: int = 1) -> Tensor:
        """The generative model: ``z ~ p(z)``, ``x ~ p(x | z)`` in ``pyro.plate("data")``;
        the decoder is registered with ``pyro.module`` (plain ``pyro.infer.SVI`` trains it).

        Args:
            x: observed data ``(N, *shape)``; ``None`` generates ``n`` examples (so
                ``pyro.infer.Predictive(vae.model, num_samples=S)()`` draws from the model,
                relaxed latents at the current temperature, or one-hot ones with
                ``kl="categorical"``).
            n: examples to generate when ``x`` is None.

        Returns:
            ``x`` (observed), or the generated draw ``(n, *shape)``.
        """
        x, n = _observed(x, n, self._check)
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", self.prior_distribution().expand([n]))
            return pyro.sample("x", self.decoder_distribution(z.to(self.temperature.dtype)),
                               obs=x)

    def guide(self, x: Tensor, n: int = 1) -> None:
        """The amortized posterior ``z ~ q(z | x)`` at the current temperature (``n`` is the
        model's, unused here); the encoder is registered with ``pyro.module``."""
        pyro.module("encoder", self.encoder)
        q = self.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", q)

    # -------------------------------------------------------------------------- uses
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The most likely class of every latent, ``(N, L)`` (long)."""
        return self.logits(x).argmax(-1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """The likelihood's mean for classes ``(*batch, L)`` or one-hot ``(*batch, L, K)``."""
        if not codes.is_floating_point():
            codes = F.one_hot(codes, self.categories).to(self.temperature.dtype)
        return self.likelihood.mean(self.decoder(codes.flatten(-2)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior's most likely classes, same shape as ``x``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] | int = (), mean: bool = True,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws discrete one-hot ``z`` from the uniform prior and returns the decoder's mean
        (``mean=True``) or a draw of ``x ~ p(x | z)``; shape ``(*shape, *data_shape)``."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        device = self.temperature.device
        classes = torch.randint(0, self.categories, (n, self.latents), generator=generator,
                                device=device)
        z = F.one_hot(classes, self.categories).to(self.temperature.dtype)
        out = self.decoder(z.flatten(-2))
        x = self.likelihood.mean(out) if mean else self.likelihood(out).sample()
        return x.to(z.dtype).reshape(*shape, *self.shape)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int = 1000, chunk_size: int = 100,
                       generator: torch.Generator | None = None) -> Tensor:
        r"""Importance-sampled :math:`\log p(x)` of the discrete model, nats, ``(N,)``.

        :math:`\log \frac1S \sum_s p(x | z_s) p(z_s) / q(z_s | x)` with one-hot
        :math:`z_s \sim \prod_l \mathrm{Cat}(\pi_l(x))`, the categorical posterior (whose
        support covers the prior's): a lower bound in expectation that rises to
        :math:`\log p(x)` with ``num_samples``; drawn ``chunk_size`` at a time.
        """
        check_int("num_samples", num_samples)
        x = self._check(x)
        log_q = torch.log_softmax(self.logits(x), -1)  # (N, L, K)
        log_prior = -self.latents * math.log(self.categories)
        parts = []
        for start in range(0, num_samples, chunk_size):
            s = min(chunk_size, num_samples - start)
            classes = torch.multinomial(log_q.exp().reshape(-1, self.categories), s,
                                        replacement=True, generator=generator)
            classes = classes.reshape(x.shape[0], self.latents, s).movedim(-1, 0)  # (s, N, L)
            lq = log_q.gather(-1, classes.movedim(0, -1)).sum(-2).t()  # (s, N)
            z = F.one_hot(classes, self.categories).to(x.dtype)
            lp = self.decoder_distribution(z).log_prob(x.expand(s, *x.shape))
            parts.append(lp + log_prior - lq)
        w = torch.cat(parts)
        return torch.logsumexp(w, 0) - math.log(num_samples)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"shape={self.shape}, latents={self.latents}, categories={self.categories}, "
                f"hard={self.hard}, kl={self.kl!r}, temperature={float(self.temperature):.3g}")


#: name -> class for ``probgen.models.MODELS``.
DISCRETE_LATENT_MODELS: dict[str, type[nn.Module]] = {"GumbelSoftmaxVAE": GumbelSoftmaxVAE}
