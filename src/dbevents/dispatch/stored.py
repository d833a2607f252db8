"""Reading the rows a statement touches.

A statement may touch a hundred thousand rows, so rows are read as tuples and
turned into dicts with ``zip`` (never through ``Row._mapping`` per value), and
only the columns that something needs are read: the primary key when nothing
wants values (the ``keys`` capture level, or callbacks that only need to know
which rows were written).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.sql import operators

from ..mapping import TableSpec, column_name
from .sent import sent_rows

__all__ = [
    "SKIP_CAPTURE",
    "Row",
    "equality_criteria",
    "fetch_tuples",
    "inserted_rows",
    "keys_of",
    "known_rowcount",
    "locked",
    "pk_of",
    "read_matching",
    "read_rows",
    "read_tuples",
    "returning_rows",
    "returned_rows",
    "rows_by_key",
    "table_name",
]

#: execution option: this statement is dbevents' own bookkeeping (the outbox, load):
#: neither captured nor reported as raw SQL, on a statement or on a whole connection
SKIP_CAPTURE: Final = "dbevents_skip_capture"
_CHUNK: Final = 500

Row = dict[str, Any]


def locked(
    query: sa.Select[Any], connection: sa.Connection, *, keys_change: bool
) -> sa.Select[Any]:
    """``query`` locking the rows it reads as the statement about to write them will.

    An UPDATE (an upsert's too) that sets no column of a unique key takes PostgreSQL's
    ``FOR NO KEY UPDATE``, which still lets other transactions insert rows that refer
    to the ones it updates; a DELETE, or an UPDATE that may set such a column
    (``keys_change``: :func:`~.returning.changes_keys`), takes ``FOR UPDATE``.  Either
    conflicts with every other writer of the rows, so the values read are those the
    statement changes.  SQLite locks no rows: its write lock is taken first
    (:mod:`.writelock`).
    """
    if connection.dialect.name == "sqlite":
        return query
    return query.with_for_update(key_share=not keys_change)


def table_name(connection: sa.Connection, table: sa.Table) -> str:
    """``table``'s name as SQL text on ``connection``, in the schema its
    ``schema_translate_map`` gives the table: the table a statement of it writes.

    For the SQL dbevents writes as text, which SQLAlchemy does not translate
    (statements made of the table are translated as they compile).
    """
    preparer = connection.dialect.identifier_preparer
    schema = connection.schema_for_object(table)
    name = preparer.quote(table.name)
    return f"{preparer.quote_schema(schema)}.{name}" if schema else name


def pk_of(spec: TableSpec, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple([row.get(name) for name in spec.pk])


def keys_of(spec: TableSpec, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The primary key of each row (:func:`pk_of`), without a Python call per row."""
    if len(spec.pk) == 1:
        (name,) = spec.pk
        return [(row.get(name),) for row in rows]
    return [pk_of(spec, row) for row in rows]


def read_rows(
    connection: sa.Connection,
    spec: TableSpec,
    where: Any,
    parameters: Sequence[Mapping[str, Any]],
    *,
    pks: Sequence[tuple[Any, ...]] | None = None,
    columns: Sequence[sa.ColumnElement[Any]] | None = None,
    keys_change: bool = True,
) -> dict[tuple[Any, ...], Row]:
    """The rows a WHERE clause selects, :func:`locked` for the UPDATE or DELETE about
    to write them, by primary key.

    :param pks: read these rows instead, unlocked: rows written already.
    :param columns: read only these columns (they include the primary key).
    """
    table = spec.table
    columns = list(table.columns) if columns is None else list(columns)
    if pks is not None:
        return _select_in(connection, spec, columns, [table.c[n] for n in spec.pk], pks, lock=False)
    criteria = equality_criteria(table, where)
    if (
        criteria is not None
        and parameters
        and all(all(key in p for key in criteria.values()) for p in parameters)
    ):
        # the unit of work's many-to-many DELETE: one row per parameter set
        values = [tuple(p[key] for key in criteria.values()) for p in parameters]
        if set(criteria) == set(spec.columns):
            rows = (dict(zip(criteria, v, strict=True)) for v in values)
            return {pk_of(spec, row): row for row in rows}
        by = [table.c[name] for name in criteria]
        return _select_in(connection, spec, columns, by, values, lock=True, keys_change=keys_change)
    found: dict[tuple[Any, ...], Row] = {}
    for p in parameters or [{}]:
        read = read_tuples(connection, columns, where, p, keys_change=keys_change)
        _collect(spec, columns, read, found)
    return found


def read_matching(
    connection: sa.Connection,
    spec: TableSpec,
    names: Sequence[str],
    values: Sequence[tuple[Any, ...]],
    *,
    keys_change: bool = True,
    lock: bool = True,
) -> dict[tuple[Any, ...], Row]:
    """The rows whose ``names`` columns hold one of ``values``, whole, by primary key:
    those an upsert may update, :func:`locked` as it would lock them (unless not ``lock``)."""
    table = spec.table
    by = [table.c[name] for name in names]
    columns = list(table.columns)
    return _select_in(connection, spec, columns, by, values, lock=lock, keys_change=keys_change)


def _select_in(
    connection: sa.Connection,
    spec: TableSpec,
    columns: list[Any],
    by: list[sa.Column[Any]],
    values: Sequence[tuple[Any, ...]],
    *,
    lock: bool,
    keys_change: bool = True,
) -> dict[tuple[Any, ...], Row]:
    found: dict[tuple[Any, ...], Row] = {}
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        where = by[0].in_([v[0] for v in chunk]) if len(by) == 1 else sa.tuple_(*by).in_(chunk)
        query = sa.select(*columns).where(where)
        if lock:
            query = locked(query, connection, keys_change=keys_change)
        result = connection.execute(query, execution_options={SKIP_CAPTURE: True})
        _collect(spec, columns, result, found)
    return found


def rows_by_key(
    spec: TableSpec, columns: Sequence[sa.ColumnElement[Any]], rows: Iterable[Sequence[Any]]
) -> dict[tuple[Any, ...], Row]:
    """Rows of ``columns`` by position, as dicts by primary key."""
    found: dict[tuple[Any, ...], Row] = {}
    _collect(spec, columns, rows, found)
    return found


def _collect(
    spec: TableSpec,
    columns: Sequence[sa.ColumnElement[Any]],
    rows: Iterable[Sequence[Any]],
    found: dict[tuple[Any, ...], Row],
) -> None:
    names = [column_name(column) for column in columns]
    at = [names.index(name) for name in spec.pk]
    if len(at) == 1:
        (i,) = at
        for values in rows:
            found[(values[i],)] = dict(zip(names, values, strict=True))
    else:
        for values in rows:
            found[tuple([values[i] for i in at])] = dict(zip(names, values, strict=True))


def equality_criteria(table: sa.Table, where: Any) -> dict[str, str] | None:
    """``col = :param AND ...`` -> {column name: parameter key}, else None."""
    if where is None:
        return None
    clauses = where.clauses if isinstance(where, sa.BooleanClauseList) else [where]
    if isinstance(where, sa.BooleanClauseList) and where.operator is not operators.and_:
        return None
    criteria: dict[str, str] = {}
    for clause in clauses:
        if not isinstance(clause, sa.BinaryExpression) or clause.operator is not operators.eq:
            return None
        left, right = clause.left, clause.right
        if not (isinstance(left, sa.Column) and left.table is table):
            return None
        if not isinstance(right, sa.BindParameter) or right.value is not None:
            return None
        criteria[column_name(left)] = right.key
    return criteria or None


def read_tuples(
    connection: sa.Connection,
    columns: Sequence[sa.ColumnElement[Any]],
    where: Any,
    parameters: Mapping[str, Any],
    *,
    keys_change: bool = True,
) -> list[tuple[Any, ...]]:
    """The rows a WHERE clause selects, ``columns`` by position: what an UPDATE or DELETE
    will change, read before it and :func:`locked` for it."""
    query = sa.select(*columns)
    if where is not None:
        query = query.where(where)
    return fetch_tuples(connection, locked(query, connection, keys_change=keys_change), parameters)


def fetch_tuples(
    connection: sa.Connection, query: sa.Select[Any], parameters: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows of a query, as tuples."""
    # kept as tuples, a few hundred Rows at a time: the garbage collector stops tracking
    # a tuple of plain values, while ten thousand Rows alive at once would each be
    # counted towards its next full collection
    rows: list[tuple[Any, ...]] = []
    for part in connection.execute(query, dict(parameters or {})).partitions(_CHUNK):
        rows += map(tuple, part)
    return rows


def returned_rows(
    columns: Sequence[sa.ColumnElement[Any]],
    result: sa.CursorResult[Any],
    *,
    names: Sequence[str] | None = None,
) -> list[Row] | None:
    """The rows RETURNING gave back (only those of ``columns`` it returned), or None without it.

    :param names: the keys of the rows, one per column, instead of the column names.
    """
    returned = returning_rows(result)
    if returned is None:
        return None
    if not returned:
        return []
    mapping = returned[0]._mapping
    # ORM statements key their rows by name, not by column object; an explicit RETURNING
    # of the caller's may hold only some columns
    at = {key: i for i, key in enumerate(mapping.keys())}
    if names is None:
        names = [column_name(column) for column in columns]
    keyed = [
        (name, column.name if column.name in at else column)
        for name, column in zip(names, columns, strict=True)
        if column.name in at or column in mapping
    ]
    if any(not isinstance(key, str) for _, key in keyed):  # keyed by the column object alone
        return [{name: record._mapping[key] for name, key in keyed} for record in returned]
    if not keyed:
        return [{} for _ in returned]
    row_keys = [name for name, _ in keyed]
    positions = [at[key] for _, key in keyed]
    if positions == list(range(len(at))):  # the usual case: RETURNING exactly these, in order
        return [dict(zip(row_keys, record, strict=True)) for record in returned]
    if len(positions) == 1:
        ((position, key),) = zip(positions, row_keys, strict=True)
        return [{key: record[position]} for record in returned]
    # one C-level pick per row rather than a lookup per column
    pick = operator.itemgetter(*positions)
    return [dict(zip(row_keys, pick(record), strict=True)) for record in returned]


def returning_rows(result: sa.CursorResult[Any]) -> Sequence[sa.Row[Any]] | None:
    """The rows ``return_defaults()`` gave back, or None without RETURNING."""
    try:
        return result.returned_defaults_rows
    except sa.exc.InvalidRequestError:
        return None


def inserted_rows(
    connection: sa.Connection,
    spec: TableSpec,
    columns: Sequence[sa.ColumnElement[Any]],
    statement: Any,
    result: sa.CursorResult[Any],
    *,
    keys_only: bool = False,
    sent: bool | None = True,
) -> list[Row] | None:
    """The rows ``statement`` inserted, as stored: from RETURNING, else from what it sent,
    then re-read; None when neither tells them.

    :param sent: whether the INSERT adds a row for each one it sends (a plain INSERT), or
        may leave some out (False: a prefix such as ``OR IGNORE``; all or none of them are
        told by the row count); None when the values sent don't tell what it wrote (an
        upsert: see :mod:`.upsert`).
    """
    rows = returned_rows(columns, result)
    if rows and any(name not in rows[0] for name in spec.pk):
        # the caller's RETURNING, and SQLAlchemy's, leave out a key that was sent
        rows = None
    if rows is None:
        if sent is None:
            return None
        rows = sent_rows(spec, statement, result)
        if not sent:
            count = known_rowcount(result)
            if count == 0:
                return []
            if count != len(rows):
                return None  # some of them, or can't be told which
        if not all(_keyed(spec, row) for row in rows):
            return None  # a row without its key can't be told
    if keys_only:
        return rows
    # server defaults the statement did not return: one SELECT for the rows that lack them
    width = len(spec.columns)
    partial = [pk for row in rows if len(row) < width and None not in (pk := pk_of(spec, row))]
    if partial:
        stored = read_rows(connection, spec, None, [], pks=partial)
        rows = [stored.get(pk_of(spec, row), row) if len(row) < width else row for row in rows]
    return rows


def _keyed(spec: TableSpec, row: Row) -> bool:
    """Whether a row sent holds its key: a value for each primary key column, or, in a table
    without a primary key (keyed by all its columns), each column (NULL is a value there)."""
    if spec.table.primary_key.columns:
        return all(row.get(name) is not None for name in spec.pk)
    return all(name in row for name in spec.pk)


def known_rowcount(result: sa.CursorResult[Any]) -> int | None:
    """How many rows a statement wrote, or None when the driver can't tell: SQLite counts
    the rows of a statement with RETURNING only as they are fetched (by the caller, whose
    they are), and an executemany is counted as each driver pleases."""
    context = result.context
    if context.executemany or (result.returns_rows and context.dialect.name == "sqlite"):
        return None
    count = result.rowcount
    return count if count >= 0 else None
