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
    """
    meta = resolve_metadata(metadata)
    ordered, _ = fk_order(meta, tables)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / JOURNAL).exists():
        raise ConfigurationError(f"{directory} holds a mirror journal; dump into another directory")
    if (directory / MANIFEST).exists():
        Manifest.read(directory)  # only ever overwrite a data directory
    elif any(directory.iterdir()):
        raise ConfigurationError(f"{directory} is not empty and holds no dbevents manifest")
    bar = Progress("dump", progress)
    entries = []
    with _reading(bind) as conn:
        for table in ordered:
            bar.start(table.fullname, None)
            count = _dump_table(conn, table, directory / file_name(table.fullname), bar)
            bar.finish()
            entries.append(
                TableEntry(
                    name=table.fullname,
                    file=file_name(table.fullname),
                    key=key_of(table),
                    columns=tuple(c.name for c in table.columns),
                    rows=count,
                )
            )
    manifest = Manifest("dump", tuple(entries), fingerprint(ordered))
    manifest.write(directory)
    return manifest


@contextmanager
def _reading(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        yield bind
        return
    engine = sa.create_engine(bind) if isinstance(bind, str) else bind
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn
    finally:
        if isinstance(bind, str):
            engine.dispose()


def _dump_table(conn: sa.Connection, table: sa.Table, path: Path, bar: Progress) -> int:
    names = [c.name for c in table.columns]
    # JSON documents may look like codec tags and str/int enums would pass as plain
    # values: encode those columns explicitly; json's C encoder calls codec for the rest
    explicit = [i for i, c in enumerate(table.columns) if isinstance(c.type, sa.JSON | sa.Enum)]
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
