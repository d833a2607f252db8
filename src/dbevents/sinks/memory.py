"""The in-memory sink: the latest state of every row, plus recent change sets."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, final

from ..changes import ChangeSet, Op, stored_fields

__all__ = ["MemorySink"]

Row = dict[str, Any]


@final
class MemorySink:
    """Keep the latest known row per (table, primary key) and the last ``history`` change sets.

    A cache backend in the spirit of the seed CRM: ``rows("contacts")`` is what
    was committed through the sessions it listens to.  Thread-safe.

    :param history: how many change sets :attr:`changesets` keeps (oldest dropped first).
    """

    def __init__(self, history: int = 1000) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._history: deque[ChangeSet] = deque(maxlen=history)
        self._rows: dict[str, dict[tuple[Any, ...], Row]] = {}
        self._lock = threading.Lock()

    def publish(self, changeset: ChangeSet) -> None:
        """Apply a committed change set."""
        changes = stored_fields(changeset)  # one that does not decode changes nothing here
        with self._lock:
            self._history.append(changeset)
            tables = self._rows
            for op, name, _, pk, _, new in changes:
                table = tables.get(name)
                if table is None:
                    table = tables[name] = {}
                if op is Op.UPDATE:
                    row = table.get(pk)
                    if row is None:
                        row = table[pk] = {}
                    row.update(new or ())
                elif op is Op.DELETE or op is Op.UNLINK:
                    table.pop(pk, None)
                else:
                    table[pk] = dict(new or ())

    @property
    def changesets(self) -> list[ChangeSet]:
        """The change sets kept, oldest first."""
        with self._lock:
            return list(self._history)

    def rows(self, table: str) -> dict[tuple[Any, ...], Row]:
        """A copy of the rows of ``table``, keyed by primary-key tuple."""
        with self._lock:
            return {pk: dict(row) for pk, row in self._rows.get(table, {}).items()}

    def get(self, table: str, pk: Any) -> Mapping[str, Any] | None:
        """The latest known row, by primary key (a scalar or a tuple), or ``None``."""
        key = pk if isinstance(pk, tuple) else (pk,)
        with self._lock:
            row = self._rows.get(table, {}).get(key)
            return dict(row) if row is not None else None

    def clear(self) -> None:
        """Forget every row and change set."""
        with self._lock:
            self._history.clear()
            self._rows.clear()

    def __repr__(self) -> str:
        return f"<MemorySink tables={len(self._rows)} changesets={len(self._history)}>"
