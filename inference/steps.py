"""One optimization step: output checks, the non-finite stop, backward, clipping, evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from probgen.inference.accel import MAX_SKIPPED_STEPS, Precision
from probgen.inference.batches import to_device
from probgen.inference.distributed import DistributedContext
from probgen.inference.ema import EMA

__all__ = ["NonFiniteLossError", "check_outputs", "Updater", "evaluate", "eval_length"]


class NonFiniteLossError(FloatingPointError):
    """Training stopped because an objective output (or a gradient norm) was NaN or Inf.

    Attributes:
        step: the step that produced it (1-based, as ``step`` in ``metrics.jsonl``).
        term: which output: a key of the objective's dict (``"loss"``, ``"nll"``, ...) or
            ``"grad_norm"``.
        value: the offending value.
        last_checkpoint: the step of the checkpoint left on disk (``None`` if none).
    """

    def __init__(
        self, step: int, term: str, value: float, last_checkpoint: int | None = None
    ) -> None:
        self.step, self.term, self.value = step, term, value
        self.last_checkpoint = last_checkpoint
        kept = (
            "no checkpoint was written"
            if last_checkpoint is None
            else f"the checkpoint of step {last_checkpoint} is left intact"
        )
        super().__init__(
            f"non-finite {term!r} = {value} at step {step}: training stopped before the "
            f"update, {kept}. Lower lr, set grad_clip, or check the data and the model."
        )


def check_outputs(out: Any, step: int) -> dict[str, Tensor]:
    """Validates an objective's output: a dict of scalar tensors (or numbers) with ``"loss"``.

    Raises:
        TypeError: not a dict, no ``"loss"``, or an entry that is not a scalar.
    """
    if not isinstance(out, Mapping):
        raise TypeError(
            f"objective: forward(batch) must return a dict of scalar tensors with a 'loss' "
            f"entry, got {type(out).__name__} at step {step}."
        )
    if "loss" not in out:
        raise TypeError(f"objective: the returned dict has no 'loss' entry; keys {list(out)}.")
    clean = {}
    for key, value in out.items():
        if isinstance(value, (int, float)):
            value = torch.tensor(float(value))
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(
                f"objective: output {key!r} must be a scalar tensor (reduce over the batch), "
                f"got {shape}."
            )
        clean[str(key)] = value.reshape(())
    return clean


def first_non_finite(values: Tensor, keys: list[str]) -> tuple[str, float] | None:
    """The first key whose value is NaN/Inf (one device sync), or ``None``."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return None
    i = int((~finite).nonzero()[0, 0])
    return keys[i], float(values[i])


class Updater:
    """Owns the optimizers and performs ``update(name, loss)``: the one backward/step path.

    Both the default path and objectives with their own ``training_step`` go through
    :meth:`update`, so clipping, gradient-norm logging and the non-finite stop are shared.

    Args:
        optimizers: ``{name: optimizer}``; ``"main"`` on the default path.
        ctx: the distributed context.
        grad_clip: max global gradient norm per optimizer, or ``None``.
        custom: the objective steps itself (``training_step``): each ``loss`` passed to
            :meth:`__call__` is checked, and gradients are averaged over processes by hand
            (``DistributedDataParallel``'s hooks only run on the default path).
        precision: the step's arithmetic; with its gradient scaler (``fp16``) the loss is
            scaled before backward and the gradients unscaled before clipping, and a step
            whose gradients overflowed is skipped (logged as ``skipped``, with the scale as
            ``grad_scale``), not an error, unless :data:`MAX_SKIPPED_STEPS` steps in a row
            are skipped.
    """

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        ctx: DistributedContext,
        grad_clip: float | None,
        custom: bool,
        precision: Precision | None = None,
    ) -> None:
        self.optimizers = optimizers
        self.ctx = ctx
        self.grad_clip = grad_clip
        self.custom = custom
        self.precision = precision
        self.scaler = precision.scaler if precision is not None else None
        self.skipped_in_a_row = 0
        self.step = 0
        # Whether this step measures (and checks) the gradient norm. Always with clipping;
        # otherwise the trainer asks for it on the steps it logs or checkpoints, so a
        # non-finite gradient can never reach a checkpoint (a bad update in between makes
        # the next loss non-finite, which stops training before any write).
        self.measure = True
        self.grad_norms: dict[str, Tensor] = {}

    def _params(self, name: str) -> list[nn.Parameter]:
        return [p for g in self.optimizers[name].param_groups for p in g["params"]]

    def __call__(self, name: str, loss: Tensor, *, retain_graph: bool = False) -> None:
        """Zero grads, (check ``loss``), backward, average, clip, check the norm, step."""
        if name not in self.optimizers:
            raise KeyError(f"update: no optimizer named {name!r}; have {list(self.optimizers)}.")
        key = "grad_norm" if len(self.optimizers) == 1 else f"grad_norm/{name}"
        if self.custom:  # the default path checked the whole output dict already
            value = self.ctx.all_reduce_mean(loss.detach().double().reshape(1))
            bad = first_non_finite(value, [f"loss/{name}"])
            if bad is not None:
                raise NonFiniteLossError(self.step, bad[0], bad[1])
        params = self._params(name)
        optimizer, scaler = self.optimizers[name], self.scaler
        optimizer.zero_grad(set_to_none=True)
        with self.precision.full() if self.precision is not None else contextlib.nullcontext():
            (loss if scaler is None else scaler.scale(loss)).backward(retain_graph=retain_graph)
        if self.custom:
            self.ctx.average_gradients(params)
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip and measure the true gradient
        grads = [p for p in params if p.grad is not None]
        norm = None
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(grads, self.grad_clip)
        elif self.measure:
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
        if norm is not None:
            bad = first_non_finite(norm.detach().double().reshape(1), [key])
            if bad is not None and scaler is None:
                raise NonFiniteLossError(self.step, bad[0], bad[1])
            if bad is None:
                self.grad_norms[key] = norm.detach()
        if scaler is None:
            optimizer.step()
            return
        self._scaled_step(name, optimizer, scaler, key)

    def _scaled_step(
        self, name: str, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
        key: str,
    ) -> None:
        """The scaler's step: skipped (scale halved) when the gradients overflowed."""
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < scale
        suffix = "" if len(self.optimizers) == 1 else f"/{name}"
        self.grad_norms["skipped" + suffix] = torch.tensor(float(skipped))
        self.grad_norms["grad_scale" + suffix] = torch.tensor(scale)
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
            raise NonFiniteLossError(self.step, key, float("nan"))


def eval_length(data: Any) -> int:
    """The number of examples of held-out ``data``.

    A positive int stands for that many samples of an objective that draws its own (reverse
    KL: each batch is the number of samples to draw).

    Raises:
        TypeError: ``data`` is not a Tensor, a tuple of Tensors, a map-style Dataset or a
            positive int.
    """
    if isinstance(data, int) and not isinstance(data, bool) and data > 0:
        return data
    if isinstance(data, Tensor) and data.dim() > 0:
        return data.shape[0]
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        return data[0].shape[0]
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)
    raise TypeError(
        "eval_data: expected a Tensor, a tuple of Tensors, a map-style Dataset or a positive "
        f"int (samples drawn by the objective), got {type(data).__name__}."
    )


def _eval_batches(data: Any, batch_size: int, ctx: DistributedContext) -> Iterable[Any]:
    n = eval_length(data)
    starts = list(range(0, n, batch_size))[ctx.rank :: ctx.world_size]
    for start in starts:
        stop = min(start + batch_size, n)
        if isinstance(data, int):  # the objective draws this many samples itself
            yield stop - start, stop - start
        elif isinstance(data, Tensor):
            yield data[start:stop], stop - start
        elif isinstance(data, (tuple, list)):
            yield tuple(t[start:stop] for t in data), stop - start
        else:
            yield default_collate([data[i] for i in range(start, stop)]), stop - start


def evaluate(
    objective: nn.Module,
    data: Any,
    *,
    batch_size: int,
    ctx: DistributedContext,
    ema: EMA | None,
    seed: int,
    callback: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Mean of every objective output over ``data`` (weighted by batch size).

    Runs under ``torch.no_grad()``, in eval mode, with the EMA weights when given, and with
    the global RNG forked and seeded, so evaluation never changes the training stream (exact
    resume holds whether or not evaluation ran) and repeats the same noise each time.
    Processes split the batches and all-reduce the sums. ``callback(n)`` is called after
    each batch with its number of examples (progress reporting).
    """
    was_training = objective.training
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    sums: dict[str, Tensor] = {}
    count = 0
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed + ctx.rank)
        objective.eval()
        try:
            swap = ema.average_parameters(objective) if ema is not None else None
            with swap if swap is not None else contextlib.nullcontext():
                for batch, n in _eval_batches(data, batch_size, ctx):
                    out = check_outputs(objective(to_device(batch, ctx.device)), step=-1)
                    for key, value in out.items():
                        sums[key] = sums.get(key, 0.0) + value.double() * n
                    count += n
                    if callback is not None:
                        callback(n)
        finally:
            objective.train(was_training)
    if ctx.enabled:
        keys = sorted(sums)
        packed = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count))]).to(
            ctx.device, torch.float64
        )
        packed = ctx.all_reduce_sum(packed)
        sums = dict(zip(keys, packed[:-1], strict=True))
        count = int(packed[-1])
    if count == 0:
        raise ValueError("eval_data: no examples to evaluate.")
    return {f"eval/{k}": float(v) / count for k, v in sums.items()}

