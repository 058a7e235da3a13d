"""Objective registry: how a family's objective becomes reachable as ``[objective] name``.

Each family's inference module registers a builder at import time::

    @register_objective("elbo", keys=("estimator", "num_particles", "beta"))
    def _build(model, data, **table):
        return ELBO(model, preprocess=data.preprocess, **table)

``probgen.run.experiment.build_objective`` then builds ``[objective] name = "elbo"`` from a run
file, rejecting keys outside ``keys`` with a message that lists them. ``data`` is the run's
:class:`probgen.run.experiment.DataBundle` (``kind``, ``event_shape``, ``preprocess``,
``num_classes``, ...). The built-in names (``ml``, ``regularized_ml``, ``reverse_kl`` and the
score-matching ones) are handled by the experiment module itself and cannot be re-registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["ObjectiveSpec", "OBJECTIVES", "register_objective", "RESERVED_OBJECTIVES"]

#: Names that probgen.run.experiment builds itself.
RESERVED_OBJECTIVES = ("ml", "regularized_ml", "reverse_kl", "ism", "ssm", "dsm", "ncsn")


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its builder, the ``[objective]`` keys it accepts, a summary."""

    name: str
    builder: Callable[..., nn.Module]
    keys: tuple[str, ...]
    summary: str


#: name -> spec, filled by the family modules of ``probgen.inference`` when they are imported.
OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(
    name: str, *, keys: Sequence[str] = (), summary: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers ``builder(model, data, **table) -> objective`` under ``[objective] name``.

    Args:
        name: the name a run file uses.
        keys: the ``[objective]`` keys (besides ``name``) the builder accepts.
        summary: one line for error messages and listings (defaults to the builder's
            docstring's first line).

    Raises:
        ValueError: ``name`` is built in or already registered by another builder.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_objective: name must be a non-empty str, got {name!r}.")
    if name in RESERVED_OBJECTIVES:
        raise ValueError(f"register_objective: {name!r} is a built-in objective name; "
                         f"reserved: {list(RESERVED_OBJECTIVES)}.")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = OBJECTIVES.get(name)
        if old is not None and old.builder.__qualname__ != builder.__qualname__:
            raise ValueError(f"register_objective: {name!r} is already registered by "
                             f"{old.builder.__module__}.{old.builder.__qualname__}.")
        doc = (builder.__doc__ or "").strip().splitlines()
        OBJECTIVES[name] = ObjectiveSpec(name, builder, tuple(keys),
                                         summary or (doc[0] if doc else ""))
        return builder

    return decorate


def build_registered(name: str, model: nn.Module, data: Any, table: dict[str, Any]) -> nn.Module:
    """Builds the registered objective ``name``; unknown keys raise ``ValueError``."""
    spec = OBJECTIVES[name]
    extra = sorted(set(table) - set(spec.keys))
    if extra:
        allowed = ", ".join(spec.keys) if spec.keys else "none"
        raise ValueError(f"[objective] keys {extra} do not apply to {name!r} "
                         f"(allowed: {allowed}).")
    return spec.builder(model, data, **table)
