"""Upserts: ``INSERT … ON CONFLICT DO UPDATE`` and ``INSERT … ON DUPLICATE KEY UPDATE``.

To SQLAlchemy an upsert is an INSERT, and RETURNING gives back the rows it
inserted and the rows it updated alike, as stored.  So before it runs, the rows
it may update are read (locked where the database can): those holding, in the
unique key the statement names, a value it sends.  A returned row that was read
is an update, told with its old values; any other is an insert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from .._compat import dml_values, multi_values, upsert_clause
from ..mapping import TableSpec
from .stored import Row, read_matching

__all__ = ["conflicting_rows"]

_UNKNOWN: Any = object()


def conflicting_rows(
    connection: sa.Connection,
    spec: TableSpec,
    statement: Any,
    parameters: Sequence[Mapping[str, Any]],
    *,
    keys_change: bool,
) -> dict[tuple[Any, ...], Row] | None:
    """The rows an upsert may update, by primary key; None when ``statement`` can't update.

    :param keys_change: it may set a column of a unique key (see :func:`~.stored.locked`).
    """
    clause = upsert_clause(statement)
    if clause is None or type(clause).__name__ == "OnConflictDoNothing":
        return None
    table = spec.table
    rows = _sent_rows(table, statement, parameters)
    found: dict[tuple[Any, ...], Row] = {}
    for names in _conflict_keys(spec, clause):
        values = {tuple(row.get(name, _UNKNOWN) for name in names) for row in rows}
        values = {value for value in values if _UNKNOWN not in value and None not in value}
        if values:
            matching = sorted(values, key=repr)
            found.update(read_matching(connection, spec, names, matching, keys_change=keys_change))
    return found


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


def _sent_rows(
    table: sa.Table, statement: Any, parameters: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The column values of each row the INSERT sends, by column name (``_UNKNOWN``: SQL)."""
    names = {column.key: column.name for column in table.columns}
    multi = multi_values(statement)
    if multi is not None:
        return [_row_of(table, names, values) for values in multi]
    base = _row_of(table, names, dict(dml_values(statement) or []))
    return [
        {**base, **{names[key]: value for key, value in params.items() if key in names}}
        for params in parameters or [{}]
    ]


def _row_of(table: sa.Table, names: dict[str, str], values: Any) -> dict[str, Any]:
    if not isinstance(values, Mapping):  # a row given as a sequence, in column order
        values = dict(zip(table.columns, values, strict=False))
    row: dict[str, Any] = {}
    for key, value in values.items():
        name = key.name if isinstance(key, sa.Column) else names.get(key)
        if name is not None:
            row[name] = _literal(value)
    return row


def _literal(value: Any) -> Any:
    if isinstance(value, sa.BindParameter):
        return value.effective_value if value.callable is not None else value.value
    if isinstance(value, sa.ColumnElement):
        return _UNKNOWN  # a SQL expression: its value is known only to the database
    return value
