r"""Variational autoencoders as Pyro programs, and their building blocks.

Stable API (other latent-variable models build on it; the building blocks live in
:mod:`probgen.models.vae_blocks` and :mod:`probgen.models.vae_priors` and are re-exported here):

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

``model`` and ``guide`` register their networks with ``pyro.module``, the standard Pyro way,
so plain ``pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam(...), Trace_ELBO())`` trains
every parameter, and ``model(None, n=...)`` generates (``pyro.infer.Predictive`` works).
:class:`probgen.inference.ELBO` runs them in a private parameter-store scope, so training
with ``fit`` leaves Pyro's global parameter store untouched (the trainer optimizes
``vae.parameters()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.distributions import Transform

from probgen.flows import as_module
from probgen.latent import importance_log_likelihood
from probgen.models.flows import IAF, MAF, PlanarFlow, RealNVP
from probgen.models.gmm import GMM_MODELS
from probgen.models.vae_blocks import (
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    ContinuousBernoulliLikelihood,
    ConvDecoder,
    ConvEncoder,
    GaussianLikelihood,
    Likelihood,
    MLPDecoder,
    MLPEncoder,
    _shape,
    make_decoder,
    make_encoder,
    make_likelihood,
)
from probgen.models.vae_priors import DiagonalNormalMixture, StandardNormalPrior, VampPrior
from probgen.utils import apply_to_tensors, check_int, drawing_from

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
    "DiagonalNormalMixture",
    "VAE",
    "LATENT_MODELS",
]


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
        encoder, decoder: ``"mlp"``, ``"conv"`` or ``"vit"`` (images) or a module (see the module
            docstring for the contracts).
        hidden_features: MLP hidden sizes (decoder mirrors the encoder).
        channels, blocks: width and residual blocks of the convolutional networks.
        likelihood: ``"bernoulli"``, ``"continuous_bernoulli"``, ``"gaussian"``,
            ``"categorical"`` or ``"discretized_logistic"`` (integer pixels, two decoder
            outputs per entry).
        scale: the Gaussian likelihood's scale (float, ``"learned"`` or ``"decoder"``).
        levels: values per entry of the categorical and discretized-logistic likelihoods
            (256 for 8-bit pixels).
        prior: ``"normal"``, ``"vamp"``, ``"maf"`` or ``"realnvp"``, or an object: any
            density model (an ``nn.Module`` whose ``distribution()`` is a Pyro distribution:
            a :class:`~probgen.models.NormalizingFlow`, a continuous flow, an autoregressive
            or a flow-matching model; a submodule, so its parameters train with the VAE) or
            a Pyro distribution object (fixed), with event shape ``(latent_features,)``.
        prior_components: VampPrior pseudo-inputs.
        prior_transforms, prior_hidden: layers and hidden sizes of a flow prior.
        posterior: ``"gaussian"``, ``"iaf"`` or ``"planar"``, or an object that pushes
            the encoder's diagonal Gaussian forward: a normalizing flow (an ``nn.Module``
            whose ``distribution()`` is a Pyro ``TransformedDistribution``, unconditional)
            or a Pyro ``Transform``/``TransformModule`` (or a list of them) on
            ``(latent_features,)``.
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
        prior: str | nn.Module | dist.Distribution = "normal",
        prior_components: int = 500,
        prior_transforms: int = 4,
        prior_hidden: Sequence[int] = (256, 256),
        posterior: str | nn.Module | Transform | Sequence[Transform] = "gaussian",
        posterior_transforms: int = 4,
        posterior_hidden: Sequence[int] = (256, 256),
        context_features: int = 64,
    ) -> None:
        super().__init__()
        self.shape = _shape(shape)
        check_int("latent_features", latent_features)
        self.latent_features = d = latent_features
        prior_object = _prior_object(prior, d)
        posterior_object = _posterior_object(posterior, d)
        self.prior_kind = prior if prior_object is None else type(prior).__name__
        self.posterior_kind = (posterior if posterior_object is None
                               else type(posterior).__name__)
        self.context_features = context_features if posterior == "iaf" else 0
        hidden = [int(h) for h in hidden_features]
        self.likelihood = make_likelihood(likelihood, self.shape, scale=scale, levels=levels)
        net = {"hidden_features": hidden, "channels": channels, "blocks": blocks}
        self.encoder = make_encoder(encoder, self.shape, 2 * d + self.context_features, **net)
        self.decoder = make_decoder(decoder, d, self.shape, self.likelihood.params,
                                    hidden_features=hidden[::-1], channels=channels,
                                    blocks=blocks)
        if prior_object is not None:
            self.prior: nn.Module | dist.Distribution = prior_object
        elif prior == "normal":
            self.prior = StandardNormalPrior(d)
        elif prior == "vamp":
            self.prior = VampPrior(self.shape, prior_components)
        else:
            cls = MAF if prior == "maf" else RealNVP
            self.prior = cls(d, prior_transforms, list(prior_hidden))
        self.flow: nn.Module | None = None
        if posterior_object is not None:
            self.flow = posterior_object
        elif posterior == "iaf":
            self.flow = IAF(d, posterior_transforms, list(posterior_hidden),
                            context=self.context_features)
        elif posterior == "planar":
            self.flow = PlanarFlow(d, posterior_transforms)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> VAE:
        """Moves/casts the networks and also a prior given as a Pyro distribution object
        (not a module, so ``nn.Module`` would leave its tensors behind)."""
        super()._apply(fn, recurse)
        if not isinstance(self.prior, nn.Module):
            apply_to_tensors(self.prior, fn)
        return self

    # ------------------------------------------------------------------ distributions
    def _check(self, x: Tensor) -> Tensor:
        return _check_data(x, self.shape)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        to_input = getattr(self.likelihood, "encoder_input", None)
        h = self.encoder(to_input(x) if to_input is not None else x)
        d = self.latent_features
        loc, scale = h[..., :d], F.softplus(h[..., d:2 * d]) + 1e-5
        return loc, scale, (h[..., 2 * d:] if self.context_features else None)

    def posterior(self, x: Tensor) -> dist.Distribution:
        """:math:`q(z \\mid x)`, batch shape ``(N,)``, event ``(latent_features,)``."""
        loc, scale, context = self._encode(self._check(x))
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        if self.flow is None:
            return base
        return dist.TransformedDistribution(base, self._posterior_transforms(context),
                                            validate_args=False)

    def _posterior_transforms(self, context: Tensor | None) -> list[Transform]:
        if isinstance(self.flow, _TransformList):
            return self.flow.transforms
        return list(self.flow.distribution(context).transforms)

    def prior_distribution(self) -> dist.Distribution:
        """:math:`p(z)`, event shape ``(latent_features,)``."""
        if isinstance(self.prior, VampPrior):
            return self.prior.distribution(lambda u: self._encode(u)[:2])
        if isinstance(self.prior, nn.Module):
            return self.prior.distribution()
        return self.prior

    def decoder_distribution(self, z: Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z)` for latents ``(*batch, latent_features)``."""
        return self.likelihood(self.decoder(z))

    # ------------------------------------------------------------------- Pyro program
    def _register(self, *names: str) -> None:
        """Registers the named networks with Pyro (``pyro.module``), so that plain
        ``pyro.infer.SVI`` finds and trains their parameters."""
        for name in names:
            module = getattr(self, name)
            if module is not None:
                pyro.module(name, module)

    def model(self, x: Tensor | None = None, n: int = 1) -> Tensor:
        """The generative model: ``z ~ p(z)``, ``x ~ p(x | z)`` in ``pyro.plate("data")``.

        Args:
            x: observed data ``(N, *shape)``; ``None`` generates ``n`` examples (so
                ``pyro.infer.Predictive(vae.model, num_samples=S)()`` draws from the model).
            n: examples to generate when ``x`` is None.

        Returns:
            ``x`` (observed), or the generated draw ``(n, *shape)``.
        """
        x, n = _observed(x, n, self._check)
        self._register("decoder", "likelihood",
                       *(("prior",) if isinstance(self.prior, nn.Module) else ()),
                       *(("encoder",) if isinstance(self.prior, VampPrior) else ()))
        prior = self.prior_distribution()
        with pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", prior)
            return pyro.sample("x", self.decoder_distribution(z), obs=x)

    def guide(self, x: Tensor, n: int = 1) -> None:
        """The amortized posterior ``z ~ q(z | x)`` (``n`` is the model's, unused here)."""
        self._register("encoder", "flow")
        q = self.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", q)

    def guide_parameters(self) -> list[nn.Parameter]:
        """The amortized posterior's parameters, encoder and posterior flow (what
        :class:`probgen.inference.VariationalEM`'s E-step updates; with a VampPrior the
        encoder also shapes the prior)."""
        params = list(self.encoder.parameters())
        return params + (list(self.flow.parameters()) if self.flow is not None else [])

    # -------------------------------------------------------------------------- uses
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """A code per example: the posterior mean (through the flow for flow posteriors),
        ``(N, latent_features)``."""
        loc, _, context = self._encode(self._check(x))
        if self.flow is not None:
            for t in self._posterior_transforms(context):
                loc = t(loc)
        return loc

    def decoder_mean(self, z: Tensor) -> Tensor:
        """The likelihood's mean for latents ``(*batch, latent_features)``, differentiable
        in ``z`` and the weights (the ``decode`` of
        :func:`probgen.inference.measurement_model` for NUTS or SVI over the latent)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's mean for latents ``(*batch, latent_features)`` (no gradient:
        :meth:`decoder_mean` is the differentiable one)."""
        return self.decoder_mean(z)

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), mean: bool = True, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws ``z ~ p(z)`` and returns the decoder's mean (``mean=True``, the usual
        figure) or a draw of ``x ~ p(x | z)``, shape ``(*shape, *data_shape)``; every draw
        comes from ``generator`` when one is given."""
        shape = torch.Size(shape)
        with drawing_from(generator):
            z = self.prior_distribution().sample(shape)
            out = self.decoder(z)
            if mean:
                return self.likelihood.mean(out)
            return self.likelihood(out).sample().to(z.dtype)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the code of ``x``, same shape as ``x``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, steps: int = 8) -> Tensor:
        """Decodes the straight line between the codes of ``x1`` and ``x2`` (each
        ``(N, *shape)``), returning ``(N, steps, *shape)``."""
        check_int("steps", steps)
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

    def log_likelihood(self, x: Tensor, num_samples: int = 5000, chunk_size: int = 100,
                       generator: torch.Generator | None = None) -> Tensor:
        """Importance-sampled :math:`\\log p(x)` per example (nats), ``(N,)``, the particles
        drawn from ``generator`` when given; see
        :func:`probgen.latent.importance_log_likelihood` (run in a private parameter-store
        scope: Pyro's global store is left as it was)."""
        with pyro.get_param_store().scope():
            return importance_log_likelihood(self.model, self.guide, self._check(x),
                                             num_samples=num_samples, chunk_size=chunk_size,
                                             generator=generator)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"shape={self.shape}, latent_features={self.latent_features}, "
                f"prior={self.prior_kind!r}, posterior={self.posterior_kind!r}")


def _check_data(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x`` itself once it is a tensor of shape ``(N, *shape)``; else an error naming both
    (the check every latent-variable model of this package makes on its data)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a tensor of shape (N, {shape}), got "
                        f"{type(x).__name__}.")
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"x: expected shape (N, {', '.join(map(str, shape))}), got "
                         f"{tuple(x.shape)}.")
    return x


def _observed(x: Tensor | None, n: int,
              check: Callable[[Tensor], Tensor]) -> tuple[Tensor | None, int]:
    """A Pyro ``model(x, n)``'s batch: ``(check(x), N)`` for observed data, else ``(None, n)``
    once ``n`` is a positive int (the number of examples to generate)."""
    if x is None:
        check_int("n", n)
        return None, n
    x = check(x)
    return x, x.shape[0]


class _TransformList(nn.Module):
    """Pyro transforms given as a VAE posterior, in order; the trainable ones
    (``TransformModule`` objects) are submodules, so they train with the VAE."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        super().__init__()
        self.trainable = nn.ModuleList([t for t in transforms if isinstance(t, nn.Module)])
        # the others (AffineTransform, Permute, ...) held as a flow holds them: their tensors
        # are buffers, saved and moved with the VAE
        self.fixed = nn.ModuleList([as_module(t) for t in transforms
                                    if not isinstance(t, nn.Module)])
        self.transforms = list(transforms)


def _prior_object(prior: object, d: int) -> nn.Module | dist.Distribution | None:
    """The prior object (``None`` for a name), checked: a density model or a Pyro
    distribution with event shape ``(d,)``."""
    if isinstance(prior, str):
        if prior not in _PRIORS:
            raise ValueError(f"prior: expected one of {list(_PRIORS)} or a density model / "
                             f"Pyro distribution object, got {prior!r}.")
        return None
    if isinstance(prior, nn.Module):
        if not callable(getattr(prior, "distribution", None)):
            raise TypeError(f"prior: expected a density model with distribution(), got "
                            f"{type(prior).__name__} without it.")
        if isinstance(prior, VampPrior):
            return prior
        distribution = prior.distribution()
    elif isinstance(prior, dist.torch_distribution.TorchDistributionMixin):
        distribution = prior
    else:
        raise TypeError(f"prior: expected a name, a density model (nn.Module with "
                        f"distribution()) or a Pyro distribution, got {type(prior).__name__}.")
    if tuple(distribution.event_shape) != (d,) or tuple(distribution.batch_shape) != ():
        raise ValueError(f"prior: expected event shape ({d},) and batch shape () (the "
                         f"latent), got event {tuple(distribution.event_shape)} and batch "
                         f"{tuple(distribution.batch_shape)}.")
    return prior


def _posterior_object(posterior: object, d: int) -> nn.Module | None:
    """The posterior flow object (``None`` for a name), checked."""
    if isinstance(posterior, str):
        if posterior not in _POSTERIORS:
            raise ValueError(f"posterior: expected one of {list(_POSTERIORS)} or a flow / "
                             f"Pyro transforms, got {posterior!r}.")
        return None
    if isinstance(posterior, Transform):
        posterior = [posterior]
    if isinstance(posterior, (list, tuple)) and all(isinstance(t, Transform)
                                                    for t in posterior):
        return _TransformList(posterior)
    if isinstance(posterior, nn.Module) and callable(getattr(posterior, "distribution", None)):
        flow = posterior.distribution()
        if not isinstance(flow, dist.TransformedDistribution):
            raise TypeError(f"posterior: expected a normalizing flow whose distribution() is "
                            f"a TransformedDistribution, got {type(flow).__name__}.")
        if tuple(flow.event_shape) != (d,):
            raise ValueError(f"posterior: expected a flow on ({d},), got event shape "
                             f"{tuple(flow.event_shape)}.")
        return posterior
    raise TypeError(f"posterior: expected a name, a normalizing flow or Pyro transforms, got "
                    f"{type(posterior).__name__}.")


#: The latent-variable family's name -> class table (joined into ``probgen.models.MODELS``).
LATENT_MODELS: dict[str, type[nn.Module]] = {"VAE": VAE, **GMM_MODELS}
