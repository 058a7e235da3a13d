"""Reverse KL to an unnormalized target: fit a sampleable density to exp(log p~)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from probgen.energies import ENERGIES, get_energy
from probgen.inference.registry import register_objective
from probgen.utils import check_int, did_you_mean

__all__ = ["ReverseKL"]


class ReverseKL(nn.Module):
    r"""Creates the reverse-KL objective :math:`E_{x \sim q}[\log q(x) - \log \tilde p(x)]`.

    Equal to :math:`KL(q \| p) - \log Z` for :math:`p = \tilde p / Z`, so it upper-bounds
    :math:`-\log Z` and equals the true KL when the target is normalized. Samples are
    reparameterized (``model.rsample_and_log_prob``), so the gradient flows through them
    (Rezende & Mohamed 2015, https://arxiv.org/abs/1505.05770).

    The batch is the number of samples: the trainer passes ``batch_size`` when ``fit`` gets
    ``data=None``; ``None`` uses ``num_samples``.

    Outputs: ``loss`` and ``kl`` (the same value), ``log_q`` and ``log_p`` (sample means).

    Args:
        model: an ``nn.Module`` with ``rsample_and_log_prob(shape)`` (a
            :class:`probgen.protocols.DensityModel`), or with ``distribution()`` whose
            result has ``rsample`` and ``log_prob``.
        target: ``log p~(x)`` of shape ``x.shape[:-1]``, or the name of a built-in energy
            (:data:`probgen.energies.ENERGIES`). It is not trained (a module target is kept
            out of this objective's parameters; move it to the device yourself).
        num_samples: samples per call when the batch is ``None``.

    Example:
        >>> import torch
        >>> class Gauss(torch.nn.Module):
        ...     def rsample_and_log_prob(self, shape, context=None):
        ...         d = torch.distributions.Normal(torch.zeros(2), 1.0)
        ...         x = d.rsample(shape)
        ...         return x, d.log_prob(x).sum(-1)
        >>> objective = ReverseKL(Gauss(), "ring")
        >>> sorted(objective(64))
        ['kl', 'log_p', 'log_q', 'loss']
    """

    def __init__(
        self,
        model: nn.Module,
        target: Callable[[Tensor], Tensor] | str,
        num_samples: int = 256,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not (
            callable(getattr(model, "rsample_and_log_prob", None))
            or callable(getattr(model, "distribution", None))
        ):
            raise TypeError(
                "model: expected an nn.Module with rsample_and_log_prob(shape) or "
                f"distribution() (a DensityModel), got {type(model).__name__}."
            )
        if isinstance(target, str):
            target = get_energy(target)
        if not callable(target):
            raise TypeError(f"target: expected a callable log-density or an energy name, got "
                            f"{type(target).__name__}.")
        check_int("num_samples", num_samples)
        self.model = model
        self.__dict__["target"] = target  # not a submodule: never trained
        self.num_samples = num_samples

    def _sample(self, n: int) -> tuple[Tensor, Tensor]:
        if callable(getattr(self.model, "rsample_and_log_prob", None)):
            return self.model.rsample_and_log_prob((n,))
        dist = self.model.distribution()
        x = dist.rsample((n,))
        return x, dist.log_prob(x)

    def forward(self, batch: Any = None) -> dict[str, Tensor]:
        """Draws ``batch`` samples (an int; ``None`` for ``num_samples``) and returns the
        outputs."""
        if batch is None:
            n = self.num_samples
        elif isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
            n = batch
        else:
            got = repr(batch) if isinstance(batch, (int, float, str)) else type(batch).__name__
            raise TypeError(
                "batch: ReverseKL draws its own samples; expected a positive int (the number "
                f"of samples; fit passes batch_size with data=None) or None, got {got}."
            )
        x, log_q = self._sample(n)
        log_p = self.target(x)
        if log_p.shape != log_q.shape:
            raise ValueError(
                f"target: expected log-densities of shape {tuple(log_q.shape)} (one per "
                f"sample), got {tuple(log_p.shape)}."
            )
        kl = (log_q - log_p).mean()
        return {"loss": kl, "kl": kl, "log_q": log_q.mean(), "log_p": log_p.mean()}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        name = getattr(self.target, "__name__", type(self.target).__name__)
        return f"target={name}, num_samples={self.num_samples}"


@register_objective("reverse_kl", keys={"target": str, "num_samples": int}, needs_data=False,
                    summary="reverse KL to a built-in energy 'target' (no data)")
def _build(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Reverse KL from the model to a built-in energy ``target`` (no data)."""
    if "target" not in table:
        raise ValueError(f"target is required for 'reverse_kl'; expected one of "
                         f"{sorted(ENERGIES)}.")
    target = table["target"]
    if isinstance(target, str) and target.lower() not in ENERGIES:
        raise ValueError(f"target: unknown energy {target!r}; expected one of "
                         f"{sorted(ENERGIES)}." + did_you_mean(target, ENERGIES))
    return ReverseKL(model, table["target"], num_samples=table.get("num_samples", 256))
