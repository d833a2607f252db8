"""A one-line progress display for dump and load, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO, final

__all__ = ["Progress"]


@final
class Progress:
    """Count rows per table and redraw ``verb table n/total`` at most ten times a second.

    :param enabled: draw at all; ``None`` means "when stderr is a terminal", so logs
        and pipes stay clean.
    """

    __slots__ = ("_count", "_enabled", "_last", "_stream", "_table", "_total", "_verb")

    def __init__(
        self, verb: str, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._verb = verb
        self._table = ""
        self._total: int | None = None
        self._count = 0
        self._last = 0.0

    def start(self, table: str, total: int | None) -> None:
        """Begin counting the rows of ``table`` (``total`` when known)."""
        self._table, self._total, self._count, self._last = table, total, 0, 0.0
        self._draw()

    def advance(self, rows: int) -> None:
        """Add ``rows`` to the current table's count."""
        self._count += rows
        if self._enabled and time.monotonic() - self._last >= 0.1:
            self._draw()

    def finish(self) -> None:
        """Draw the final count of the current table and end its line."""
        if self._enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self) -> None:
        if not self._enabled:
            return
        self._last = time.monotonic()
        total = f"/{self._total:,}" if self._total is not None else ""
        percent = ""
        if self._total:
            percent = f" {min(100, 100 * self._count // self._total):3d}%"
        self._stream.write(f"\r{self._verb} {self._table}: {self._count:,}{total} rows{percent}")
        self._stream.flush()
