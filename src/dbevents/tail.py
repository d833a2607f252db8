"""Following change sets as they arrive: in a mirror's journal, or in a Redis stream."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .changes import ChangeSet

__all__ = ["follow_mirror", "follow_stream"]

#: field names a stream entry may carry its change set under, most likely first
_FIELDS = (b"changeset", b"data", b"json", b"payload", b"value")


def follow_mirror(
    journal: Path, *, everything: bool = False, follow: bool = True, poll: float = 0.2
) -> Iterator[ChangeSet]:
    """Yield the change sets appended to a mirror journal.

    Compaction empties the journal: reading starts again from its beginning, so
    lines appended and compacted between two polls are not seen.

    :param everything: start with the lines already there, not only new ones.
    :param follow: keep polling; otherwise stop at the current end.
    """
    position = 0 if everything or not journal.exists() else journal.stat().st_size
    pending = b""
    while True:
        try:
            size = journal.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < position:  # compacted
            position, pending = 0, b""
        if size > position:
            with journal.open("rb") as handle:
                handle.seek(position)
                data = handle.read(size - position)
            position += len(data)
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.strip():
                    yield ChangeSet.from_json(line)
        elif not follow:
            return
        else:
            time.sleep(poll)


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
