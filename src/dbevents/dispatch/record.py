"""Pairing the rows a statement changed, before and after, and recording them into the
session buffers.

An UPDATE's rows come back from RETURNING as tuples, next to their old values
(PostgreSQL) or to the rows read before it; a row is compared as a whole first,
and only a row that changed in some columns but not all, column by column.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from ..changes import Op
from ..mapping import TableSpec, column_name
from .stored import Row, keys_of, returning_rows

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = [
    "Diffs",
    "record_diffs",
    "record_keys",
    "record_rows",
    "record_update",
    "update_diffs",
]


#: updated rows, three items each: the primary key, and the columns it changed, old and new;
#: flat, since a tuple per row is one more object for the garbage collector to count, which
#: for a big statement means more full collections
Diffs = list[Any]


def update_diffs(
    spec: TableSpec,
    columns: Sequence[sa.ColumnElement[Any]],
    result: sa.CursorResult[Any],
    *,
    old_columns: Sequence[sa.ColumnElement[Any]] = (),
    old_rows: Sequence[Sequence[Any]] | None = None,
    set_to: tuple[Any, ...] | None = None,
) -> tuple[Diffs, list[tuple[Any, ...]]] | None:
    """The changes of an UPDATE that returned ``columns`` of each row it changed.

    The old values are either returned next to the new ones (``old_columns``, one
    for each of ``columns``: PostgreSQL), or were read before it (``old_rows``,
    ``columns`` by position: :func:`~.stored.read_tuples`), then paired by position,
    by key if the two came in different orders.  When the UPDATE SETs plain values
    (``set_to``, one for each non-key column), it returned nothing: those are the new
    values of every row read.  Returns the changed rows and the keys of every row the
    UPDATE matched, or None when the rows are keyed otherwise than by name.
    """
    if old_rows is not None and not old_rows:  # no row matched: nothing was returned
        return [], []
    names = [name for name in map(column_name, columns) if name not in spec.pk]
    if old_rows is not None and set_to is not None:
        read_at = {column_name(column): i for i, column in enumerate(columns)}
        keys = list(_picked(old_rows, [read_at[name] for name in spec.pk]))
        olds = _picked(old_rows, [read_at[name] for name in names])
        return _paired_diffs(names, zip(keys, olds, repeat(set_to))), keys
    rows = returning_rows(result)
    if rows is None:
        return None
    if not rows:
        return [], []
    at = {key: i for i, key in enumerate(rows[0]._mapping.keys())}
    try:
        keys = list(_picked(rows, [at[name] for name in spec.pk]))
        news = _picked(rows, [at[name] for name in names])
        if old_rows is None:
            old_at = {
                column_name(new): at[old.name]
                for old, new in zip(old_columns, columns, strict=True)
            }
            olds = _picked(rows, [old_at[name] for name in names])
            return _paired_diffs(names, zip(keys, olds, news, strict=True)), keys
    except KeyError:
        return None
    read_at = {column_name(column): i for i, column in enumerate(columns)}
    old_keys = list(_picked(old_rows, [read_at[name] for name in spec.pk]))
    olds = _picked(old_rows, [read_at[name] for name in names])
    if old_keys == keys:  # the usual case: both in the table's order
        return _paired_diffs(names, zip(keys, olds, news, strict=True)), keys
    old_of = dict(zip(old_keys, olds, strict=True))
    paired = ((key, old_of[key], new) for key, new in zip(keys, news, strict=True) if key in old_of)
    return _paired_diffs(names, paired), keys


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
    also what :func:`_diff_values` would call unchanged.)  Rows given the very same
    new values tuple (an UPDATE of plain values) share one dict of them: recorded
    rows are values that nothing changes in place.
    """
    diffs: Diffs = []
    eq, ne = operator.eq, operator.ne
    shared: tuple[Any, ...] | None = None
    shared_row: Row = {}
    for key, was, now in rows:
        try:
            if was == now:
                continue
            # (a NaN is unequal to itself, and to the NaN it was rewritten with: the row
            # holding one is compared column by column)
            whole = not any(map(eq, was, now)) and not any(map(ne, was, was))
        except Exception:  # values whose __eq__ fails or is ambiguous: column by column
            whole = False
        if whole:
            # zip with any keyword costs a third of this loop; the tuples hold one value per name
            if now is not shared:
                shared, shared_row = now, dict(zip(names, now))  # noqa: B905
            diffs += (key, dict(zip(names, was)), shared_row)  # noqa: B905
        else:
            changed = _diff_values(names, was, now)
            if changed is not None:
                diffs.append(key)
                diffs += changed
    return diffs


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
        deleted and its new one as inserted, as on the unit of work (an association
        row as unlinked and linked, so that it nets with its other links).
    """
    record_diffs(session, states, spec, _diff_rows(before, after))
    if sets_key:
        gone = {pk: row for pk, row in before.items() if pk not in after}
        came = [row for pk, row in after.items() if pk not in before]
        link = spec.link
        record_rows(session, states, spec, Op.UNLINK if link else Op.DELETE, gone, None)
        record_rows(session, states, spec, Op.LINK if link else Op.INSERT, None, came)


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
            # (capture.same, inlined: NaN over NaN is the same)
            if was == value or (was != was and value != value):
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
