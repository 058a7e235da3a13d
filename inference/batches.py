"""Batches for the trainer: every accepted data form, seeded, resumable, split across ranks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

__all__ = ["BatchSource", "to_device", "DATA_FORMS"]

DATA_FORMS = (
    "a Tensor (rows are examples), a tuple of Tensors with equal first dimension (x, y), "
    "a torch.utils.data.Dataset, a sampler callable sampler(n, generator=g) -> Tensor, "
    "or None (objectives that draw their own samples)"
)


def to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor inside ``batch`` (tensors, tuples, lists, dicts) to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple):
        return tuple(to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [to_device(b, device) for b in batch]
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(b, start, stop) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    raise TypeError(f"data: a sampler returned {type(batch).__name__}; expected Tensor(s).")


class BatchSource:
    """Draws the batches of one process from any accepted data form.

    Finite data (a tensor, a tuple of tensors, a dataset) is read in shuffled epochs: a
    permutation drawn with the trainer's generator, consumed in order, redrawn when used up.
    A sampler callable is asked for fresh examples each step. With ``world_size`` processes,
    every process draws the same *global* batch of ``batch_size * world_size`` examples and
    keeps its contiguous slice, so the union over ranks is exactly the batch one process
    would draw with ``batch_size * world_size``.

    Args:
        data: the data (see ``DATA_FORMS``).
        batch_size: examples per process and step.
        generator: the trainer's private generator (data order and sampler draws).
        rank: this process's rank.
        world_size: the number of processes.
        name: the argument's name in errors.

    Raises:
        TypeError: ``data`` is none of the accepted forms.
        ValueError: empty data, or tuple members of different lengths.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        generator: torch.Generator,
        *,
        rank: int = 0,
        world_size: int = 1,
        name: str = "data",
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.generator = generator
        self.rank = rank
        self.world_size = world_size
        self.perm: Tensor | None = None
        self.pos = 0
        self.epoch = 0
        self.kind, self.length = _classify(data, name)

    def _indices(self, n: int) -> Tensor:
        parts, needed = [], n
        while needed > 0:
            if self.perm is None or self.pos >= self.length:
                self.perm = torch.randperm(self.length, generator=self.generator)
                self.pos = 0
                self.epoch += 1
            take = min(needed, self.length - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            needed -= take
        return torch.cat(parts)

    def next(self) -> Any:
        """The next batch of this process (on CPU, or wherever the data lives)."""
        n = self.batch_size * self.world_size
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        if self.kind == "none":
            return self.batch_size
        if self.kind == "sampler":
            return _slice(self.data(n, generator=self.generator), lo, hi)
        idx = self._indices(n)[lo:hi]
        if self.kind == "tensor":
            return self.data[idx]
        if self.kind == "tuple":
            return tuple(t[idx] for t in self.data)
        return default_collate([self.data[int(i)] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and position: enough to resume exactly."""
        return {
            "kind": self.kind,
            "length": self.length,
            "generator": self.generator.get_state(),
            "perm": self.perm,
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`; the data must have the same form and length."""
        if state["kind"] != self.kind or state["length"] != self.length:
            raise ValueError(
                f"resume: the checkpoint was trained on {state['kind']} data of length "
                f"{state['length']}, but fit got {self.kind} data of length {self.length}."
            )
        self.generator.set_state(state["generator"])
        self.perm = state["perm"]
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])


def _classify(data: Any, name: str) -> tuple[str, int]:
    """Returns ``(kind, length)``; length is 0 for samplers and ``None`` data."""
    if data is None:
        return "none", 0
    if isinstance(data, Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise ValueError(f"{name}: expected a tensor with examples along dim 0, got shape "
                             f"{tuple(data.shape)}.")
        return "tensor", data.shape[0]
    if isinstance(data, (tuple, list)):
        if not data or not all(isinstance(t, Tensor) and t.dim() > 0 for t in data):
            raise TypeError(f"{name}: a tuple must hold tensors with examples along dim 0 "
                            f"(e.g. (x, y)), got {[type(t).__name__ for t in data]}.")
        lengths = {t.shape[0] for t in data}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"{name}: tuple members must have the same non-zero first "
                             f"dimension, got {[t.shape[0] for t in data]}.")
        return "tuple", lengths.pop()
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise TypeError(f"{name}: a Dataset must define __len__ (map-style), got "
                            f"{type(data).__name__}.")
        if len(data) == 0:
            raise ValueError(f"{name}: the dataset is empty.")
        return "dataset", len(data)
    if callable(data):
        return "sampler", 0
    raise TypeError(f"{name}: expected {DATA_FORMS}; got {type(data).__name__}.")
