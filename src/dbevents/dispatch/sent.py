"""The values an INSERT sends, row by row, by column name, before and after it runs.

For the rows dbevents can't have the database return (a RETURNING of the caller's,
an upsert's conflict keys, SQLite's ``INSERT OR REPLACE``): those of its
``values()``, one row each of a multi-row one, with each parameter set's over them.
A value given as SQL is known to the database only (:data:`AS_SQL`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa

from .._compat import dml_values, multi_values
from ..mapping import TableSpec, column_name

__all__ = ["AS_SQL", "sent_rows", "sent_values"]

Row = dict[str, Any]

#: a value an INSERT sends as SQL (see :func:`sent_values`)
AS_SQL: Final[Any] = object()


def sent_rows(spec: TableSpec, statement: Any, result: sa.CursorResult[Any]) -> list[Row]:
    """The rows an INSERT sent, by column name, with the key where the driver tells it
    (``lastrowid``); a column whose value is SQL is left out, and so is a key not sent."""
    if multi_values(statement) is not None:  # (its parameters are named by row: id_m0, ...)
        rows = sent_values(spec, statement, ())
        return [{name: v for name, v in row.items() if v is not AS_SQL} for row in rows]
    compiled = result.context.compiled_parameters  # type: ignore[attr-defined, unused-ignore]
    try:
        keys: Iterable[Any] = result.inserted_primary_key_rows
    except sa.exc.InvalidRequestError:  # (a RETURNING of the caller's)
        keys = [None] * len(compiled)
    rows = []
    for params, key in zip(compiled, keys, strict=False):
        row = {
            name: params[c.key]
            for name, c in zip(spec.columns, spec.table.columns, strict=True)
            if c.key in params
        }
        for column, value in zip(spec.table.primary_key.columns, key or (), strict=False):
            if value is not None:
                row[column_name(column)] = value
        rows.append(row)
    return rows


def sent_values(
    spec: TableSpec, statement: Any, parameters: Sequence[Mapping[str, Any]]
) -> list[Row]:
    """The values each row of an INSERT sends, before it runs, by column name: those of its
    ``values()`` (one row each of a multi-row one) with each parameter set's over them;
    :data:`AS_SQL` for a value given as SQL, which only the database knows."""
    table = spec.table
    names = {column.key: name for column, name in zip(table.columns, spec.columns, strict=True)}
    multi = multi_values(statement)
    if multi is not None:
        return [_values_of(table, names, values) for values in multi]
    base = _values_of(table, names, dict(dml_values(statement) or ()))
    return [
        {**base, **{names[key]: value for key, value in params.items() if key in names}}
        for params in parameters or [{}]
    ]


def _values_of(table: sa.Table, names: Mapping[str, str], values: Any) -> Row:
    """One row of ``values()``: a dict by column key or column (the ORM's), or a sequence
    in column order."""
    pairs = (
        values.items() if isinstance(values, Mapping) else zip(table.columns, values, strict=False)
    )
    row: Row = {}
    for key, value in pairs:
        name = names.get(key.key if isinstance(key, sa.Column) else key)
        if name is None:
            continue
        if isinstance(value, sa.BindParameter):
            # (a value computed as it compiles, or one a parameter set gives, is not known yet)
            value = AS_SQL if value.callable is not None or value.required else value.value
        elif isinstance(value, sa.ClauseElement):
            value = AS_SQL
        row[name] = value
    return row
