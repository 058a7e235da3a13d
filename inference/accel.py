"""Accelerator options of the trainer: mixed precision, ``torch.compile`` and channels-last."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

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
    if not isinstance(name, str) or name not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {name!r}.")


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
