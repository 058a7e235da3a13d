r"""Variational autoencoders as Pyro programs, and their building blocks.

Stable API (other latent-variable models build on it):

- Encoders map ``(*batch, *shape)`` to ``(*batch, out_features)``: :class:`MLPEncoder`,
  :class:`ConvEncoder` (a convolutional ResNet that halves H and W twice; with
  ``out_features=None`` it returns the feature map). :func:`make_encoder` builds one by name.
- Decoders map ``(*batch, in_features)`` to ``(*batch, params, *shape)``, the ``params``
  numbers per data entry that a likelihood reads: :class:`MLPDecoder`, :class:`ConvDecoder`
  (mirror of the encoder; ``in_features=None`` takes a feature map). :func:`make_decoder`.
- Likelihoods turn decoder outputs into a Distribution whose event shape is the data's:
  :class:`BernoulliLikelihood`, :class:`ContinuousBernoulliLikelihood`,
  :class:`GaussianLikelihood` (fixed, learned or decoder-output scale),
  :class:`CategoricalLikelihood` (256-way pixels). ``likelihood.params`` says how many
  decoder outputs per entry it needs, ``likelihood(out)`` is the distribution,
  ``likelihood.mean(out)`` its mean (what figures show). :func:`make_likelihood`.
- Priors: :class:`StandardNormalPrior`, :class:`VampPrior`, or any flow from
  :mod:`probgen.models.flows` (its ``distribution()`` is a Pyro ``TransformedDistribution``,
  so it is a prior with no glue).
- :class:`VAE`: a ``PyroModule`` with ``model(x)`` / ``guide(x)`` (site ``"z"`` for the
  latent and ``"x"`` for the data, both inside ``pyro.plate("data", N, dim=-1)``), trained by
  :class:`probgen.inference.ELBO`; plus ``sample``, ``reconstruct``, ``interpolate``,
  ``traverse``, ``encode``, ``decode``, ``posterior``, ``prior_distribution`` and
  ``log_likelihood`` (importance sampling, :mod:`probgen.latent`).

The networks are plain ``nn.Module``\ s inside the ``PyroModule``, so no parameter goes
through Pyro's global parameter store: the trainer optimizes ``vae.parameters()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn

from probgen.latent import importance_log_likelihood
from probgen.models.flows import IAF, MAF, PlanarFlow, RealNVP
from probgen.models.gmm import GMM_MODELS
from probgen.nn import MLP, ConvResidualBlock

__all__ = [
    "MLPEncoder",
    "ConvEncoder",
    "MLPDecoder",
    "ConvDecoder",
    "make_encoder",
    "make_decoder",
    "Likelihood",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "CategoricalLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
    "StandardNormalPrior",
    "VampPrior",
    "VAE",
    "LATENT_MODELS",
]


def _shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as e:
        raise TypeError(f"{name}: expected a sequence of ints, got {shape!r}.") from e
    if not out or any(s < 1 for s in out):
        raise ValueError(f"{name}: expected positive sizes, (D,) or (C, H, W); got {shape!r}.")
    return out


def _positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}.")


def _image(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"{name}: convolutional networks need images (C, H, W) with H and W "
                         f"divisible by 4 (two halvings), got {shape}.")
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- networks
class MLPEncoder(nn.Module):
    """Creates an MLP encoder: flattens ``(*batch, *shape)`` and returns ``(*batch, out)``.

    Args:
        shape: data shape, ``(D,)`` or ``(C, H, W)``.
        out_features: output size (for a diagonal Gaussian: ``2 * latent``).
        hidden_features: hidden sizes (empty: a linear map).
        activation: hidden activation name (see :data:`probgen.nn.ACTIVATIONS`).

    Example:
        >>> MLPEncoder((1, 8, 8), 4, [16])(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, shape: Sequence[int], out_features: int,
                 hidden_features: Sequence[int] = (512, 512), activation: str = "relu") -> None:
        super().__init__()
        self.shape = _shape(shape)
        _positive(out_features=out_features)
        self.net = MLP(math.prod(self.shape), out_features, list(hidden_features),
                       activation=activation)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x.flatten(x.dim() - len(self.shape)))


class ConvEncoder(nn.Module):
    """Creates a convolutional ResNet encoder: a 3x3 stem, then twice (residual blocks, a
    stride-2 convolution doubling the channels), then a linear head.

    Args:
        shape: image shape ``(C, H, W)``, H and W divisible by 4.
        out_features: output size; ``None`` returns the ``(4 * channels, H/4, W/4)`` map.
        channels: width after the stem.
        blocks: residual blocks per level.

    Example:
        >>> ConvEncoder((1, 8, 8), 6, channels=4)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 6])
    """

    def __init__(self, shape: Sequence[int], out_features: int | None,
                 channels: int = 32, blocks: int = 1) -> None:
        super().__init__()
        c, h, w = _image(_shape(shape), "shape")
        _positive(channels=channels)
        self.shape = (c, h, w)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1)]
        width = channels
        for _ in range(2):
            layers += [ConvResidualBlock(width) for _ in range(blocks)]
            layers += [nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.map_shape = (width, h // 4, w // 4)
        self.head = (nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(math.prod(self.map_shape),
                                                                      out_features))
                     if out_features is not None else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        lead = x.shape[:-3]
        out = self.head(self.features(x.reshape(-1, *self.shape)))
        return out.reshape(*lead, *out.shape[1:])


class MLPDecoder(nn.Module):
    """Creates an MLP decoder: ``(*batch, in_features)`` -> ``(*batch, params, *shape)``.

    Example:
        >>> MLPDecoder(2, (1, 8, 8), params=3, hidden_features=[16])(torch.randn(5, 2)).shape
        torch.Size([5, 3, 1, 8, 8])
    """

    def __init__(self, in_features: int, shape: Sequence[int], params: int = 1,
                 hidden_features: Sequence[int] = (512, 512), activation: str = "relu") -> None:
        super().__init__()
        _positive(in_features=in_features, params=params)
        self.shape, self.params = _shape(shape), params
        self.net = MLP(in_features, params * math.prod(self.shape), list(hidden_features),
                       activation=activation)

    def forward(self, z: Tensor) -> Tensor:  # noqa: D102
        return self.net(z).unflatten(-1, (self.params, *self.shape))


class ConvDecoder(nn.Module):
    """Creates a convolutional ResNet decoder, the mirror of :class:`ConvEncoder`: a linear
    map to a ``(4 * channels, H/4, W/4)`` map (or such a map given), twice (a stride-2
    transposed convolution halving the channels, residual blocks), then a 3x3 convolution
    to ``params * C`` channels.

    Args:
        in_features: latent size; ``None`` takes a ``(in_channels, H/4, W/4)`` map.
        shape: image shape ``(C, H, W)``.
        params: outputs per pixel (see the likelihoods).
        channels: width at full resolution.
        blocks: residual blocks per level.
        in_channels: channels of a given map (``in_features=None``); default ``4 * channels``.

    Example:
        >>> ConvDecoder(3, (1, 8, 8), params=2, channels=4)(torch.randn(5, 3)).shape
        torch.Size([5, 2, 1, 8, 8])
    """

    def __init__(self, in_features: int | None, shape: Sequence[int], params: int = 1,
                 channels: int = 32, blocks: int = 1, in_channels: int | None = None) -> None:
        super().__init__()
        c, h, w = _image(_shape(shape), "shape")
        _positive(params=params, channels=channels)
        self.shape, self.params, self.in_features = (c, h, w), params, in_features
        width = 4 * channels
        self.map_shape = (width, h // 4, w // 4)
        if in_features is not None:
            self.stem: nn.Module = nn.Linear(in_features, math.prod(self.map_shape))
        else:
            self.stem = nn.Conv2d(in_channels or width, width, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.ReLU(), nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1)]
            width //= 2
            layers += [ConvResidualBlock(width) for _ in range(blocks)]
        layers += [nn.ReLU(), nn.Conv2d(width, params * c, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # noqa: D102
        if self.in_features is not None:
            lead = z.shape[:-1]
            y = self.stem(z.reshape(-1, z.shape[-1])).unflatten(-1, self.map_shape)
        else:
            lead = z.shape[:-3]
            y = self.stem(z.reshape(-1, *z.shape[-3:]))
        out = self.net(y).unflatten(1, (self.params, self.shape[0]))
        return out.reshape(*lead, *out.shape[1:])


def make_encoder(kind: str | nn.Module, shape: Sequence[int], out_features: int, *,
                 hidden_features: Sequence[int] = (512, 512), channels: int = 32,
                 blocks: int = 1) -> nn.Module:
    """Builds the encoder called ``kind`` (``"mlp"`` or ``"conv"``); a module passes through."""
    if isinstance(kind, nn.Module):
        return kind
    if kind == "mlp":
        return MLPEncoder(shape, out_features, hidden_features)
    if kind == "conv":
        return ConvEncoder(shape, out_features, channels, blocks)
    raise ValueError(f"encoder: expected 'mlp', 'conv' or an nn.Module, got {kind!r}.")


def make_decoder(kind: str | nn.Module, in_features: int, shape: Sequence[int], params: int, *,
                 hidden_features: Sequence[int] = (512, 512), channels: int = 32,
                 blocks: int = 1) -> nn.Module:
    """Builds the decoder called ``kind`` (``"mlp"`` or ``"conv"``); a module passes through."""
    if isinstance(kind, nn.Module):
        return kind
    if kind == "mlp":
        return MLPDecoder(in_features, shape, params, hidden_features)
    if kind == "conv":
        return ConvDecoder(in_features, shape, params, channels, blocks)
    raise ValueError(f"decoder: expected 'mlp', 'conv' or an nn.Module, got {kind!r}.")


# ------------------------------------------------------------------------- likelihoods
class Likelihood(nn.Module):
    """Base class of the decoder likelihoods :math:`p(x \\mid z)`.

    ``forward(out)`` takes decoder outputs of shape ``(*batch, params, *shape)`` and returns
    a Pyro distribution with batch shape ``batch`` and event shape ``shape``.
    """

    params: int = 1

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = _shape(shape)

    def _param(self, out: Tensor, i: int) -> Tensor:
        return out.select(out.dim() - len(self.shape) - 1, i)

    def mean(self, out: Tensor) -> Tensor:
        """The mean of ``p(x | z)``, shape ``(*batch, *shape)``."""
        return self(out).mean


class BernoulliLikelihood(Likelihood):
    """Creates a Bernoulli likelihood on binary data (decoder outputs are logits).

    Example:
        >>> BernoulliLikelihood((2,))(torch.zeros(3, 1, 2)).log_prob(torch.ones(3, 2))
        tensor([-1.3863, -1.3863, -1.3863])
    """

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Bernoulli(logits=self._param(out, 0),
                              validate_args=False).to_event(len(self.shape))

    def mean(self, out: Tensor) -> Tensor:  # noqa: D102
        return torch.sigmoid(self._param(out, 0))


class ContinuousBernoulliLikelihood(Likelihood):
    """Creates a continuous Bernoulli likelihood on data in [0, 1] (decoder outputs are
    logits); unlike a Bernoulli on grey levels it is a normalized density on [0, 1].

    References:
        The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019),
        https://arxiv.org/abs/1907.06845
    """

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.ContinuousBernoulli(logits=self._param(out, 0),
                                        validate_args=False).to_event(len(self.shape))


class GaussianLikelihood(Likelihood):
    """Creates a diagonal Gaussian likelihood whose mean the decoder outputs.

    Args:
        shape: data shape.
        scale: a float (fixed standard deviation), ``"learned"`` (one learned standard
            deviation per data entry, independent of z) or ``"decoder"`` (the decoder
            outputs it: ``softplus(out) + min_scale``).
        min_scale: floor of a decoder-output scale.
    """

    def __init__(self, shape: Sequence[int], scale: float | str = "decoder",
                 min_scale: float = 1e-3) -> None:
        super().__init__(shape)
        if isinstance(scale, str) and scale not in ("learned", "decoder"):
            raise ValueError(f"scale: expected a positive float, 'learned' or 'decoder', got "
                             f"{scale!r}.")
        if not isinstance(scale, str) and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale: expected a positive float, 'learned' or 'decoder', got "
                             f"{scale!r}.")
        self.kind = scale if isinstance(scale, str) else "fixed"
        self.params = 2 if scale == "decoder" else 1
        self.min_scale = float(min_scale)
        if scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(self.shape))
        elif self.kind == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))

    def scale(self, out: Tensor) -> Tensor:
        """The standard deviation for decoder outputs ``out``."""
        if self.kind == "decoder":
            return F.softplus(self._param(out, 1)) + self.min_scale
        if self.kind == "learned":
            return self.log_scale.exp().expand(self._param(out, 0).shape)
        return self.fixed_scale.expand(self._param(out, 0).shape)

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Normal(self._param(out, 0), self.scale(out),
                           validate_args=False).to_event(len(self.shape))

    def mean(self, out: Tensor) -> Tensor:  # noqa: D102
        return self._param(out, 0)

    def extra_repr(self) -> str:  # noqa: D102
        return f"scale={self.kind}"


class CategoricalLikelihood(Likelihood):
    """Creates a ``levels``-way categorical likelihood per entry (integer pixels as floats
    or ints in ``0 .. levels-1``); the decoder outputs ``levels`` logits per entry.

    Example:
        >>> lik = CategoricalLikelihood((2,), levels=4)
        >>> lik(torch.zeros(1, 4, 2)).log_prob(torch.tensor([[0.0, 3.0]]))
        tensor([-2.7726])
    """

    def __init__(self, shape: Sequence[int], levels: int = 256) -> None:
        super().__init__(shape)
        _positive(levels=levels)
        self.params = self.levels = levels

    def _logits(self, out: Tensor) -> Tensor:
        return out.movedim(out.dim() - len(self.shape) - 1, -1)

    def forward(self, out: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Categorical(logits=self._logits(out),
                                validate_args=False).to_event(len(self.shape))

    def mean(self, out: Tensor) -> Tensor:  # noqa: D102
        values = torch.arange(self.levels, dtype=out.dtype, device=out.device)
        return (self._logits(out).softmax(-1) * values).sum(-1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "categorical": CategoricalLikelihood,
}


def make_likelihood(name: str, shape: Sequence[int], *, scale: float | str = "decoder",
                    levels: int = 256) -> Likelihood:
    """Builds the likelihood called ``name`` (one of :data:`LIKELIHOODS`)."""
    if name == "gaussian":
        return GaussianLikelihood(shape, scale)
    if name == "categorical":
        return CategoricalLikelihood(shape, levels)
    if name in LIKELIHOODS:
        return LIKELIHOODS[name](shape)
    raise ValueError(f"likelihood: expected one of {sorted(LIKELIHOODS)}, got {name!r}.")


# ------------------------------------------------------------------------------ priors
class StandardNormalPrior(nn.Module):
    """Creates the prior :math:`N(0, I_D)` (buffers, so it moves with ``.to``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def distribution(self) -> dist.Distribution:
        """The prior as a Pyro distribution, event shape ``(D,)``."""
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class VampPrior(nn.Module):
    r"""Creates a VampPrior: the mixture :math:`\frac1K \sum_k q(z \mid u_k)` of the
    (diagonal Gaussian) posteriors of ``K`` learned pseudo-inputs :math:`u_k`.

    Args:
        shape: data shape (of the pseudo-inputs).
        components: K.

    References:
        VAE with a VampPrior (Tomczak & Welling, 2018), https://arxiv.org/abs/1705.07120
    """

    def __init__(self, shape: Sequence[int], components: int = 500) -> None:
        super().__init__()
        _positive(components=components)
        self.pseudo_inputs = nn.Parameter(torch.rand(components, *_shape(shape)))

    def distribution(self, encode: Callable[[Tensor], tuple[Tensor, Tensor]]
                     ) -> dist.Distribution:
        """The mixture, given ``encode(u) -> (loc, scale)`` of the posterior's Gaussian."""
        loc, scale = encode(self.pseudo_inputs)
        mix = dist.Categorical(logits=loc.new_zeros(loc.shape[0]), validate_args=False)
        comp = dist.Normal(loc, scale, validate_args=False).to_event(1)
        return dist.MixtureSameFamily(mix, comp, validate_args=False)


_PRIORS = ("normal", "vamp", "maf", "realnvp")
_POSTERIORS = ("gaussian", "iaf", "planar")


class VAE(PyroModule):
    r"""Creates a variational autoencoder as a Pyro program.

    ``model(x)``: :math:`z \sim p(z)`, :math:`x \sim p(x \mid z)` with the decoder's
    likelihood; ``guide(x)``: :math:`z \sim q(z \mid x)`, a diagonal Gaussian from the
    encoder, optionally pushed through a flow (IAF conditioned on encoder features, or a
    planar stack). Train it with :class:`probgen.inference.ELBO` (ELBO, IWAE, beta, KL
    annealing, free bits).

    Args:
        shape: data shape, ``(D,)`` or ``(C, H, W)``.
        latent_features: latent size.
        encoder, decoder: ``"mlp"``, ``"conv"`` (images) or a module (see the module
            docstring for the contracts).
        hidden_features: MLP hidden sizes (decoder mirrors the encoder).
        channels, blocks: width and residual blocks of the convolutional networks.
        likelihood: ``"bernoulli"``, ``"continuous_bernoulli"``, ``"gaussian"`` or
            ``"categorical"``.
        scale: the Gaussian likelihood's scale (float, ``"learned"`` or ``"decoder"``).
        levels: values per entry of the categorical likelihood (256 for 8-bit pixels).
        prior: ``"normal"``, ``"vamp"``, ``"maf"`` or ``"realnvp"``.
        prior_components: VampPrior pseudo-inputs.
        prior_transforms, prior_hidden: layers and hidden sizes of a flow prior.
        posterior: ``"gaussian"``, ``"iaf"`` or ``"planar"``.
        posterior_transforms, posterior_hidden: layers and hidden sizes of a flow posterior.
        context_features: size of the encoder features that condition an IAF posterior.

    References:
        Auto-encoding variational Bayes (Kingma & Welling, 2014), https://arxiv.org/abs/1312.6114

    Example:
        >>> vae = VAE((1, 8, 8), latent_features=2, hidden_features=[16])
        >>> vae.sample((3,)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        latent_features: int = 32,
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        hidden_features: Sequence[int] = (512, 512),
        channels: int = 32,
        blocks: int = 1,
        likelihood: str = "bernoulli",
        scale: float | str = "decoder",
        levels: int = 256,
        prior: str = "normal",
        prior_components: int = 500,
        prior_transforms: int = 4,
        prior_hidden: Sequence[int] = (256, 256),
        posterior: str = "gaussian",
        posterior_transforms: int = 4,
        posterior_hidden: Sequence[int] = (256, 256),
        context_features: int = 64,
    ) -> None:
        super().__init__()
        self.shape = _shape(shape)
        _positive(latent_features=latent_features)
        if prior not in _PRIORS:
            raise ValueError(f"prior: expected one of {list(_PRIORS)}, got {prior!r}.")
        if posterior not in _POSTERIORS:
            raise ValueError(f"posterior: expected one of {list(_POSTERIORS)}, got "
                             f"{posterior!r}.")
        self.latent_features = d = latent_features
        self.prior_kind, self.posterior_kind = prior, posterior
        self.context_features = context_features if posterior == "iaf" else 0
        hidden = [int(h) for h in hidden_features]
        self.likelihood = make_likelihood(likelihood, self.shape, scale=scale, levels=levels)
        net = {"hidden_features": hidden, "channels": channels, "blocks": blocks}
        self.encoder = make_encoder(encoder, self.shape, 2 * d + self.context_features, **net)
        self.decoder = make_decoder(decoder, d, self.shape, self.likelihood.params,
                                    hidden_features=hidden[::-1], channels=channels,
                                    blocks=blocks)
        if prior == "normal":
            self.prior: nn.Module = StandardNormalPrior(d)
        elif prior == "vamp":
            self.prior = VampPrior(self.shape, prior_components)
        else:
            cls = MAF if prior == "maf" else RealNVP
            self.prior = cls(d, prior_transforms, list(prior_hidden))
        self.flow: nn.Module | None = None
        if posterior == "iaf":
            self.flow = IAF(d, posterior_transforms, list(posterior_hidden),
                            context=self.context_features)
        elif posterior == "planar":
            self.flow = PlanarFlow(d, posterior_transforms)

    # ------------------------------------------------------------------ distributions
    def _check(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a tensor of shape (N, {self.shape}), got "
                            f"{type(x).__name__}.")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x: expected shape (N, {', '.join(map(str, self.shape))}), got "
                             f"{tuple(x.shape)}.")
        return x

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        h = self.encoder(x)
        d = self.latent_features
        loc, scale = h[..., :d], F.softplus(h[..., d:2 * d]) + 1e-5
        return loc, scale, (h[..., 2 * d:] if self.context_features else None)

    def posterior(self, x: Tensor) -> dist.Distribution:
        """:math:`q(z \\mid x)`, batch shape ``(N,)``, event ``(latent_features,)``."""
        loc, scale, context = self._encode(self._check(x))
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        if self.flow is None:
            return base
        transforms = self.flow.distribution(context).transforms
        return dist.TransformedDistribution(base, transforms, validate_args=False)

    def prior_distribution(self) -> dist.Distribution:
        """:math:`p(z)`, event shape ``(latent_features,)``."""
        if self.prior_kind == "vamp":
            return self.prior.distribution(lambda u: self._encode(u)[:2])
        return self.prior.distribution()

    def decoder_distribution(self, z: Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z)` for latents ``(*batch, latent_features)``."""
        return self.likelihood(self.decoder(z))

    # ------------------------------------------------------------------- Pyro program
    def model(self, x: Tensor) -> None:
        """The generative model: ``z ~ p(z)``, ``x ~ p(x | z)``, observed at ``x``."""
        x = self._check(x)
        prior = self.prior_distribution()
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", prior)
            pyro.sample("x", self.decoder_distribution(z), obs=x)

    def guide(self, x: Tensor) -> None:
        """The amortized posterior ``z ~ q(z | x)``."""
        q = self.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", q)

    # -------------------------------------------------------------------------- uses
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """A code per example: the posterior mean (through the flow for flow posteriors),
        ``(N, latent_features)``."""
        loc, _, context = self._encode(self._check(x))
        if self.flow is not None:
            for t in self.flow.distribution(context).transforms:
                loc = t(loc)
        return loc

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's mean for latents ``(*batch, latent_features)``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), mean: bool = True) -> Tensor:
        """Draws ``z ~ p(z)`` and returns the decoder's mean (``mean=True``, the usual
        figure) or a draw of ``x ~ p(x | z)``, shape ``(*shape, *data_shape)``."""
        shape = torch.Size(shape)
        z = self.prior_distribution().sample(shape)
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample().to(z.dtype)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the code of ``x``, same shape as ``x``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, steps: int = 8) -> Tensor:
        """Decodes the straight line between the codes of ``x1`` and ``x2`` (each
        ``(N, *shape)``), returning ``(N, steps, *shape)``."""
        _positive(steps=steps)
        z1, z2 = self.encode(x1), self.encode(x2)
        w = torch.linspace(0, 1, steps, dtype=z1.dtype, device=z1.device)[:, None]
        return self.decode(z1[:, None] * (1 - w) + z2[:, None] * w)

    @torch.no_grad()
    def traverse(self, x: Tensor | None = None, dims: Sequence[int] | None = None,
                 values: Sequence[float] | Tensor = (-3, -2, -1, 0, 1, 2, 3)) -> Tensor:
        """Moves one latent coordinate at a time over ``values`` from the code of one
        example ``x`` (``(1, *shape)``; ``None``: z = 0); returns
        ``(len(dims), len(values), *shape)``."""
        ref = self.prior.loc if isinstance(self.prior, StandardNormalPrior) else None
        device = next(self.parameters()).device
        z0 = (torch.zeros(self.latent_features, device=device) if x is None
              else self.encode(x)[0])
        if ref is not None:
            z0 = z0.to(ref.dtype)
        dims = list(range(self.latent_features)) if dims is None else list(dims)
        bad = [d for d in dims if not 0 <= d < self.latent_features]
        if bad:
            raise ValueError(f"dims: expected indices in [0, {self.latent_features}), got {bad}.")
        v = torch.as_tensor(values, dtype=z0.dtype, device=z0.device)
        z = z0.expand(len(dims), len(v), -1).clone()
        for i, d in enumerate(dims):
            z[i, :, d] = v
        return self.decode(z)

    def log_likelihood(self, x: Tensor, num_samples: int = 5000,
                       chunk_size: int = 100) -> Tensor:
        """Importance-sampled :math:`\\log p(x)` per example (nats), ``(N,)``; see
        :func:`probgen.latent.importance_log_likelihood`."""
        return importance_log_likelihood(self.model, self.guide, self._check(x),
                                         num_samples=num_samples, chunk_size=chunk_size)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"shape={self.shape}, latent_features={self.latent_features}, "
                f"prior={self.prior_kind!r}, posterior={self.posterior_kind!r}")


#: The latent-variable family's name -> class table (joined into ``probgen.models.MODELS``).
LATENT_MODELS: dict[str, type[nn.Module]] = {"VAE": VAE, **GMM_MODELS}
