"""Rows the database changes itself when a row they refer to is deleted.

A relationship with ``passive_deletes`` leaves the rows of a collection it has
not loaded to its foreign key's ``ON DELETE``, and so does every DELETE
statement (SQLAlchemy loads no relationship for it): no statement writes them,
so dbevents can't capture them.  It says so, as it does of raw SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from ..mapping import DATABASE_ACTIONS, TableSpec, table_spec
from .stored import SKIP_CAPTURE
from .uncaptured import uncaptured

if TYPE_CHECKING:
    from ..session import SessionState
    from .flush import FlushState, State

__all__ = ["tell_rows_a_delete_leaves", "tell_rows_left_to_the_database"]


def tell_rows_left_to_the_database(fs: FlushState, deleted: list[State]) -> None:
    """Say that rows the database deletes or updates itself go by uncaptured.

    A relationship with ``passive_deletes`` leaves the rows of a collection not
    loaded to its foreign key's ON DELETE (with ``"all"``, loaded ones too unless
    the delete cascades to them): no statement of the flush writes them, so no
    change tells of them and no callback runs.  Told once per relationship.
    """
    plan_of = fs.plan_of
    if not any(plan_of(mapper).spec.passive_deletes for mapper in {s.mapper for s in deleted}):
        return  # the common case, told once per mapper rather than per row
    told: set[Any] = set()
    for state in deleted:
        for rel, action in plan_of(state.mapper).spec.passive_deletes.items():
            if rel in told or not _left_to_the_database(rel, state) or not _watched(fs, rel):
                continue
            connection = fs.session.connection(bind_arguments={"mapper": state.mapper})
            if not _enforces_foreign_keys(connection):
                # (SQLite not acting on ON DELETE: the rows stay, as the change set says; a
                # relationship of a model on another bind may still be told of)
                continue
            told.add(rel)
            owner = f"{state.class_.__name__}.{rel.key}"
            secondary = rel.secondary
            rows = rel.mapper.class_.__name__ if secondary is None else str(secondary.description)
            verb = "deletes" if action == "CASCADE" else "updates"
            uncaptured(
                [fs.st],
                f"the database itself {verb} the {rows} rows of {owner} along with "
                f"{sa_orm.util.state_str(state)} (passive_deletes and ON DELETE {action}): they "
                f"are missing from the change set and get no callbacks; load {owner} before the "
                f"delete, or drop passive_deletes, to have them captured "
                f'(Events(raw_sql="ignore") silences this)',
            )


def _left_to_the_database(rel: Any, state: State) -> bool:
    if rel.key not in state.dict:
        return True  # not loaded: the flush won't load it
    return bool(rel.passive_deletes == "all" and not rel.cascade.delete)


def _watched(fs: FlushState, rel: Any) -> bool:
    """Whether the rows of ``rel`` are captured or have callbacks."""
    secondary = rel.secondary
    if secondary is not None:
        # (a secondary that is no Table, a join say, is never captured)
        return isinstance(secondary, sa.Table) and (
            fs.events.level_of_table(table_spec(secondary)) != "off"
        )
    plan = fs.plan_of(rel.mapper)
    return plan.capture or plan.writes


def tell_rows_a_delete_leaves(
    connection: sa.Connection, states: list[SessionState], spec: TableSpec
) -> None:
    """Say that a DELETE statement on ``spec``'s table leaves the rows that refer to the rows
    it deletes to their foreign key's ON DELETE, where that changes them and they are watched.

    Told whether or not there are such rows, as for ``passive_deletes``.
    """
    referring = _referring(spec.table)
    if not referring or not _enforces_foreign_keys(connection):
        return
    for table, action in referring:
        levels = {st.events.level_of_table(table_spec(table)) for st in states}
        if levels == {"off"}:
            continue
        verb = "deletes" if action == "CASCADE" else "updates"
        uncaptured(
            states,
            f"the database itself {verb} the {table.fullname} rows that refer to the "
            f"{spec.name} rows this DELETE statement deletes (ON DELETE {action}): they are "
            f"missing from the change set and get no callbacks; delete or update them first, "
            f"or delete through the unit of work with a relationship that cascades, to have "
            f'them captured (Events(raw_sql="ignore") silences this)',
        )


_FOREIGN_KEYS_ON = "dbevents.foreign_keys"


def _enforces_foreign_keys(connection: sa.Connection) -> bool:
    """Whether the database acts on foreign keys: SQLite does only with ``PRAGMA
    foreign_keys=ON``, which most applications never set (their ON DELETE does nothing).

    Asked once per DB-API connection (its ``info``), where a ``connect`` listener sets it.
    """
    if connection.dialect.name != "sqlite":
        return True
    info = connection.info
    enforced = info.get(_FOREIGN_KEYS_ON)
    if enforced is None:
        pragma = connection.exec_driver_sql(
            "PRAGMA foreign_keys", execution_options={SKIP_CAPTURE: True}
        )
        enforced = info[_FOREIGN_KEYS_ON] = bool(pragma.scalar())
    return bool(enforced)


_referring_cache: dict[sa.Table, tuple[tuple[sa.Table, str], ...]] = {}


def _referring(table: sa.Table) -> tuple[tuple[sa.Table, str], ...]:
    """The tables of ``table``'s MetaData whose foreign key to it the database acts on when a
    row of it is deleted, each with that ON DELETE action; computed once per table."""
    found = _referring_cache.get(table)
    if found is None:
        actions: dict[sa.Table, str] = {}
        for other in table.metadata.tables.values():
            for fk in other.foreign_keys:
                action = (fk.ondelete or "").upper()
                if action in DATABASE_ACTIONS and fk.references(table):
                    actions.setdefault(other, action)
        found = _referring_cache[table] = tuple(actions.items())
    return found
