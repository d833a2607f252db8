"""The JSON mirror sink: a data directory that :func:`dbevents.load` reads, kept up to date.

Each committed change set is appended to ``.journal.jsonl`` and fsynced before
``publish`` returns.  Compaction folds the journal into the per-table files:
every table file is rewritten through a temp file, fsync and rename, then the
manifest, and only then is the journal replaced by an empty one.  Replaying a
journal over table files that already hold part of it gives the same rows (an
INSERT or DELETE sets the row, an UPDATE sets columns), so a crash at any point
leaves a directory that loads.

Several processes may share one directory: every append and every compaction
holds an exclusive ``flock`` on ``.lock``, opened anew each time, so threads and
forked children exclude each other too.  Lines are appended in lock order, which
is commit order for any one row only when a single process writes it; feed a
mirror from the outbox relay when several processes write the same rows.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, final

import sqlalchemy as sa

from .. import codec
from .._compat import all_mappers
from ..changes import Change, ChangeSet, Op, stored_fields
from ..exceptions import SinkError
from ..fileformat import (
    JOURNAL,
    MANIFEST,
    Manifest,
    Source,
    TableEntry,
    file_name,
    fingerprint,
    fk_sorted,
    key_of,
    resolve_metadata,
    write_atomic,
)

__all__ = ["MirrorSink"]

_LOCK = ".lock"


@final
class MirrorSink:
    """Mirror every committed change into ``data_dir``, durably, in the format ``dump`` writes.

    :param data_dir: the directory (created when missing).
    :param metadata: a MetaData or declarative base naming the tables' keys and
        columns; by default they are found among the mapped classes.
    :param compact_bytes: compact once the journal is this large.
    :param compact_age: compact once the journal holds changes this many seconds old.
    :param fsync: fsync each append (turn off only for throwaway mirrors).
    """

    __slots__ = (
        "_known",
        "_metadata",
        "_since",
        "_thread_lock",
        "compact_age",
        "compact_bytes",
        "directory",
        "fsync",
    )

    def __init__(
        self,
        data_dir: Path | str,
        *,
        metadata: Any = None,
        compact_bytes: int = 64 * 1024 * 1024,
        compact_age: float = 3600.0,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(data_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._metadata = resolve_metadata(metadata) if metadata is not None else None
        self.compact_bytes = compact_bytes
        self.compact_age = compact_age
        self.fsync = fsync
        self._known: set[str] = set()
        self._since: float | None = None  # when this process first saw the journal non-empty
        self._thread_lock = threading.Lock()
        with self._locked():
            if not (self.directory / MANIFEST).exists():
                self._write_manifest(())

    def __repr__(self) -> str:
        return f"<MirrorSink {str(self.directory)!r}>"

    def publish(self, changeset: ChangeSet) -> None:
        """Append a change set to the journal, fsynced; compact when a threshold is met."""
        if not len(changeset):
            return
        line = changeset.to_json() + b"\n"
        with self._locked():
            self._register(changeset)
            fd = os.open(self.directory / JOURNAL, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = _drop_torn_tail(fd)
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            now = time.monotonic()
            if size == 0 or self._since is None:
                self._since = now
            if size + len(line) >= self.compact_bytes or now - self._since >= self.compact_age:
                self._compact()

    def compact(self) -> None:
        """Fold the journal into the table files now."""
        with self._locked():
            self._compact()

    def close(self) -> None:
        """Nothing is held open between calls; present for the Sink protocol."""

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

    def _compact(self) -> None:
        for stale in self.directory.glob(".*.tmp"):  # a compaction killed midway left it
            stale.unlink(missing_ok=True)
        source = Source(self.directory)
        touched = set(source.touched())
        entries = []
        for entry in source.manifest.tables:
            if entry.name in touched:
                lines = (
                    (codec.dumps(codec.encode_row(row)) + "\n").encode()
                    for _, _, row in source.records(entry)
                )
                count = write_atomic(source.path_of(entry), lines)
                entry = dataclasses.replace(entry, rows=count)
            entries.append(entry)
        self._write_manifest(entries)
        # a new empty journal replaces the old one rather than emptying it in place, so a
        # reader holding the old one (dbevents tail) can finish it and tell the two apart
        write_atomic(self.directory / JOURNAL, [])
        self._since = None

    def _write_manifest(self, entries: Any) -> None:
        entries = self._in_fk_order(tuple(entries))
        digest = None
        if self._metadata is not None and all(e.name in self._metadata.tables for e in entries):
            digest = fingerprint(self._metadata.tables[e.name] for e in entries)
        Manifest("mirror", entries, digest).write(self.directory)

    def _in_fk_order(self, entries: tuple[TableEntry, ...]) -> tuple[TableEntry, ...]:
        """Entries parents first, as ``dump`` lists them, where their tables are known.

        Tables no registry knows (Core only, keyed by guess) follow, as they came.
        """
        registries = [self._metadata] if self._metadata is not None else []
        for mapper in all_mappers():
            metadata = getattr(mapper.local_table, "metadata", None)
            if isinstance(metadata, sa.MetaData) and metadata not in registries:
                registries.append(metadata)
        known: dict[str, sa.Table] = {}
        for entry in entries:
            table = _table_of(entry, registries)
            if table is not None:
                known[entry.name] = table

        def definition_order(table: sa.Table) -> tuple[int, int]:
            metadata = table.metadata
            return registries.index(metadata), list(metadata.tables).index(table.key)

        parents_first, _ = fk_sorted(sorted(known.values(), key=definition_order))
        by_name = {entry.name: entry for entry in entries}
        return (
            *(by_name[table.fullname] for table in parents_first),
            *(entry for entry in entries if entry.name not in known),
        )

    def _register(self, changeset: ChangeSet) -> None:
        """Add the tables this change set names to the manifest, before the journal names them."""
        known = self._known
        new: dict[str, Change] = {}
        for fields in stored_fields(changeset):
            if fields[1] not in known and fields[1] not in new:
                new[fields[1]] = Change(*fields)  # (its first change: one made per table)
        if not new:
            return
        manifest = Manifest.read(self.directory)  # another process may have added some
        listed = {entry.name for entry in manifest.tables}
        added = [
            _entry(change, self._candidates(change))
            for name, change in new.items()
            if name not in listed
        ]
        if added:
            self._write_manifest((*manifest.tables, *added))
        self._known.update(listed, new)

    def _candidates(self, change: Change) -> list[sa.Table]:
        """Tables of that name: from ``metadata``, then the change's model, then any registry."""
        found: list[sa.Table] = []
        if self._metadata is not None and change.table in self._metadata.tables:
            found.append(self._metadata.tables[change.table])
        mappers = sorted(all_mappers(), key=lambda m: m.class_.__name__ != change.model)
        for mapper in mappers:
            metadata = getattr(mapper.local_table, "metadata", None)
            if isinstance(metadata, sa.MetaData) and change.table in metadata.tables:
                table = metadata.tables[change.table]
                if table not in found:
                    found.append(table)
        return found


def _table_of(entry: TableEntry, registries: list[sa.MetaData]) -> sa.Table | None:
    """The table a manifest entry describes: same name, columns and key, in the first registry."""
    for metadata in registries:
        table = metadata.tables.get(entry.name)
        if (
            table is not None
            and tuple(column.name for column in table.columns) == entry.columns
            and key_of(table) == entry.key
        ):
            return table
    return None


def _entry(change: Change, candidates: list[sa.Table]) -> TableEntry:
    """A manifest entry for a table first seen in ``change``.

    Several registries may hold a table of that name: the one whose columns are
    those of the row wins.  A table no registry knows (Core only) is keyed by the
    columns holding the change's key values.
    """
    whole = change.op in (Op.INSERT, Op.LINK, Op.DELETE, Op.UNLINK)
    row = dict((change.new if change.op in (Op.INSERT, Op.LINK) else change.old) or {})
    for table in candidates:
        columns = tuple(column.name for column in table.columns)
        if not (whole and row) or set(columns) == set(row):
            return TableEntry(change.table, file_name(change.table), key_of(table), columns, rows=0)
    if not (whole and row):
        raise SinkError(
            f"MirrorSink cannot tell the key columns of table {change.table!r}; "
            "pass metadata= with that table"
        )
    unused = list(row)
    names: list[str] = []
    for value in change.pk:
        match = next((name for name in unused if row[name] == value), None)
        if match is None:
            raise SinkError(f"MirrorSink cannot tell the key columns of table {change.table!r}")
        names.append(match)
        unused.remove(match)
    return TableEntry(change.table, file_name(change.table), tuple(names), tuple(row), rows=0)


def _drop_torn_tail(fd: int) -> int:
    """Cut a last line that a killed writer left without its newline; return the journal size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    start = max(0, size - 65536)
    while True:
        chunk = os.pread(fd, size - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        if start == 0:
            keep = 0
            break
        start = max(0, start - 65536)
    os.ftruncate(fd, keep)
    return keep
