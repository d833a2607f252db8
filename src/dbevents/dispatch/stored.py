"""Reading the rows a statement touches, and recording them into the session buffers.

A statement may touch a hundred thousand rows, so rows are read as tuples and
turned into dicts with ``zip`` (never through ``Row._mapping`` per value), and
only the columns that something needs are read: the primary key when nothing
wants values (the ``keys`` capture level, or callbacks that only need to know
which rows were written).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.sql import operators

from ..changes import Op
from ..mapping import TableSpec

if TYPE_CHECKING:
    from ..capture import Buffer
    from ..session import SessionState

__all__ = [
    "SKIP_CAPTURE",
    "inserted_rows",
    "pk_of",
    "read_rows",
    "record_keys",
    "record_rows",
    "returned_rows",
]

#: execution option: this statement is dbevents' own bookkeeping (the outbox, load):
#: neither captured nor reported as raw SQL, on a statement or on a whole connection
SKIP_CAPTURE: Final = "dbevents_skip_capture"
_CHUNK: Final = 500

Row = dict[str, Any]


def pk_of(spec: TableSpec, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple([row.get(name) for name in spec.pk])


def read_rows(
    connection: sa.Connection,
    spec: TableSpec,
    where: Any,
    parameters: Sequence[Mapping[str, Any]],
    *,
    pks: Sequence[tuple[Any, ...]] | None = None,
    columns: Sequence[sa.ColumnElement[Any]] | None = None,
) -> dict[tuple[Any, ...], Row]:
    """The rows a WHERE clause selects (locked on databases that can), by primary key.

    :param pks: read these rows instead.
    :param columns: read only these columns (they include the primary key).
    """
    table = spec.table
    lock = connection.dialect.name != "sqlite"
    columns = list(table.columns) if columns is None else list(columns)
    if pks is not None:
        return _select_in(connection, spec, columns, [table.c[n] for n in spec.pk], pks, False)
    criteria = _equality_criteria(table, where)
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
        return _select_in(connection, spec, columns, by, values, lock)
    query = sa.select(*columns)
    if where is not None:
        query = query.where(where)
    if lock:
        query = query.with_for_update()
    found: dict[tuple[Any, ...], Row] = {}
    for p in parameters or [{}]:
        _collect(spec, columns, connection.execute(query, dict(p)), found)
    return found


def _select_in(
    connection: sa.Connection,
    spec: TableSpec,
    columns: list[Any],
    by: list[sa.Column[Any]],
    values: Sequence[tuple[Any, ...]],
    lock: bool,
) -> dict[tuple[Any, ...], Row]:
    found: dict[tuple[Any, ...], Row] = {}
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        where = by[0].in_([v[0] for v in chunk]) if len(by) == 1 else sa.tuple_(*by).in_(chunk)
        query = sa.select(*columns).where(where)
        if lock:
            query = query.with_for_update()
        result = connection.execute(query, execution_options={SKIP_CAPTURE: True})
        _collect(spec, columns, result, found)
    return found


def _collect(
    spec: TableSpec,
    columns: Sequence[sa.ColumnElement[Any]],
    rows: Iterable[Sequence[Any]],
    found: dict[tuple[Any, ...], Row],
) -> None:
    names = [column.name for column in columns]
    at = [names.index(name) for name in spec.pk]
    if len(at) == 1:
        (i,) = at
        for values in rows:
            found[(values[i],)] = dict(zip(names, values, strict=True))
    else:
        for values in rows:
            found[tuple([values[i] for i in at])] = dict(zip(names, values, strict=True))


def _equality_criteria(table: sa.Table, where: Any) -> dict[str, str] | None:
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
        criteria[left.name] = right.key
    return criteria or None


def returned_rows(
    columns: Sequence[sa.ColumnElement[Any]], result: sa.CursorResult[Any]
) -> list[Row] | None:
    """The rows RETURNING gave back (only those of ``columns`` it returned), or None without it."""
    try:
        returned = result.returned_defaults_rows
    except sa.exc.InvalidRequestError:
        return None
    if returned is None:
        return None
    if not returned:
        return []
    mapping = returned[0]._mapping
    # ORM statements key their rows by name, not by column object; an explicit RETURNING
    # of the caller's may hold only some columns
    keys = [
        (column.name, column if column in mapping else column.name)
        for column in columns
        if column in mapping or column.name in mapping
    ]
    names = [name for name, _ in keys]
    if list(mapping.keys()) == names:  # the usual case: RETURNING exactly these, in order
        return [dict(zip(names, record, strict=True)) for record in returned]
    return [{name: record._mapping[key] for name, key in keys} for record in returned]


def inserted_rows(
    connection: sa.Connection,
    spec: TableSpec,
    columns: Sequence[sa.ColumnElement[Any]],
    result: sa.CursorResult[Any],
    *,
    keys_only: bool = False,
) -> list[Row]:
    """The inserted rows as stored: from RETURNING, else from what was sent, then re-read."""
    rows = returned_rows(columns, result)
    if rows is None and result.rowcount == 0:
        rows = []
    if rows is None:  # no RETURNING: the values sent, and the key where the driver tells it
        compiled = result.context.compiled_parameters  # type: ignore[attr-defined, unused-ignore]
        try:
            keys: Iterable[Any] = result.inserted_primary_key_rows
        except sa.exc.InvalidRequestError:
            keys = [None] * len(compiled)
        rows = []
        for params, key in zip(compiled, keys, strict=False):
            row = {c.name: params[c.key] for c in spec.table.columns if c.key in params}
            for column, value in zip(spec.table.primary_key.columns, key or (), strict=False):
                if value is not None:
                    row[column.name] = value
            if any(row.get(name) is not None for name in spec.pk):  # else not identifiable
                rows.append(row)
    if keys_only:
        return rows
    # server defaults the statement did not return: one SELECT for the rows that lack them
    width = len(spec.columns)
    partial = [pk for row in rows if len(row) < width and None not in (pk := pk_of(spec, row))]
    if partial:
        stored = read_rows(connection, spec, None, [], pks=partial)
        rows = [stored.get(pk_of(spec, row), row) if len(row) < width else row for row in rows]
    return rows


def record_rows(
    session: sa_orm.Session,
    states: Iterable[SessionState],
    spec: TableSpec,
    op: Op,
    before: Mapping[tuple[Any, ...], Row] | None,
    after: Iterable[Row] | Mapping[tuple[Any, ...], Row] | None,
) -> None:
    """Record row changes of one statement into each capturing session's buffer."""
    model = spec.mapped_class()
    for st in states:
        level = st.events.level_of_table(spec)
        if level == "off":
            continue
        buffer = st.buffer(session)
        keep_new = level != "keys"
        keep_old = level == "old+new"
        if op in (Op.INSERT, Op.LINK):
            assert after is not None
            for row in after.values() if isinstance(after, Mapping) else after:
                buffer.add(spec.name, pk_of(spec, row), op, model, None, row if keep_new else None)
        elif op is Op.UPDATE:
            assert before is not None and isinstance(after, Mapping)
            _record_updates(buffer, spec, model, before, after, keep_old, keep_new)
        else:
            assert before is not None
            for pk, old in before.items():
                buffer.add(spec.name, pk, op, model, old if keep_old else None, None)


def _record_updates(
    buffer: Buffer,
    spec: TableSpec,
    model: type[Any] | None,
    before: Mapping[tuple[Any, ...], Row],
    after: Mapping[tuple[Any, ...], Row],
    keep_old: bool,
    keep_new: bool,
) -> None:
    """Record the columns whose value changed, old and new, per row (a hot loop: kept flat)."""
    name, add, new_of = spec.name, buffer.add, after.get
    for pk, old in before.items():
        new = new_of(pk)
        if new is None:
            continue
        old_part: Row = {}
        new_part: Row = {}
        for column, value in new.items():
            was = old.get(column)
            if was is value:
                continue
            try:
                if was == value:
                    continue
            except Exception:  # values whose __eq__ fails or is ambiguous: changed
                pass
            old_part[column] = was
            new_part[column] = value
        if new_part:
            add(
                name,
                pk,
                Op.UPDATE,
                model,
                old_part if keep_old else None,
                new_part if keep_new else None,
            )


def record_keys(
    session: sa_orm.Session,
    states: Iterable[SessionState],
    spec: TableSpec,
    op: Op,
    pks: Iterable[tuple[Any, ...]],
) -> None:
    """Record row changes known by primary key only (every capturing level is ``keys``)."""
    model = spec.mapped_class()
    pks = list(pks)
    for st in states:
        if st.events.level_of_table(spec) != "off":
            buffer = st.buffer(session)
            for pk in pks:
                buffer.add(spec.name, pk, op, model, None, None)
