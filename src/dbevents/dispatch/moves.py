"""Where the rows of an UPDATE that sets primary key columns went, told without RETURNING.

Rows read before such an UPDATE can't be read again by their old keys, and an
UPDATE run with several parameter sets returns no rows on SQLite or PostgreSQL.
The unit of work runs one whenever the key of a row that many-to-many rows refer
to changes (``passive_updates=False``): SQLAlchemy moves the association rows
itself, one parameter set per row, each naming it by the old values of its
columns and SETting the new ones.  When each parameter set names its rows by
equality and SETs the key columns to plain values, the new key of each row read
first follows from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from .._compat import dml_values
from ..mapping import TableSpec, column_name
from .returning import set_target_key
from .stored import equality_criteria

__all__ = ["moved_keys"]

Row = dict[str, Any]


def moved_keys(
    spec: TableSpec,
    statement: Any,
    parameters: Sequence[Mapping[str, Any]],
    before: Mapping[tuple[Any, ...], Row],
) -> dict[tuple[Any, ...], tuple[Any, ...]] | None:
    """The key each row read before an UPDATE has after it, by its old key; None when the
    statement does not tell it (a WHERE other than ``column = :param AND ...``, a key
    column SET to an expression).

    :param before: the rows the UPDATE matches, read before it, with their key columns
        and those its WHERE clause names.
    """
    table = spec.table
    criteria = equality_criteria(table, statement.whereclause)
    if criteria is None or any(name not in spec.columns for name in criteria):
        return None
    fixed = _key_literals(spec, statement)
    if fixed is None:
        return None
    matching: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for pk, row in before.items():
        if any(name not in row for name in criteria):
            return None
        matching.setdefault(tuple([row[name] for name in criteria]), []).append(pk)
    keys = {name: table.c[name].key for name in spec.pk}
    moved: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for p in parameters:
        for pk in matching.get(tuple([p.get(key) for key in criteria.values()]), ()):
            old = before[pk]
            moved[pk] = tuple(
                [
                    p[keys[name]] if keys[name] in p else fixed.get(name, old.get(name))
                    for name in spec.pk
                ]
            )
    return moved if len(moved) == len(before) else None  # (a row no parameter set names)


def _key_literals(spec: TableSpec, statement: Any) -> dict[str, Any] | None:
    """The plain values the statement's own ``values()`` SET key columns to; None when it
    SETs one to anything else (an expression, a default computed as it runs)."""
    columns = {column.key: column for column in spec.table.columns}
    fixed: dict[str, Any] = {}
    for target, value in dml_values(statement) or ():
        column = columns.get(set_target_key(target))
        if column is None:
            return None  # a column of another table (MySQL's multi-table UPDATE)
        name = column_name(column)
        if name not in spec.pk:
            continue
        if not isinstance(value, sa.BindParameter) or value.callable is not None or value.required:
            return None
        fixed[name] = value.value
    return fixed
