"""Built-in run presets: TOML files read by ``probgen fit NAME`` (see ``probgen list``)."""

from __future__ import annotations

__all__: list[str] = []
