"""Upserts: ``INSERT … ON CONFLICT DO UPDATE`` and ``INSERT … ON DUPLICATE KEY UPDATE``.

To SQLAlchemy an upsert is an INSERT, and RETURNING gives back the rows it
inserted and the rows it updated alike, as stored.  So before it runs, the rows
it may update are read (locked where the database can): those holding, in the
unique key the statement names, a value it sends.  A returned row that was read
is an update, told with its old values; any other is an insert.

An upsert whose RETURNING gives dbevents nothing (the caller's own, which leaves
no room for dbevents', or none at all) has its rows read again after it, by the
same key values: a row that was not there before is an insert, and one that was
there and changed is an update.  Read before it too is then an ``ON CONFLICT DO
NOTHING``, whose rows only that tells apart from those it left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, final

import sqlalchemy as sa

from .._compat import upsert_clause
from ..mapping import TableSpec
from .sent import AS_SQL, sent_values
from .stored import Row, read_matching, read_rows

__all__ = ["Conflicts", "KeyValues", "conflicting_rows", "upserted_rows"]


#: unique keys, each as its column names and the distinct values the rows send for them
KeyValues = list[tuple[Sequence[str], list[tuple[Any, ...]]]]


@final
class Conflicts:
    """What an upsert may conflict with: the rows read before it, and the key values to
    read its rows by again after it."""

    __slots__ = ("before", "keys")

    def __init__(self, before: dict[tuple[Any, ...], Row], keys: KeyValues | None) -> None:
        #: the rows it may update (or leave alone), as they were, by primary key
        self.before = before
        #: the key values that find each row it writes again (see :func:`upserted_rows`);
        #: None when it returns its rows itself, or when some row can't be found so
        self.keys = keys


def conflicting_rows(
    connection: sa.Connection,
    spec: TableSpec,
    statement: Any,
    parameters: Sequence[Mapping[str, Any]],
    *,
    keys_change: bool,
    changed: set[str] | None,
    returns_rows: bool,
) -> Conflicts | None:
    """The rows an upsert may update, and how to find its rows again (:class:`Conflicts`);
    None when ``statement`` is no upsert, or one that can't update and returns its rows.

    :param keys_change: it may set a column of a unique key (see :func:`~.stored.locked`).
    :param changed: the columns its DO UPDATE sets, None when that can't be told.
    :param returns_rows: RETURNING will give dbevents the rows it writes (else they are
        read again after it).
    """
    clause = upsert_clause(statement)
    if clause is None:
        return None
    nothing = type(clause).__name__ == "OnConflictDoNothing"
    if nothing and returns_rows:
        return None
    rows = sent_values(spec, statement, parameters)
    sent = [
        (names, [tuple([row.get(name, AS_SQL) for name in names]) for row in rows])
        for names in _conflict_keys(spec, clause)
    ]
    keys: KeyValues = []
    for names, values in sent:
        known = {value for value in values if _known(value)}
        if known:
            keys.append((names, sorted(known, key=repr)))
    before: dict[tuple[Any, ...], Row] = {}
    for names, matching in keys:
        # DO NOTHING locks no row: its rows are read only to be told apart afterwards
        read = read_matching(
            connection, spec, names, matching, keys_change=keys_change, lock=not nothing
        )
        before.update(read)
    findable = all(any(_known(values[i]) for _, values in sent) for i in range(len(rows)))
    # (a DO UPDATE that may set the primary key moves rows where no key finds them again)
    moves = not nothing and (changed is None or not changed.isdisjoint(spec.pk))
    return Conflicts(before, keys if not returns_rows and findable and not moves else None)


def upserted_rows(
    connection: sa.Connection, spec: TableSpec, keys: KeyValues, before: dict[tuple[Any, ...], Row]
) -> list[Row]:
    """The rows an upsert wrote, read after it by the key values it sent (:class:`Conflicts`):
    those that were not there before it, and those that were and changed (a row it set to
    the values it had can't be told from one it left alone)."""
    after: dict[tuple[Any, ...], Row] = {}
    for names, values in keys:
        after.update(read_matching(connection, spec, names, values, lock=False))
    moved = [pk for pk in before if pk not in after]
    if moved:  # a DO UPDATE that set the unique key it conflicted on: found by its own key
        after.update(read_rows(connection, spec, None, [], pks=moved))
    return [row for pk, row in after.items() if before.get(pk) != row]


def _known(values: tuple[Any, ...]) -> bool:
    """Whether key values sent are values a row can be found by (no SQL, no NULL, which
    never conflicts)."""
    return AS_SQL not in values and None not in values


def _conflict_keys(spec: TableSpec, clause: Any) -> Sequence[Sequence[str]]:
    """The column names of the unique keys a row of the upsert may conflict on."""
    table = spec.table
    targets = getattr(clause, "inferred_target_elements", None) or []
    names = [_column_name(table, target) for target in targets]
    if names and all(name is not None for name in names):
        return [names]  # type: ignore[list-item]
    constraint = getattr(clause, "constraint_target", None)
    for item in [*table.constraints, *table.indexes]:
        columns = [column.name for column in getattr(item, "columns", [])]
        if constraint is not None and getattr(item, "name", None) == constraint and columns:
            return [columns]
    return spec.unique_keys  # no target (MySQL, SQLite's last clause): any unique key


def _column_name(table: sa.Table, target: Any) -> str | None:
    if isinstance(target, str):
        return table.c[target].name if target in table.c else None
    if isinstance(target, sa.Column) and target.table is table:
        return target.name
    return None
