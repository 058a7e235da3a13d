"""Training checkpoints: layout, atomic saving, ``weights_only`` loading and RNG states."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probgen.utils import atomic_torch_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "load_checkpoint",
    "load_objective_state",
    "save_checkpoint",
    "rng_state",
    "set_rng_state",
    "to_plain",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


def to_plain(value: Any, name: str = "config") -> Any:
    """Converts ``value`` to types that ``torch.load(weights_only=True)`` accepts.

    Dicts (string keys), lists/tuples, str, int, float, bool and None are kept; paths become
    strings.

    Raises:
        TypeError: an entry has another type; the message names its key path.

    Example:
        >>> from pathlib import Path
        >>> to_plain({"out": Path("runs/a"), "betas": (0.9, 0.99)})
        {'out': 'runs/a', 'betas': [0.9, 0.99]}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{name}: keys must be strings, got {key!r}.")
            out[key] = to_plain(item, f"{name}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_plain(item, f"{name}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{name}: expected plain data (dict, list, str, int, float, bool, None) to store in "
        f"the checkpoint, got {type(value).__name__}."
    )


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch RNG states: ``{"torch": ByteTensor, "cuda": ByteTensor | None}``."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Writes ``state`` atomically to ``path`` (a crash leaves the previous file intact)."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Loads a checkpoint written by :func:`probgen.inference.fit`, with ``weights_only=True``.

    Keys: ``format`` (int), ``step`` (optimizer steps done), ``objective`` (state dict),
    ``optimizers`` (``{name: state dict}``, ``"main"`` on the default path), ``scheduler``,
    ``ema`` (``None`` or :meth:`EMA.state_dict`), ``precision`` (``"fp32"``, ``"bf16"`` or
    ``"fp16"``), ``scaler`` (the fp16 gradient scaler's state, else ``None``), ``rng``
    (``torch``, ``cuda``, ``data``),
    ``config``, ``world_size``, ``elapsed`` (seconds of training so far), ``threads`` (the
    CPU thread count ``fit(threads=...)`` trained with; ``None`` when left to torch).

    Args:
        path: a ``checkpoint.pt`` file, or a run folder holding one.
        map_location: where tensors are loaded (CPU by default).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not a probgen checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {str(path)!r}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError...
        raise ValueError(f"load_checkpoint: {str(path)!r} {_load_failure(e)}.") from None
    if not isinstance(state, dict) or "format" not in state or "objective" not in state:
        raise ValueError(f"load_checkpoint: {str(path)!r} is not a probgen training checkpoint.")
    return state


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words that give no unsafe advice."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (f"holds a pickled object ({refused.group(1)}) that a probgen checkpoint never "
                "holds, so it was not loaded (only tensors and plain containers are)")
    if "Weights only load failed" in text:
        return ("holds pickled objects that a probgen checkpoint never holds, so it was not "
                "loaded (only tensors and plain containers are)")
    if isinstance(error, EOFError) or not text:
        return "is empty or truncated (an interrupted copy?); it is not a readable checkpoint"
    first = text.strip().splitlines()[0]
    if len(first) > 160:
        first = first[:157] + "..."
    return f"is corrupt or truncated, or not a checkpoint ({type(error).__name__}: {first})"


def load_objective_state(
    objective: nn.Module, state: Mapping[str, Any], path: str | os.PathLike
) -> None:
    """Loads a checkpoint's ``objective`` weights into ``objective``.

    Args:
        objective: the objective module the checkpoint was written from (same model).
        state: what :func:`load_checkpoint` returned.
        path: the checkpoint's file, named in the error.

    Raises:
        ValueError: the weights belong to another model or configuration; one line naming
            the file and the first mismatched entries.
    """
    saved, own = state["objective"], objective.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    reshaped = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in saved and isinstance(saved[k], torch.Tensor) and isinstance(own[k], torch.Tensor)
        and saved[k].shape != own[k].shape
    ]
    problems = [
        f"{what}: {len(items)} (e.g. {items[0]})"
        for what, items in (("missing entries", missing), ("unexpected entries", unexpected),
                            ("other shapes", reshaped))
        if items
    ]
    if problems:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this run's model and objective "
            f"(another configuration wrote it): {'; '.join(problems)}."
        )
    try:
        objective.load_state_dict(saved)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ValueError(f"checkpoint {str(path)!r} does not fit this run's model and "
                         f"objective: {first}") from None
