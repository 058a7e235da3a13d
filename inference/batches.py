"""Batches for the trainer: every accepted data form, seeded, resumable, split across ranks."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from probgen.utils import check_int

__all__ = ["BatchSource", "to_device", "needs_pinning", "DATA_FORMS"]

DATA_FORMS = (
    "a Tensor (rows are examples), a tuple of Tensors with equal first dimension (x, y), "
    "a torch.utils.data.Dataset, a sampler callable sampler(n, generator=g) -> Tensor, "
    "or None (objectives that draw their own samples)"
)


def needs_pinning(tensor: Tensor, device: torch.device) -> bool:
    """Whether copying ``tensor`` to ``device`` goes through pinned memory first: a CPU
    tensor, not pinned yet, bound for a CUDA device (a pinned source lets the copy run
    asynchronously, overlapping the previous step's kernels)."""
    return device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned()


def to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor inside ``batch`` (tensors, tuples, lists, dicts) to ``device``.

    Bound for CUDA, a CPU tensor is pinned first (:func:`needs_pinning`) and copied with
    ``non_blocking=True``: the copy does not wait for the GPU, and CUDA's caching host
    allocator keeps the pinned memory alive until the copy is done. On CPU a tensor already
    there is returned as is (no copy).
    """
    if isinstance(batch, Tensor):
        if needs_pinning(batch, device):
            batch = batch.pin_memory()
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
        num_workers: for a ``Dataset``, load (``__getitem__`` and ``default_collate``) in
            this many ``DataLoader`` worker processes, ahead of the training step. The
            indices still come from ``generator`` in this process, so batches are the same
            as with 0 workers, and :meth:`state_dict` describes the batches *consumed*, not
            those prefetched, so resuming stays exact. 0 loads in this process.
        pin_memory: workers put batches in pinned memory (for a CUDA model).

    Raises:
        TypeError: ``data`` is none of the accepted forms.
        ValueError: empty data, tuple members of different lengths, or ``num_workers`` for
            data that is not a ``Dataset``.
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
        num_workers: int = 0,
        pin_memory: bool = False,
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
        check_int("num_workers", num_workers, low=0)
        if num_workers and self.kind != "dataset":
            raise ValueError(f"num_workers: DataLoader workers load a torch.utils.data.Dataset; "
                             f"{name} is {self.kind} data, drawn in this process, so use "
                             "num_workers=0.")
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._loader: Iterator[Any] | None = None
        # Positions after each index batch handed to the workers, oldest first; the head
        # becomes the consumed position when its batch is taken.
        self._ahead: deque[dict[str, Any]] = deque()
        self._consumed: dict[str, Any] | None = None

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

    def _own_indices(self) -> Tensor:
        n = self.batch_size * self.world_size
        return self._indices(n)[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next(self) -> Any:
        """The next batch of this process (on CPU, or wherever the data lives)."""
        if self.kind == "none":
            return self.batch_size
        if self.kind == "sampler":
            n = self.batch_size * self.world_size
            lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
            return _slice(self.data(n, generator=self.generator), lo, hi)
        if self.num_workers:
            return self._next_from_workers()
        idx = self._own_indices()
        if self.kind == "tensor":
            return self.data[idx]
        if self.kind == "tuple":
            return tuple(t[idx] for t in self.data)
        return default_collate([self.data[int(i)] for i in idx])

    def _index_batches(self) -> Iterator[list[int]]:
        """The ``DataLoader``'s batch sampler: endless index batches, positions recorded."""
        while True:
            idx = self._own_indices().tolist()
            self._ahead.append(self._position())
            yield idx

    def _next_from_workers(self) -> Any:
        if self._loader is None:
            self._consumed = self._position()
            loader = DataLoader(
                self.data, batch_sampler=_Endless(self._index_batches),
                num_workers=self.num_workers, pin_memory=self.pin_memory,
                # A private generator: the loader's worker seeds never touch the global RNG.
                generator=torch.Generator().manual_seed(int(self.generator.initial_seed())),
            )
            self._loader = iter(loader)
        batch = next(self._loader)
        self._consumed = self._ahead.popleft()
        return batch

    def close(self) -> None:
        """Stops the ``DataLoader`` workers (if any); a later :meth:`next` starts new ones
        from the consumed position."""
        if self._loader is not None:
            consumed, loader = self._consumed, self._loader
            self._loader = None
            shutdown = getattr(loader, "_shutdown_workers", None)  # torch's iterator's own
            if shutdown is not None:
                shutdown()
            self._ahead.clear()
            self._restore(consumed)

    def _position(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos,
                "epoch": self.epoch}

    def _restore(self, position: Mapping[str, Any]) -> None:
        self.generator.set_state(position["generator"])
        self.perm = position["perm"]
        self.pos = int(position["pos"])
        self.epoch = int(position["epoch"])

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and position: enough to resume exactly.

        With workers, the position after the last batch :meth:`next` returned (the ones
        prefetched are drawn again on resume)."""
        position = self._consumed if self._loader is not None else self._position()
        return {"kind": self.kind, "length": self.length, **position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`; the data must have the same form and length."""
        if state["kind"] != self.kind or state["length"] != self.length:
            raise ValueError(
                f"resume: the checkpoint was trained on {state['kind']} data of length "
                f"{state['length']}, but fit got {self.kind} data of length {self.length}."
            )
        self.close()
        self._restore(state)


class _Endless:
    """An iterable whose every ``iter`` calls ``factory()`` (the loader's batch sampler)."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[list[int]]:
        return self.factory()


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
