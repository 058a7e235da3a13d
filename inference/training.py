"""The one trainer: ``fit(objective, data, ...)`` owns the loop for every objective."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm  # plain text bar: no ipywidgets needed in notebooks

from probgen.inference.accel import (
    Precision,
    ThreadTuner,
    check_channels_last,
    check_compile,
    check_precision,
    check_threads,
    compile_failure,
    compile_module,
    to_channels_last,
    uncompiled,
)
from probgen.inference.batches import BatchSource, to_device
from probgen.inference.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_objective_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from probgen.inference.distributed import (
    DistributedContext,
    setup_distributed,
    teardown_distributed,
)
from probgen.inference.ema import EMA
from probgen.inference.history import METRICS_NAME, History, read_records
from probgen.inference.optim import LRSchedule, make_optimizer
from probgen.inference.steps import (
    NonFiniteLossError,
    Updater,
    check_outputs,
    eval_length,
    evaluate,
    first_non_finite,
)
from probgen.utils import append_jsonl, atomic_write_text, check_int, remove_stale_temporaries

__all__ = ["fit", "History", "NonFiniteLossError", "TrainingInterrupted", "Callback"]

# A callback sees every log record (train and eval) on every process; returning True stops
# training after the current step (a checkpoint is still written when out_dir is set).
Callback = Callable[[int, dict[str, float]], "bool | None"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after a completed step (``fit(interruptible=True)``).

    A ``KeyboardInterrupt``, so code that does not know it still stops.

    Attributes:
        step: the last completed step.
        signal: the signal's number (``signal.SIGINT`` or ``signal.SIGTERM``).
        checkpoint: the checkpoint written for ``step`` (``None`` without ``out_dir``).
    """

    def __init__(self, step: int, signum: int, checkpoint: Path | None) -> None:
        self.step, self.signal, self.checkpoint = step, signum, checkpoint
        kept = (f"checkpoint of step {step} written to {str(checkpoint)!r}"
                if checkpoint is not None else "no out_dir, so no checkpoint")
        super().__init__(f"{signal.Signals(signum).name} after step {step}: training stopped, "
                         f"{kept}.")


@contextlib.contextmanager
def _stop_on_signals(run: _Run) -> Iterator[None]:
    """Turns SIGINT and SIGTERM into a request that ``run`` stops after its current step.

    The first signal only sets ``run.signal``; the previous handlers come back at once, so a
    second signal acts as it would have (Ctrl-C twice aborts without waiting). Outside the
    main thread no handler can be installed and signals act as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def request_stop(signum: int, frame: Any) -> None:
        run.signal = signum
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_args(steps: int, batch_size: int, log_every: int, **optional: Any) -> None:
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("log_every", log_every)
    for name, value in optional.items():
        check_int(name, value, allow_none=True)


def _trainable(objective: nn.Module) -> dict[str, list[nn.Parameter]]:
    groups = (
        objective.parameter_groups() if hasattr(objective, "parameter_groups")
        else {"main": objective.parameters()}
    )
    out = {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
    empty = [name for name, params in out.items() if not params]
    if empty:
        raise ValueError(f"objective: no trainable parameters (group(s) {empty}).")
    if len(out) > 1 and not hasattr(objective, "training_step"):
        raise ValueError("objective: parameter_groups() names several groups, so it must "
                         "define training_step(batch, step, update) to order their updates.")
    return out


def fit(
    objective: nn.Module,
    data: Any,
    *,
    steps: int,
    batch_size: int,
    optimizer: str = "adam",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    lr_schedule: str | None = None,
    warmup_steps: int = 0,
    grad_clip: float | None = None,
    ema_decay: float | None = None,
    eval_data: Any = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    log_every: int = 10,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    config: dict | None = None,
    callbacks: Callback | Sequence[Callback] | None = None,
    interruptible: bool = False,
    precision: str = "fp32",
    compile: bool | str = False,
    channels_last: bool = False,
    num_workers: int = 0,
    threads: int | str | None = "auto",
) -> History:
    """Trains ``objective`` on ``data`` for ``steps`` optimizer steps.

    Each step: draw a batch with the trainer's private generator (seeded by ``seed``), call
    ``objective(batch)`` -> dict with a scalar ``"loss"``, stop with
    :class:`NonFiniteLossError` if any output is NaN/Inf (before updating and before any
    checkpoint), backward, clip to ``grad_clip``, step, update the EMA. Every ``log_every``
    steps a record goes to ``out_dir/metrics.jsonl``; every ``eval_every`` steps (and at the
    end) the objective is averaged over ``eval_data``; every ``checkpoint_every`` steps (and
    at the end) ``out_dir/checkpoint.pt`` is replaced atomically. ``resume=True`` continues
    from it and reproduces the uninterrupted run bit for bit.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the objective is wrapped in
    ``DistributedDataParallel``; ``batch_size`` is per process and every process takes its
    slice of one global batch, so 2 processes x B equal 1 process x 2B. Only rank 0 writes.

    An objective whose parameters exist only after its first call (e.g.
    :class:`probgen.inference.ELBO` of plain Pyro functions with ``pyro.param`` sites)
    defines ``setup(batch)``; it is called once with a batch before the optimizer is built.

    Objectives that own their update order (GAN critic/generator, EM) define
    ``parameter_groups() -> {name: params}`` (one optimizer each, same settings) and
    ``training_step(batch, step, update) -> dict``, calling ``update(name, loss)`` for each
    update; ``update`` does zero_grad, the non-finite check, backward, gradient averaging
    across processes, clipping and the optimizer step.

    Accelerators: ``precision="bf16"`` or ``"fp16"`` runs the objective's forward (the
    whole ``training_step`` of a multi-player objective) under ``torch.autocast`` on the
    model's device, weights and optimizer staying float32; ``fp16`` adds a gradient scaler
    whose overflowed steps are skipped, not errors (:class:`probgen.inference.accel.Precision`
    says what each does, on CPU and CUDA). A non-finite *output* still stops training at its
    step, naming the term. Evaluation runs in float32. ``compile=True`` trains through
    ``torch.compile(objective)`` (mode ``"default"``); evaluation, the EMA and checkpoints use
    the uncompiled module, so a checkpoint's keys have no ``_orig_mod.`` prefix and compiled
    and eager runs resume each other. Compiled code rounds differently (fused kernels) and
    draws random numbers inside the objective with its own generator, so a compiled run
    matches the eager one to rounding for deterministic objectives and in distribution
    otherwise; exact resume holds within either mode.

    Args:
        objective: an ``nn.Module``; ``objective(batch)`` returns ``{"loss": scalar, ...}``.
        data: a Tensor (rows are examples, shuffled epochs), a tuple of Tensors (batches are
            tuples), a map-style ``Dataset`` (``default_collate``), a sampler
            ``sampler(n, generator=g) -> Tensor`` (fresh draws each step), or ``None``
            (the objective receives ``batch_size``, the number of samples to draw).
        steps: total optimizer steps (on resume, the target, not the remainder).
        batch_size: examples per step and process.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: initial learning rate; betas: Adam's; weight_decay: L2 (adam) / decoupled
            (adamw); momentum: SGD's.
        lr_schedule: ``None``/``"constant"``, ``"cosine"`` or ``"linear"`` decay, after
            ``warmup_steps`` of linear warm-up (see :class:`LRSchedule`).
        grad_clip: max global gradient norm; the pre-clip norm is logged as ``grad_norm``
            (without clipping it is measured on the steps that log, evaluate or checkpoint).
        ema_decay: keep an EMA of the weights (used for evaluation, saved in checkpoints).
        eval_data: held-out data (Tensor, tuple or Dataset); logged as ``eval/<output>``.
        eval_every: evaluate every this many steps (and at the end); eval_batch_size:
            defaults to ``batch_size``.
        log_every: steps between training records.
        out_dir: run folder for ``metrics.jsonl`` and ``checkpoint.pt``; None writes nothing.
        checkpoint_every: steps between checkpoints (a final one is always written).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        seed: seeds the data generator and the global torch RNG (model randomness).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        progress: show a tqdm bar with the live loss.
        config: plain data saved in the checkpoint (e.g. the run's TOML tables).
        callbacks: ``callback(step, record)`` after each record; returning True stops.
        interruptible: on SIGINT or SIGTERM (main thread only), finish the current step,
            write its checkpoint (with ``out_dir``, whatever ``checkpoint_every``) and raise
            :class:`TrainingInterrupted`; ``resume=True`` then continues from that step.
        precision: ``"fp32"`` (default; bit-exact resume), ``"bf16"`` or ``"fp16"``
            (autocast; ``fp16`` with a gradient scaler, whose state is checkpointed). On
            CPU use ``bf16``: ``fp16`` works there but is emulated (several times slower).
        compile: ``True`` for ``torch.compile``'s default backend (inductor), or a backend
            name (``"aot_eager"``: trace only, a quick check); the first step pays the
            compilation. Not for objectives with ``training_step``.
        channels_last: convert the objective's 4-D weights and every 4-D floating batch
            tensor to the channels-last memory format (faster convolutions on GPUs with
            tensor cores and on CPU with oneDNN); warns when the objective has no 4-D
            weight.
        num_workers: load ``Dataset`` data in this many ``DataLoader`` worker processes
            (same batches as 0 workers, exact resume kept); batches bound for a CUDA
            model are pinned and copied asynchronously whatever the data form.
        threads: torch's CPU threads while training: a positive int, ``None`` (torch's
            setting untouched) or ``"auto"``: one thread or torch's count, whichever the
            run's own first steps measure faster on this machine under its present load
            (see :class:`~probgen.inference.accel.ThreadTuner`); the choice is in
            ``History.threads`` and the checkpoint, and torch's setting is restored when
            ``fit`` returns.

    Returns:
        The :class:`History` of records (floats).

    Raises:
        NonFiniteLossError: an output or the gradient norm became NaN/Inf.
        TrainingInterrupted: ``interruptible`` and a signal came.
        TypeError, ValueError: bad arguments (the message names the argument).

    Example:
        >>> class Mean(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mu = torch.nn.Parameter(torch.zeros(1))
        ...     def forward(self, x):
        ...         return {"loss": ((x - self.mu) ** 2).mean()}
        >>> x = torch.full((64, 1), 3.0)
        >>> h = fit(Mean(), x, steps=200, batch_size=16, lr=0.1, progress=False)
        >>> round(h.final["loss"], 3)
        0.0
    """
    if not isinstance(objective, nn.Module):
        raise TypeError(f"objective: expected an nn.Module, got {type(objective).__name__}.")
    _check_args(steps, batch_size, log_every, eval_every=eval_every,
                checkpoint_every=checkpoint_every, eval_batch_size=eval_batch_size)
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip: expected a positive float or None, got {grad_clip!r}.")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay: expected a float in [0, 1) or None, got {ema_decay!r}.")
    if eval_every is not None and eval_data is None:
        raise ValueError("eval_every: set, but eval_data is None; pass held-out data.")
    if resume and out_dir is None:
        raise ValueError("resume: needs out_dir (the folder holding checkpoint.pt).")
    if callbacks is None:
        callbacks = []
    elif callable(callbacks):
        callbacks = [callbacks]
    if eval_data is not None:
        eval_length(eval_data)
    check_precision(precision)
    check_threads(threads)
    backend = check_compile(compile)
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last: expected True or False, got {channels_last!r}.")
    check_int("num_workers", num_workers, low=0)
    precompiled = objective if uncompiled(objective) is not objective else None
    objective = uncompiled(objective)
    if (backend is not None or precompiled is not None) and hasattr(objective, "training_step"):
        raise ValueError("compile: the objective defines training_step (it steps its own "
                         "players), which torch.compile cannot trace through the optimizer "
                         "steps; train it with compile=False (its networks may be compiled "
                         "inside it).")
    if channels_last:
        check_channels_last(objective)
    setup = getattr(objective, "setup", None)
    if callable(setup):
        # parameters created by the objective's first call (pyro.param sites of plain Pyro
        # functions): one batch drawn as the first training batch will be, from a copy of
        # the data generator, so the training stream is unchanged
        setup(BatchSource(data, batch_size, torch.Generator().manual_seed(seed)).next())
    groups = _trainable(objective)
    ctx = setup_distributed(device)
    ok, run = False, None
    try:
        run = _Run(
            objective, ctx, groups,
            optimizers={name: make_optimizer(params, optimizer, lr=lr, betas=betas,
                                             weight_decay=weight_decay, momentum=momentum)
                        for name, params in groups.items()},
            schedule=LRSchedule(lr_schedule, steps, warmup_steps),
            ema_decay=ema_decay, grad_clip=grad_clip, config=to_plain(config),
            out_dir=Path(out_dir) if out_dir is not None else None, seed=seed,
            precision=precision, backend=backend, precompiled=precompiled,
            channels_last=channels_last,
        )
        run.source = BatchSource(data, batch_size, run.generator, rank=ctx.rank,
                                 world_size=ctx.world_size, num_workers=num_workers,
                                 pin_memory=ctx.device.type == "cuda")
        run.restore(resume)
        run.tuner = ThreadTuner(threads, ctx.device, steps - run.start,
                                distributed=ctx.enabled, saved=run.saved_threads)
        with _stop_on_signals(run) if interruptible else contextlib.nullcontext():
            try:
                history = run.loop(
                    steps, log_every=log_every, eval_data=eval_data, eval_every=eval_every,
                    eval_batch_size=eval_batch_size or batch_size,
                    checkpoint_every=checkpoint_every, progress=progress,
                    callbacks=list(callbacks),
                )
            except TrainingInterrupted:
                ok = True  # every process stopped after the same step
                raise
        ok = True
        history.threads = run.tuner.current
        return history
    finally:
        if run is not None and run.tuner is not None:
            run.tuner.restore()
        if run is not None and run.source is not None:
            run.source.close()
        teardown_distributed(ctx, barrier=ok)


class _Run:
    """The state of one :func:`fit` call (private: ``fit`` is the interface)."""

    def __init__(
        self,
        objective: nn.Module,
        ctx: DistributedContext,
        groups: dict[str, list[nn.Parameter]],
        *,
        optimizers: dict[str, torch.optim.Optimizer],
        schedule: LRSchedule,
        ema_decay: float | None,
        grad_clip: float | None,
        config: Any,
        out_dir: Path | None,
        seed: int,
        precision: str = "fp32",
        backend: str | None = None,
        precompiled: nn.Module | None = None,
        channels_last: bool = False,
    ) -> None:
        self.ctx, self.seed, self.out, self.config = ctx, seed, out_dir, config
        self.objective = objective.to(ctx.device)
        if channels_last:
            self.objective.to(memory_format=torch.channels_last)
        self.channels_last, self.backend, self.precompiled = channels_last, backend, precompiled
        self.custom = hasattr(objective, "training_step")
        self.optimizers, self.schedule = optimizers, schedule
        self.ema = EMA(self.objective, ema_decay) if ema_decay is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.source: BatchSource | None = None
        first = next(iter(groups.values()))[0]
        self.precision = Precision(precision, first.device)
        self.updater = Updater(optimizers, ctx, grad_clip, custom=self.custom,
                               precision=self.precision)
        self.history = History()
        self.start, self.elapsed, self.last_ckpt = 0, 0.0, None
        self.signal: int | None = None  # set by _stop_on_signals
        self.tuner: ThreadTuner | None = None  # set by fit after restore
        self.saved_threads: int | None = None  # the count a resumed run was trained with
        self.t0 = time.perf_counter()

    def now(self) -> float:
        """Seconds of training so far, across resumptions."""
        return self.elapsed + time.perf_counter() - self.t0

    def restore(self, resume: bool) -> None:
        """Loads ``out_dir/checkpoint.pt`` when resuming, else seeds; resets metrics.jsonl."""
        path = self.out / CHECKPOINT_NAME if self.out is not None else None
        if self.ctx.is_main and self.out is not None:
            remove_stale_temporaries(self.out)  # left by a save that was killed
        if resume and path.is_file():
            state = load_checkpoint(path, map_location=self.ctx.device)
            load_objective_state(self.objective, state, path)
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            if self.ema is not None:
                if state["ema"] is None:
                    raise ValueError("resume: ema_decay is set but the checkpoint has no EMA.")
                self.ema.load_state_dict(state["ema"])
            self.source.load_state_dict(state["rng"]["data"])
            self.precision.load_state_dict(state.get("scaler"))
            ranks = state["rng"].get("ranks")
            same = ranks is not None and len(ranks) == self.ctx.world_size
            set_rng_state(ranks[self.ctx.rank] if same else state["rng"], self.ctx.device)
            self.start = self.last_ckpt = int(state["step"])
            self.elapsed = float(state["elapsed"])
            self.saved_threads = state.get("threads")
            self.history.records = read_records(self.out / METRICS_NAME, self.start)
        else:
            # Distinct model-internal randomness per process; the data stream is shared.
            torch.manual_seed(self.seed + 1_000_003 * self.ctx.rank)
        if self.ctx.is_main and self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps(r, sort_keys=True) + "\n" for r in self.history.records]
            atomic_write_text(self.out / METRICS_NAME, "".join(lines))
        if self.custom:
            self.ctx.broadcast_parameters(self.objective)

    def save(self, step: int) -> None:
        """Writes the checkpoint of ``step`` (rank 0), with every process's RNG state."""
        rng = {**rng_state(self.ctx.device), "data": self.source.state_dict()}
        if self.ctx.enabled:
            torch_states = self.ctx.gather(rng["torch"])
            cuda_states = (self.ctx.gather(rng["cuda"]) if rng["cuda"] is not None
                           else [None] * self.ctx.world_size)
            rng["ranks"] = [{"torch": t, "cuda": c}
                            for t, c in zip(torch_states, cuda_states, strict=True)]
        if self.ctx.is_main:
            save_checkpoint(self.out / CHECKPOINT_NAME, {
                "step": step,
                "objective": self.objective.state_dict(),
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "scheduler": self.schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "precision": self.precision.name,
                "scaler": self.precision.state_dict(),
                "rng": rng,
                "config": self.config,
                "world_size": self.ctx.world_size,
                "elapsed": self.now(),
                "threads": self.tuner.chosen if self.tuner is not None else None,
            })
        self.last_ckpt = step

    def signalled(self) -> int | None:
        """The stop signal received by any process (the same answer on every process)."""
        if not self.ctx.enabled:
            return self.signal
        # The mean of the flags is positive when any process got a signal.
        flag = torch.tensor([1.0 if self.signal else 0.0], dtype=torch.float64,
                            device=self.ctx.device)
        got = float(self.ctx.all_reduce_mean(flag)) > 0
        return (self.signal or int(signal.SIGTERM)) if got else None

    def log(self, record: dict[str, float], callbacks: list[Callback]) -> bool:
        """Records ``record``; returns whether a callback asked to stop."""
        self.history.records.append(record)
        if self.ctx.is_main and self.out is not None:
            append_jsonl(self.out / METRICS_NAME, record)
        return any([bool(cb(int(record["step"]), dict(record))) for cb in callbacks])

    def train_step(self, module: nn.Module, step: int) -> dict[str, Tensor]:
        """One update; returns the process-averaged outputs (and grad norms), detached."""
        batch = to_device(self.source.next(), self.ctx.device)
        if self.channels_last:
            batch = to_channels_last(batch)
        self.updater.step, self.updater.grad_norms = step, {}
        try:
            with self.precision.autocast():
                if self.custom:
                    out = self.objective.training_step(batch, step, self.updater)
                else:
                    out = module(batch)
            outputs = check_outputs(out, step)
            keys = list(outputs)
            values = torch.stack([v.detach().double() for v in outputs.values()])
            values = self.ctx.all_reduce_mean(values)
            bad = first_non_finite(values, keys)
            if bad is not None:
                raise NonFiniteLossError(step, *bad)
            if not self.custom:
                self.updater("main", outputs["loss"])
        except NonFiniteLossError as e:
            raise NonFiniteLossError(e.step, e.term, e.value, self.last_ckpt) from None
        if self.ema is not None:
            self.ema.update(self.objective)
        return {**dict(zip(keys, values, strict=True)), **self.updater.grad_norms}

    def loop(
        self,
        steps: int,
        *,
        log_every: int,
        eval_data: Any,
        eval_every: int | None,
        eval_batch_size: int,
        checkpoint_every: int | None,
        progress: bool,
        callbacks: list[Callback],
    ) -> History:
        """Runs steps ``start+1 .. steps``; logs, evaluates and checkpoints on schedule."""
        module: nn.Module = self.objective
        if self.ctx.enabled and not self.custom:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            module = DistributedDataParallel(self.objective, device_ids=ids)
        if self.precompiled is not None and not self.ctx.enabled:
            module = self.precompiled
        elif self.backend is not None:
            module = compile_module(module, self.backend)
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        bar = tqdm(total=steps, initial=self.start, desc="fit", dynamic_ncols=True,
                   disable=not (progress and self.ctx.is_main))
        try:
            for s in range(self.start, steps):
                step = s + 1
                lr = [self.schedule.apply(o, s) for o in self.optimizers.values()][0]
                self.updater.measure = (
                    step % log_every == 0
                    or step == steps
                    or bool(checkpoint_every and step % checkpoint_every == 0)
                    or bool(eval_every and step % eval_every == 0)
                )
                try:
                    probing = self.tuner is not None and self.tuner.probing
                    if probing:
                        self.tuner.before_step()
                    began = time.perf_counter()
                    outputs = self.train_step(module, step)
                    if probing:
                        self.tuner.after_step(time.perf_counter() - began)
                except Exception as e:
                    failed = compile_failure(e, self.backend) if (
                        self.backend is not None and s == self.start) else None
                    if failed is None:
                        raise
                    raise failed from e
                for key, value in outputs.items():
                    sums[key] = sums.get(key, 0.0) + value.double()
                    counts[key] = counts.get(key, 0) + 1
                bar.update(1)
                stop = False
                if step % log_every == 0 or step == steps:
                    means = {k: float(sums[k]) / counts[k] for k in sums}
                    sums, counts = {}, {}
                    bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                    stop = self.log({"step": step, "time": self.now(), **means, "lr": lr},
                                    callbacks)
                due = step == steps or stop
                if eval_data is not None and (due or (eval_every and step % eval_every == 0)):
                    record = evaluate(self.objective, eval_data, batch_size=eval_batch_size,
                                      ctx=self.ctx, ema=self.ema, seed=self.seed)
                    stop = self.log({"step": step, "time": self.now(), **record},
                                    callbacks) or stop
                signum = self.signalled()
                if signum is not None:
                    stop = True
                if self.out is not None and (
                    due or stop or (checkpoint_every and step % checkpoint_every == 0)
                ):
                    self.save(step)
                if signum is not None:
                    checkpoint = self.out / CHECKPOINT_NAME if self.out is not None else None
                    raise TrainingInterrupted(step, signum, checkpoint)
                if stop:
                    break
        finally:
            bar.close()
        return self.history
