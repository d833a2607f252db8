"""How a statement is made to return the rows it writes, and which columns it needs to.

INSERT and UPDATE return the rows as stored through ``return_defaults()``, so the
caller's result keeps its type and ``rowcount``.  On PostgreSQL an UPDATE returns
its old values too, from a locked subquery in the same statement.  An UPDATE
needs only its key and the columns it sets.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, Final

import sqlalchemy as sa

from .._compat import (
    dml_values,
    explicit_returning,
    prefixes,
    returns_defaults,
    type_on,
    upsert_clause,
    upsert_set_keys,
)
from ..mapping import TableSpec

__all__ = [
    "Returns",
    "changes_keys",
    "plain_insert",
    "sends_value",
    "set_columns",
    "set_literals",
    "set_target_key",
    "update_from_locked",
    "updated_columns",
]

Row = dict[str, Any]


class Returns(enum.Enum):
    """What the RETURNING clause dbevents added gives back."""

    NEW = "new"  # INSERT / UPDATE: the rows as stored (the old ones were read first, by key)
    NEW_OF_READ = "new of read"  # UPDATE: the rows as stored, of those read first as tuples
    SET_OF_READ = "set of read"  # UPDATE (nothing returned): the values it SETs, over those read
    OLD = "old"  # DELETE: the rows as they were
    OLD_AND_NEW = "old+new"  # PostgreSQL UPDATE ... FROM (SELECT ... FOR UPDATE): both
    AFTER_ROWID = "after rowid"  # SQLite bulk INSERT (nothing returned): the rows read after it
    KEYS_SENT = "keys sent"  # PostgreSQL bulk INSERT (nothing returned): keys drawn before it


_OLD_PREFIX: Final = "dbevents_old_"


def updated_columns(table: sa.Table, spec: TableSpec, changed: set[str] | None) -> list[Any]:
    """The columns an UPDATE may change, and the key: all a change set of it needs.

    Those it SETs (``changed``: :func:`set_columns`) and those with an ``onupdate``;
    every column when that can't be told, or when it sets the key.
    """
    if changed is None or not changed.isdisjoint(spec.pk):
        return list(table.columns)  # (a new key: the row must be told whole under it)
    changed = changed | {
        column.name
        for column in table.columns
        if column.onupdate is not None or column.server_onupdate is not None
    }
    return [column for column in table.columns if column.name in spec.pk or column.name in changed]


def set_columns(
    table: sa.Table, statement: Any, parameters: Sequence[Mapping[str, Any]]
) -> set[str] | None:
    """The names of the columns a statement SETs, or None when that can't be told.

    An UPDATE's: those of its values, and those its parameter sets name (SQLAlchemy
    SETs every column whose key is a parameter; a ``bindparam()`` of the WHERE clause
    may not take a column's key).  An upsert's: those its DO UPDATE sets.
    """
    names = {column.key: column.name for column in table.columns}
    if isinstance(statement, sa.Insert):
        targets = upsert_set_keys(upsert_clause(statement))
        return None if targets is None else _column_names(names, targets)
    changed = _column_names(names, [key for key, _ in dml_values(statement) or ()])
    if changed is None:
        return None  # a column of another table (MySQL's multi-table UPDATE)
    changed.update(names[key] for key in (parameters[0] if parameters else ()) if key in names)
    return changed or None


def _column_names(names: Mapping[str, str], targets: Sequence[Any]) -> set[str] | None:
    """The names of the columns of SET targets; None when one is not a column of the table."""
    keys = [set_target_key(target) for target in targets]
    if any(key not in names for key in keys):
        return None
    return {names[key] for key in keys}


def changes_keys(spec: TableSpec, statement: Any, changed: set[str] | None) -> bool:
    """Whether a statement deletes its rows, or may set a column of a unique key of theirs
    (``changed``: the columns it SETs, :func:`set_columns`).

    PostgreSQL then locks the rows ``FOR UPDATE``; an UPDATE (or an upsert's DO UPDATE)
    of other columns only ``FOR NO KEY UPDATE``, and so do the rows dbevents reads
    for it first (:func:`~.stored.locked`).
    """
    if isinstance(statement, sa.Delete):
        return True
    return changed is None or not spec.key_columns.isdisjoint(changed)


#: column types whose stored value reads back as exactly the Python value of this type
#: that was sent (exact classes: CHAR pads, Enum maps, a TypeDecorator may convert)
_STORED_AS_SENT: Final[dict[type[Any], type[Any]]] = {
    **dict.fromkeys(
        (sa.String, sa.Text, sa.Unicode, sa.UnicodeText, sa.VARCHAR, sa.NVARCHAR, sa.TEXT), str
    ),
    **dict.fromkeys(
        (sa.Integer, sa.BigInteger, sa.SmallInteger, sa.INTEGER, sa.BIGINT, sa.SMALLINT), int
    ),
    **dict.fromkeys((sa.Boolean, sa.BOOLEAN), bool),
}


def set_literals(
    table: sa.Table,
    statement: Any,
    parameters: Mapping[str, Any],
    names: Sequence[str],
    dialect_name: str,
) -> tuple[Any, ...] | None:
    """The value an UPDATE SETs each of the columns ``names`` to, when it is a plain value
    stored exactly as sent; None when any of them is not (an expression, a default the
    statement computes, a value the column's type converts, on this dialect: a type's
    variant may be one that converts it): only RETURNING tells those.

    Then the UPDATE need not return its rows: the rows read before it, with these
    values, are the rows it wrote.
    """
    pairs = dml_values(statement)
    if not pairs:
        return None
    columns = {column.key: column for column in table.columns}
    values: dict[str, Any] = {}
    for key, value in pairs:
        column = columns.get(set_target_key(key))
        if (
            column is None
            or not isinstance(value, sa.BindParameter)
            or value.callable is not None
            or value.required
            or value.key in parameters
        ):
            return None
        literal = value.value
        kind = type_on(column.type, dialect_name)
        if literal is not None and type(literal) is not _STORED_AS_SENT.get(type(kind)):
            return None
        values[column.name] = literal
    if any(name not in values for name in names):
        return None  # set by an onupdate default, or otherwise than by a value
    return tuple([values[name] for name in names])


def plain_insert(statement: Any) -> bool:
    """Whether an INSERT adds the rows of its parameter sets and nothing else: no RETURNING
    (the caller's, or SQLAlchemy's own ``return_defaults()``), no upsert, no prefix such as
    ``OR IGNORE``, no ``FROM SELECT``.  Only then can its rows be known without RETURNING."""
    return not (
        explicit_returning(statement)
        or returns_defaults(statement)
        or upsert_clause(statement) is not None
        or prefixes(statement)
        or statement.select is not None
    )


def sends_value(
    column: sa.Column[Any], statement: Any, parameters: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether an INSERT sends a value (None included) for ``column``: in its ``values()``
    or in any parameter set."""
    if any(set_target_key(key) == column.key for key, _ in dml_values(statement) or ()):
        return True
    return any(map(operator.contains, parameters, repeat(column.key)))  # no frame per row


def set_target_key(key: Any) -> Any:
    """A SET target's column key: from a string, a column, or an ORM attribute."""
    if isinstance(key, str):
        return key
    prop = getattr(key, "property", None)
    columns = getattr(prop, "columns", None)
    if columns:
        return columns[0].key
    return getattr(key, "key", None)


def update_from_locked(
    statement: Any, spec: TableSpec, columns: list[Any], *, keys_change: bool
) -> tuple[Any, list[Any]]:
    """``UPDATE t SET ... FROM (SELECT t.* ... WHERE <where> FOR NO KEY UPDATE) old
    WHERE t.pk = old.pk``.

    One statement gives old and new values of exactly the rows it locked and changed,
    so a row another transaction inserts meanwhile can't be updated uncaptured.  The
    lock is the one the UPDATE takes itself: ``FOR UPDATE`` when ``keys_change`` (see
    :func:`changes_keys`).
    """
    table = spec.table
    old_query = sa.select(*(c.label(_OLD_PREFIX + c.name) for c in columns))
    if statement.whereclause is not None:
        old_query = old_query.where(statement.whereclause)
    old = old_query.with_for_update(key_share=not keys_change).subquery("dbevents_old")
    same_row = [table.c[name] == old.c[_OLD_PREFIX + name] for name in spec.pk]
    old_columns = list(old.c)
    statement = statement.where(*same_row).return_defaults(
        supplemental_cols=[*old_columns, *columns]
    )
    return statement, old_columns
