"""Objective registry: how an objective becomes reachable as ``[objective] name``.

Every objective a run file can name, the maximum-likelihood and score-matching ones
included, is registered here by the inference module that defines it, at import time::

    @register_objective("elbo", keys=("estimator", "num_particles", "beta"))
    def _build(model, data, **table):
        return ELBO(model, preprocess=data.preprocess, **table)

The application layer (``probgen.run``) builds ``[objective] name = "elbo"`` from a run
file through :func:`build_registered`, rejecting keys outside ``keys`` with a message that
lists them; ``keys`` given as a mapping also fix each value's TOML type. ``data`` is the
run's data bundle (``kind``, ``event_shape``, ``preprocess``, ``num_classes``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ObjectiveSpec", "OBJECTIVES", "register_objective", "build_registered",
           "BUILT_IN_MODULE"]

#: Objectives registered from this package are built in: another builder may not take their
#: names.
BUILT_IN_MODULE = "probgen.inference"

KeyTypes = type | tuple[type, ...] | None


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its builder, the ``[objective]`` keys it accepts, a summary.

    Attributes:
        name: the name a run file uses.
        builder: ``builder(model, data, **table) -> objective``.
        keys: the ``[objective]`` keys (besides ``name``) the builder accepts.
        summary: one line for error messages and listings.
        types: the TOML type of each key (``None``: the builder checks it).
        langevin: the model has no sampler of its own (a score network): samples come from
            Langevin dynamics on its score, and ``[sample]`` sets that sampler.
        needs_data: ``False`` for objectives that draw their own samples (reverse KL to an
            energy): the run has no ``[data]``.
    """

    name: str
    builder: Callable[..., nn.Module]
    keys: tuple[str, ...]
    summary: str
    types: Mapping[str, KeyTypes] = field(default_factory=dict)
    langevin: bool = False
    needs_data: bool = True


#: name -> spec, filled by the modules of ``probgen.inference`` when they are imported.
OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(
    name: str,
    *,
    keys: Sequence[str] | Mapping[str, KeyTypes] = (),
    summary: str = "",
    langevin: bool = False,
    needs_data: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers ``builder(model, data, **table) -> objective`` under ``[objective] name``.

    Args:
        name: the name a run file uses.
        keys: the ``[objective]`` keys (besides ``name``) the builder accepts; a mapping
            ``{key: type}`` also fixes their TOML types (checked before the run starts).
        summary: one line for error messages and listings (defaults to the builder's
            docstring's first line).
        langevin, needs_data: see :class:`ObjectiveSpec`.

    Raises:
        ValueError: ``name`` is empty, or already registered by another builder (a built-in
            name always is).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_objective: name must be a non-empty str, got {name!r}.")
    types = dict(keys) if isinstance(keys, Mapping) else {}

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = OBJECTIVES.get(name)
        if old is not None and (old.builder.__module__, old.builder.__qualname__) != (
                builder.__module__, builder.__qualname__):
            kind = ("a built-in objective" if old.builder.__module__.startswith(BUILT_IN_MODULE)
                    else "an objective")
            raise ValueError(f"register_objective: {name!r} is {kind} name, already registered "
                             f"by {old.builder.__module__}.{old.builder.__qualname__}.")
        doc = (builder.__doc__ or "").strip().splitlines()
        OBJECTIVES[name] = ObjectiveSpec(name, builder, tuple(keys),
                                         summary or (doc[0] if doc else ""), types,
                                         langevin, needs_data)
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
