r"""Score SDE models: a score network plus a VP, VE or sub-VP SDE, with every sampler and exact
likelihoods; and adapters that turn a trained DDPM or NCSN into an SDE score.

:class:`ScoreSDE` holds any network ``net(x, t, labels=None)`` (DESIGN.md's network of x and
t, with probgen time ``t``: 0 noise, 1 data) and a :class:`probgen.sde.SDE`. Its
:meth:`~ScoreSDE.forward` is the score ``s(x, t)``, which
:class:`probgen.inference.ContinuousScoreMatching` trains (``[objective] name = "sde_dsm"``)
and the samplers of :mod:`probgen.inference.sde` integrate: :meth:`~ScoreSDE.sample` with
``sampler="pc"`` (predictor-corrector), ``"sde"`` (reverse SDE through torchsde) or
``"ode"`` (probability flow through torchdiffeq), and :meth:`~ScoreSDE.log_prob` /
:meth:`~ScoreSDE.bits_per_dim` through the probability-flow ODE.

:class:`VectorScoreSDE` (the course's :class:`probgen.nn.ConditionalMLP`) and
:class:`ImageScoreSDE` (:class:`probgen.nn.UNet`) build one from keyword arguments (the
CLI's ``[model]`` table). :class:`NoiseLevelScore` turns a noise-level-conditional score
``s(y, sigma)`` of the data blurred by :math:`N(0, \sigma^2 I)` (NCSN's networks, and a
trained DDPM through its ``ve_score()``) into the score of any of the SDEs: DDPM and NCSN
are discretizations of the VP and VE SDEs, so their networks serve as those SDEs' scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probgen.inference.path_sampling import PATH_SAMPLERS
from probgen.inference.sde import predictor_corrector_sample, reverse_sde_sample
from probgen.models.path_model import PathModel, image_network
from probgen.nn import ConditionalMLP
from probgen.sde import SDE, get_sde
from probgen.utils import append_dims, check_choice

__all__ = [
    "ScoreSDE",
    "VectorScoreSDE",
    "ImageScoreSDE",
    "NoiseLevelScore",
    "SDE_SAMPLERS",
    "SDE_MODELS",
]

#: The samplers of :meth:`ScoreSDE.sample`.
SDE_SAMPLERS: tuple[str, ...] = ("pc", "sde", *PATH_SAMPLERS)
#: Parametrizations of the network output.
PARAMETRIZATIONS: tuple[str, ...] = ("eps", "score")


class ScoreSDE(PathModel):
    r"""Creates a score-based generative model: a network and an SDE.

    The score is :math:`s(x, t) = -\text{net}(x, t)/\sigma_t` (``parametrization="eps"``:
    the network predicts the noise, the standard and best-conditioned choice, equal to
    NCSN++'s output divided by :math:`\sigma`) or :math:`\text{net}(x, t)`
    (``"score"``). Time is probgen's (``t = 0`` noise, ``t = 1`` data). Sampling,
    guidance and likelihoods are :class:`probgen.models.PathModel`'s; the samplers are
    ``"pc"`` (predictor-corrector, the default), ``"sde"`` (the reverse SDE by torchsde)
    and those of :func:`probgen.inference.sample_path` (``"ode"``, ``"ddim"``,
    ``"dpm++2m"``, ...), with the options (keywords of :meth:`~PathModel.sample`):

    - ``steps``: 500 for ``"pc"`` and ``"sde"``, 20 for the solvers;
    - ``method``: ``"sde"``'s torchsde method (default ``"euler"``, see
      :data:`probgen.inference.SDE_METHODS`), ``"ode"``'s torchdiffeq one;
    - ``snr``, ``corrector_steps``, ``predictor``: ``"pc"``'s
      (:func:`probgen.inference.predictor_corrector_sample`);
    - ``denoise``: finish with a Tweedie denoising step (default ``True``).

    Args:
        network: ``net(x, t, labels=None)`` returning the shape of ``x``.
        sde: the forward SDE (:class:`probgen.sde.VPSDE`, :class:`~probgen.sde.VESDE`,
            :class:`~probgen.sde.SubVPSDE`).
        event_shape: the shape of one example.
        parametrization: ``"eps"`` or ``"score"``.
        num_classes: classes of a class-conditional network (with a null class
            ``num_classes`` for classifier-free guidance); ``None``: unconditional.
        sample_eps: samplers stop at ``t = 1 - sample_eps`` (1e-3 in Song et al.).
        likelihood_eps: likelihoods are of ``t = 1 - likelihood_eps`` (1e-5).
    """

    prediction = "score"
    #: The names :meth:`sample` accepts as ``sampler`` (run files are checked against them
    #: before training).
    samplers: tuple[str, ...] = SDE_SAMPLERS
    default_sampler = "pc"

    def __init__(
        self,
        network: nn.Module,
        sde: SDE,
        event_shape: Sequence[int],
        *,
        parametrization: str = "eps",
        num_classes: int | None = None,
        sample_eps: float = 1e-3,
        likelihood_eps: float = 1e-5,
    ) -> None:
        super().__init__(network, event_shape, num_classes=num_classes)
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected a probgen.sde.SDE, got {type(sde).__name__}.")
        check_choice("parametrization", parametrization, PARAMETRIZATIONS)
        for name, value in (("sample_eps", sample_eps), ("likelihood_eps", likelihood_eps)):
            if not 0 < value < 1:
                raise ValueError(f"{name}: expected a float in (0, 1), got {value!r}.")
        self.sde = sde
        self.parametrization = self.predicts = parametrization
        self.sample_eps, self.likelihood_eps = float(sample_eps), float(likelihood_eps)

    @property
    def path(self) -> SDE:
        """The SDE, the model's Gaussian path."""
        return self.sde

    @property
    def t_sample(self) -> float:  # noqa: D102
        return 1.0 - self.sample_eps

    @property
    def t_likelihood(self) -> float:  # noqa: D102
        return 1.0 - self.likelihood_eps

    #: The score the samplers use: an alias of :meth:`~probgen.models.PathModel.guided`.
    guided_score = PathModel.guided

    def sample(
        self,
        shape: Sequence[int] = (),
        *,
        sampler: str = "pc",
        steps: int | None = None,
        eta: float = 0.0,
        spacing: str | None = None,
        method: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        snr: float = 0.16,
        corrector_steps: int = 1,
        predictor: str = "reverse_diffusion",
        denoise: bool = True,
        labels: Any = None,
        guidance: float | None = None,
        classifier: nn.Module | None = None,
        classifier_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:meth:`PathModel.sample <probgen.models.PathModel.sample>` with the options of
        the class docstring (``method``: ``"sde"``'s torchsde one, default ``"euler"``)."""
        return super().sample(
            shape, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
            method=method or ("euler" if sampler == "sde" else None), rtol=rtol, atol=atol,
            labels=labels, guidance=guidance, classifier=classifier,
            classifier_scale=classifier_scale, generator=generator, snr=snr,
            corrector_steps=corrector_steps, predictor=predictor, denoise=denoise)

    def _sample(self, sampler: str, x0: Tensor, labels: Tensor | None,
                guidance: float | None, classifier: Any, classifier_scale: float, *,
                steps: int | None, method: str, generator: torch.Generator | None,
                denoise: bool = True, snr: float = 0.16, corrector_steps: int = 1,
                predictor: str = "reverse_diffusion", **options: Any) -> Any:
        if sampler not in ("pc", "sde"):
            return super()._sample(sampler, x0, labels, guidance, classifier, classifier_scale,
                                   steps=steps, method=method, generator=generator,
                                   denoise=denoise, **options)
        score = self.guided(labels, guidance, classifier, classifier_scale)
        common = dict(x_init=x0, steps=steps or 500, eps=self.sample_eps, denoise=denoise,
                      generator=generator)
        with self._evaluation():
            if sampler == "pc":
                return predictor_corrector_sample(
                    self.sde, score, snr=snr, corrector_steps=corrector_steps,
                    predictor=predictor, **common)
            return reverse_sde_sample(self.sde, score, method=method, **common)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"event_shape={self.event_shape}, parametrization={self.parametrization!r}, "
                f"num_classes={self.num_classes}")


def _sde(sde: str, beta_min: float, beta_max: float, sigma_min: float, sigma_max: float
         ) -> SDE:
    if sde == "ve":  # get_sde refuses an unknown name
        return get_sde(sde, sigma_min=sigma_min, sigma_max=sigma_max)
    return get_sde(sde, beta_min=beta_min, beta_max=beta_max)


class VectorScoreSDE(ScoreSDE):
    r"""Creates a score SDE for vectors (2-D toys) on the course's
    :class:`probgen.nn.ConditionalMLP`.

    Args:
        features: the dimension D.
        sde: ``"vp"``, ``"ve"`` or ``"subvp"``.
        beta_min: VP/sub-VP :math:`\beta_\min`; beta_max: :math:`\beta_\max`.
        sigma_min: VE :math:`\sigma_\min`; sigma_max: :math:`\sigma_\max` (about the
            data's diameter).
        parametrization: ``"eps"`` or ``"score"``.
        num_classes: for class-conditional models.
        hidden_features: the MLP's widths; embedding_dim: its condition embedding size;
        activation: its activation.
        sample_eps: samplers stop at ``1 - sample_eps``; likelihood_eps: likelihoods at
            ``1 - likelihood_eps``.

    Example:
        >>> model = VectorScoreSDE(2, sde="ve", sigma_max=5.0, hidden_features=[16])
        >>> model.sample((4,), sampler="sde", steps=10).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        features: int,
        sde: str = "vp",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 10.0,
        parametrization: str = "eps",
        num_classes: int | None = None,
        hidden_features: Sequence[int] = (128, 128, 128),
        embedding_dim: int = 128,
        activation: str = "silu",
        sample_eps: float = 1e-3,
        likelihood_eps: float = 1e-5,
    ) -> None:
        net = ConditionalMLP(features, hidden_features, num_classes=num_classes,
                             embedding_dim=embedding_dim, activation=activation)
        super().__init__(net, _sde(sde, beta_min, beta_max, sigma_min, sigma_max),
                         (features,), parametrization=parametrization,
                         num_classes=num_classes, sample_eps=sample_eps,
                         likelihood_eps=likelihood_eps)


class ImageScoreSDE(ScoreSDE):
    r"""Creates a score SDE for images on the time- and class-conditional
    :class:`probgen.nn.UNet` (images on [-1, 1]: ``[data] preprocess = "signed"``).

    Args:
        shape: the image shape ``(C, H, W)``.
        sde: ``"vp"``, ``"ve"`` or ``"subvp"``.
        beta_min: VP/sub-VP :math:`\beta_\min`; beta_max: :math:`\beta_\max`.
        sigma_min: VE :math:`\sigma_\min`; sigma_max: :math:`\sigma_\max`.
        parametrization: ``"eps"`` or ``"score"``.
        num_classes: for class-conditional models.
        base_channels, channel_mults, num_res_blocks: the U-Net's widths and depth;
            attention_levels, attention_heads, dropout, groups: its attention, dropout
            and GroupNorm (see :class:`probgen.nn.UNet`).
        network: a network ``net(x, t, labels=None)`` used instead of the U-Net (e.g.
            :class:`probgen.nn.DiT`); the U-Net arguments then keep their defaults.
        sample_eps: samplers stop at ``1 - sample_eps``; likelihood_eps: likelihoods at
            ``1 - likelihood_eps``.
    """

    def __init__(
        self,
        shape: Sequence[int],
        sde: str = "vp",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        parametrization: str = "eps",
        num_classes: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        attention_heads: int = 1,
        dropout: float = 0.0,
        groups: int = 8,
        network: nn.Module | None = None,
        sample_eps: float = 1e-3,
        likelihood_eps: float = 1e-5,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape: expected (C, H, W), got {shape}.")
        net = image_network(network, shape, num_classes=num_classes,
                            base_channels=base_channels, channel_mults=channel_mults,
                            num_res_blocks=num_res_blocks, attention_levels=attention_levels,
                            attention_heads=attention_heads, dropout=dropout, groups=groups)
        super().__init__(net, _sde(sde, beta_min, beta_max, sigma_min, sigma_max), shape,
                         parametrization=parametrization, num_classes=num_classes,
                         sample_eps=sample_eps, likelihood_eps=likelihood_eps)


class NoiseLevelScore(nn.Module):
    r"""Creates an SDE score from a noise-level-conditional score ``s(y, sigma, **cond)``.

    ``s(y, sigma)`` estimates the score of the data blurred by :math:`N(0, \sigma^2 I)`
    (NCSN's networks; a trained DDPM through its ``ve_score()``, with
    :math:`y = x_k/\sqrt{\bar\alpha_k}`). The SDE's :math:`x_t = \alpha_t x_1 + \sigma_t
    \epsilon` is :math:`\alpha_t y` with :math:`y` at level :math:`\sigma_t/\alpha_t`, so

    .. math:: \nabla_x \log p_t(x) = s(x/\alpha_t,\ \sigma_t/\alpha_t)\,/\,\alpha_t .

    Exact in the noise level for every SDE of :mod:`probgen.sde`: a DDPM (a discretization
    of the VP SDE) becomes a VP-SDE score, an NCSN (of the VE SDE) a VE-SDE score, and
    either serves the other SDEs too, within the range of levels it was trained on.

    Args:
        score: ``score(y, sigma, **cond)`` with ``sigma`` of shape ``(batch,)``.
        sde: the SDE whose score this becomes.
        source: the module behind ``score`` (registered so ``.to(device)`` and
            ``parameters()`` reach it), e.g. the DDPM or the NCSN network.

    Example:
        >>> from probgen.sde import VPSDE
        >>> blurred_std_normal = lambda y, s: -y / (1 + s[:, None] ** 2)
        >>> score = NoiseLevelScore(blurred_std_normal, VPSDE())
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(score(x, torch.rand(3)), -x, atol=1e-5)  # VP keeps N(0, I)
        True
    """

    def __init__(self, score: Callable[..., Tensor], sde: SDE,
                 source: nn.Module | None = None) -> None:
        super().__init__()
        if not callable(score):
            raise TypeError(f"score: expected a callable score(y, sigma), got "
                            f"{type(score).__name__}.")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected a probgen.sde.SDE, got {type(sde).__name__}.")
        self.score, self.sde, self.source = score, sde, source

    @classmethod
    def from_diffusion(cls, model: nn.Module, sde: SDE) -> NoiseLevelScore:
        """The SDE score of a trained diffusion model with a ``ve_score()`` method (a
        :class:`probgen.models.DDPM` or ``VectorDDPM``)."""
        if not callable(getattr(model, "ve_score", None)):
            raise TypeError(f"model: expected a diffusion model with ve_score(), got "
                            f"{type(model).__name__}.")
        return cls(model.ve_score(), sde, source=model)

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """The score of the SDE's marginal at ``x`` and probgen times ``t``."""
        alpha, sigma = self.sde.alpha_sigma(t.to(x.dtype))
        a = append_dims(alpha, x.dim())
        return self.score(x / a, sigma / alpha, **cond) / a


#: The score SDE models, for the CLI's ``[model] name``.
SDE_MODELS: dict[str, type[ScoreSDE]] = {"VectorScoreSDE": VectorScoreSDE,
                                          "ImageScoreSDE": ImageScoreSDE}
