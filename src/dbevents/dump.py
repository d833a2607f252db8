"""Write a database's tables to a data directory (see :mod:`dbevents.fileformat`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import codec
from .dispatch.connection import SKIP_CAPTURE
from .exceptions import ConfigurationError
from .fileformat import (
    JOURNAL,
    MANIFEST,
    Manifest,
    TableEntry,
    file_name,
    fingerprint,
    fk_order,
    key_of,
    resolve_metadata,
    write_atomic,
)
from .progress import Progress
from .urls import engine_from_url, refuse_async, require_sqlite_file

__all__ = ["dump"]

Bind = sa.Engine | sa.Connection | str

_BATCH = 5000


def dump(
    bind: Bind,
    metadata: Any,
    path: Path | str,
    *,
    tables: Iterable[str] | None = None,
    progress: bool | None = None,
) -> Manifest:
    """Write every table of ``metadata`` (or those named) to the directory ``path``.

    Rows are streamed from one consistent read (``REPEATABLE READ`` on
    PostgreSQL), one ``<table>.jsonl`` per table ordered by primary key; the
    manifest is written last, so a directory with a manifest is complete.

    :param bind: an Engine, a Connection, or a database URL.
    :param metadata: a MetaData or a declarative base.
    :param tables: full table names to dump instead of all.
    :param progress: show progress on stderr; by default only when it is a terminal.
    :returns: the manifest written.
    :raises ConfigurationError: ``bind`` is an asyncio engine, the directory holds something
        else, the database lacks a table (or its SQLite file does not exist), or it refused
        to read one.
    """
    refuse_async(bind, "dbevents.dump", "lambda sync_conn: dbevents.dump(sync_conn, ...)")
    meta = resolve_metadata(metadata)
    ordered, _ = fk_order(meta, tables)
    directory = Path(path)
    bar = Progress("dump", progress)
    with reading(bind, ordered) as conn:
        # only once the database holds the tables, so a refused dump leaves no directory behind
        _prepare(directory)
        entries = [_dump_entry(conn, table, directory, bar) for table in ordered]
    manifest = Manifest("dump", tuple(entries), fingerprint(ordered))
    manifest.write(directory)
    return manifest


@contextmanager
def reading(bind: Bind, tables: Iterable[sa.Table]) -> Iterator[sa.Connection]:
    """A connection for one consistent read of ``tables``, which the database must hold.

    :raises ConfigurationError: ``bind`` names a SQLite file that does not exist
        (connecting would create it, empty), or the database lacks some of ``tables``.
    """
    if isinstance(bind, sa.Connection):
        require_tables(bind, tables)
        yield bind
        return
    engine = engine_from_url(bind) if isinstance(bind, str) else bind
    try:
        require_sqlite_file(engine.url)
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                require_tables(conn, tables)
                yield conn
    finally:
        if isinstance(bind, str):
            engine.dispose()


@contextmanager
def naming_refusals(table: sa.Table) -> Iterator[None]:
    """Turn the database refusing to read ``table`` into a :class:`ConfigurationError` naming it."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        raise ConfigurationError(
            f"{table.fullname}: the database refused to read it ({driver_reason(error)}); "
            "migrate the database to match the metadata, or check the database URL"
        ) from error


def driver_reason(error: sa.exc.DBAPIError) -> str:
    """The first line of what the driver said: the SQL and the traceback after it add nothing."""
    lines = str(error.orig or error).strip().splitlines()
    return lines[0] if lines else type(error.orig or error).__name__


def require_tables(conn: sa.Connection, tables: Iterable[sa.Table]) -> None:
    """Refuse, before reading any, tables the database does not hold, naming them all."""
    inspector = sa.inspect(conn)
    missing = [
        table.fullname
        for table in tables
        if not inspector.has_table(table.name, schema=table.schema)
    ]
    if missing:
        url = conn.engine.url.render_as_string(hide_password=True)
        names = ", ".join(repr(name) for name in missing)
        noun = "table" if len(missing) == 1 else "tables"
        raise ConfigurationError(
            f"{url} has no {noun} {names}; create the tables first "
            "(metadata.create_all(engine) or your migrations), or check the database URL"
        )


def _prepare(directory: Path) -> None:
    """Create ``directory``, refusing one that holds anything but a previous dump."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / JOURNAL).exists():
        raise ConfigurationError(f"{directory} holds a mirror journal; dump into another directory")
    if (directory / MANIFEST).exists():
        Manifest.read(directory)  # only ever overwrite a data directory
    elif any(directory.iterdir()):
        raise ConfigurationError(f"{directory} is not empty and holds no dbevents manifest")


def _dump_entry(conn: sa.Connection, table: sa.Table, directory: Path, bar: Progress) -> TableEntry:
    bar.start(table.fullname, None)
    with naming_refusals(table):
        count = _dump_table(conn, table, directory / file_name(table.fullname), bar)
    bar.finish()
    return TableEntry(
        name=table.fullname,
        file=file_name(table.fullname),
        key=key_of(table),
        columns=tuple(c.name for c in table.columns),
        rows=count,
    )


def _dump_table(conn: sa.Connection, table: sa.Table, path: Path, bar: Progress) -> int:
    names = [c.name for c in table.columns]
    # JSON documents may look like codec tags and str/int enums would pass as plain
    # values: encode those columns explicitly, and those of a TypeDecorator, which may
    # be either underneath; json's C encoder calls codec for the rest
    explicit = [
        i
        for i, c in enumerate(table.columns)
        if isinstance(c.type, sa.JSON | sa.Enum | sa.TypeDecorator)
    ]
    encode: Callable[[Any], str] = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), default=codec.encode
    ).encode
    query = sa.select(table)
    if table.primary_key.columns:
        query = query.order_by(*table.primary_key.columns)
    result = conn.execute(query, execution_options={"yield_per": _BATCH, SKIP_CAPTURE: True})
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        for batch in result.partitions():
            lines = []
            for row in batch:
                values = list(row)
                for i in explicit:
                    values[i] = codec.encode(values[i])
                lines.append(encode(dict(zip(names, values, strict=True))))
            lines.append("")
            count += len(batch)
            bar.advance(len(batch))
            yield "\n".join(lines).encode()

    write_atomic(path, chunks())
    return count
