r"""Diffusion models: a network plus a noise schedule, sampled by DDPM or DDIM, with guidance.

:class:`DiffusionModel` holds any network ``net(x, t, labels=None)`` (DESIGN.md's network
of x and t, called in probgen time: the step's time on the schedule's path,
``t = 1 - step / (T - 1)``, :meth:`probgen.diffusion.NoiseSchedule.time_of_step`, so
``t = 1`` is step 0, the data end, as for flow matching and score SDEs) and a
:class:`probgen.diffusion.NoiseSchedule`; it satisfies the diffusion-model protocol of
:mod:`probgen.inference.diffusion`, whose objectives train it and whose samplers its
:meth:`~DiffusionModel.sample` delegates to. :class:`DDPM` builds one on a
:class:`probgen.nn.UNet` for images, :class:`VectorDDPM` on the course's
:class:`probgen.nn.ConditionalMLP` for vectors (2-D toys).

**Diffusion as a hierarchical VAE** (the lectures' view) is literal here:
:meth:`~DiffusionModel.hvae_model` and :meth:`~DiffusionModel.hvae_guide` are a Pyro model
and guide (wrapped as one latent-variable model by :class:`DiffusionVAE`). In Ho et al.'s
notation the data is :math:`x_0` and the latents are :math:`x_1, \dots, x_T` (the state at
schedule ``step = s`` is :math:`x_{s+1}`); the model is the learned reverse process
:math:`p(x_T) \prod_{t \ge 2} p_\theta(x_{t-1} \mid x_t)\, p_\theta(x_0 \mid x_1)`, the
guide the fixed forward process in its posterior factorization
:math:`q(x_T \mid x_0) \prod_{t \ge 2} q(x_{t-1} \mid x_t, x_0)`. Pyro's
``TraceMeanField_ELBO`` on them (closed-form Gaussian KLs at every level) estimates exactly
the bound that :meth:`~DiffusionModel.variational_bound` computes in closed form, and
``pyro.infer.SVI`` on them trains the network by that bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from probgen.diffusion import (
    PARAMETRIZATION_PREDICTIONS,
    PARAMETRIZATIONS,
    NoiseSchedule,
    SchedulePath,
    VEScore,
    make_schedule,
)
from probgen.inference.diffusion import (
    DIFFUSION_SAMPLERS,
    VARIANCES,
    DiffusionResult,
    ddim_invert,
    diffusion_sample,
    reverse_moments,
    variational_bound,
)
from probgen.models.path_model import PathModel, image_network
from probgen.nn import ConditionalMLP
from probgen.pixels import DiscretizedGaussian, to_signed
from probgen.utils import check_choice, check_int

__all__ = ["DiffusionModel", "DiffusionVAE", "DDPM", "VectorDDPM", "DIFFUSION_MODELS"]


class DiffusionModel(PathModel):
    r"""Creates a Gaussian diffusion model from a network and a noise schedule.

    Sampling, guidance and likelihoods are :class:`probgen.models.PathModel`'s on the
    schedule's path (:attr:`path`), the samplers those of
    :func:`probgen.inference.diffusion.diffusion_sample` (``"ancestral"``, the default;
    ``"ddim"``; the probability-flow solvers; ``"ode"``) with its options as keywords of
    :meth:`~PathModel.sample`: ``steps`` (default T), ``eta``, ``spacing``, ``clip``
    (default the model's), ``method``, ``rtol``, ``atol``. :meth:`forward` is the noise
    prediction in probgen time, :meth:`output` the network's at steps.

    Args:
        network: ``net(x, t, labels=None) -> (batch, C', ...)``; its output is the
            prediction (``C' = C``), or the prediction and the variance output stacked
            along dimension 1 (``C' = 2C``) when ``variance="learned_range"``.
        schedule: the noise schedule (T steps).
        event_shape: the shape of one example.
        parametrization: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: ``"fixed_large"``, ``"fixed_small"`` or ``"learned_range"`` (see
            :data:`probgen.inference.diffusion.VARIANCES`).
        num_classes: classes of a class-conditional network (``None``: unconditional).
        clip: clamp predicted clean data to ``[-clip, clip]`` while sampling (1 for images
            on [-1, 1]; ``None`` for unbounded data).
    """

    prediction = "eps"
    #: The names :meth:`sample` accepts as ``sampler`` (run files are checked against them
    #: before training).
    samplers: tuple[str, ...] = DIFFUSION_SAMPLERS
    default_sampler = "ancestral"

    def __init__(
        self,
        network: nn.Module,
        schedule: NoiseSchedule,
        event_shape: Sequence[int],
        *,
        parametrization: str = "eps",
        variance: str = "fixed_large",
        num_classes: int | None = None,
        clip: float | None = None,
    ) -> None:
        super().__init__(network, event_shape, num_classes=num_classes)
        check_choice("parametrization", parametrization, PARAMETRIZATIONS[:3])
        check_choice("variance", variance, VARIANCES)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a NoiseSchedule, got "
                            f"{type(schedule).__name__}.")
        self.schedule = schedule
        self.parametrization, self.variance = parametrization, variance
        self.predicts = PARAMETRIZATION_PREDICTIONS[parametrization]
        self.clip = None if clip is None else float(clip)

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return self.schedule.num_steps

    @property
    def alphas_cumprod(self) -> Tensor:
        r""":math:`\bar\alpha_s` for ``step = 0..T-1`` (float64)."""
        return self.schedule.alphas_cumprod

    @property
    def path(self) -> SchedulePath:
        """The schedule's Gaussian path in probgen time (a SchedulePath)."""
        return SchedulePath(self.schedule)

    def _split(self, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """The network output as (prediction, variance output or ``None``)."""
        if self.variance == "learned_range":
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"network: with learned variances the output needs "
                                 f"{2 * x.shape[1]} channels, got {out.shape[1]}.")
            pred, v = out.chunk(2, dim=1)
            return pred, v
        if out.shape != x.shape:
            raise ValueError(f"network: expected an output of shape {tuple(x.shape)}, got "
                             f"{tuple(out.shape)}.")
        return out, None

    def _output(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self._split(x, self._call(x, t, labels))[0]

    def output(self, x: Tensor, step: Tensor, labels: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        """The network's prediction (in :attr:`parametrization`) and variance output.

        Args:
            x: noisy states ``(batch, *event)``.
            step: indices ``(batch,)`` in ``0..T-1`` (fractional values are allowed: the
                network sees the probgen time ``1 - step / (T - 1)``,
                :meth:`probgen.diffusion.NoiseSchedule.time_of_step`).
            labels: classes ``(batch,)`` (``None``: the null class / unconditional).
        """
        self._check_x(x)
        if not isinstance(step, Tensor) or step.shape != x.shape[:1]:
            got = tuple(step.shape) if isinstance(step, Tensor) else type(step).__name__
            raise ValueError(f"step: expected shape ({x.shape[0]},), got {got}.")
        t = self.schedule.time_of_step(step.to(device=x.device, dtype=x.dtype))
        return self._split(x, self._call(x, t, labels))

    def eps(self, x: Tensor, step: Tensor, labels: Tensor | None = None) -> Tensor:
        r"""The noise prediction :math:`\epsilon_\theta(x_s, s)` at integer or fractional
        steps (converted from the parametrization; :math:`\bar\alpha` interpolated in
        log-SNR between integer steps)."""
        return self._predict(x, step, labels, "eps")

    def score(self, x: Tensor, step: Tensor, labels: Tensor | None = None) -> Tensor:
        r"""The score :math:`\nabla\log q(x_s) \approx -\epsilon_\theta/\sqrt{1-\bar\alpha_s}`."""
        return self._predict(x, step, labels, "score")

    def _predict(self, x: Tensor, step: Tensor, labels: Tensor | None, target: str) -> Tensor:
        pred, _ = self.output(x, step, labels)
        return self.schedule.convert(pred, x, step.to(torch.float64), self.parametrization,
                                     target)

    def velocity(self, x: Tensor, t: Tensor, labels: Tensor | None = None,
                 guidance: float | None = None) -> Tensor:
        r"""The probability-flow velocity at ``x`` ``(batch, *event)`` and probgen times ``t``
        ``(batch,)``: the (guided) noise prediction converted on :attr:`path`."""
        return self.path.convert(self.guided(labels, guidance)(x, t), x, t, source="eps",
                                 target="velocity")

    def ve_score(self) -> VEScore:
        """This model as a noise-conditional score ``score(y, sigma)`` for the Langevin
        samplers of :mod:`probgen.inference.langevin` (see :class:`probgen.diffusion.VEScore`)."""
        return VEScore(self.eps, self.schedule)

    def run(self, n: int, *, generator: torch.Generator | None = None,
            noise: Tensor | None = None, record_every: int | None = None,
            **kwargs: Any) -> DiffusionResult:
        """Draws ``n`` samples and returns the sampler's full result
        (:func:`probgen.inference.diffusion.diffusion_sample`'s keywords)."""
        noise = self.prior_sample(n, generator) if noise is None else noise
        kwargs.setdefault("clip", self.clip)
        out = diffusion_sample(self, noise, generator=generator, record_every=record_every,
                               **kwargs)  # evaluation mode for the run: the sampler loop's
        self.last_nfe = out.nfe
        return out

    def sample(
        self,
        shape: Sequence[int] = (),
        *,
        sampler: str = "ancestral",
        steps: int | None = None,
        eta: float = 0.0,
        spacing: str | None = None,
        method: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        clip: float | None = None,
        labels: Any = None,
        guidance: float | None = None,
        classifier: nn.Module | None = None,
        classifier_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:meth:`PathModel.sample <probgen.models.PathModel.sample>` with the samplers of
        :func:`~probgen.inference.diffusion.diffusion_sample` (``steps``: default T; the
        strided samplers' ``spacing`` also ``"leading"``, ``"trailing"``, ``"quadratic"``)
        and ``clip`` (clamp predicted clean data; default the model's)."""
        return super().sample(
            shape, sampler=sampler, steps=steps, eta=eta, spacing=spacing, method=method,
            rtol=rtol, atol=atol, labels=labels, guidance=guidance, classifier=classifier,
            classifier_scale=classifier_scale, generator=generator,
            clip=self.clip if clip is None else clip)

    def _sample(self, sampler: str, x0: Tensor, labels: Tensor | None,
                guidance: float | None, classifier: Any, classifier_scale: float, *,
                generator: torch.Generator | None, **options: Any) -> DiffusionResult:
        return self.run(x0.shape[0], noise=x0, generator=generator, sampler=sampler,
                        labels=labels, guidance=guidance, classifier=classifier,
                        classifier_scale=classifier_scale, **options)

    def encode(self, x: Tensor, *, steps: int | None = None, labels: Any = None,
               guidance: float | None = None) -> Tensor:
        """The DDIM latent of data ``x`` (deterministic inversion; see
        :func:`probgen.inference.diffusion.ddim_invert`)."""
        self._check_x(x)
        return ddim_invert(self, x, steps=steps, labels=labels, guidance=guidance)

    def decode(self, z: Tensor, *, steps: int | None = None, labels: Any = None,
               guidance: float | None = None, clip: float | None = None) -> Tensor:
        """Data from a DDIM latent (the deterministic ``eta = 0`` sampler from ``z``)."""
        self._check_x(z)
        return self.run(z.shape[0], noise=z, sampler="ddim", steps=steps, eta=0.0,
                        labels=labels, guidance=guidance, clip=clip).samples

    def variational_bound(self, x: Any, *, levels: int | None = None,
                          generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The full variational bound of each example (nats and bits per dimension); see
        :func:`probgen.inference.diffusion.variational_bound`."""
        return variational_bound(self, x, levels=levels, generator=generator)

    # ------------------------------------------------------- the hierarchical VAE (Pyro)
    def _hvae_data(self, x: Tensor, levels: int | None) -> Tensor:
        """The observed batch on the model's scale (integer pixels mapped to [-1, 1])."""
        self._check_x(x)
        if levels is None:
            return x if x.is_floating_point() else x.to(self._device_dtype()[1])
        return to_signed(x, levels).to(self._device_dtype()[1])

    def hvae_model(self, x: Tensor | None = None, n: int = 1, labels: Tensor | None = None,
                   levels: int | None = None) -> Tensor:
        r"""DDPM's reverse process as a Pyro model (see the module docstring).

        Sites, all in ``pyro.plate("data", N, dim=-1)``: ``"x_T"`` ... ``"x_1"`` (latents,
        ``x_{s+1}`` the state at ``step = s``), :math:`x_T \sim N(0, I)`,
        :math:`x_{t-1} \sim N(\mu_\theta(x_t), e^{v_\theta})`
        (:func:`probgen.inference.diffusion.reverse_moments`), and the observed ``"x_0"``:
        the Gaussian density decoder, or with ``levels`` the discretized Gaussian over
        integer pixels (:class:`probgen.pixels.DiscretizedGaussian`), as in
        :meth:`variational_bound`. The network is registered with ``pyro.module``.

        Args:
            x: data ``(N, *event)`` (integer pixels ``0..levels-1`` with ``levels``);
                ``None`` generates ``n`` examples (``pyro.infer.Predictive`` works).
            n: examples to generate when ``x`` is None.
            labels: classes ``(N,)`` of a class-conditional model (``None``: unconditional).
            levels: pixel levels of integer data (``None``: continuous vectors).

        Returns:
            ``x`` (observed) or the generated ``x_0`` ``(n, *event)``.
        """
        if x is not None:
            self._check_x(x)
            n = x.shape[0]
        else:
            check_int("n", n)
        pyro.module("diffusion", self)
        device, dtype = self._device_dtype()
        k, T = len(self.event_shape), self.num_steps
        shape = (n, *self.event_shape)

        def step(s: int) -> Tensor:
            return torch.full((n,), s, dtype=torch.long, device=device)

        with pyro.plate("data", n, dim=-1):
            z = pyro.sample(f"x_{T}", dist.Normal(torch.zeros(shape, device=device, dtype=dtype),
                                                  1.0).to_event(k))
            for s in range(T - 1, 0, -1):
                mean, logvar = reverse_moments(self, z, step(s), labels)
                z = pyro.sample(f"x_{s}", dist.Normal(mean, (0.5 * logvar).exp()).to_event(k))
            mean, logvar = reverse_moments(self, z, step(0), labels)
            scale = (0.5 * logvar).exp()
            decoder = (dist.Normal(mean, scale) if levels is None
                       else DiscretizedGaussian(mean, scale, levels))
            return pyro.sample("x_0", decoder.to_event(k), obs=x)

    def hvae_guide(self, x: Tensor, n: int = 1, labels: Tensor | None = None,
                   levels: int | None = None) -> None:
        r"""DDPM's forward process as the Pyro guide of :meth:`hvae_model`:
        :math:`x_T \sim q(x_T \mid x_0)`, then :math:`x_{t-1} \sim q(x_{t-1} \mid x_t, x_0)`
        (:meth:`probgen.diffusion.NoiseSchedule.q_posterior`), down to ``"x_1"``. It has no
        parameters (``n`` and ``labels`` are the model's, unused here)."""
        x0 = self._hvae_data(x, levels)
        k, T, sched = len(self.event_shape), self.num_steps, self.schedule
        with pyro.plate("data", x0.shape[0], dim=-1):
            mean, var = sched.q_mean_variance(x0, T - 1)
            z = pyro.sample(f"x_{T}", dist.Normal(mean, var.sqrt().expand_as(mean)).to_event(k))
            for s in range(T - 1, 0, -1):
                mean, _, logvar = sched.q_posterior(x0, z, s)
                z = pyro.sample(f"x_{s}", dist.Normal(mean, (0.5 * logvar).exp().expand_as(
                    mean)).to_event(k))

    def as_vae(self, levels: int | None = None) -> DiffusionVAE:
        """This model as a latent-variable model with ``model``/``guide`` (see
        :class:`DiffusionVAE`)."""
        return DiffusionVAE(self, levels=levels)


class DiffusionVAE(PyroModule):
    r"""Creates the hierarchical-VAE view of a diffusion model: its Pyro ``model``/``guide``.

    ``model(x=None, n=1, y=None)`` is :meth:`DiffusionModel.hvae_model` and ``guide(x)``
    :meth:`DiffusionModel.hvae_guide` with this object's ``levels`` (``y``: class labels),
    so :class:`probgen.inference.ELBO` (``estimator="meanfield"``: closed-form KLs, the
    closed-form bound in expectation), :func:`probgen.inference.fit`, plain
    ``pyro.infer.SVI`` and ``Predictive`` all take it as they take a VAE. The diffusion
    model is a submodule: training this trains its network.

    Args:
        diffusion: a :class:`DiffusionModel`.
        levels: pixel levels of integer data (``None``: continuous vectors).

    Example:
        >>> vae = VectorDDPM(2, num_steps=5, hidden_features=[8], embedding_dim=8).as_vae()
        >>> from pyro.infer import Predictive
        >>> Predictive(vae.model, num_samples=3)(None, 4)["x_0"].shape
        torch.Size([3, 4, 2])
    """

    def __init__(self, diffusion: DiffusionModel, levels: int | None = None) -> None:
        super().__init__()
        if not isinstance(diffusion, DiffusionModel):
            raise TypeError(f"diffusion: expected a DiffusionModel, got "
                            f"{type(diffusion).__name__}.")
        check_int("levels", levels, low=2, allow_none=True)
        self.diffusion, self.levels = diffusion, levels

    def model(self, x: Tensor | None = None, n: int = 1, y: Tensor | None = None) -> Tensor:
        """The reverse process (:meth:`DiffusionModel.hvae_model`)."""
        return self.diffusion.hvae_model(x, n, labels=y, levels=self.levels)

    def guide(self, x: Tensor, n: int = 1, y: Tensor | None = None) -> None:
        """The forward process (:meth:`DiffusionModel.hvae_guide`)."""
        self.diffusion.hvae_guide(x, n, labels=y, levels=self.levels)


class DDPM(DiffusionModel):
    r"""Creates a DDPM for images: a time- and class-conditional :class:`probgen.nn.UNet`.

    Images live on [-1, 1] (``[data] preprocess = "signed"``); sampling clamps the
    predicted clean image to that range.

    Args:
        shape: the image shape ``(C, H, W)``.
        num_steps: T (1000 as Ho et al.).
        schedule: ``"linear"`` (1e-4 to 0.02) or ``"cosine"``; betas: user betas instead.
        parametrization: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: ``"fixed_large"``, ``"fixed_small"`` or ``"learned_range"``.
        num_classes: for class-conditional models (classifier-free guidance).
        base_channels, channel_mults, num_res_blocks: the U-Net's widths and depth;
            attention_levels, attention_heads, dropout, groups: its attention, dropout
            and GroupNorm (see :class:`probgen.nn.UNet`).
        network: a network ``net(x, t, labels=None)`` used instead of the U-Net (e.g.
            :class:`probgen.nn.DiT`); the U-Net arguments then keep their defaults.

    Example:
        >>> model = DDPM((1, 8, 8), num_steps=10, base_channels=8)
        >>> model.sample((2,), sampler="ddim", steps=3).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_steps: int = 1000,
        schedule: str = "linear",
        betas: Sequence[float] | None = None,
        parametrization: str = "eps",
        variance: str = "fixed_large",
        num_classes: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        attention_heads: int = 1,
        dropout: float = 0.0,
        groups: int = 8,
        network: nn.Module | None = None,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape: expected (C, H, W), got {shape}.")
        out = 2 * shape[0] if variance == "learned_range" else shape[0]
        net = image_network(network, shape, num_classes=num_classes, out_channels=out,
                            base_channels=base_channels, channel_mults=channel_mults,
                            num_res_blocks=num_res_blocks, attention_levels=attention_levels,
                            attention_heads=attention_heads, dropout=dropout, groups=groups)
        super().__init__(net, make_schedule(schedule, num_steps, betas=betas), shape,
                         parametrization=parametrization, variance=variance,
                         num_classes=num_classes, clip=1.0)


class VectorDDPM(DiffusionModel):
    r"""Creates a DDPM for vectors (2-D toys): the course's :class:`probgen.nn.ConditionalMLP`.

    Args:
        features: the dimension D.
        num_steps: T (the course uses 100 on 2-D data).
        schedule: ``"cosine"`` or ``"linear"``; betas: user betas instead.
        parametrization: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: ``"fixed_large"``, ``"fixed_small"`` or ``"learned_range"``.
        num_classes: for class-conditional models.
        hidden_features, embedding_dim, activation: the MLP's.
        clip: clamp predicted clean data while sampling (``None``: no clamp).

    Example:
        >>> model = VectorDDPM(2, num_steps=20, hidden_features=[16])
        >>> model.sample((5,)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        num_steps: int = 100,
        schedule: str = "cosine",
        betas: Sequence[float] | None = None,
        parametrization: str = "eps",
        variance: str = "fixed_large",
        num_classes: int | None = None,
        hidden_features: Sequence[int] = (128, 128, 128),
        embedding_dim: int = 128,
        activation: str = "silu",
        clip: float | None = None,
    ) -> None:
        out = 2 * features if variance == "learned_range" else features
        net = ConditionalMLP(features, hidden_features, num_classes=num_classes,
                             out_features=out, embedding_dim=embedding_dim,
                             activation=activation)
        super().__init__(net, make_schedule(schedule, num_steps, betas=betas), (features,),
                         parametrization=parametrization, variance=variance,
                         num_classes=num_classes, clip=clip)


#: The diffusion models, for the CLI's ``[model] name``.
DIFFUSION_MODELS: dict[str, type[DiffusionModel]] = {"DDPM": DDPM, "VectorDDPM": VectorDDPM}
