"""The ``probgen`` console entry point ``probgen.cli:main`` (the command: probgen.run.cli).

Kept at this name for ``[project.scripts]``, ``python -m probgen.cli`` (torchrun) and the
tutorials; like ``probgen/__main__.py`` it belongs to the application layer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``probgen`` command (:func:`probgen.run.cli.main`); returns the exit code.

    The application layer is imported here, when the command runs, not when the core is
    imported: the core never depends on the layer above it."""
    from probgen.run.cli import main as run

    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``probgen`` command's argument parser (:func:`probgen.run.cli.build_parser`)."""
    from probgen.run.cli import build_parser as build

    return build()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
