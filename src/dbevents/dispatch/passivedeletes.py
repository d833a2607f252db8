"""Rows the database changes itself when a row they refer to is deleted or changes key.

A relationship with ``passive_deletes`` leaves the rows of a collection it has
not loaded to its foreign key's ``ON DELETE``, and so does every DELETE
statement (SQLAlchemy loads no relationship for it).  An UPDATE that changes a
column other rows refer to leaves them to the foreign key's ``ON UPDATE``, from
a statement as from the unit of work (whose relationships leave it to the
database by default, ``passive_updates=True``).  No statement writes those rows,
so dbevents can't capture them.  It says so, as it does of raw SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import all_mappers
from ..mapping import DATABASE_ACTIONS, TableSpec, table_spec
from .stored import SKIP_CAPTURE
from .uncaptured import uncaptured

if TYPE_CHECKING:
    from ..session import SessionState
    from .flush import FlushState, State

__all__ = [
    "tell_rows_a_delete_leaves",
    "tell_rows_a_key_change_leaves",
    "tell_rows_left_to_the_database",
]


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
    for table, action, _ in _acting(connection, states, spec.table, "ondelete"):
        verb = "deletes" if action == "CASCADE" else "updates"
        uncaptured(
            states,
            f"the database itself {verb} the {table.fullname} rows that refer to the "
            f"{spec.name} rows this DELETE statement deletes (ON DELETE {action}): they are "
            f"missing from the change set and get no callbacks; delete or update them first, "
            f"or delete through the unit of work with a relationship that cascades, to have "
            f'them captured (Events(raw_sql="ignore") silences this)',
        )


def tell_rows_a_key_change_leaves(
    connection: sa.Connection,
    states: list[SessionState],
    spec: TableSpec,
    changed: Callable[[], set[str] | None],
    *,
    flushing: bool,
) -> None:
    """Say that an UPDATE on ``spec``'s table that SETs columns other rows refer to leaves
    those rows to their foreign key's ON UPDATE, where that changes them and they are
    watched.

    ``changed`` gives the names of the columns the UPDATE SETs (None: can't be told),
    asked only when some foreign key to the table acts ON UPDATE.  Told whether or
    not the values change, and whether or not there are such rows, once per statement.
    A flush updates the rows of a relationship with ``passive_updates=False`` itself:
    those are captured, and not told of.
    """
    acting = _acting(connection, states, spec.table, "onupdate")
    if not acting:
        return
    columns = changed()
    updated_by_flush = _updated_by_the_flush(spec.table) if flushing else frozenset()
    for table, action, referred in acting:
        if (columns is not None and columns.isdisjoint(referred)) or table in updated_by_flush:
            continue
        uncaptured(
            states,
            f"the database itself updates the {table.fullname} rows that refer to the "
            f"{spec.name} rows this UPDATE gives a new {', '.join(sorted(referred))} "
            f"(ON UPDATE {action}): they are missing from the change set and get no "
            f"callbacks; update them yourself (on the unit of work: passive_updates=False on "
            f"the relationship) to have them captured "
            f'(Events(raw_sql="ignore") silences this)',
        )


_updated_by_the_flush_cache: dict[sa.Table, frozenset[sa.FromClause]] = {}
# a relationship configured later may change them: found again then
sa.event.listen(sa_orm.Mapper, "after_configured", _updated_by_the_flush_cache.clear)


def _updated_by_the_flush(table: sa.Table) -> frozenset[sa.FromClause]:
    """The tables whose rows the flush itself captures when a key of ``table``'s changes:
    those of the relationships of the classes mapped to it with ``passive_updates=False``,
    which it updates, and the other tables of those classes (joined inheritance), whose
    rows it records under the new key whoever moved them."""
    found = _updated_by_the_flush_cache.get(table)
    if found is None:
        mappers = [mapper for mapper in all_mappers() if table in mapper.tables]
        found = _updated_by_the_flush_cache[table] = frozenset(
            [own for mapper in mappers for own in mapper.tables]
            + [
                rel.secondary if rel.secondary is not None else rel.target
                for mapper in mappers
                for rel in mapper.relationships
                if not rel.passive_updates and not rel.viewonly
            ]
        )
    return found


def _acting(
    connection: sa.Connection, states: list[SessionState], table: sa.Table, event: str
) -> list[tuple[sa.Table, str, frozenset[str]]]:
    """The watched tables whose foreign key to ``table`` the database acts on for ``event``
    (``"ondelete"`` or ``"onupdate"``), each with its action and the columns it refers to."""
    referring = _referring(table, event)
    if not referring or not _enforces_foreign_keys(connection):
        return []
    return [
        (other, action, referred)
        for other, action, referred in referring
        if {st.events.level_of_table(table_spec(other)) for st in states} != {"off"}
    ]


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


_referring_cache: dict[tuple[sa.Table, str], tuple[tuple[sa.Table, str, frozenset[str]], ...]] = {}


def _referring(table: sa.Table, event: str) -> tuple[tuple[sa.Table, str, frozenset[str]], ...]:
    """The tables of ``table``'s MetaData whose foreign key to it the database acts on when a
    row of it is deleted (``"ondelete"``) or its key changes (``"onupdate"``), each with that
    action and the names of the columns of ``table`` it refers to; computed once per table."""
    found = _referring_cache.get((table, event))
    if found is None:
        actions: dict[sa.Table, tuple[str, set[str]]] = {}
        for other in table.metadata.tables.values():
            for fk in other.foreign_keys:
                action = (getattr(fk, event) or "").upper()
                if action in DATABASE_ACTIONS and fk.references(table):
                    actions.setdefault(other, (action, set()))[1].add(fk.column.name)
        found = _referring_cache[(table, event)] = tuple(
            (other, action, frozenset(referred)) for other, (action, referred) in actions.items()
        )
    return found
