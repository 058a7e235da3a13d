"""``python -m probgen``: the ``probgen`` command (see :mod:`probgen.run.cli`)."""

from __future__ import annotations

import sys

__all__: list[str] = []

if __name__ == "__main__":
    from probgen.cli import main

    sys.exit(main())
