"""``python -m probgen``: the ``probgen`` command (see :mod:`probgen.run.cli`)."""

from __future__ import annotations

import sys

from probgen.run.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
