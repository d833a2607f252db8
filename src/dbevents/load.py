"""Load a data directory into a database: muted, in one transaction, parents first.

Every statement runs through Core on a connection with the ``dbevents_skip_capture``
execution option (PostgreSQL rows go through the driver's COPY), so no model
callback runs and nothing is captured, even on a session's connection.  Foreign
keys that close a cycle, and self-references, are inserted as NULL and set by a
second pass over the file once every row exists.  Any bad input raises
:class:`LoadError` and the transaction (or savepoint) is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .columns import ColumnRule
from .diagnose import diagnose, skip
from .dump import require_tables
from .exceptions import ConfigurationError, LoadError
from .fileformat import MANIFEST, Source, TableEntry, bookkeeping, fingerprint, fk_order, key_of
from .fileformat import resolve_metadata as _resolve_metadata
from .loadwriter import TableWriter
from .progress import Progress
from .urls import LOADING, engine_from_url, refuse_async, require_sqlite_file

__all__ = ["MODES", "load"]

Mode = Literal["insert", "truncate", "upsert"]
MODES: tuple[Mode, ...] = ("insert", "truncate", "upsert")
Bind = sa.Engine | sa.Connection | str


@dataclass(frozen=True, slots=True)
class TablePlan:
    """How one table is loaded: its manifest entry, checks per column, and the deferred columns."""

    table: sa.Table
    entry: TableEntry
    columns: tuple[str, ...]
    rules: tuple[ColumnRule, ...]
    key: tuple[str, ...]
    #: nullable foreign-key columns inserted as NULL and set by the second pass
    deferred: frozenset[str]


def load(
    bind: Bind,
    metadata: Any,
    path: Path | str,
    *,
    mode: Mode = "insert",
    tables: Iterable[str] | None = None,
    batch_size: int = 5000,
    progress: bool | None = None,
    check_schema: bool = True,
) -> dict[str, int]:
    """Load the data directory ``path`` (a dump, or a mirror compacted or not) into ``bind``.

    :param bind: an Engine, a database URL, or a Connection (inside a transaction
        the load runs in a savepoint and the caller commits).
    :param metadata: a MetaData or a declarative base.
    :param mode: ``"insert"`` adds rows (a key already present is an error),
        ``"truncate"`` empties the loaded tables first, ``"upsert"`` inserts or updates by key.
    :param tables: full names of the tables to load instead of all in the directory.
    :param batch_size: rows per executemany batch.
    :param progress: show progress on stderr; by default only when it is a terminal.
    :param check_schema: refuse a directory whose schema fingerprint differs from ``metadata``.
    :returns: rows loaded per table, in load order.
    :raises LoadError: bad input; nothing was written.
    :raises ConfigurationError: ``bind`` is an asyncio engine.
    """
    refuse_async(bind, "dbevents.load", "lambda sync_conn: dbevents.load(sync_conn, ...)")
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if batch_size < 1:
        raise ConfigurationError("batch_size must be >= 1")
    source = Source(path)
    plans = plan(source, _resolve_metadata(metadata), tables, check_schema=check_schema)
    bar = Progress("load", progress)
    with _transaction(bind) as conn:
        # before a row is written: "no such table" from the first INSERT names one table only
        require_tables(conn, [item.table for item in plans])
        counts: dict[str, int] = {}
        if conn.dialect.name == "sqlite":
            skip(conn, "PRAGMA defer_foreign_keys = ON")
        if mode == "truncate":
            _truncate(conn, plans)
        for item in plans:
            bar.start(item.table.fullname, item.entry.rows)
            writer = TableWriter(conn, source, item, mode, batch_size)
            counts[item.table.fullname] = writer.insert(bar)
            bar.finish()
        for item in plans:
            if item.deferred:
                TableWriter(conn, source, item, mode, batch_size).set_deferred()
        if conn.dialect.name == "sqlite":
            _check_foreign_keys(conn, source, plans)
        if conn.dialect.name == "postgresql":
            _reset_sequences(conn, plans)
        return counts


def plan(
    source: Source, metadata: sa.MetaData, tables: Iterable[str] | None, *, check_schema: bool
) -> list[TablePlan]:
    """Match the manifest against ``metadata``: the tables to load, in foreign-key order.

    Only the tables to load must be in ``metadata``, so that part of a directory loads
    into a schema that lacks the rest (the schema check then needs them all).
    """
    manifest = source.manifest
    manifest_path = source.directory / MANIFEST
    entries = _entries_to_load(source, tables)
    for entry in entries:
        _check_entry(manifest_path, entry, metadata)
    if check_schema and manifest.fingerprint is not None:
        check_fingerprint(source, metadata)
    names = [
        entry.name
        for entry in entries
        if tables is not None or not bookkeeping(metadata.tables[entry.name])
    ]
    ordered, cyclic = fk_order(metadata, names)
    plans = []
    for table in ordered:
        found = manifest.entry(table.fullname)
        assert found is not None
        entry = found
        deferred: set[str] = set()
        for fk in table.foreign_key_constraints:
            if (fk.referred_table is table or fk in cyclic) and all(c.nullable for c in fk.columns):
                deferred.update(c.name for c in fk.columns)
        plans.append(
            TablePlan(
                table=table,
                entry=entry,
                columns=entry.columns,
                rules=tuple(ColumnRule(table.c[name]) for name in entry.columns),
                key=key_of(table),
                deferred=frozenset(deferred.intersection(entry.columns).difference(key_of(table))),
            )
        )
    return plans


def _entries_to_load(source: Source, tables: Iterable[str] | None) -> list[TableEntry]:
    """The manifest's entries of ``tables`` (all when ``None``), which must be there."""
    manifest = source.manifest
    if tables is None:
        return list(manifest.tables)
    entries = []
    for name in tables:
        entry = manifest.entry(name)
        if entry is None:
            raise LoadError(
                f"{source.directory / MANIFEST}: no table {name!r} in the directory",
                path=source.directory / MANIFEST,
            )
        entries.append(entry)
    return entries


def _check_entry(manifest_path: Path, entry: TableEntry, metadata: sa.MetaData) -> None:
    """Refuse a table whose name, columns or key ``metadata`` does not have."""
    table = metadata.tables.get(entry.name)
    if table is None:
        raise LoadError(
            f"{manifest_path}: table {entry.name!r} is not in the metadata; to load the "
            "others, name them with tables=[...] (--tables) and pass check_schema=False "
            "(--no-check-schema)",
            path=manifest_path,
        )
    for column in entry.columns:
        if column not in table.columns:
            raise LoadError(
                f"{manifest_path}: column {entry.name}.{column} is not in the metadata",
                path=manifest_path,
                column=column,
            )
    if entry.key != key_of(table):
        raise LoadError(
            f"{manifest_path}: {entry.name} is keyed by {', '.join(entry.key)} "
            f"in the manifest but by {', '.join(key_of(table))} in the metadata",
            path=manifest_path,
        )


def check_fingerprint(source: Source, metadata: sa.MetaData) -> None:
    """Refuse a directory written from another schema: the fingerprint covers all its tables."""
    manifest = source.manifest
    manifest_path = source.directory / MANIFEST
    absent = [entry.name for entry in manifest.tables if entry.name not in metadata.tables]
    if absent:
        raise LoadError(
            f"{manifest_path}: the data was written from another schema, with tables the "
            f"metadata lacks ({', '.join(repr(name) for name in absent)}); load the others "
            "with check_schema=False (--no-check-schema)",
            path=manifest_path,
        )
    current = fingerprint(metadata.tables[entry.name] for entry in manifest.tables)
    if current != manifest.fingerprint:
        raise LoadError(
            f"{manifest_path}: the data was written from another schema (fingerprint "
            f"{manifest.fingerprint}, metadata {current}); migrate it, or load with "
            "check_schema=False (--no-check-schema)",
            path=manifest_path,
        )


@contextmanager
def _transaction(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        if bind.in_transaction():
            with bind.begin_nested():
                yield bind
        else:
            with bind.begin():
                yield bind
        return
    # (a URL of an asyncio driver is refused with a message, as by dump and verify)
    engine = engine_from_url(bind, existing=False) if isinstance(bind, str) else bind
    try:
        # connecting would leave an empty file behind the refusal of its missing tables
        require_sqlite_file(engine.url, LOADING)
        with engine.begin() as conn:
            yield conn
    finally:
        if isinstance(bind, str):
            engine.dispose()


def _truncate(conn: sa.Connection, plans: list[TablePlan]) -> None:
    """Empty the tables to load, children first (PostgreSQL: one TRUNCATE when it can)."""
    chosen = {item.table for item in plans}
    metadata = plans[0].table.metadata if plans else None
    referred_from_outside = metadata is not None and any(
        fk.referred_table in chosen
        for table in metadata.tables.values()
        if table not in chosen
        for fk in table.foreign_key_constraints
    )
    preparer = conn.dialect.identifier_preparer
    if conn.dialect.name == "postgresql" and plans and not referred_from_outside:
        names = ", ".join(preparer.format_table(item.table) for item in plans)
        skip(conn, f"TRUNCATE {names}")
        return
    for item in plans:  # a cycle cannot be deleted row by row until it is broken
        if item.deferred:
            skip(conn, sa.update(item.table).values({name: None for name in item.deferred}))
    for item in reversed(plans):
        skip(conn, sa.delete(item.table))


def _check_foreign_keys(conn: sa.Connection, source: Source, plans: list[TablePlan]) -> None:
    """SQLite enforces no foreign key by default: check every declared one before COMMIT."""
    for item in plans:
        table = item.table
        for fk in table.foreign_key_constraints:
            parent = fk.referred_table.alias("parent")
            pairs = [(table.c[e.parent.name], parent.c[e.column.name]) for e in fk.elements]
            orphan = (
                sa.select(sa.literal(1))
                .select_from(table.outerjoin(parent, sa.and_(*(c == p for c, p in pairs))))
                .where(*(c.is_not(None) for c, _ in pairs), pairs[0][1].is_(None))
                .limit(1)
            )
            if skip(conn, orphan).first() is not None:
                message = (
                    f"a row of {table.fullname} refers to no row of {fk.referred_table.fullname}"
                )
                raise diagnose(conn, source, item, "final", message)


def _reset_sequences(conn: sa.Connection, plans: list[TablePlan]) -> None:
    """Move serial, identity and Sequence columns past the loaded keys, never backwards.

    A sequence shared by several tables goes past the keys of them all, and one already
    further on stays there, so the numbers of rows deleted since are never handed out again.
    """
    preparer = conn.dialect.identifier_preparer
    #: per sequence, the next key of every loaded column it numbers
    after_keys: dict[str, list[str]] = {}
    for item in plans:
        quoted = preparer.format_table(item.table)
        for column in item.table.columns:
            if not isinstance(column.type, sa.Integer) or column.name not in item.columns:
                continue
            sequence = _sequence_of(conn, item.table, column)
            if sequence is not None:
                after_keys.setdefault(sequence, []).append(
                    f"(SELECT MAX({preparer.quote(column.name)}) + 1 FROM {quoted})"
                )
    for sequence, keys in after_keys.items():
        # nextval is the first number not handed out yet: setval(..., false) gives it back
        # unless a loaded key is past it (GREATEST skips the NULL of an empty table)
        skip(
            conn,
            sa.text(
                "SELECT setval(CAST(:sequence AS regclass), GREATEST("
                f"nextval(CAST(:sequence AS regclass)), {', '.join(keys)}), false)"
            ),
            {"sequence": sequence},
        )


def _sequence_of(conn: sa.Connection, table: sa.Table, column: sa.Column[Any]) -> str | None:
    """The sequence numbering ``column``, as ``regclass`` prints it: one name per sequence."""
    preparer = conn.dialect.identifier_preparer
    if isinstance(column.default, sa.Sequence):
        name: Any = sa.literal(preparer.format_sequence(column.default))
    elif column is table.autoincrement_column:
        name = sa.func.pg_get_serial_sequence(preparer.format_table(table), column.name)
    else:
        return None
    # a Sequence() and a serial may spell one sequence two ways: regclass has one spelling
    canonical = sa.cast(sa.cast(name, postgresql.REGCLASS), sa.Text)
    found: str | None = skip(conn, sa.select(canonical)).scalar()
    return found
