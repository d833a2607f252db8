"""SQLite: the rows a bulk INSERT adds, read back as those above the table's largest rowid.

A bulk INSERT made to return its rows runs through SQLAlchemy's
``insertmanyvalues``, which renders batches of multi-row VALUES in Python and
costs as much again as the INSERT.  On SQLite the rows can be told without it:
a new row's rowid is one more than the largest in the table (or than the
largest ever, with AUTOINCREMENT), so the rows an INSERT adds are exactly those
above the largest rowid before it, when

- the INSERT is plain (no ``OR REPLACE``-like prefix, no upsert, no RETURNING:
  the caller's or SQLAlchemy's own) and sets no rowid itself: a table keyed by
  one column (which may be the rowid) gets no value for it, nor a default;
- the table is an ordinary rowid table without triggers (a trigger could add
  rows of its own, or skip some), as the database itself declares it;
- the connection holds the write lock (:mod:`.writelock` took it) inside a
  transaction: no other connection can write between the read of the largest
  rowid and the INSERT (in autocommit mode the lock ends with each statement);
- the largest rowid is far from the top of its range, where SQLite would pick
  new rowids at random.

Anything else is returned by RETURNING as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa

from ..mapping import TableSpec
from .returning import plain_insert, sends_value
from .stored import SKIP_CAPTURE, fetch_tuples

__all__ = ["last_rowid", "rows_after"]

#: SQLite picks random rowids once the largest reaches 2**63 - 1: keep well below
_HIGHEST_SAFE: Final = 2**62
_ROWID_NAMES: Final = ("_rowid_", "rowid", "oid")
_WITHOUT_ROWID: Final = re.compile(r"\bwithout\s+rowid\b", re.IGNORECASE)
_OPTIONS: Final = {SKIP_CAPTURE: True}


def last_rowid(
    connection: sa.Connection,
    spec: TableSpec,
    statement: Any,
    parameters: Sequence[Mapping[str, Any]],
) -> tuple[str, int] | None:
    """The rowid column's name and the largest rowid before this INSERT, when the rows it
    adds will be exactly those above it (see the module); None when they may not be."""
    table = spec.table
    rowid = _rowid_name(table)
    if (
        rowid is None
        or connection.dialect.name != "sqlite"
        or not plain_insert(statement)
        or _sets_rowid(table, statement, parameters)
        or not _in_transaction(connection)
        or not _plain_rowid_table(connection, table)
    ):
        return None
    largest = connection.execute(
        sa.select(sa.func.max(sa.literal_column(rowid))).select_from(table),
        execution_options=_OPTIONS,
    ).scalar()
    largest = 0 if largest is None else int(largest)
    return (rowid, largest) if largest < _HIGHEST_SAFE else None


def rows_after(
    connection: sa.Connection, columns: Sequence[sa.ColumnElement[Any]], rowid: tuple[str, int]
) -> list[tuple[Any, ...]]:
    """The rows above the rowid :func:`last_rowid` read, ``columns`` of each by position,
    in the order they were added."""
    name, largest = rowid
    column: sa.ColumnClause[Any] = sa.literal_column(name)
    return fetch_tuples(connection, sa.select(*columns).where(column > largest).order_by(column))


def _in_transaction(connection: sa.Connection) -> bool:
    """Whether SQLite itself is inside a transaction on this connection, not only SQLAlchemy
    (a connection in autocommit mode is in none)."""
    try:  # sqlite3's and aiosqlite's connections tell
        return bool(connection.connection.driver_connection.in_transaction)  # type: ignore[union-attr]
    except Exception:  # another driver, or one that won't tell from this thread
        return False


def _rowid_name(table: sa.Table) -> str | None:
    """A name of the rowid that no column of the table hides."""
    taken = {column.name.lower() for column in table.columns}
    return next((name for name in _ROWID_NAMES if name not in taken), None)


def _sets_rowid(table: sa.Table, statement: Any, parameters: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the INSERT may give a row its rowid: a one-column key (an INTEGER one is
    the rowid) with a value sent (even None: not worth telling apart) or a default."""
    if len(table.primary_key.columns) != 1:
        return False  # a composite key is never the rowid
    (key,) = table.primary_key.columns
    return (
        key.default is not None
        or key.server_default is not None
        or sends_value(key, statement, parameters)
    )


def _plain_rowid_table(connection: sa.Connection, table: sa.Table) -> bool:
    """Whether the database holds the table as an ordinary rowid table without triggers.

    Asked of the database, not of the metadata: the schema table lists the table
    and every trigger on it (temporary triggers in ``temp``'s).
    """
    quote = connection.dialect.identifier_preparer.quote_schema
    schema = connection.schema_for_object(table)  # (that of the schema_translate_map)
    schemas = [quote(schema)] if schema else ["main"]
    query = " UNION ALL ".join(
        f"SELECT type, sql FROM {schema}.sqlite_master WHERE tbl_name = ? COLLATE NOCASE"
        for schema in (*schemas, "temp")
    )
    found = connection.exec_driver_sql(
        query, (table.name,) * (len(schemas) + 1), execution_options=_OPTIONS
    ).all()
    tables = [sql or "" for kind, sql in found if kind == "table"]
    return (
        len(tables) == 1
        and not tables[0].lstrip().upper().startswith("CREATE VIRTUAL")
        and _WITHOUT_ROWID.search(tables[0]) is None
        and all(kind in ("table", "index") for kind, _ in found)
    )
