"""Accelerator options of the trainer: CPU threads, mixed precision, ``torch.compile`` and
channels-last."""

from __future__ import annotations

import contextlib
import os
import statistics
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from probgen.utils import check_choice

__all__ = [
    "PRECISIONS",
    "MAX_SKIPPED_STEPS",
    "Precision",
    "check_compile",
    "compile_module",
    "compile_failure",
    "uncompiled",
    "to_channels_last",
    "check_channels_last",
    "ThreadTuner",
    "check_threads",
]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: fp16: this many optimizer steps in a row skipped by the gradient scaler stop training
#: (a scale halved this often from its initial 2**16 is far below 1: the gradient is not
#: finite at any scale, so it is a NaN, not an overflow).
MAX_SKIPPED_STEPS = 32


class Precision:
    """The arithmetic of the training step: fp32, or autocast to bf16/fp16 (+ a grad scaler).

    ``bf16`` runs the objective's forward under ``torch.autocast(device_type,
    dtype=torch.bfloat16)``: matrix products and convolutions in bfloat16, reductions and
    losses in float32; the weights, gradients and optimizer stay float32, so no scaler is
    needed (bf16 has float32's exponent range). ``fp16`` autocasts to float16 and scales the
    loss with a :class:`torch.amp.GradScaler` (float16 gradients underflow otherwise): the
    gradients are unscaled before clipping, a step whose scaled gradients overflowed is
    skipped and the scale halved (not an error; see :data:`MAX_SKIPPED_STEPS`), and the
    scaler's state goes into checkpoints. ``fp16`` is meant for CUDA; on CPU torch's autocast
    and scaler accept it and it trains correctly (the tests run it there), but CPUs without
    float16 matrix units emulate it: a 2-D RealNVP step took about 6x its fp32 time on an
    AVX-512 EPYC core (torch 2.13), where bf16 took about the same as fp32. Use ``bf16`` on
    CPU.

    Args:
        name: one of :data:`PRECISIONS`.
        device: the device the model trains on (its type picks the autocast backend).

    Raises:
        ValueError: an unknown name, or a device whose autocast or scaler cannot run it.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        check_precision(name)
        self.name, self.device = name, torch.device(device)
        self.device_type = self.device.type
        self.dtype = _DTYPES.get(name)
        self.scaler: torch.amp.GradScaler | None = None
        if self.dtype is None:
            return
        if not torch.amp.is_autocast_available(self.device_type):
            raise ValueError(f"precision: {name!r} needs torch.autocast on the model's device, "
                             f"which has none for device type {self.device_type!r}; use 'fp32'.")
        if (name == "bf16" and self.device_type == "cuda"
                and not torch.cuda.is_bf16_supported(including_emulation=False)):
            raise ValueError(f"precision: 'bf16' needs a GPU with bfloat16 arithmetic "
                             f"(compute capability 8.0+), got {torch.cuda.get_device_name()}; "
                             "use 'fp16' or 'fp32'.")
        if name == "fp16":
            try:
                self.scaler = torch.amp.GradScaler(self.device_type)
            except (RuntimeError, ValueError, AssertionError) as e:
                raise ValueError(f"precision: 'fp16' needs a gradient scaler on device type "
                                 f"{self.device_type!r}, which torch lacks ({e}); use 'bf16' "
                                 "or 'fp32'.") from None

    @property
    def enabled(self) -> bool:
        """Whether the forward runs under autocast (``bf16`` or ``fp16``)."""
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the objective's forward runs in (a no-op for ``fp32``)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full(self) -> contextlib.AbstractContextManager:
        """A context where autocast is off (backward, evaluation); a no-op for ``fp32``."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (plain floats and ints), or ``None`` without a scaler."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restores :meth:`state_dict`; ``None`` (a run without a scaler) keeps a fresh one."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(dict(state))


def check_precision(name: Any) -> None:
    """Raises ``ValueError`` naming :data:`PRECISIONS` unless ``name`` is one of them."""
    check_choice("precision", name, PRECISIONS)


def check_compile(compile: Any) -> str | None:
    """The ``torch.compile`` backend that ``fit(compile=...)`` asks for, or ``None``.

    ``False`` means eager, ``True`` torch's default (``"inductor"``, mode ``"default"``), a
    string another registered backend (``"aot_eager"`` traces without generating code: a
    quick check that a model compiles).

    Raises:
        ValueError: not a bool or a registered backend's name.
        RuntimeError: torch.compile cannot run in this Python or on this platform.
    """
    if compile is False:
        return None
    backends = torch._dynamo.list_backends(exclude_tags=())
    if compile is True:
        backend = "inductor"
    elif isinstance(compile, str) and compile in backends:
        backend = compile
    else:
        raise ValueError("compile: expected True, False or a torch.compile backend name (one "
                         "of torch._dynamo.list_backends(exclude_tags=()), e.g. 'inductor', "
                         f"'aot_eager', 'cudagraphs'), got {compile!r}.")
    if not torch._dynamo.is_dynamo_supported():
        raise RuntimeError("compile: torch.compile is not supported in this Python or on this "
                           "platform (torch._dynamo.is_dynamo_supported() is False); train "
                           "with compile=False.")
    return backend


def compile_module(module: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(module, backend=backend)`` (mode ``"default"``): a wrapper calling the
    compiled forward. Train and save through the original ``module``: the wrapper's
    ``state_dict`` keys carry an ``_orig_mod.`` prefix (see :func:`uncompiled`)."""
    return torch.compile(module, backend=backend)


def uncompiled(module: nn.Module) -> nn.Module:
    """The module under a ``torch.compile`` wrapper (``module`` itself if not compiled)."""
    while isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        module = module._orig_mod
    return module


def compile_failure(error: BaseException, backend: str) -> RuntimeError | None:
    """The error ``fit`` raises when compiling failed (``None``: ``error`` is not that)."""
    if not isinstance(error, torch._dynamo.exc.TorchDynamoException):
        return None
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else type(error).__name__
    if len(first) > 300:
        first = first[:297] + "..."
    return RuntimeError(f"compile: torch.compile (backend {backend!r}) failed on the first "
                        f"training step ({type(error).__name__}: {first}); train with "
                        "compile=False, or fix the cause (the inductor backend needs a C++ "
                        "compiler on CPU and Triton on CUDA).")


def check_channels_last(module: nn.Module) -> None:
    """Warns when ``module`` has no 4-D weight, so channels-last would change nothing."""
    if not any(p.dim() == 4 for p in module.parameters()):
        warnings.warn("channels_last: the objective has no 4-D (convolution) weights, so the "
                      "channels-last memory format changes nothing for it.", RuntimeWarning,
                      stacklevel=3)


def to_channels_last(batch: Any) -> Any:
    """Every 4-D floating tensor in ``batch`` (tensors, tuples, lists, dicts) in the
    channels-last memory format; other entries unchanged."""
    if isinstance(batch, Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, tuple):
        return tuple(to_channels_last(b) for b in batch)
    if isinstance(batch, list):
        return [to_channels_last(b) for b in batch]
    if isinstance(batch, Mapping):
        return {k: to_channels_last(v) for k, v in batch.items()}
    return batch


#: ``fit(threads="auto")``: the probe times this many steps at each count (after one untimed
#: step at each).
PROBE_TIMED_STEPS = 3
#: ... and keeps torch's count ``N`` only when its median step time is below this fraction of
#: one thread's (a tie goes to one thread: it cannot be slowed by other processes' load).
PROBE_KEEP_BELOW = 0.9
#: A step at ``N`` threads slower than this multiple of one thread's median ends the probe at
#: once (one thread): on a loaded machine one such step can cost 10-35 single-thread steps.
PROBE_ABORT_ABOVE = 2.0
#: Runs with fewer steps left than this are not probed: they train with one thread.
PROBE_MIN_STEPS = 40
#: The machine counts as busy (no probe at ``N``) when fewer than this share of the ``N - 1``
#: cores the extra threads would take were idle while the single-thread probe steps ran
#: (from ``/proc/stat``, read when those steps span at least :data:`IDLE_MIN_SECONDS`: the
#: kernel counts in 10 ms ticks). A thread sharing a core with another process stalls every
#: parallel region, so the extra cores must be nearly free.
IDLE_SHARE_NEEDED = 0.75
IDLE_MIN_SECONDS = 0.02


def check_threads(threads: Any) -> None:
    """Raises ``ValueError`` unless ``threads`` is ``"auto"``, ``None`` or a positive int."""
    if threads is None or threads == "auto":
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected 'auto', None or a positive int, got {threads!r}.")


def cpu_times() -> tuple[float, float] | None:
    """The machine's (idle, total) CPU time in clock ticks from ``/proc/stat`` (Linux), or
    ``None`` where it cannot be read. Idle includes I/O wait."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [float(v) for v in fields[1:]]
    return ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0), sum(ticks[:8])


def idle_cores(start: tuple[float, float] | None, end: tuple[float, float] | None
               ) -> float | None:
    """Cores left idle between two :func:`cpu_times` readings (``None`` if unknown)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) * (end[0] - start[0]) / (end[1] - start[1])


class ThreadTuner:
    """Torch's CPU thread count during one :func:`~probgen.inference.fit`.

    ``threads``: a positive int (that count), ``None`` (torch's setting as it is) or
    ``"auto"`` (the default): measured on the run's own first steps. PyTorch's default of one
    thread per core is right for large convolutional models on an idle CPU and badly wrong
    for small models or on a busy one: each operator's parallel region waits for a thread
    that another process holds, and on a loaded 2-core machine a 2-D flow trained 35x and an
    MNIST U-Net 3.5x slower with two threads than with one (``benchmarks/threads.py``). No
    static rule sees the machine's load, so ``"auto"`` measures: one untimed step and
    :data:`PROBE_TIMED_STEPS` timed steps at one thread, while ``/proc/stat`` says how many
    cores the other processes left idle; a busy machine (fewer than
    :data:`IDLE_SHARE_NEEDED` of the ``N - 1`` other cores idle) keeps one thread.
    Otherwise the same number of steps run at torch's count ``N``, stopped at the first
    step slower than :data:`PROBE_ABORT_ABOVE` times one thread's median; ``N`` threads are
    kept when their median step is below :data:`PROBE_KEEP_BELOW` of one thread's, else one
    thread.

    Only CPU runs in one process with ``N > 1`` and at least :data:`PROBE_MIN_STEPS` steps
    left are probed (shorter runs use one thread); ``OMP_NUM_THREADS`` in the environment
    counts as the user's choice (no probe). The probe's steps are ordinary training steps:
    the thread count changes only the rounding of parallel reductions. The chosen count is
    saved in the checkpoint, so a resumed run continues with it, and torch's previous setting
    is restored by :meth:`restore` when ``fit`` returns.
    """

    def __init__(self, threads: int | str | None, device: torch.device, steps_left: int,
                 *, distributed: bool = False, saved: int | None = None) -> None:
        check_threads(threads)
        self.previous = torch.get_num_threads()
        self.many = self.previous
        self.plan: list[int] = []  # thread count of each remaining probe step
        self.times: dict[int, list[float]] = {}
        self.chosen: int | None = None
        self.idle: float | None = None
        self._ticks: tuple[float, float] | None = None
        self._one_seconds = 0.0  # the single-thread steps' time, the warm-up's included
        auto = (threads == "auto" and device.type == "cpu" and not distributed
                and self.many > 1 and "OMP_NUM_THREADS" not in os.environ)
        if isinstance(threads, int):
            self.chosen = threads
        elif not auto:
            self.chosen = None if threads is None else self.previous
        elif saved is not None:
            self.chosen = min(int(saved), self.many)
        elif steps_left < PROBE_MIN_STEPS:
            self.chosen = 1
        else:
            self.plan = [1] * (1 + PROBE_TIMED_STEPS) + [self.many] * (1 + PROBE_TIMED_STEPS)
            self.times = {1: [], self.many: []}
        self._apply(self.chosen)

    @staticmethod
    def _apply(count: int | None) -> None:
        if count is not None and torch.get_num_threads() != count:
            torch.set_num_threads(count)

    @property
    def probing(self) -> bool:
        """Whether the next step is a probe step (its count set by :meth:`before_step`)."""
        return bool(self.plan)

    def before_step(self) -> None:
        """Sets the thread count of the next step."""
        if not self.plan:
            return
        self._apply(self.plan[0])
        if len(self.plan) == 2 + 2 * PROBE_TIMED_STEPS:  # the single-thread steps start now
            self._ticks = cpu_times()

    def _decide(self, count: int) -> None:
        self.plan, self.chosen = [], count
        self._apply(count)

    def after_step(self, seconds: float) -> None:
        """Records a probe step's time; decides when the probe is over (or cut short)."""
        if not self.plan:
            return
        count = self.plan.pop(0)
        left = self.plan.count(count)  # steps still planned at this count
        first = left == PROBE_TIMED_STEPS  # the untimed step of a count
        if count == 1:
            self._one_seconds += seconds
            if not first:
                self.times[1].append(seconds)
            if left == 0:  # single-thread steps done: was the machine free?
                self.idle = idle_cores(self._ticks, cpu_times())
                if (self.idle is not None and self.idle < IDLE_SHARE_NEEDED * (self.many - 1)
                        and self._one_seconds >= IDLE_MIN_SECONDS):
                    self._decide(1)
            return
        one = statistics.median(self.times[1])
        if seconds > PROBE_ABORT_ABOVE * one:
            self._decide(1)
            return
        if not first:
            self.times[count].append(seconds)
        if left == 0:
            many = statistics.median(self.times[count])
            self._decide(count if many < PROBE_KEEP_BELOW * one else 1)

    @property
    def current(self) -> int:
        """The count in effect now (torch's)."""
        return torch.get_num_threads()

    def restore(self) -> None:
        """Puts torch's thread count back to what it was before the run."""
        self._apply(self.previous)
