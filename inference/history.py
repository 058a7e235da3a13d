"""The record of a training run: ``History`` and the ``metrics.jsonl`` it mirrors."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["History", "METRICS_NAME", "read_records"]

METRICS_NAME = "metrics.jsonl"


@dataclass
class History:
    """What :func:`fit` returns: the log records, as plain floats.

    Attributes:
        records: one dict per log event, as written to ``metrics.jsonl``: training records
            hold ``step``, ``time``, every objective output, ``lr`` and ``grad_norm``
            (means over the steps since the previous record); evaluation records hold
            ``step``, ``time`` and ``eval/<output>``.
        threads: torch's CPU thread count the run trained with at its end (see ``fit``'s
            ``threads``); ``None`` for a History not made by ``fit``.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    threads: int | None = None

    @property
    def final(self) -> dict[str, float]:
        """The latest value of every logged key."""
        out: dict[str, float] = {}
        for record in self.records:
            out.update(record)
        return out

    def values(self, key: str) -> list[float]:
        """Every logged value of ``key``, in order (e.g. ``history.values("loss")``)."""
        return [r[key] for r in self.records if key in r]


def read_records(path: Path, upto: int) -> list[dict[str, float]]:
    """The records of ``path`` (a ``metrics.jsonl``) up to step ``upto`` (for resuming).

    A torn last line (a write cut short by a crash or a kill) is dropped with a
    ``RuntimeWarning``; an unreadable line before it is an error.

    Raises:
        ValueError: a line other than the last is not a JSON record; names file and line.
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for k, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("a JSON object with a 'step' is expected")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if k == len(numbered) - 1:
                warnings.warn(f"{str(path)!r}: dropped its torn last line {number} (a write cut "
                              f"short): {line[:60]!r}.", RuntimeWarning, stacklevel=2)
                break
            raise ValueError(f"{str(path)!r} line {number} is not a metrics record ({e}); "
                             "only a torn last line can be dropped.") from None
        records.append(record)
    return [r for r in records if r["step"] <= upto]
