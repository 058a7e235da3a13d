r"""The ELBO objective: Pyro's ELBO estimators inside the one trainer, with beta, KL
annealing and free bits; IWAE and Renyi (VR) bounds.

:class:`ELBO` wraps any latent-variable model (an ``nn.Module`` with ``model(x)`` and
``guide(x)``, DESIGN.md's protocol, or a user's plain Pyro model and guide functions with
``pyro.param`` sites) and returns, per batch, the negative bound as ``loss``
(nats per example) with ``elbo`` (the estimator's bound), ``nll`` (its negative: an upper
bound on the negative log-likelihood) and ``bits_per_dim`` (``nll / (D ln 2)``), ``recon``
(:math:`E_q \log p(x \mid z)`, Monte Carlo), ``kl`` (:math:`KL(q(z \mid x) \| p(z))`,
closed form when torch knows it, else Monte Carlo) and ``kl_weight``.

- ``estimator="trace"``: :class:`pyro.infer.Trace_ELBO`; ``"meanfield"``:
  :class:`pyro.infer.TraceMeanField_ELBO` (closed-form KL where available);
  ``"renyi"``: :class:`pyro.infer.RenyiELBO` with ``alpha`` (0 is the IWAE bound with
  ``num_particles`` samples; ``alpha < 1`` the VR bounds); ``"enum"``:
  :class:`pyro.infer.TraceEnum_ELBO`, exact over the guide's enumerated discrete sites
  (``infer={"enumerate": "parallel"}``; e.g. a mixture's component). Its ``kl`` is the
  closed-form KL of the latent sites and ``recon`` the bound plus it (one latent layer).
- ``beta`` and KL annealing scale the latent sites of model and guide by
  ``pyro.poutine.scale`` (so the KL term, and only it, is weighted
  :math:`\beta \min(1, t / T)` at step ``t`` of ``anneal_steps`` ``T``); the step counter
  is a buffer, so a resumed run continues the schedule.
- ``free_bits`` :math:`\lambda` (Kingma et al., 2016) replaces the KL by
  :math:`\sum_d \max(\lambda, \overline{KL}_d)` with :math:`\overline{KL}_d` the batch mean
  KL of latent dimension ``d``. Pyro's estimators only give the total, so the per-dimension
  closed-form Gaussian KL (read from the guide's and the model's trace) is added as the
  correction :math:`\sum_d \mathrm{relu}(\lambda - \overline{KL}_d)`; it needs diagonal
  Gaussian posterior and prior and the ``"meanfield"`` estimator (whose KL is the same
  closed form, so the gradient of a dimension under the threshold is exactly zero).

Evaluation (``objective.eval()`` or ``torch.no_grad()``, as in the trainer's held-out pass)
always reports the plain bound: ``beta = 1``, no annealing, no free bits; only training
passes advance the schedule.

Why :class:`RenyiELBO` is subclassed: Pyro 1.9's ``RenyiELBO`` has ``loss`` and
``loss_and_grads`` (which calls ``backward`` itself) but no ``differentiable_loss``, which
the trainer needs; :class:`DifferentiableRenyiELBO` adds it over Pyro's own trace machinery
(``_get_traces``), with Pyro's surrogate (self-normalized weights) for the gradient.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from probgen.inference.registry import register_objective
from probgen.latent import importance_log_likelihood
from probgen.metrics.likelihood import bits_per_dim
from probgen.utils import check_choice, check_int

__all__ = ["ELBO", "DifferentiableRenyiELBO", "LatentScale", "ESTIMATORS"]

ESTIMATORS = ("trace", "meanfield", "renyi", "enum")


class LatentScale(ScaleMessenger):
    """``pyro.poutine.scale`` restricted to latent sites: scales every sample site that is
    not observed (in a guide: all of them), leaving the likelihood alone."""

    def _process_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            super()._process_message(msg)


class DifferentiableRenyiELBO(RenyiELBO):
    r"""Pyro's :class:`~pyro.infer.RenyiELBO` with a ``differentiable_loss``.

    Returns a scalar whose value is minus the Renyi bound
    :math:`\frac{1}{1-\alpha} \sum_n \log \frac1K \sum_k w_{nk}^{1-\alpha}` and whose
    gradient is Pyro's estimator (self-normalized weights times the per-particle surrogate;
    reparameterized sites only, as Pyro's own ``loss_and_grads`` requires when
    ``alpha != 0``).

    References:
        Renyi divergence variational inference (Li & Turner, 2016),
        https://arxiv.org/abs/1602.02311
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any,
                            **kwargs: Any) -> Tensor:
        """The differentiable negative bound (see the class docstring)."""
        values, surrogates = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            value: Tensor | float = 0.0
            surrogate: Tensor | float = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    lp = torch_sum(site["log_prob"], sum_dims)
                    value, surrogate = value + lp.detach(), surrogate + lp
            for site in guide_trace.nodes.values():
                if site["type"] != "sample":
                    continue
                lp = torch_sum(site["log_prob"], sum_dims)
                value = value - lp.detach()
                score, entropy = site["score_parts"].score_function, \
                    site["score_parts"].entropy_term
                if not isinstance(entropy, (int, float)) or entropy != 0:
                    surrogate = surrogate - lp
                if not isinstance(score, (int, float)) or score != 0:
                    if not isinstance(entropy, (int, float)) or entropy != 0:
                        raise ValueError("DifferentiableRenyiELBO: a guide site is partly "
                                         "reparameterized; Pyro's Renyi estimator does not "
                                         "handle that.")
                    surrogate = surrogate + (self.alpha / (1.0 - self.alpha)) * lp
            values.append(torch.as_tensor(value))
            surrogates.append(torch.as_tensor(surrogate))
        if self.vectorize_particles and self.num_particles > 1:
            value_k, surrogate_k = values[0], surrogates[0]
        else:
            value_k, surrogate_k = torch.stack(values), torch.stack(surrogates)
        log_w = (1.0 - self.alpha) * value_k
        log_mean = torch.logsumexp(log_w, 0, keepdim=True) - math.log(self.num_particles)
        bound = log_mean.sum() / (1.0 - self.alpha)
        weights = (log_w - log_mean).exp()
        surrogate_bound = (weights * surrogate_k).sum() / self.num_particles
        return -bound + (-surrogate_bound - (-surrogate_bound).detach())


def _latent_kl_terms(model_trace: Any, guide_trace: Any) -> tuple[Tensor, Tensor | None]:
    """Total KL (closed form where torch has it, else ``log q - log p``) and, when every
    latent site is a diagonal Gaussian in both, the KL per latent dimension ``(D,)`` summed
    over the batch."""
    total: Tensor | float = 0.0
    per_dim: list[Tensor] | None = []
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or name not in model_trace.nodes:
            continue
        q, p = site["fn"], model_trace.nodes[name]["fn"]
        qb = q.base_dist if isinstance(q, Independent) else q
        pb = p.base_dist if isinstance(p, Independent) else p
        if isinstance(qb, Normal) and isinstance(pb, Normal):
            kl_elem = kl_divergence(qb, pb)
            total = total + kl_elem.sum()
            if per_dim is not None:
                event = kl_elem.shape[kl_elem.dim() - q.event_dim:]
                per_dim.append(kl_elem.reshape(-1, *event).sum(0).reshape(-1))
            continue
        per_dim = None
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            value = site["value"]
            kl = q.log_prob(value) - p.log_prob(value)
        total = total + kl.sum()
    dims = torch.cat(per_dim) if per_dim else None
    return torch.as_tensor(total), dims


class ELBO(nn.Module):
    r"""Creates the evidence-lower-bound objective of a Pyro model/guide pair.

    Two ways to name the Pyro program:

    - ``ELBO(module)``: an ``nn.Module`` with ``model(x)`` and ``guide(x)`` methods (e.g.
      :class:`probgen.models.VAE`); its parameters are what is trained, and model and guide
      run in a private parameter-store scope (``pyro.get_param_store().scope()``), so
      their ``pyro.module`` / ``pyro.param`` registrations leave Pyro's global store as it
      was.
    - ``ELBO(model_fn, guide_fn)``: plain Pyro functions whose parameters are ``pyro.param``
      sites in Pyro's global parameter store, as :class:`pyro.infer.SVI` trains them.
      :meth:`setup` (which :func:`probgen.inference.fit` calls with the first batch)
      traces the parameter sites once and makes each store entry an ``nn.Parameter`` of
      this objective, so the trainer's optimizer, EMA and checkpoints see them and
      ``pyro.param(name)`` reads the trained values. The parameters are those of the first
      trace: a site that first appears later is not trained.

    Args:
        model: an ``nn.Module`` with ``model(x)`` and ``guide(x)``, or (with ``guide``) a
            Pyro model function ``model(x, **cond)``.
        guide: the guide function ``guide(x, **cond)`` of a model function; None when
            ``model`` is a module.
        estimator: ``"trace"``, ``"meanfield"``, ``"renyi"`` or ``"enum"`` (see the module
            docstring).
        num_particles: samples per example (IWAE's ``k`` for ``"renyi"``).
        alpha: the Renyi order (``"renyi"`` only; 0 = IWAE; must not be 1).
        beta: weight of the KL term (beta-VAE).
        anneal_steps: the KL weight rises linearly from ``beta / anneal_steps`` to
            ``beta`` over this many training steps (0: no annealing).
        free_bits: nats per latent dimension below which the KL is not penalized.
        vectorize: draw the particles in one vectorized pass (``max_plate_nesting`` must
            then bound the plates of model and guide).
        max_plate_nesting: plates nested in model and guide (1: the batch plate).
        eval_samples: when > 0, evaluation (``objective.eval()``) also reports
            ``log_likelihood``, the importance-sampled :math:`\log p(x)` with this many
            samples (:func:`probgen.latent.importance_log_likelihood`, in data space like
            ``elbo``); e.g. 5000 for the standard test figure.
        preprocess: ``preprocess(x) -> y`` or ``(y, ladj)`` applied to each batch; a
            ``ladj`` is added to the reported ``elbo`` (the bound in data space), and for a
            preprocess of integer data with ``levels`` values (e.g.
            :class:`probgen.data.ImagePreprocess`) ``D log(levels)`` is subtracted, as
            :class:`probgen.inference.MaximumLikelihood` does.

    Example:
        >>> from probgen.models import VAE
        >>> vae = VAE((4,), latent_features=2, hidden_features=[8], likelihood="gaussian")
        >>> out = ELBO(vae)(torch.randn(16, 4))
        >>> sorted(out)
        ['bits_per_dim', 'elbo', 'kl', 'kl_weight', 'loss', 'nll', 'recon']
    """

    def __init__(
        self,
        model: nn.Module | Callable[..., Any],
        guide: Callable[..., Any] | None = None,
        *,
        estimator: str = "meanfield",
        num_particles: int = 1,
        alpha: float = 0.0,
        beta: float = 1.0,
        anneal_steps: int = 0,
        free_bits: float = 0.0,
        vectorize: bool = True,
        max_plate_nesting: int = 1,
        eval_samples: int = 0,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        if guide is not None:
            if not callable(model) or not callable(guide):
                raise TypeError("model, guide: expected two Pyro functions model(x) and "
                                f"guide(x), got {type(model).__name__} and "
                                f"{type(guide).__name__}.")
        elif not isinstance(model, nn.Module) or not all(
            callable(getattr(model, f, None)) for f in ("model", "guide")
        ):
            raise TypeError("model: expected an nn.Module with model(x) and guide(x) methods "
                            "(a Pyro latent-variable model), or two functions "
                            f"ELBO(model_fn, guide_fn); got {type(model).__name__}.")
        check_choice("estimator", estimator, ESTIMATORS)
        for name, value in {"num_particles": num_particles,
                            "max_plate_nesting": max_plate_nesting}.items():
            check_int(name, value)
        check_int("eval_samples", eval_samples, low=0)
        check_int("anneal_steps", anneal_steps, low=0)
        if not beta > 0:
            raise ValueError(f"beta: expected a positive KL weight, got {beta!r}.")
        if not free_bits >= 0:
            raise ValueError(f"free_bits: expected nats >= 0, got {free_bits!r}.")
        if estimator == "renyi" and alpha == 1:
            raise ValueError("alpha: the Renyi order 1 is the ELBO; use estimator='trace' or "
                             "'meanfield'.")
        if free_bits > 0 and estimator != "meanfield":
            raise ValueError("free_bits: needs estimator='meanfield' (closed-form KL per "
                             f"dimension), got estimator={estimator!r}.")
        if guide is None:
            self.model: nn.Module | None = model
            self._model_fn, self._guide_fn = model.model, model.guide
        else:
            self.model = None
            self._model_fn, self._guide_fn = model, guide
        # plain functions: their pyro.param sites, made parameters of this objective by setup
        self.store_parameters = nn.ParameterList()
        self._store_names: list[str] = []
        self._store_constraints: list[Any] = []
        self.estimator_name, self.num_particles = estimator, num_particles
        self.alpha, self.beta = float(alpha), float(beta)
        self.anneal_steps, self.free_bits = anneal_steps, float(free_bits)
        self.preprocess = preprocess
        self.eval_samples, self.max_plate_nesting = eval_samples, max_plate_nesting
        self.levels = getattr(preprocess, "levels", None)
        vec = bool(vectorize) and num_particles > 1
        common = {"num_particles": num_particles, "vectorize_particles": vec,
                  "max_plate_nesting": max_plate_nesting}
        if estimator == "trace":
            self.estimator: Any = Trace_ELBO(**common)
        elif estimator == "meanfield":
            self.estimator = TraceMeanField_ELBO(**common)
        elif estimator == "enum":
            self.estimator = TraceEnum_ELBO(**common)
        else:
            self.estimator = DifferentiableRenyiELBO(alpha=alpha, **common)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        params = inspect.signature(self._model_fn).parameters
        self._takes_y = "y" in params

    def setup(self, batch: Any) -> None:
        """Finds the ``pyro.param`` sites of plain model/guide functions by tracing one loss
        on ``batch`` (as :class:`pyro.infer.SVI` does) and makes each one's unconstrained
        tensor an ``nn.Parameter`` of this objective, put back into Pyro's global store under
        its name (so both see one tensor). Does nothing for a module (its parameters are
        known) or when already set up. :func:`probgen.inference.fit` calls it before building
        the optimizer.

        Raises:
            ValueError: the functions have no ``pyro.param`` site.
        """
        if self.model is not None or self._store_names:
            return
        x, cond = self._split(batch)
        if self.preprocess is not None:
            result = self.preprocess(x)
            x = result[0] if isinstance(result, tuple) else result
        with torch.no_grad(), pyro.poutine.trace(param_only=True) as capture:
            self.estimator.differentiable_loss(self._model_fn, self._guide_fn, x, **cond)
        found = {name: site["value"].unconstrained()
                 for name, site in capture.trace.nodes.items()}
        if not found:
            raise ValueError("model, guide: expected pyro.param sites to train, found none.")
        constraints = pyro.get_param_store().get_state()["constraints"]
        for name, value in found.items():
            self.store_parameters.append(nn.Parameter(value.detach()))
            self._store_names.append(name)
            self._store_constraints.append(constraints[name])
        self._publish()

    def _publish(self) -> None:
        """Puts this objective's parameters into Pyro's global store under their names."""
        if self._store_names:
            pyro.get_param_store().set_state({
                "params": dict(zip(self._store_names, self.store_parameters, strict=True)),
                "constraints": dict(zip(self._store_names, self._store_constraints,
                                        strict=True)),
            })

    def _training_pass(self) -> bool:
        """A training pass: training mode (objective and model) with gradients enabled.
        Anything else (``eval()``, ``torch.no_grad()``) is an evaluation."""
        module_training = self.model is None or self.model.training
        return self.training and module_training and torch.is_grad_enabled()

    def kl_weight(self) -> float:
        """The KL weight of the current step: ``beta * min(1, step / anneal_steps)`` on a
        training pass, 1 in evaluation."""
        if not self._training_pass():
            return 1.0
        if not self.anneal_steps:
            return self.beta
        return self.beta * min(1.0, max(int(self.step), 1) / self.anneal_steps)

    def _split(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(batch, Tensor):
            return batch, {}
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
            return batch[0], ({"y": batch[1]} if self._takes_y else {})
        raise TypeError("batch: expected a Tensor x or a pair (x, y), got "
                        f"{type(batch).__name__}.")

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Computes the outputs for ``batch``; a training pass advances the KL schedule."""
        if self.model is None:
            self._publish()
            return self._outputs(batch)
        with pyro.get_param_store().scope():
            return self._outputs(batch)

    def _outputs(self, batch: Any) -> dict[str, Tensor]:
        x, cond = self._split(batch)
        ladj: Tensor | float = 0.0
        discrete = 0.0
        if self.preprocess is not None:
            result = self.preprocess(x)
            x, ladj = result if isinstance(result, tuple) else (result, 0.0)
            if isinstance(result, tuple) and self.levels:
                discrete = math.prod(x.shape[1:]) * math.log(self.levels)
        training = self._training_pass()
        if training:
            self.step += 1
        weight = self.kl_weight()
        n = x.shape[0]
        model_tracer = pyro.poutine.trace(self._model_fn)
        guide_tracer = pyro.poutine.trace(self._guide_fn)
        model_fn, guide_fn = model_tracer, guide_tracer
        if weight != 1.0:
            model_fn, guide_fn = LatentScale(weight)(model_tracer), LatentScale(weight)(
                guide_tracer)
        if self.estimator_name == "enum" and not torch.is_grad_enabled():
            # TraceEnum_ELBO refuses a loss it cannot differentiate; its value is the same
            loss = x.new_tensor(self.estimator.loss(model_fn, guide_fn, x, **cond))
        else:
            loss = self.estimator.differentiable_loss(model_fn, guide_fn, x, **cond)
        with torch.no_grad():
            mt, gt = model_tracer.trace, guide_tracer.trace
            recon = sum((s["fn"].log_prob(s["value"]).sum() for s in mt.nodes.values()
                         if s["type"] == "sample" and s["is_observed"]
                         and not site_is_subsample(s)), x.new_zeros(()))
        need_grad = training and self.free_bits > 0
        with torch.set_grad_enabled(need_grad and torch.is_grad_enabled()):
            kl, kl_dims = _latent_kl_terms(mt, gt)
        kl = kl.to(x.device)
        if self.estimator_name == "enum":
            # traced values are enumerated, so the likelihood's trace sums every component;
            # the weighted bound is recon - weight * kl exactly, with kl in closed form
            vectorized = self.estimator.vectorize_particles
            particles = recon.new_tensor(float(self.num_particles if vectorized else 1))
            recon = (-loss.detach() / n + weight * kl.detach() / (n * particles)) * (
                n * particles)
        else:
            particles = recon.new_tensor(float(self._particles_in(mt, n)))
        if need_grad:
            if kl_dims is None:
                raise ValueError("free_bits: needs diagonal Gaussian posterior and prior "
                                 "(closed-form KL per latent dimension).")
            mean_dims = kl_dims / (n * particles)
            loss = loss + n * weight * torch.relu(self.free_bits - mean_dims).sum()
        ladj_mean = ladj.mean() if isinstance(ladj, Tensor) else float(ladj)
        bound = -loss.detach() / n if not need_grad else None
        if bound is None or weight != 1.0:
            # The reported bound is the plain one (KL weight 1, no free bits).
            bound = (recon - kl.detach()) / (n * particles)
        elbo = bound + ladj_mean - discrete
        dims = math.prod(x.shape[1:])
        extra: dict[str, Tensor] = {}
        if not training and self.eval_samples:
            ll = importance_log_likelihood(
                self._model_fn, self._guide_fn, x, **cond,
                num_samples=self.eval_samples, chunk_size=min(100, self.eval_samples),
                max_plate_nesting=self.max_plate_nesting).mean()
            extra["log_likelihood"] = ll + ladj_mean - discrete
        out = {
            "loss": loss / n,
            "elbo": elbo,
            "nll": -elbo,
            "bits_per_dim": bits_per_dim(-elbo, dims),
            "recon": recon / (n * particles),
            "kl": kl.detach() / (n * particles),
            "kl_weight": torch.tensor(weight, device=x.device),
        }
        out.update(extra)
        return out

    def _particles_in(self, trace: Any, n: int) -> int:
        """How many particles the traced model holds (vectorized: all; else the last)."""
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                lp_shape = site["fn"].batch_shape
                return max(1, math.prod(lp_shape) // max(n, 1))
        return 1

    def extra_repr(self) -> str:  # noqa: D102
        return (f"estimator={self.estimator_name!r}, num_particles={self.num_particles}, "
                f"alpha={self.alpha:g}, beta={self.beta:g}, anneal_steps={self.anneal_steps}, "
                f"free_bits={self.free_bits:g}")


# ----------------------------------------------------------------- CLI registration
_ELBO_KEYS = ("estimator", "num_particles", "beta", "anneal_steps", "free_bits",
              "eval_samples")


@register_objective("elbo", keys=_ELBO_KEYS)
def _build_elbo(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """ELBO of a Pyro model/guide (Trace_ELBO or TraceMeanField_ELBO), beta, annealing, free
    bits."""
    return ELBO(model, preprocess=getattr(data, "preprocess", None), **table)


@register_objective("iwae", keys=("num_particles", "beta", "anneal_steps", "eval_samples"))
def _build_iwae(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """IWAE bound with num_particles samples (Pyro's RenyiELBO, alpha = 0)."""
    table.setdefault("num_particles", 5)
    return ELBO(model, estimator="renyi", alpha=0.0,
                preprocess=getattr(data, "preprocess", None), **table)


@register_objective("vr", keys=("alpha", "num_particles", "eval_samples"))
def _build_vr(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Renyi (VR) bound of order alpha with num_particles samples (Pyro's RenyiELBO)."""
    table.setdefault("num_particles", 5)
    return ELBO(model, estimator="renyi", preprocess=getattr(data, "preprocess", None),
                **table)
