"""Progress of the command line's stages: tqdm bars on a terminal, plain lines in pipes.

Training shows a tqdm bar (``probgen.inference.fit``); evaluation, sampling and figure
writing report through :class:`Progress` with the same bar settings. When the stream is not
a terminal (a pipe, a log file, CI), a carriage-return bar would fill the log with redrawn
lines, so each stage prints one plain line with its elapsed time instead::

    fit: step 200/1000, loss 1.234 (3.1 s)
    evaluate: 20000 examples in 0.8 s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["BAR_SETTINGS", "PROGRESS_MODES", "Progress", "Stage"]

#: The settings of the training bar (``probgen.inference.fit``), shared by every stage's bar.
BAR_SETTINGS: dict[str, Any] = {"dynamic_ncols": True}
#: ``"auto"``: a bar on a terminal, plain lines otherwise; ``"bar"``; ``"plain"``; ``"off"``.
PROGRESS_MODES = ("auto", "bar", "plain", "off")


class Stage:
    """One running stage: counts its items (:meth:`update`) and carries a short note."""

    def __init__(self, bar: tqdm | None) -> None:
        self.bar = bar
        self.count = 0
        self.note = ""

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more items done (advances the bar, if any)."""
        self.count += n
        if self.bar is not None:
            self.bar.update(n)


class Progress:
    """Creates the progress reporter of one command.

    Args:
        mode: one of :data:`PROGRESS_MODES`; ``True`` means ``"auto"``, ``False`` ``"off"``.
        stream: where to write (``sys.stderr`` by default, as tqdm does).

    Raises:
        ValueError: an unknown mode.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress("plain", out).stage("evaluate", unit="examples") as stage:
        ...     stage.update(10)
        >>> out.getvalue().startswith("evaluate: 10 examples in ")
        True
    """

    def __init__(self, mode: str | bool = "auto", stream: TextIO | None = None) -> None:
        if isinstance(mode, bool):
            mode = "auto" if mode else "off"
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress: expected one of {list(PROGRESS_MODES)} or a bool, "
                             f"got {mode!r}.")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if callable(isatty) and isatty() else "plain"
        self.mode = mode

    @property
    def bars(self) -> bool:
        """Whether stages draw tqdm bars (a terminal) rather than plain lines."""
        return self.mode == "bar"

    def line(self, text: str) -> None:
        """Writes one plain line (nothing in ``"off"`` mode)."""
        if self.mode == "off":
            return
        if self.bars:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "it") -> Iterator[Stage]:
        """Runs one stage: a bar of ``total`` items on a terminal, or, in plain mode, one
        line ``"<name>: <count> <unit> in <seconds> s"`` when the stage ends.

        Args:
            name: the stage (``"evaluate"``, ``"sample"``, ``"figures"``).
            total: the number of items, when known (sizes the bar).
            unit: what the items are (``"examples"``, ``"samples"``, ``"figures"``).

        Yields:
            Stage: call ``update(n)`` as items finish; set ``note`` to append a remark.
        """
        bar = None
        if self.bars:
            bar = tqdm(total=total, desc=name, unit=f" {unit}", file=self.stream,
                       **BAR_SETTINGS)
        stage = Stage(bar)
        start = time.perf_counter()
        try:
            yield stage
        finally:
            if bar is not None:
                bar.close()
        if self.mode == "plain":
            note = f" ({stage.note})" if stage.note else ""
            self.line(f"{name}: {stage.count} {unit} in {time.perf_counter() - start:.1f} s"
                      f"{note}")

    def fit_callback(self, steps: int, every: float = 10.0) -> Callable[[int, dict], None]:
        """A training callback (``fit(callbacks=...)``) that, in plain mode, prints
        ``"fit: step S/steps, loss L (T s)"`` at most every ``every`` seconds and at the
        last step; in the other modes it prints nothing (the bar shows the step)."""
        start = time.perf_counter()
        last = [float("-inf")]

        def report(step: int, record: dict) -> None:
            if self.mode != "plain" or "loss" not in record:
                return
            now = time.perf_counter()
            if now - last[0] >= every or step >= steps:
                last[0] = now
                self.line(f"fit: step {step}/{steps}, loss {record['loss']:.4g} "
                          f"({now - start:.1f} s)")

        return report
