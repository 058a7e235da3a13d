"""Data-parallel set-up under ``torchrun``: process group, device, all-reduce helpers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from probgen.utils import resolve_device

__all__ = ["DistributedContext", "setup_distributed", "teardown_distributed"]


@dataclass
class DistributedContext:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank: this process's index in ``[0, world_size)``.
        world_size: the number of processes (1 when not launched by ``torchrun``).
        device: the device this process trains on.
        owns_group: whether :func:`setup_distributed` created the process group (and so
            destroys it in :func:`teardown_distributed`).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files and prints."""
        return self.rank == 0

    def all_reduce_mean(self, x: Tensor) -> Tensor:
        """The mean of ``x`` over processes (``x`` itself on one process); NaN propagates."""
        if not self.enabled:
            return x
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x / self.world_size

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """The sum of ``x`` over processes."""
        if not self.enabled:
            return x
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Averages ``.grad`` over processes in place (for objectives that step themselves,
        where ``DistributedDataParallel``'s hooks do not run)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def gather(self, x: Tensor) -> list[Tensor]:
        """``x`` from every process (same shape), on CPU, in rank order."""
        if not self.enabled:
            return [x.cpu()]
        local = x.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Copies rank 0's parameters and buffers to every process."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t, src=0)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(
            f"environment variable {name}: expected an integer, got {value!r}."
        ) from e


def setup_distributed(device: str | torch.device | None = "auto") -> DistributedContext:
    """Reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by ``torchrun``) and joins the group.

    Backend ``nccl`` when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
    ``gloo`` on CPU. Without those variables (or ``WORLD_SIZE=1``) nothing is initialized.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (see
            :func:`probgen.utils.resolve_device`).

    Returns:
        The :class:`DistributedContext` of this process.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    dev = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(0, 1, dev, False)
    if dev.type == "cuda":
        dev = torch.device("cuda", _env_int("LOCAL_RANK", rank) % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            dist.init_process_group(backend=backend, device_id=dev)
        else:
            dist.init_process_group(backend=backend)
        owns = True
    return DistributedContext(dist.get_rank(), dist.get_world_size(), dev, owns)


def teardown_distributed(ctx: DistributedContext, *, barrier: bool = True) -> None:
    """Destroys the process group if :func:`setup_distributed` created it.

    ``barrier=False`` after a failure, when the other processes may not reach it.
    """
    if ctx.owns_group and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
        ctx.owns_group = False
