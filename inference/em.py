r"""Expectation-maximization objectives: exact EM (closed-form E and M steps) and
variational EM (an amortized posterior fitted by gradient steps, Pyro's ``TraceEnum_ELBO``).

Both run inside the one trainer (:func:`probgen.inference.fit`) as objectives that own their
update order (``parameter_groups`` / ``training_step``):

- :class:`ExactEM` needs a model with ``e_step(x) -> stats`` and ``m_step(x, stats)``
  (closed form) and ``log_prob(x)``; each training step is one EM iteration on the batch
  (use the whole data set as the batch for textbook EM; a smaller batch gives EM on each
  batch in turn). The log-likelihood it reports is that of the parameters *before* the
  step, so on a fixed batch the sequence never decreases (Dempster et al., 1977).
- :class:`VariationalEM` needs a Pyro ``model(x)`` / ``guide(x)`` pair and the split of
  its parameters (``guide_parameters()``; the rest are the model's). With
  ``schedule="alternating"`` each training step takes ``e_steps`` gradient steps on the
  guide (E-step) then ``m_steps`` on the model (M-step), each on the ELBO; with
  ``"joint"`` one step updates both. The bound is the one ELBO layer's,
  :class:`probgen.inference.ELBO`: by default Pyro's ``TraceEnum_ELBO``, exact when the
  guide's discrete sites are enumerated (``infer={"enumerate": "parallel"}``), and any of
  its estimators, ``beta`` and IWAE / Renyi bounds (``estimator="renyi"``, ``alpha``,
  ``num_particles``) alike. When the model has ``log_prob``, the exact log-likelihood and
  the gap ``log p(x) - ELBO >= 0`` are reported too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from probgen.inference.elbo import ELBO
from probgen.inference.registry import register_objective
from probgen.utils import check_choice, check_int

__all__ = ["ExactEM", "VariationalEM", "SCHEDULES"]

SCHEDULES = ("alternating", "joint")


def _x(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"batch: expected a Tensor x or a pair (x, y), got {type(batch).__name__}.")


class ExactEM(nn.Module):
    r"""Creates exact EM for a model with closed-form E and M steps.

    Outputs: ``loss`` = ``nll`` = ``-log_likelihood`` (mean per example, before the step's
    update).

    Args:
        model: an ``nn.Module`` with ``e_step(x)``, ``m_step(x, stats)`` and ``log_prob(x)``;
            with ``initialize(x)`` and a boolean buffer ``initialized``, the first batch
            initializes it.

    References:
        Maximum likelihood from incomplete data via the EM algorithm (Dempster, Laird &
        Rubin, 1977), https://doi.org/10.1111/j.2517-6161.1977.tb01600.x
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        missing = [f for f in ("e_step", "m_step", "log_prob")
                   if not callable(getattr(model, f, None))]
        if missing or not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module with e_step, m_step and log_prob; "
                            f"{type(model).__name__} lacks {missing or ['nn.Module']}.")
        self.model = model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group; EM sets the parameters itself, the optimizer never steps."""
        return {"em": list(self.model.parameters())}

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The mean log-likelihood of ``batch`` (evaluation)."""
        ll = self.model.log_prob(_x(batch)).mean()
        return {"loss": -ll, "nll": -ll, "log_likelihood": ll}

    @torch.no_grad()
    def training_step(self, batch: Any, step: int, update: Callable) -> dict[str, Tensor]:
        """One EM iteration on ``batch``: E-step, then M-step in closed form."""
        x = _x(batch)
        init = getattr(self.model, "initialized", None)
        if isinstance(init, Tensor) and not bool(init) and callable(
                getattr(self.model, "initialize", None)):
            self.model.initialize(x)
        ll = self.model.log_prob(x).mean()
        self.model.m_step(x, self.model.e_step(x))
        return {"loss": -ll, "nll": -ll, "log_likelihood": ll}


class VariationalEM(nn.Module):
    r"""Creates variational EM over a Pyro model/guide pair with an amortized posterior.

    Outputs (means per example): ``loss`` (the negative weighted bound of
    :class:`probgen.inference.ELBO`), ``elbo`` (the plain bound), ``recon``, ``kl`` and, when
    the model has an exact ``log_prob``, ``log_likelihood``, ``nll`` and ``gap``
    (:math:`\log p(x) - \text{ELBO} \ge 0`; for ``beta = 1`` and the enumerated ELBO it is
    :math:`KL(q \| p(c \mid x))`).

    Args:
        model: an ``nn.Module`` with ``model(x)``, ``guide(x)`` and ``guide_parameters()``.
        schedule: ``"alternating"`` (E-steps on the guide, then M-steps on the model) or
            ``"joint"`` (one step on both).
        e_steps, m_steps: gradient steps of each phase per training step (alternating).
        max_plate_nesting: plates nested in model and guide (1: the batch plate).
        estimator: the ELBO's estimator (``"enum"``, ``"trace"``, ``"meanfield"`` or
            ``"renyi"``; see :class:`probgen.inference.ELBO`).
        num_particles: samples per example (IWAE's ``k`` for ``"renyi"``).
        alpha: the Renyi order (``"renyi"`` only; 0 = IWAE).
        beta: weight of the KL term.
    """

    def __init__(self, model: nn.Module, *, schedule: str = "alternating", e_steps: int = 1,
                 m_steps: int = 1, max_plate_nesting: int = 1, estimator: str = "enum",
                 num_particles: int = 1, alpha: float = 0.0, beta: float = 1.0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not all(
                callable(getattr(model, f, None)) for f in ("model", "guide", "guide_parameters")):
            raise TypeError("model: expected an nn.Module with model(x), guide(x) and "
                            f"guide_parameters(), got {type(model).__name__}.")
        check_choice("schedule", schedule, SCHEDULES)
        for name, value in {"e_steps": e_steps, "m_steps": m_steps}.items():
            check_int(name, value)
        self.model, self.schedule = model, schedule
        self.e_steps, self.m_steps = e_steps, m_steps
        self.elbo = ELBO(model, estimator=estimator, num_particles=num_particles, alpha=alpha,
                         beta=beta, max_plate_nesting=max_plate_nesting)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"e": guide, "m": model}`` (alternating) or ``{"joint": all}``."""
        guide = list(self.model.guide_parameters())
        ids = {id(p) for p in guide}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        if self.schedule == "joint":
            return {"joint": guide + rest}
        return {"e": guide, "m": rest}

    def _loss(self, x: Tensor) -> dict[str, Tensor]:
        """The ELBO objective's outputs (it runs model and guide in a private
        parameter-store scope and evaluates without gradients when they are off)."""
        return self.elbo(x)

    def _outputs(self, x: Tensor, bound: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {"loss": bound["loss"], "elbo": bound["elbo"].detach(),
               "recon": bound["recon"], "kl": bound["kl"]}
        if callable(getattr(self.model, "log_prob", None)):
            with torch.no_grad():
                ll = self.model.log_prob(x).mean()
            out.update(log_likelihood=ll, nll=-ll, gap=ll - out["elbo"])
        return out

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The outputs on ``batch`` (evaluation, or a joint step's loss)."""
        x = _x(batch)
        return self._outputs(x, self._loss(x))

    def training_step(self, batch: Any, step: int, update: Callable) -> dict[str, Tensor]:
        """E-steps then M-steps (alternating), or one joint step; returns the outputs
        measured before the step's updates."""
        x = _x(batch)
        bound = self._loss(x)
        loss = bound["loss"]
        out = self._outputs(x, {**bound, "loss": loss.detach()})
        if self.schedule == "joint":
            update("joint", loss)
            return out
        for i in range(self.e_steps):
            update("e", loss if i == 0 else self._loss(x)["loss"])
        for _ in range(self.m_steps):
            update("m", self._loss(x)["loss"])
        return out


@register_objective("em", keys=())
def _build_em(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Exact EM (closed-form E and M steps, e.g. a GaussianMixtureModel)."""
    return ExactEM(model)


@register_objective("vem", keys=("schedule", "e_steps", "m_steps", "estimator",
                                  "num_particles", "alpha", "beta"))
def _build_vem(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Variational EM with an amortized posterior on the ELBO objective (enumerated
    TraceEnum_ELBO by default; beta, IWAE), alternating or joint."""
    return VariationalEM(model, **table)
