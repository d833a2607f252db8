"""The directory format that :func:`dump` writes, :class:`MirrorSink` keeps and :func:`load` reads.

A data directory holds::

    manifest.json     format version, source ("dump" or "mirror"), schema fingerprint,
                      and the tables in foreign-key order: file, key columns, columns, rows
    <table>.jsonl     one JSON object per row, keyed by column name (values: dbevents.codec)
    .journal.jsonl    mirror only: one ChangeSet per line, appended after each commit

Reading folds the journal over the table files, so a directory reads the same
whether or not it has been compacted.  A journal line cut short by a crash (no
final newline) was never acknowledged and is ignored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

import sqlalchemy as sa

from . import codec
from .changes import ChangeSet, Op
from .exceptions import ConfigurationError, LoadError

__all__ = [
    "FORMAT_VERSION",
    "JOURNAL",
    "MANIFEST",
    "Manifest",
    "Record",
    "Source",
    "TableEntry",
    "file_name",
    "fingerprint",
    "fk_order",
    "fk_sorted",
    "fsync_dir",
    "key_of",
    "resolve_metadata",
    "write_atomic",
]

FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
JOURNAL: Final = ".journal.jsonl"

Row = dict[str, Any]
#: one row read from a directory: the file it came from, its 1-based line there, its values
Record = tuple[Path, int, Row]


def file_name(table: str) -> str:
    """The data file of a table: its full name, made safe as one file name, plus ``.jsonl``."""
    name = quote(table, safe="._-")
    if name.startswith("."):  # never hidden, never "..": the journal and temp files are
        name = "%2E" + name[1:]
    return name + ".jsonl"


def resolve_metadata(target: Any) -> sa.MetaData:
    """The MetaData of ``target``: a MetaData, or a declarative base / model with ``.metadata``."""
    if isinstance(target, sa.MetaData):
        return target
    metadata = getattr(target, "metadata", None)
    if isinstance(metadata, sa.MetaData):
        return metadata
    raise ConfigurationError(f"expected a MetaData or a declarative base, got {target!r}")


def key_of(table: sa.Table) -> tuple[str, ...]:
    """The columns that identify a row: the primary key, or every column when there is none."""
    return tuple(c.name for c in table.primary_key.columns) or tuple(c.name for c in table.columns)


def fk_order(
    metadata: sa.MetaData, names: Iterable[str] | None = None
) -> tuple[list[sa.Table], list[sa.ForeignKeyConstraint]]:
    """Tables (all, or those named) parents first, and the foreign keys that close a cycle.

    A self-referencing foreign key never decides the order; the cyclic ones are
    those the order cannot satisfy.  Unknown names raise :class:`ConfigurationError`.
    """
    if names is None:
        chosen = [table for table in metadata.tables.values() if not bookkeeping(table)]
    else:
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in metadata.tables]
        if unknown:
            raise ConfigurationError(f"unknown table(s) {', '.join(unknown)} in the metadata")
        chosen = [metadata.tables[name] for name in wanted]
    return fk_sorted(chosen)


#: ``Table.info`` key marking dbevents' own tables (the outbox and its dead letters)
BOOKKEEPING = "dbevents.bookkeeping"


def bookkeeping(table: sa.Table) -> bool:
    """Whether ``table`` is dbevents' own: left out of dumps and loads unless named (a
    restore that brought back outbox rows would deliver their change sets again)."""
    return bool(table.info.get(BOOKKEEPING))


def fk_sorted(
    chosen: Iterable[sa.Table],
) -> tuple[list[sa.Table], list[sa.ForeignKeyConstraint]]:
    """Tables parents first, others in the order given, and the foreign keys that close a cycle."""
    tables: list[sa.Table] = []
    cyclic: list[sa.ForeignKeyConstraint] = []
    for table, constraints in sa.schema.sort_tables_and_constraints(chosen):  # type: ignore[no-untyped-call, unused-ignore]
        if table is None:
            cyclic.extend(constraints)
        else:
            tables.append(table)
    return tables, cyclic


def fingerprint(tables: Iterable[sa.Table]) -> str:
    """A digest of the tables' names, columns, types, keys and foreign keys, dialect-independent."""
    shape = []
    for table in sorted(tables, key=lambda t: t.fullname):
        columns = [
            [c.name, c.type.__visit_name__, bool(c.nullable), bool(c.primary_key)]
            for c in table.columns
        ]
        fks = sorted(
            [[e.parent.name, e.target_fullname] for e in fk.elements]
            for fk in table.foreign_key_constraints
        )
        shape.append([table.fullname, columns, fks])
    digest = hashlib.sha256(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()
    return f"sha256:{digest}"


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One table of a manifest: where its rows are and how they are keyed."""

    name: str
    file: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    #: rows in the file; a dump's count is checked on read, a mirror's is as of its last compaction
    rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "key": list(self.key),
            "columns": list(self.columns),
            "rows": self.rows,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``manifest.json`` says about a data directory."""

    source: Literal["dump", "mirror"]
    tables: tuple[TableEntry, ...]
    fingerprint: str | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    version: int = FORMAT_VERSION

    def entry(self, table: str) -> TableEntry | None:
        """The entry of a table, by full name."""
        return next((entry for entry in self.tables if entry.name == table), None)

    def to_json(self) -> bytes:
        data = {
            "format": "dbevents",
            "version": self.version,
            "source": self.source,
            "created_at": self.created_at,
            "fingerprint": self.fingerprint,
            "tables": [entry.to_dict() for entry in self.tables],
        }
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()

    def write(self, directory: Path) -> None:
        """Replace ``manifest.json`` atomically."""
        write_atomic(directory / MANIFEST, [self.to_json()])

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """Parse ``manifest.json``; :class:`LoadError` when missing, broken or of another format."""
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise LoadError(
                f"{path}: no manifest; is this a dbevents data directory?", path=path
            ) from None
        except (ValueError, UnicodeDecodeError) as error:
            raise LoadError(f"{path}: broken JSON: {error}", path=path) from None
        try:
            if data.get("format") != "dbevents" or data.get("version") != FORMAT_VERSION:
                raise LoadError(
                    f"{path}: not a dbevents manifest of format version {FORMAT_VERSION}",
                    path=path,
                )
            tables = tuple(
                TableEntry(
                    name=str(item["name"]),
                    file=_safe_file(directory, str(item["file"]), path),
                    key=tuple(item["key"]),
                    columns=tuple(item["columns"]),
                    rows=item.get("rows"),
                )
                for item in data["tables"]
            )
            source = data["source"]
            if source not in ("dump", "mirror"):
                raise LoadError(f"{path}: unknown source {source!r}", path=path)
            return cls(source, tables, data.get("fingerprint"), str(data.get("created_at", "")))
        except (KeyError, TypeError, AttributeError) as error:
            raise LoadError(f"{path}: malformed manifest ({error!r})", path=path) from None


def _safe_file(directory: Path, name: str, manifest: Path) -> str:
    """Refuse a manifest entry that names anything but a file directly inside the directory."""
    candidate = Path(name)
    inside = (
        name not in ("", ".", "..")
        and candidate.name == name
        and not candidate.is_absolute()
        and "\\" not in name
        and (directory / name).resolve().parent == directory.resolve()
    )
    if not inside:
        raise LoadError(f"{manifest}: file {name!r} is outside the data directory", path=manifest)
    return name


class Source:
    """A data directory opened for reading: its manifest, and rows with the journal folded in."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self.journal = self.directory / JOURNAL
        #: per table, per key: the journal's net effect in the order first touched
        self._overlay: dict[str, dict[tuple[Any, ...], _Pending]] = {}
        self._read_journal()

    def path_of(self, entry: TableEntry) -> Path:
        """The data file of a table entry."""
        return self.directory / entry.file

    def records(self, entry: TableEntry, *, decoded: bool = True) -> Iterator[Record]:
        """Stream a table's rows, journal applied; :class:`LoadError` on bad input.

        :param decoded: restore tagged values (see :mod:`dbevents.codec`); with
            ``False`` rows keep their JSON form, for callers that decode per column.
        """
        path = self.path_of(entry)
        pending = dict(self._overlay.get(entry.name, {}))
        journal_form = (lambda row: row) if decoded else codec.encode_row
        count = 0
        rows = _read_rows(path, decoded=decoded, missing_ok=self.manifest.source == "mirror")
        for number, row in rows:
            count += 1
            if pending:
                try:
                    pk = tuple(codec.decode(row[name]) for name in entry.key)
                except KeyError as error:
                    raise LoadError(
                        f"{path.name}, record {number}: key column {error} is missing",
                        path=path,
                        record=number,
                        column=str(error.args[0]),
                    ) from None
                change = pending.pop(pk, None)
                if change is not None:
                    if change.kind == "gone":
                        continue
                    if change.kind == "row":
                        yield self.journal, change.line, journal_form(change.row)
                        continue
                    row.update(journal_form(change.row))
            yield path, number, row
        if self.manifest.source == "dump" and entry.rows is not None and count != entry.rows:
            raise LoadError(
                f"{path.name}: {count} records, but the manifest says {entry.rows}; "
                "the file is truncated or was edited",
                path=path,
                record=count,
            )
        for change in pending.values():
            if change.kind == "row":
                yield self.journal, change.line, journal_form(change.row)

    def touched(self) -> list[str]:
        """The tables the journal changes."""
        return list(self._overlay)

    def _read_journal(self) -> None:
        try:
            handle = self.journal.open("rb")
        except FileNotFoundError:
            return
        with handle:
            for number, line in enumerate(handle, 1):
                if not line.endswith(b"\n"):
                    break  # cut short by a crash before publish returned
                if not line.strip():
                    continue
                try:
                    changeset = ChangeSet.from_json(line)
                except (ValueError, KeyError, TypeError) as error:
                    raise LoadError(
                        f"{self.journal.name}, record {number}: broken change set ({error})",
                        path=self.journal,
                        record=number,
                    ) from None
                for change in changeset.changes:
                    self._apply(change.op, change.table, change.pk, change.new, number)

    def _apply(
        self, op: Op, table: str, pk: tuple[Any, ...], new: Mapping[str, Any] | None, line: int
    ) -> None:
        if self.manifest.entry(table) is None:
            raise LoadError(
                f"{self.journal.name}, record {line}: table {table!r} is not in the manifest",
                path=self.journal,
                record=line,
            )
        rows = self._overlay.setdefault(table, {})
        before = rows.get(pk)
        if op in (Op.INSERT, Op.LINK):
            rows[pk] = _Pending("row", dict(new or {}), line)
        elif op in (Op.DELETE, Op.UNLINK):
            rows[pk] = _Pending("gone", {}, line)
        elif before is None:
            rows[pk] = _Pending("patch", dict(new or {}), line)
        elif before.kind != "gone":
            before.row.update(new or {})


@dataclass(slots=True)
class _Pending:
    """The journal's net effect on one row: a whole row, changed columns, or deleted."""

    kind: Literal["row", "patch", "gone"]
    row: Row
    line: int


def _cut(line: str) -> str:
    """What a broken last line without its newline says: the file was cut short there
    (a copy or an upload that stopped), not edited."""
    return (
        "" if line.endswith("\n") else "; the file ends inside it, cut short: copy or dump it again"
    )


def _read_rows(path: Path, *, decoded: bool, missing_ok: bool) -> Iterator[tuple[int, Row]]:
    try:
        handle = path.open(encoding="utf-8", newline="\n")
    except FileNotFoundError:
        if missing_ok:
            return
        raise LoadError(f"{path}: the file named in the manifest is missing", path=path) from None
    parse = _DECODER.decode  # json.loads minus its per-call type and encoding checks
    decode_row = codec.decode_row
    number = 0
    with handle:
        try:
            for number, line in enumerate(handle, 1):  # noqa: B007 - read after the loop
                try:
                    data = parse(line)
                except ValueError as error:
                    if not line.strip():
                        continue
                    raise LoadError(
                        f"{path.name}, record {number}: broken JSON ({error}){_cut(line)}",
                        path=path,
                        record=number,
                    ) from None
                if type(data) is not dict:
                    raise LoadError(
                        f"{path.name}, record {number}: expected a JSON object, "
                        f"got {type(data).__name__}",
                        path=path,
                        record=number,
                    )
                yield number, decode_row(data) if decoded else data
        except UnicodeDecodeError as error:
            raise LoadError(
                f"{path.name}, record {number + 1}: not UTF-8 ({error.reason})",
                path=path,
                record=number + 1,
            ) from None


_DECODER = json.JSONDecoder()


def write_atomic(path: Path, chunks: Iterable[bytes]) -> int:
    """Write a file through a temp file, fsync and rename, so readers see all of it or none.

    :returns: how many chunks were written.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with temp.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return count


def fsync_dir(directory: Path) -> None:
    """Make renames and new files in a directory durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
