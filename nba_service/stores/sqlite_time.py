"""How the embedded database spells a moment."""

from __future__ import annotations

from datetime import UTC, datetime


def stamp(moment: datetime) -> str:
    """One fixed-width UTC spelling, so SQLite compares times correctly as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
