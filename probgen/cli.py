"""The ``probgen`` console entry point ``probgen.cli:main`` (the command: probgen.run.cli).

Kept at this name for ``[project.scripts]``, ``python -m probgen.cli`` (torchrun) and the
tutorials; like ``probgen/__main__.py`` it belongs to the application layer.
"""

from __future__ import annotations

import sys

from probgen.run.cli import build_parser, main

__all__ = ["main", "build_parser"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
