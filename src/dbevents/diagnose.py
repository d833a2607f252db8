"""Naming the record the database refused during load, and statements that are never captured.

:func:`diagnose` reads a table's file once more after the database refused a
batch (or, on SQLite, after the foreign-key check found an orphan) and returns
a :class:`LoadError` for the first record at fault: a duplicate key, or a
foreign key pointing at no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from .dispatch.connection import SKIP_CAPTURE
from .exceptions import LoadError
from .fileformat import Source

if TYPE_CHECKING:
    from .load import TablePlan

__all__ = ["diagnose", "existing", "show", "skip"]

_OPTIONS: Final = {SKIP_CAPTURE: True}
_LOOKUP: Final = 500


def skip(conn: sa.Connection, statement: Any, params: Any = None) -> sa.CursorResult[Any]:
    """Execute a statement (or driver SQL text) that dbevents must not capture."""
    if isinstance(statement, str):
        return conn.exec_driver_sql(statement, params or (), execution_options=_OPTIONS)
    return conn.execute(statement, params, execution_options=_OPTIONS)


def existing(
    conn: sa.Connection, table: sa.Table, names: Sequence[str], keys: list[tuple[Any, ...]]
) -> set[tuple[Any, ...]]:
    """Which of ``keys`` (values of the columns ``names``) the table holds."""
    columns = [table.c[name] for name in names]
    found: set[tuple[Any, ...]] = set()
    for start in range(0, len(keys), _LOOKUP):
        chunk = keys[start : start + _LOOKUP]
        if len(columns) == 1:
            where = columns[0].in_([key[0] for key in chunk])
        else:
            where = sa.tuple_(*columns).in_(chunk)
        found.update(tuple(row) for row in skip(conn, sa.select(*columns).where(where)))
    return found


def diagnose(
    conn: sa.Connection, source: Source, plan: TablePlan, phase: str, message: str
) -> LoadError:
    """Find the first record of a table the database refused: a duplicate key or a missing parent.

    :param phase: ``"insert"`` (deferred foreign keys are not set yet), ``"update"`` or ``"final"``.
    """
    entry, name = plan.entry, plan.table.fullname
    seen: dict[tuple[Any, ...], int] = {}
    for path, number, row in source.records(entry):
        key = tuple(row.get(k) for k in plan.key)
        if key in seen:
            return LoadError(
                f"{name}: duplicate key {show(plan.key, key)} "
                f"({path.name}, record {number}; first at record {seen[key]})",
                path=path,
                record=number,
                column=plan.key[0],
            )
        seen[key] = number
    for fk in plan.table.foreign_key_constraints:
        local = [element.parent.name for element in fk.elements]
        if phase == "insert" and plan.deferred.intersection(local):
            continue
        error = _missing_parent(conn, source, plan, fk, seen)
        if error is not None:
            return error
    path = source.path_of(entry)
    return LoadError(f"{name}: the database refused the rows ({path.name}): {message}", path=path)


def _missing_parent(
    conn: sa.Connection,
    source: Source,
    plan: TablePlan,
    fk: sa.ForeignKeyConstraint,
    keys: dict[tuple[Any, ...], int],
) -> LoadError | None:
    """The first record whose foreign key ``fk`` points at no row, if any."""
    local = [element.parent.name for element in fk.elements]
    remote = [element.column.name for element in fk.elements]
    parent = fk.referred_table
    # rows of this very table may have been rolled back with the savepoint: trust the file
    own = parent is plan.table and tuple(remote) == plan.key
    pending: list[tuple[Path, int, tuple[Any, ...]]] = []
    records = source.records(plan.entry)
    while True:
        for path, number, row in records:
            value = tuple(row.get(column) for column in local)
            if None not in value and not (own and value in keys):
                pending.append((path, number, value))
                if len(pending) >= _LOOKUP:
                    break
        if not pending:
            return None
        found = existing(conn, parent, remote, [value for _, _, value in pending])
        for path, number, value in pending:
            if value not in found:
                return LoadError(
                    f"{plan.table.fullname}.{local[0]}: {show(local, value)} has no row in "
                    f"{parent.fullname} ({path.name}, record {number})",
                    path=path,
                    record=number,
                    column=local[0],
                )
        pending.clear()


def show(names: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in zip(names, values, strict=True))
