"""Following change sets as they arrive: in a mirror's journal, or in a Redis stream."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .changes import ChangeSet

__all__ = ["follow_mirror", "follow_stream"]

#: field names a stream entry may carry its change set under, most likely first
_FIELDS = (b"changeset", b"data", b"json", b"payload", b"value")
#: bytes of a journal line that identify it: they hold its change set's id
_MARK = 64


def follow_mirror(
    journal: Path, *, everything: bool = False, follow: bool = True, poll: float = 0.2
) -> Generator[ChangeSet, None, None]:
    """Yield the change sets appended to a mirror journal, each once, in journal order.

    Compaction replaces the journal with an empty file: the old one, held open,
    is read to its end first, then the new one from its start.  Only change sets
    of a journal that was both started and compacted between two polls are missed.

    :param everything: start with the lines already there, not only new ones.
    :param follow: keep polling; otherwise stop at the current end.
    :returns: a generator; close it to let go of the journal it holds open.
    """
    reader = _JournalReader(journal, everything)
    try:
        while True:
            lines = reader.read()
            for line in lines:
                if line.strip():
                    yield ChangeSet.from_json(line)
            if lines:
                continue
            if not follow:
                return
            time.sleep(poll)
    finally:
        reader.close()


class _JournalReader:
    """Whole lines of a journal, following it across compactions.

    The reader keeps the journal it reads open and knows it by device and inode,
    so a replaced journal is told apart even when the new one has grown past the
    old read position (and its inode number cannot be reused while it is held).
    A journal emptied in place (by hand, or by an older mirror) is told apart by
    the start of the last line read, which holds a unique change set id.  The
    position is always at a line start: a line still being written (or cut short
    by a crash, then dropped by the next append) is read again in full.
    """

    def __init__(self, path: Path, everything: bool) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        self.position = 0
        #: where the last line read starts, and its first bytes
        self.mark: tuple[int, bytes] | None = None
        if not everything and self._open():
            self.position = self._last_line_start()

    def read(self) -> list[bytes]:
        """The complete lines added since the last call (of the old journal first)."""
        if self.handle is None:
            self._open()
            return self._lines()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return self._lines()
        held = os.fstat(self.handle.fileno())
        if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            if held.st_size < self.position or not self._still_marked():
                self.position, self.mark = 0, None  # emptied in place: all of it is new
            return self._lines()
        rest = self._lines()  # the replaced journal's last lines, then the new one's
        self.close()
        self._open()
        return rest + self._lines()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _open(self) -> bool:
        try:
            self.handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        self.position, self.mark = 0, None
        return True

    def _lines(self) -> list[bytes]:
        if self.handle is None:
            return []
        self.handle.seek(self.position)
        data = self.handle.read()
        end = data.rfind(b"\n") + 1
        if end:
            last = data.rfind(b"\n", 0, end - 1) + 1
            self.mark = (self.position + last, data[last : min(end, last + _MARK)])
        self.position += end
        return data[:end].splitlines()

    def _still_marked(self) -> bool:
        if self.mark is None or self.handle is None:
            return True
        offset, start = self.mark
        return os.pread(self.handle.fileno(), len(start), offset) == start

    def _last_line_start(self) -> int:
        """Where the last line starts, or the end: a line being written counts as new."""
        assert self.handle is not None
        end = self.handle.seek(0, os.SEEK_END)
        start = end
        while start > 0:
            step = min(start, 65536)
            self.handle.seek(start - step)
            cut = self.handle.read(step).rfind(b"\n")
            if cut >= 0:
                return start - step + cut + 1
            start -= step
        return 0


def follow_stream(
    url: str, stream: str, *, everything: bool = False, follow: bool = True
) -> Iterator[ChangeSet]:
    """Yield the change sets of a Redis stream (``XREAD BLOCK``): new ones, or ``everything``."""
    try:
        import redis
    except ImportError as error:
        raise ImportError(
            "following a Redis stream needs redis: pip install 'dbevents[redis]'"
        ) from error
    client: Any = redis.Redis.from_url(url)
    try:
        if everything:
            last: Any = b"0-0"
        else:
            entries = client.xrevrange(stream, count=1)
            last = entries[0][0] if entries else b"0-0"
        while True:
            reply = client.xread({stream: last}, block=1000 if follow else None, count=500)
            if not reply:
                if not follow:
                    return
                continue
            for _, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id
                    changeset = _changeset(fields)
                    if changeset is not None:
                        yield changeset
    finally:
        client.close()


def _changeset(fields: Mapping[bytes, bytes]) -> ChangeSet | None:
    candidates = [fields[name] for name in _FIELDS if name in fields]
    candidates += [value for name, value in fields.items() if name not in _FIELDS]
    for value in candidates:
        try:
            return ChangeSet.from_json(value)
        except (ValueError, KeyError, TypeError):
            continue
    print(
        f"dbevents tail: skipped an entry that holds no change set: {dict(fields)!r:.200}",
        file=sys.stderr,
    )
    return None
