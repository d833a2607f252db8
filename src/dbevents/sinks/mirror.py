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
        line = _one_line(changeset.to_json()) + b"\n"
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

        Tables no registry knows (Core only) follow, as they came.
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
            _entry(change, self._candidates(change), changeset.key_columns(name))
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


def _entry(change: Change, candidates: list[sa.Table], told: tuple[str, ...] | None) -> TableEntry:
    """A manifest entry for a table first seen in ``change``; :class:`SinkError` if none fits.

    Several registries may hold a table of that name: the first whose columns are
    those of the row, and whose key is the one the change set tells, wins.  A
    table no registry knows (Core only) is keyed by the key columns the change set
    tells, else by the columns that alone hold the change's key values, and never
    by a guess: a key read wrong loses every later update of the table.
    """
    whole = change.op in (Op.INSERT, Op.LINK, Op.DELETE, Op.UNLINK)
    row = dict((change.new if change.op in (Op.INSERT, Op.LINK) else change.old) or {})
    for table in candidates:
        columns = tuple(column.name for column in table.columns)
        fits = not (whole and row) or set(columns) == set(row)
        if fits and told in (None, key_of(table)):
            return TableEntry(change.table, file_name(change.table), key_of(table), columns, rows=0)
    key = None
    if whole and row:
        key = told if told and _holds(row, told, change.pk) else _holding(row, change.pk)
    if key is None:
        raise SinkError(
            f"MirrorSink cannot tell the key columns of table {change.table!r}; "
            "pass metadata= with that table"
        )
    return TableEntry(change.table, file_name(change.table), key, tuple(row), rows=0)


def _holds(row: dict[str, Any], names: tuple[str, ...], pk: tuple[Any, ...]) -> bool:
    """Whether the columns ``names`` of ``row`` hold the key values ``pk``."""
    return len(names) == len(pk) and all(
        name in row and _same(row[name], value) for name, value in zip(names, pk, strict=True)
    )


def _holding(row: dict[str, Any], pk: tuple[Any, ...]) -> tuple[str, ...] | None:
    """The columns holding the key values, when each value is in one column alone.

    None when a value is in several (a first row of all ones, say): which of them
    is the key, the row cannot tell.
    """
    names: list[str] = []
    for value in pk:
        holding = [name for name, held in row.items() if _same(held, value)]
        if len(holding) != 1 or holding[0] in names:
            return None
        names.append(holding[0])
    return tuple(names)


def _same(held: Any, value: Any) -> bool:
    # the type too: True == 1, but a flag column does not hold an integer key
    return type(held) is type(value) and bool(held == value)


def _one_line(text: bytes) -> bytes:
    """``text``, as one compact line.

    :meth:`ChangeSet.to_json` writes one; this guards the journal against a change
    set of another make, since a record of several lines breaks it for every reader.
    """
    if b"\n" in text or b"\r" in text:
        return codec.dumps(codec.loads(text)).encode()
    return text


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
