"""The record of a training run: ``History`` and the ``metrics.jsonl`` it mirrors."""

from __future__ import annotations

import json
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
    """

    records: list[dict[str, float]] = field(default_factory=list)

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
    """The records of ``path`` (a ``metrics.jsonl``) up to step ``upto`` (for resuming)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [r for r in (json.loads(line) for line in lines if line.strip()) if r["step"] <= upto]
