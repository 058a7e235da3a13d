"""Small shared helpers: broadcasting, atomic file writes, devices and input checks."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "append_dims",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "remove_stale_temporaries",
    "append_jsonl",
    "resolve_device",
    "check_tensor",
    "check_choice",
    "check_int",
    "build_named",
    "drawing_from",
    "standard_normal",
    "on_host",
    "did_you_mean",
    "apply_to_tensors",
]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Appends trailing singleton dimensions to ``x`` until it has ``ndim`` dimensions.

    Used to broadcast per-example quantities of shape ``(batch,)`` against data of shape
    ``(batch, *event_shape)``, so the same code serves 2-D points and images.

    Example:
        >>> append_dims(torch.ones(4), 4).shape
        torch.Size([4, 1, 1, 1])
    """
    if x.dim() > ndim:
        raise ValueError(f"append_dims: tensor has {x.dim()} dims, more than the target {ndim}.")
    return x.reshape(*x.shape, *([1] * (ndim - x.dim())))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """Saves ``obj`` with :func:`torch.save` atomically (serialized in memory, then renamed)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files (``.NAME.XXXX.tmp``) that a killed atomic write left.

    :func:`atomic_write_bytes` removes its temporary file when it fails, but not when the
    process is killed mid-write; a run folder is cleaned this way when training starts.
    Returns the removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(".*.tmp")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Appends one JSON record as a line to ``path`` (one ``write`` call per line, flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(record), sort_keys=True) + "\n")
        f.flush()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Returns a :class:`torch.device`; ``"auto"`` (or ``None``) picks CUDA when available.

    Raises:
        ValueError: if the device string is not understood by torch, or CUDA is asked for
            on a machine without it.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but CUDA is not available here.")
    return dev


def all_finite(x: Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf, in one reduction pass without a mask.

    ``torch.isfinite(x).all()`` first writes a boolean tensor as large as ``x`` (on a
    10000 x 2048 float32 feature matrix it takes about 35 times as long as this); the
    minimum and maximum, which NaN propagates into and which are infinite whenever an
    entry is, answer the same question. Integer and boolean tensors are always finite.
    """
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return True
    if x.is_complex():
        return bool(torch.isfinite(x).all())
    low, high = torch.aminmax(x.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_tensor(
    x: Any,
    name: str,
    *,
    event_shape: tuple[int, ...] | None = None,
    floating: bool = True,
    finite: bool = True,
) -> Tensor:
    """Validates a data tensor at an API boundary and says what was expected.

    Args:
        x: the value to check.
        name: the argument's name, quoted in errors.
        event_shape: if given, the trailing dimensions ``x`` must have.
        floating: require a floating dtype.
        finite: require no NaN or Inf entries (not checked while ``torch.compile`` traces
            the caller: a check that reads values splits the compiled graph, and the
            trainer checks every step's outputs for NaN and Inf anyway).

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: ``x`` is not a tensor, or has an integer dtype where floats are needed.
        ValueError: wrong trailing shape or non-finite values.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}.")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}.")
    if event_shape is not None:
        k = len(event_shape)
        if x.dim() < k or tuple(x.shape[x.dim() - k :]) != tuple(event_shape):
            raise ValueError(
                f"{name}: expected shape (..., {', '.join(map(str, event_shape))}), "
                f"got {tuple(x.shape)}."
            )
    if (finite and x.is_floating_point() and not torch.compiler.is_compiling()
            and not all_finite(x)):
        raise ValueError(f"{name}: contains NaN or Inf values.")
    return x


@contextlib.contextmanager
def drawing_from(generator: torch.Generator | None) -> Iterator[None]:
    """Runs a block whose random draws come from ``generator`` instead of the global RNG.

    Pyro's and torch's distributions draw from the global RNG and take no generator, so a
    sampler built on them cannot honour a caller's ``torch.Generator`` directly. Inside this
    block the global RNG of the generator's device continues ``generator``'s stream; on
    exit ``generator`` has advanced past every draw (two blocks in a row give different
    draws, as two calls with one generator should) and the global RNG is back where it was,
    untouched by the block. With ``generator=None`` the block draws from the global RNG.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> with drawing_from(g):
        ...     a = torch.randn(3)
        >>> torch.equal(a, torch.randn(3, generator=torch.Generator().manual_seed(0)))
        True
    """
    if generator is None:
        yield
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got "
                        f"{type(generator).__name__}.")
    device = generator.device
    if device.type == "cpu":
        get, put, devices = torch.get_rng_state, torch.set_rng_state, []
    elif device.type == "cuda":
        def get() -> Tensor:
            return torch.cuda.get_rng_state(device)

        def put(state: Tensor) -> None:
            torch.cuda.set_rng_state(state, device)

        devices = [device]
    else:
        raise ValueError(f"generator: expected a CPU or CUDA generator, got one on {device}.")
    with torch.random.fork_rng(devices=devices):
        put(generator.get_state())
        try:
            yield
        finally:
            generator.set_state(get())


def standard_normal(shape: Sequence[int], like: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
    """Standard-normal draws of ``shape`` in ``like``'s dtype and on its device.

    The same numbers as a torch or Pyro ``Normal``'s ``rsample`` inside
    :func:`drawing_from` (``generator``) gives, without swapping RNG states: with a
    generator on another device than ``like`` (a CPU generator for a CUDA model), the draws
    come from the generator on its own device and are moved, so a seed gives the same
    samples whatever device the model is on.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = standard_normal((3,), torch.zeros(()), g)
        >>> torch.equal(a, torch.randn(3, generator=torch.Generator().manual_seed(0)))
        True
    """
    if generator is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device).normal_()
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got "
                        f"{type(generator).__name__}.")
    on = generator.device
    if on.type == like.device.type and (on.index or 0) == (like.device.index or 0):
        return torch.empty(shape, dtype=like.dtype, device=like.device).normal_(
            generator=generator)
    return torch.empty(shape, dtype=like.dtype, device=on).normal_(
        generator=generator).to(like.device)


def on_host(fn: Callable) -> Callable:
    """Decorates a function that builds host-side tables (time grids, step indices): the
    tensors it makes without ``device=`` are CPU tensors even under another default device
    (``torch.set_default_device`` or ``with torch.device(...)``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapper


def apply_to_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> None:
    """Applies ``fn`` (e.g. ``nn.Module._apply``'s device or dtype conversion) in place to
    every tensor a torch/Pyro distribution or transform holds, recursively (base
    distributions, component transforms, cached lazy properties, lists of transforms).

    Why: distributions and non-trainable transforms are not modules, so a module
    holding one (a VAE with a ``dist.Normal`` prior, Pyro's ``AffineTransform`` in a
    posterior) would leave its tensors behind on ``.to(device)`` or ``.double()``; neither
    torch nor Pyro moves them. Modules met on the way are left to their own ``_apply``.
    """
    from torch.distributions import Distribution, Transform

    seen: set[int] = set()

    def visit(value: Any) -> Any:
        if isinstance(value, Tensor):
            return fn(value)
        if isinstance(value, (list, tuple)):
            items = [visit(v) for v in value]
            return type(value)(items) if isinstance(value, tuple) else items
        if (isinstance(value, (Distribution, Transform)) and not isinstance(value, nn.Module)
                and id(value) not in seen):
            seen.add(id(value))
            for key, item in list(vars(value).items()):
                if isinstance(item, (Tensor, list, tuple, Distribution, Transform)):
                    vars(value)[key] = visit(item)
        return value

    visit(obj)


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """The hint appended to an "unknown name" error: ``" Did you mean 'x'?"`` or ``""``.

    Used wherever a run file, an override or a command-line argument names something
    unknown (a preset, section, key, model, objective, data set or sampler).

    Example:
        >>> did_you_mean("realnvp-moon", ["realnvp-moons", "maf-8gaussians"])
        " Did you mean 'realnvp-moons'?"
        >>> did_you_mean("zzz", ["realnvp-moons"])
        ''
    """
    if not isinstance(name, str):
        return ""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close:  # case slips: 'realnvp' for 'RealNVP'
        lowered = {c.lower(): c for c in choices}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
        close = [lowered[c] for c in close]
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    names = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" Did you mean {names}?"


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Checks that the argument ``name`` is one of ``allowed`` (a name of a registry or a
    setting), saying which ones were expected.

    Raises:
        ValueError: ``value`` is not in ``allowed``.
    """
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}."
                         + did_you_mean(value, allowed))


def check_int(name: str, value: Any, *, low: int = 1, allow_none: bool = False) -> int | None:
    """Checks that the argument ``name`` is an int of at least ``low`` (a count, a size),
    saying what was expected.

    Only Python ints pass: a bool, a float (even ``2.0``), a string or a numpy or torch
    scalar is refused, so a count read from a config file or typed by mistake fails here,
    at the boundary, rather than deep inside a ``range`` or a tensor shape.

    Args:
        name: the argument's name, quoted in the error.
        value: the value to check.
        low: the least value allowed (1 by default: a positive int).
        allow_none: whether ``None`` (meaning "not set") is allowed too.

    Returns:
        ``value`` itself (``None`` when it is ``None`` and that is allowed).

    Raises:
        ValueError: ``value`` is not an int (or ``None`` where allowed) of at least ``low``;
            the message reads ``"steps: expected a positive int, got 0."``, or
            ``"an int >= 2"`` for ``low=2``, with ``" or None"`` when ``None`` is allowed.

    Example:
        >>> check_int("steps", 10)
        10
        >>> check_int("levels", None, low=2, allow_none=True) is None
        True
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        expected = "a positive int" if low == 1 else f"an int >= {low}"
        if allow_none:
            expected += " or None"
        raise ValueError(f"{name}: expected {expected}, got {value!r}.")
    return value


def build_named(kind: str, registry: Mapping[str, Callable[..., Any]], name: str,
                **kwargs: Any) -> Any:
    """Builds ``registry[name](**kwargs)``, the object of that name (a path, a coupling) with
    its parameters.

    Raises:
        ValueError: an unknown name, or parameters the object does not take.
    """
    check_choice(kind, name, sorted(registry))
    allowed = list(inspect.signature(registry[name]).parameters)
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ValueError(f"{kind} {name!r}: parameters {extra} do not apply (allowed: "
                         f"{allowed or 'none'}).")
    return registry[name](**kwargs)
