"""Writes dbevents cannot see: raw SQL, and statements whose rows cannot be told.

Each :class:`Events` says what to do about them (``raw_sql``): raise
:class:`~dbevents.UncapturedWriteError`, warn, or let them pass.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from ..exceptions import UncapturedWriteError
from ..warn import warn

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["raw_write", "uncaptured"]

_WRITE_SQL: Final = re.compile(
    r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:WITH\b.*?\b)?"
    r"(INSERT|UPDATE|DELETE|MERGE|REPLACE|UPSERT|TRUNCATE)\b",
    re.IGNORECASE | re.DOTALL,
)


def raw_write(states: list[SessionState], sql: str) -> None:
    """Say so if ``sql``, text the database runs as it is, writes."""
    if _WRITE_SQL.match(sql):
        uncaptured(
            states,
            f"dbevents cannot see what this SQL writes, so no callbacks ran and nothing was "
            f"captured: {sql.strip()[:200]!r}; use a Core or ORM statement, or mute the block "
            'on purpose (Events(raw_sql="ignore") silences this)',
        )


def uncaptured(states: list[SessionState], message: str) -> None:
    """Say that a write went by uncaptured, as the ``raw_sql`` policies of ``states`` ask."""
    policies = {st.events.raw_sql for st in states}
    if "raise" in policies:
        raise UncapturedWriteError(message)
    if "warn" in policies:
        warn(message)
