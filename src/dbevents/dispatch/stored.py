"""Reading the rows a statement touches, and recording them into the session buffers.

A statement may touch a hundred thousand rows, so rows are read as tuples and
turned into dicts with ``zip`` (never through ``Row._mapping`` per value), and
only the columns that something needs are read: the primary key when nothing
wants values (the ``keys`` capture level, or callbacks that only need to know
which rows were written).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.sql import operators

from ..changes import Op
from ..mapping import TableSpec

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = [
    "SKIP_CAPTURE",
    "Diffs",
    "inserted_rows",
    "keys_of",
    "pk_of",
    "read_diffs",
    "read_matching",
    "read_old_rows",
    "read_rows",
    "record_diffs",
    "record_keys",
    "record_rows",
    "record_update",
    "returned_diffs",
    "rows_by_key",
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


def read_matching(
    connection: sa.Connection,
    spec: TableSpec,
    names: Sequence[str],
    values: Sequence[tuple[Any, ...]],
) -> dict[tuple[Any, ...], Row]:
    """The rows whose ``names`` columns hold one of ``values`` (locked where the database
    can), whole, by primary key."""
    table = spec.table
    by = [table.c[name] for name in names]
    lock = connection.dialect.name != "sqlite"
    return _select_in(connection, spec, list(table.columns), by, values, lock)


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
    columns: Sequence[sa.ColumnElement[Any]],
    result: sa.CursorResult[Any],
    *,
    names: Sequence[str] | None = None,
) -> list[Row] | None:
    """The rows RETURNING gave back (only those of ``columns`` it returned), or None without it.

    :param names: the keys of the rows, one per column, instead of the column names.
    """
    returned = _returned(result)
    if returned is None:
        return None
    if not returned:
        return []
    mapping = returned[0]._mapping
    # ORM statements key their rows by name, not by column object; an explicit RETURNING
    # of the caller's may hold only some columns
    at = {key: i for i, key in enumerate(mapping.keys())}
    if names is None:
        names = [column.name for column in columns]
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


def returned_diffs(
    spec: TableSpec,
    old_columns: Sequence[sa.ColumnElement[Any]],
    columns: Sequence[sa.ColumnElement[Any]],
    result: sa.CursorResult[Any],
) -> tuple[Diffs, list[tuple[Any, ...]]] | None:
    """The changes of an UPDATE that returned each row's old values next to its new ones.

    Pairs ``old_columns`` with ``columns`` by position, row by row, without a dict per
    row for what did not change.  Returns the changed rows and the keys of every row
    the UPDATE matched, or None when the rows are keyed otherwise than by name.
    """
    rows = _returned(result)
    if rows is None:
        return None
    if not rows:
        return [], []
    at = _positions(rows)
    pk_names = set(spec.pk)
    try:
        key_at = [at[name] for name in spec.pk]
        pairs = [
            (new.name, at[old.name], at[new.name])
            for old, new in zip(old_columns, columns, strict=True)
            if new.name not in pk_names
        ]
    except KeyError:
        return None
    names = [name for name, _, _ in pairs]
    keys = list(_picked(rows, key_at))
    olds, news = _picked(rows, [o for _, o, _ in pairs]), _picked(rows, [n for _, _, n in pairs])
    return _paired_diffs(names, zip(keys, olds, news, strict=True)), keys


def read_old_rows(
    connection: sa.Connection,
    columns: Sequence[sa.ColumnElement[Any]],
    where: Any,
    parameters: Mapping[str, Any],
) -> Sequence[Sequence[Any]]:
    """The rows a WHERE clause selects, ``columns`` by position (locked where the database
    can): an UPDATE's rows before it, to pair with what it returns (:func:`read_diffs`)."""
    query = sa.select(*columns)
    if where is not None:
        query = query.where(where)
    if connection.dialect.name != "sqlite":
        query = query.with_for_update()
    # kept as tuples, a few hundred Rows at a time: the garbage collector stops tracking
    # a tuple of plain values, while ten thousand Rows alive at once would each be
    # counted towards its next full collection
    rows: list[tuple[Any, ...]] = []
    for part in connection.execute(query, dict(parameters)).partitions(_CHUNK):
        rows += map(tuple, part)
    return rows


def read_diffs(
    spec: TableSpec,
    columns: Sequence[sa.ColumnElement[Any]],
    old_rows: Sequence[Sequence[Any]],
    result: sa.CursorResult[Any],
) -> tuple[Diffs, list[tuple[Any, ...]]] | None:
    """The changes of an UPDATE whose rows were read before it (:func:`read_old_rows`) and
    returned by it, paired by position; by key if the two came in different orders.

    Returns what :func:`returned_diffs` does, or None when the returned rows are keyed
    otherwise than by name.
    """
    if not old_rows:  # no row matched: nothing was returned
        return [], []
    rows = _returned(result)
    if rows is None:
        return None
    if not rows:
        return [], []
    at = _positions(rows)
    read_at = {column.name: i for i, column in enumerate(columns)}
    names = [column.name for column in columns if column.name not in spec.pk]
    try:
        keys = list(_picked(rows, [at[name] for name in spec.pk]))
        news = _picked(rows, [at[name] for name in names])
    except KeyError:
        return None
    old_keys = list(_picked(old_rows, [read_at[name] for name in spec.pk]))
    olds = _picked(old_rows, [read_at[name] for name in names])
    if old_keys == keys:  # the usual case: both in the table's order
        return _paired_diffs(names, zip(keys, olds, news, strict=True)), keys
    old_of = dict(zip(old_keys, olds, strict=True))
    paired = ((key, old_of[key], new) for key, new in zip(keys, news, strict=True) if key in old_of)
    return _paired_diffs(names, paired), keys


def _positions(rows: Sequence[sa.Row[Any]]) -> dict[str, int]:
    """Where each column is in rows RETURNING gave back, by the name it is keyed by."""
    return {key: i for i, key in enumerate(rows[0]._mapping.keys())}


def _picked(rows: Sequence[Sequence[Any]], positions: list[int]) -> Iterator[tuple[Any, ...]]:
    """These positions of each row, as tuples, one by one, without a Python call per row."""
    if not positions:
        return repeat((), len(rows))
    pick = map(operator.itemgetter(*positions), rows)
    return zip(pick) if len(positions) == 1 else pick


def _paired_diffs(
    names: Sequence[str], rows: Iterable[tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]]
) -> Diffs:
    """The changed rows among ``(key, old values, new values)``, the values tuples of ``names``.

    A hot loop: an unchanged row and a row whose every column changed are told by
    C-level comparisons; only the rest is compared column by column.  (Values read
    from the database are separate objects, so a column compared equal here is
    also what :func:`_diff_values` would call unchanged.)
    """
    diffs: Diffs = []
    eq = operator.eq
    for key, was, now in rows:
        try:
            if was == now:
                continue
            whole = not any(map(eq, was, now))
        except Exception:  # values whose __eq__ fails or is ambiguous: column by column
            whole = False
        if whole:
            # zip with any keyword costs a third of this loop; the tuples hold one value per name
            diffs += (key, dict(zip(names, was)), dict(zip(names, now)))  # noqa: B905
        else:
            changed = _diff_values(names, was, now)
            if changed is not None:
                diffs.append(key)
                diffs += changed
    return diffs


def _returned(result: sa.CursorResult[Any]) -> Sequence[sa.Row[Any]] | None:
    """The rows ``return_defaults()`` gave back, or None without RETURNING."""
    try:
        return result.returned_defaults_rows
    except sa.exc.InvalidRequestError:
        return None


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


#: updated rows, three items each: the primary key, and the columns it changed, old and new;
#: flat, since a tuple per row is one more object for the garbage collector to count, which
#: for a big statement means more full collections
Diffs = list[Any]


def record_rows(
    session: sa_orm.Session,
    states: Iterable[SessionState],
    spec: TableSpec,
    op: Op,
    before: Mapping[tuple[Any, ...], Row] | None,
    after: Iterable[Row] | Mapping[tuple[Any, ...], Row] | None,
) -> None:
    """Record the rows one INSERT or DELETE wrote into each capturing session's buffer."""
    model = spec.mapped_class()
    if op in (Op.INSERT, Op.LINK):
        assert after is not None
        rows = list(after.values() if isinstance(after, Mapping) else after)
        pks = keys_of(spec, rows)
    else:
        assert before is not None
        pks, rows = list(before), list(before.values())
    for st in states:
        level = st.events.level_of_table(spec)
        if level == "off":
            continue
        buffer = st.buffer(session)
        if op in (Op.INSERT, Op.LINK):
            buffer.add_rows(spec.name, op, model, pks, None, rows if level != "keys" else None)
        else:
            buffer.add_rows(spec.name, op, model, pks, rows if level == "old+new" else None, None)


def keys_of(spec: TableSpec, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The primary key of each row (:func:`pk_of`), without a Python call per row."""
    if len(spec.pk) == 1:
        (name,) = spec.pk
        return [(row.get(name),) for row in rows]
    return [pk_of(spec, row) for row in rows]


def record_update(
    session: sa_orm.Session,
    states: Sequence[SessionState],
    spec: TableSpec,
    before: Mapping[tuple[Any, ...], Row],
    after: Mapping[tuple[Any, ...], Row],
    *,
    sets_key: bool,
) -> None:
    """Record the rows one UPDATE changed, read before and after it and paired by key.

    :param sets_key: the UPDATE sets primary key columns.  A row whose key changed is
        a different row to every consumer keyed by it: its old key is recorded as
        deleted and its new one as inserted, as on the unit of work.
    """
    record_diffs(session, states, spec, _diff_rows(before, after))
    if sets_key:
        gone = {pk: row for pk, row in before.items() if pk not in after}
        came = [row for pk, row in after.items() if pk not in before]
        record_rows(session, states, spec, Op.DELETE, gone, None)
        record_rows(session, states, spec, Op.INSERT, None, came)


def record_diffs(
    session: sa_orm.Session, states: Iterable[SessionState], spec: TableSpec, diffs: Diffs
) -> None:
    """Record updated rows into each capturing session's buffer."""
    model = spec.mapped_class()
    pks, olds, news = diffs[0::3], diffs[1::3], diffs[2::3]
    for st in states:
        level = st.events.level_of_table(spec)
        if level == "off":
            continue
        st.buffer(session).add_rows(
            spec.name,
            Op.UPDATE,
            model,
            pks,
            olds if level == "old+new" else None,
            news if level != "keys" else None,
        )


def _diff_rows(
    before: Mapping[tuple[Any, ...], Row], after: Mapping[tuple[Any, ...], Row]
) -> Diffs:
    """The changed columns of each row read before and after an UPDATE, paired by key."""
    diffs: Diffs = []
    new_of = after.get
    for pk, old in before.items():
        new = new_of(pk)
        if new is not None:
            olds = [old.get(column) for column in new]
            changed = _diff_values(list(new), olds, new.values())
            if changed is not None:
                diffs.append(pk)
                diffs += changed
    return diffs


def _diff_values(
    names: Sequence[str], olds: Iterable[Any], news: Iterable[Any]
) -> tuple[Row, Row] | None:
    """The columns whose value changed, old and new; None when none did (a hot loop: kept flat)."""
    old_part: Row = {}
    new_part: Row = {}
    for name, was, value in zip(names, olds, news, strict=True):
        if was is value:
            continue
        try:
            if was == value:
                continue
        except Exception:  # values whose __eq__ fails or is ambiguous: changed
            pass
        old_part[name] = was
        new_part[name] = value
    return (old_part, new_part) if new_part else None


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
            st.buffer(session).add_rows(spec.name, op, model, pks, None, None)
