r"""Bayesian inverse problems with deep generative priors: posterior sampling with diffusion
and flow-matching priors (DPS, pseudo-inverse guidance) through the one sampler layer, and
Pyro models for NUTS or SVI over a flow's input or a VAE's latent.

**Guidance.** Given a linear-Gaussian measurement :math:`y = A x + \sigma_y n`
(:mod:`probgen.measurements`) and a model of a Gaussian path :math:`x_t = \alpha_t x +
\sigma_t\epsilon` (probgen time, ``t = 0`` noise, ``t = 1`` data), the posterior's path
has the score :math:`\nabla\log p_t(x_t) + \nabla_{x_t}\log p(y \mid x_t)`.
:func:`measurement_guided` adds an approximation of the second term to any prediction on
any path, in the same kind (as :func:`probgen.inference.classifier_guided` does for a
classifier): on the data prediction :math:`\hat x(x_t) = E[x \mid x_t]` the guided
prediction is :math:`\hat x + (\sigma_t^2/\alpha_t)\, g`, :math:`g` the added score.

- ``"pigdm"`` (Song et al., 2023): :math:`p(x \mid x_t) \approx N(\hat x(x_t), r_t^2 I)`,
  so :math:`p(y \mid x_t) \approx N(A\hat x, r_t^2 A A^\top + \sigma_y^2 I)` and
  :math:`g = J^\top A^\top (r_t^2 A A^\top + \sigma_y^2 I)^{-1}(y - A\hat x)`,
  :math:`J = \partial\hat x/\partial x_t` (one vector-Jacobian product through the network).
  :math:`r_t^2 = c\,\sigma_t^2/(\alpha_t^2 c + \sigma_t^2)`, the posterior variance of
  :math:`N(\mu, cI)` data (``data_variance`` :math:`c`; the paper's
  :math:`\sigma_t^2/(1 + \sigma_t^2)` in variance-exploding units is :math:`c = 1`), or a
  full :math:`\mathrm{Cov}[x \mid x_t]` from ``posterior_covariance``. **Exact** when the
  data are Gaussian :math:`N(\mu, C)` and the covariance is the true one,
  :math:`\mathrm{Cov}[x \mid x_t] = C - \alpha_t^2 C(\alpha_t^2 C + \sigma_t^2 I)^{-1}C =
  \sigma_t^2 C(\alpha_t^2 C + \sigma_t^2 I)^{-1}` (constant in :math:`x_t`; :math:`r_t^2 I`
  with :math:`c` as above when :math:`C = cI`): then :math:`p(y \mid x_t)` is that Gaussian
  and the guided prediction is the exact prediction of the posterior
  :math:`N(\mu_y, C_y)` (tests/test_inverse.py checks both to float64 precision and by
  sampling).
- ``"dps"`` (Chung et al., 2023): :math:`p(y \mid x_t) \approx p(y \mid x = \hat x(x_t))`,
  :math:`g = \zeta\,\nabla_{x_t}\bigl(-\lVert y - A\hat x(x_t)\rVert^2/(2\sigma_y^2)\bigr)`.
  **Step-size convention**: ``scale`` :math:`\zeta` multiplies this gradient *in the
  score*, whatever the sampler (:math:`\zeta = 1`: DPS's likelihood approximation
  literally). The paper's Algorithm 1 instead subtracts :math:`\zeta_i\nabla\lVert y -
  A\hat x\rVert^2` from each ancestral update with :math:`\zeta_i = \zeta'/\lVert y -
  A\hat x\rVert`, a sampler-dependent rescaling not reproduced here. DPS is biased even
  for Gaussian data (it ignores :math:`\mathrm{Cov}[x \mid x_t]`, i.e. it is PiGDM with
  :math:`r_t = 0`): on the 3-D Gaussian test problem of tests/test_inverse.py (VP path,
  DPM-Solver++(2M), 40 steps, :math:`\zeta = 1`, 4000 samples) its samples' mean lies 0.096
  from the exact posterior mean (PiGDM's: 0.019, sampling error; posterior standard
  deviations 0.35-0.58) and its variances are 0.63, 0.90 and 0.49 of the exact ones; the
  test asserts bounds around those measured values.

Where :math:`\alpha_t = 0` (flow matching's source at ``t = 0``), :math:`x_t` carries no
information about the data and :math:`(\sigma_t^2/\alpha_t) J` (Tweedie's
:math:`\mathrm{Cov}[x \mid x_t]`) is a 0/0 limit: PiGDM uses its own :math:`r_t^2 I` (or
``posterior_covariance``) there, exact for Gaussian data; DPS leaves that prediction
unguided.

:func:`posterior_sample` draws posterior samples from a path model (DDPM, score SDE, flow
matching) with any sampler of :func:`probgen.inference.sample_path`.

**NUTS/SVI** (:func:`measurement_model`): the Pyro model ``x ~ prior`` (any Pyro
distribution, e.g. a flow's ``distribution()``), or ``z ~ prior; x = decode(z)`` (a VAE's
latent and decoder mean), or ``z ~ base; x = flow(z)`` (a flow's latent, ``latent=True``),
and ``y ~ measurement.likelihood(x)`` observed, for one measurement or a plate of them; run
it with ``pyro.infer.MCMC(NUTS(model), ...)`` or ``SVI`` with an autoguide.

References:
    Diffusion Posterior Sampling for General Noisy Inverse Problems (Chung et al., 2023),
    https://arxiv.org/abs/2209.14687
    Pseudoinverse-Guided Diffusion Models for Inverse Problems (Song, Vahdat, Mardani &
    Kautz, 2023), https://openreview.net/forum?id=9_gsMA8MRKQ
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from torch import Tensor

from probgen.inference.path_sampling import PATH_SAMPLERS, sample_path
from probgen.inference.sampling import SampleResult
from probgen.measurements import LinearMeasurement
from probgen.processes import GaussianPath, check_path_prediction, check_time
from probgen.utils import check_choice, check_int

__all__ = ["GUIDANCE_METHODS", "measurement_guided", "posterior_sample", "measurement_model"]

#: The posterior-sampling guidances of :func:`measurement_guided`.
GUIDANCE_METHODS = ("dps", "pigdm")


def _observations(y: Tensor, x: Tensor, measurement: LinearMeasurement) -> Tensor:
    """``y`` for the batch ``x``: ``(batch, *observation_shape)``, one observation
    (``observation_shape``) repeated for every example."""
    shape = measurement.observation_shape
    if not isinstance(y, Tensor) or tuple(y.shape) not in (shape, (x.shape[0], *shape)):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected shape {shape} or ({x.shape[0]}, "
                         f"{', '.join(map(str, shape))}), got {got}.")
    return y.to(x).expand(x.shape[0], *shape)


def measurement_guided(
    predict: Callable[[Tensor, Tensor], Tensor],
    path: GaussianPath,
    measurement: LinearMeasurement,
    y: Tensor,
    *,
    method: str = "pigdm",
    prediction: str = "eps",
    scale: float = 1.0,
    data_variance: float = 1.0,
    posterior_covariance: Callable[[Tensor], Tensor] | None = None,
    clip: tuple[float, float] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    r"""``f(x, t)``: ``predict`` guided towards the posterior given a measurement ``y``, in
    the same kind (see the module docstring for the two methods and their exactness).

    Args:
        predict: ``predict(x, t)``, ``x`` ``(batch, *event)``, ``t`` ``(batch,)`` in probgen
            time, returning a ``prediction`` of the shape of ``x`` (differentiable in ``x``).
        path: the :class:`probgen.processes.GaussianPath` the prediction lives on.
        measurement: the :class:`probgen.measurements.LinearMeasurement` of ``y``.
        y: the measurement, ``observation_shape`` (one for all) or ``(batch,
            *observation_shape)``.
        method: one of :data:`GUIDANCE_METHODS`.
        prediction: the kind of ``predict``'s output (:data:`probgen.processes.PREDICTIONS`).
        scale: a factor on the added score (``"dps"``'s :math:`\zeta`; 1 for PiGDM as
            published).
        data_variance: PiGDM's :math:`c` in :math:`r_t^2 = c\sigma_t^2/(\alpha_t^2 c +
            \sigma_t^2)`.
        posterior_covariance: PiGDM's :math:`\mathrm{Cov}[x \mid x_t]` instead:
            ``posterior_covariance(t)`` with ``t`` ``(batch,)`` returning :math:`r_t^2`
            ``(batch,)`` or full covariances ``(batch, D, D)`` (dense, small signals).
        clip: ``(low, high)``, the data's range: the guided data prediction is clamped
            to it before it is returned in the kind of ``predict`` (the "clip denoised"
            of DDPM and DPS codebases). The guidance multiplies the network's Jacobian
            :math:`J` by :math:`\sigma_t^2/\alpha_t`; an epsilon-prediction network's
            :math:`J = (I - \sigma_t \partial\hat\epsilon/\partial x_t)/\alpha_t`
            amplifies its errors by :math:`\sigma_t^2/\alpha_t^2` where
            :math:`\alpha_t` is small (DDPM's first steps), and a briefly trained network
            can then throw the prediction far out of the data's range and the sampler to
            non-finite values. ``None`` (default): no clamp; a no-op when the guided
            prediction stays inside, so exactness for Gaussian data is kept then.

    Returns:
        ``f(x, t)`` returning the guided prediction of the shape of ``x``.

    Raises:
        ValueError: an unknown method or prediction, a negative ``data_variance``, options
            of the other method, ``clip`` not ``(low, high)`` with ``low < high``; (when
            called) ``y`` or covariances of the wrong shape.

    Example:
        >>> from probgen.measurements import Denoising
        >>> from probgen.paths import CondOTPath
        >>> path, m = CondOTPath(sigma_min=0.0), Denoising((1,), noise_std=1.0)
        >>> exact = lambda x, t: path.gaussian_prediction(x, t, torch.zeros(1), torch.eye(1),
        ...                                               "data")
        >>> f = measurement_guided(exact, path, m, torch.tensor([2.0]), prediction="data")
        >>> out = f(torch.zeros(1, 1), torch.zeros(1))  # at t = 0: the posterior mean y / 2
        >>> round(out.item(), 4)
        1.0
    """
    check_path_prediction(path, prediction)
    check_choice("method", method, GUIDANCE_METHODS)
    if not isinstance(measurement, LinearMeasurement):
        raise TypeError(f"measurement: expected a probgen.measurements.LinearMeasurement, got "
                        f"{type(measurement).__name__}.")
    if float(data_variance) < 0:
        raise ValueError(f"data_variance: expected a non-negative float, got "
                         f"{data_variance!r}.")
    if method == "dps" and posterior_covariance is not None:
        raise ValueError("posterior_covariance: applies to method 'pigdm' only (DPS has no "
                         "covariance).")
    scale, c = float(scale), float(data_variance)
    if clip is not None:
        if (not isinstance(clip, (tuple, list)) or len(clip) != 2
                or not float(clip[0]) < float(clip[1])):
            raise ValueError(f"clip: expected (low, high) with low < high, got {clip!r}.")
        clip = (float(clip[0]), float(clip[1]))

    def f(x: Tensor, t: Tensor) -> Tensor:
        t = check_time(t, x)
        obs = _observations(y, x, measurement)
        a, s = path.coefficients(t, x)[:2]
        r2 = full = None  # PiGDM's Cov[x | x_t]: r_t^2 (batch,) or full (batch, D, D)
        if method == "pigdm":
            if posterior_covariance is None:
                r2 = (c * s**2 / (a**2 * c + s**2)).expand(
                    (x.shape[0],) + (1,) * (x.dim() - 1)).reshape(x.shape[0])
            else:
                cov = posterior_covariance(t)
                d = measurement.event_size
                if not isinstance(cov, Tensor) or cov.shape not in (x.shape[:1],
                                                                    (x.shape[0], d, d)):
                    got = tuple(cov.shape) if isinstance(cov, Tensor) else type(cov).__name__
                    raise ValueError(f"posterior_covariance: expected r_t^2 of shape "
                                     f"({x.shape[0]},) or covariances ({x.shape[0]}, {d}, "
                                     f"{d}), got {got}.")
                r2, full = (cov.to(x), None) if cov.dim() == 1 else (None, cov.to(x))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pred = predict(xg, t)
            data = path.convert(pred, xg, t, source=prediction, target="data")
            residual = obs - measurement(data.detach())
            if method == "dps":
                weighted = residual / measurement.noise_std**2
            elif full is not None:
                weighted = measurement.covariance_solve(residual, full)
            else:
                weighted = measurement.solve(residual, r2)
            back = measurement.adjoint(weighted)  # A^T W (y - A x_hat)
            grad, = torch.autograd.grad(data, xg, grad_outputs=back)  # J^T A^T W r
        data = data.detach()
        informative = a > 0
        shift = torch.where(informative, s**2 / torch.where(informative, a, 1.0), 0.0) * grad
        if method == "pigdm" and not bool(informative.all()):
            # Tweedie's Cov[x | x_t] = (sigma^2 / alpha) J is 0/0 at alpha = 0: PiGDM's own.
            if full is not None:
                own = (full @ back.reshape(x.shape[0], -1, 1)).reshape(x.shape)
            else:
                own = r2.reshape((-1,) + (1,) * (x.dim() - 1)) * back
            shift = torch.where(informative, shift, own)
        guided = data + scale * shift
        if clip is not None:
            guided = guided.clamp(*clip)
        return path.convert(guided, x, t, source="data", target=prediction)

    return f


def posterior_sample(
    model: Any,
    measurement: LinearMeasurement,
    y: Tensor,
    n: int,
    *,
    method: str = "pigdm",
    sampler: str = "ddim",
    steps: int | None = 50,
    eta: float = 1.0,
    scale: float = 1.0,
    data_variance: float = 1.0,
    posterior_covariance: Callable[[Tensor], Tensor] | None = None,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    **sampler_options: Any,
) -> SampleResult:
    r"""Draws ``n`` posterior samples given ``y`` from a model of a Gaussian path (a
    :class:`probgen.models.PathModel`: DDPM, score SDE, flow matching) by
    :func:`measurement_guided` and :func:`probgen.inference.sample_path`.

    Args:
        model: an object with ``guided()`` (its prediction function), ``prediction``,
            ``path``, ``prior_sample(n, generator)`` and ``t_sample``.
        measurement: the :class:`probgen.measurements.LinearMeasurement` of ``y``.
        y: ``observation_shape`` (one measurement, ``n`` samples of its posterior) or
            ``(n, *observation_shape)`` (one sample per measurement).
        n: the number of samples.
        method: one of :data:`GUIDANCE_METHODS`.
        sampler: one of :data:`probgen.inference.PATH_SAMPLERS` (default ``"ddim"`` with
            ``eta = 1``: the ancestral sampler on the path, as both papers).
        steps: the sampler's steps; eta: ``"ddim"``'s noise (ignored by other samplers).
        scale, data_variance, posterior_covariance, clip: see :func:`measurement_guided`.
        generator: seeds the prior draws and the sampler's noise.
        **sampler_options: passed to :func:`probgen.inference.sample_path` (``spacing``,
            ``method``, ``rtol``, ...).

    Returns:
        A :class:`probgen.inference.SampleResult`: ``samples`` ``(n, *event)``, ``nfe``.

    Raises:
        ValueError: an unknown sampler or method, ``n`` not positive.
    """
    check_choice("sampler", sampler, PATH_SAMPLERS)
    check_int("n", n)
    f = measurement_guided(model.guided(), model.path, measurement, y, method=method,
                           prediction=model.prediction, scale=scale,
                           data_variance=data_variance,
                           posterior_covariance=posterior_covariance, clip=clip)
    x0 = model.prior_sample(n, generator)
    return sample_path(f, model.prediction, model.path, x0, sampler=sampler, steps=steps,
                       eta=eta if sampler == "ddim" else 0.0, t_end=model.t_sample,
                       generator=generator, networks=[model], **sampler_options)


def measurement_model(
    prior: Any,
    measurement: LinearMeasurement,
    y: Tensor,
    *,
    decode: Callable[[Tensor], Tensor] | None = None,
    latent: bool = False,
) -> Callable[[], None]:
    r"""The Pyro model of a signal under a generative prior, measured by ``measurement``.

    Without ``decode``: ``x = pyro.sample("x", prior)``; with it (a VAE's decoder mean):
    ``z = pyro.sample("z", prior)``, ``x = pyro.deterministic("x", decode(z))``; then
    ``pyro.sample("y", measurement.likelihood(x), obs=y)``. Its posterior over ``"x"`` (or
    ``"z"``) is the Bayesian answer to the inverse problem (inpainting, denoising,
    super-resolution); sample it with NUTS or fit it with SVI:

    .. code-block:: python

        model = measurement_model(flow.distribution(), Inpainting(mask, 0.1), y)
        mcmc = pyro.infer.MCMC(pyro.infer.NUTS(model), num_samples=500, warmup_steps=300)
        mcmc.run()
        x = mcmc.get_samples()["x"]
        # or: guide = pyro.infer.autoguide.AutoMultivariateNormal(model), then SVI.

    **Over a flow's latent** (``latent=True``, ``prior`` a ``TransformedDistribution``
    such as a flow's ``distribution()``): ``z = pyro.sample("z", prior.base_dist)`` and
    ``x`` is ``z`` pushed through ``prior.transforms`` (then through ``decode`` if given),
    a deterministic site. The posterior of ``x`` is the same as sampling ``x ~ prior``
    (the change of variables), but the posterior over the base latent is often far better
    conditioned for NUTS and SVI than the one over the flow's output. A flow trained on
    preprocessed images (e.g. :class:`probgen.data.ImagePreprocess`'s logit space) is a
    prior over pixels with ``decode`` the preprocessing's inverse (``pre.to_unit``, and an
    affine map to the measurement's pixel scale): the prior of ``x`` is then the flow's
    density pushed forward to pixel space.

    **Several signals at once**: ``y`` of shape ``(n, *observation_shape)`` holds ``n``
    measurements of ``n`` independent signals; the model draws them in
    ``pyro.plate("signals", n)``, so one NUTS chain or one SVI fit (an autoguide then has
    per-signal parameters) samples the product of the ``n`` posteriors, with batched
    network calls.

    Args:
        prior: a Pyro distribution over one signal (event shape ``event_shape``) or one
            latent (with ``decode``): a flow's ``distribution()``, a VAE's prior, ...;
            a ``TransformedDistribution`` with ``latent=True``.
        measurement: the :class:`probgen.measurements.LinearMeasurement` of ``y``.
        y: one measurement, ``observation_shape``, or ``n`` of them, ``(n,
            *observation_shape)``.
        decode: ``decode(z) -> x`` (differentiable for NUTS and SVI: e.g. a VAE's
            :meth:`~probgen.models.VAE.decoder_mean`, not its no-grad ``decode``), or
            ``None``.
        latent: sample the base of the ``TransformedDistribution`` ``prior`` and push it
            through the transforms.

    Returns:
        ``model()``, a Pyro model without arguments.

    Raises:
        ValueError: ``y`` of the wrong shape.
        TypeError: ``latent=True`` with a prior that is not a ``TransformedDistribution``.

    Example:
        >>> import pyro.distributions as dist
        >>> from probgen.measurements import Denoising
        >>> prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> model = measurement_model(prior, Denoising((2,), 1.0), torch.ones(2))
        >>> trace = pyro.poutine.trace(model).get_trace()
        >>> [name for name, site in trace.nodes.items() if site["type"] == "sample"]
        ['x', 'y']
        >>> batched = measurement_model(prior, Denoising((2,), 1.0), torch.ones(5, 2))
        >>> tuple(pyro.poutine.trace(batched).get_trace().nodes["x"]["value"].shape)
        (5, 2)
    """
    if not isinstance(measurement, LinearMeasurement):
        raise TypeError(f"measurement: expected a probgen.measurements.LinearMeasurement, got "
                        f"{type(measurement).__name__}.")
    shape = measurement.observation_shape
    if not isinstance(y, Tensor) or (tuple(y.shape) != shape
                                     and (y.dim() != len(shape) + 1 or tuple(y.shape[1:]) != shape
                                          or y.shape[0] < 1)):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected one measurement of shape {shape} or a batch (n, "
                         f"{', '.join(map(str, shape))}), got {got}.")
    if latent and not isinstance(prior, torch.distributions.TransformedDistribution):
        raise TypeError(f"prior: latent=True needs a TransformedDistribution (a flow's "
                        f"distribution()), got {type(prior).__name__}.")
    n = None if tuple(y.shape) == shape else y.shape[0]
    site = prior.base_dist if latent else prior
    transforms = list(prior.transforms) if latent else []

    def signal() -> Tensor:
        if decode is None and not latent:
            return pyro.sample("x", site)
        x = pyro.sample("z", site)
        for t in transforms:
            x = t(x)
        x = x if decode is None else decode(x)
        return pyro.deterministic("x", x, event_dim=x.dim() - (n is not None))

    def model() -> None:
        if n is None:
            pyro.sample("y", measurement.likelihood(signal()), obs=y)
            return
        with pyro.plate("signals", n, dim=-1):
            pyro.sample("y", measurement.likelihood(signal()), obs=y)

    return model
