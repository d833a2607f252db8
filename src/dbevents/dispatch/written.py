"""What the statements inside a block wrote, for the statement ``after_*`` callbacks.

The connection events (:mod:`.connection`) see the rows a statement wrote; the
session-level dispatch (:mod:`.statement`) runs the callbacks.  A context variable
carries the rows from one to the other without either holding the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..changes import Op
from ..mapping import TableSpec

__all__ = ["Written", "collecting", "report", "written_rows"]

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Written:
    """What one statement wrote: the keys of the rows, and the inserted rows as stored."""

    spec: TableSpec
    op: Op
    keys: Sequence[tuple[Any, ...]]
    rows: Sequence[Row] = ()


_written: ContextVar[list[Written] | None] = ContextVar("dbevents.written", default=None)


@contextmanager
def written_rows() -> Iterator[list[Written]]:
    """Collect what the statements run inside the block wrote."""
    collected: list[Written] = []
    token = _written.set(collected)
    try:
        yield collected
    finally:
        _written.reset(token)


def collecting() -> bool:
    """Whether statement after_* callbacks are waiting for what is written now."""
    return _written.get() is not None


def report(written: Written) -> None:
    """Hand what a statement wrote to the block collecting it, if any."""
    collected = _written.get()
    if collected is not None:
        collected.append(written)
