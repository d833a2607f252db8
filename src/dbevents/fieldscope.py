"""Where auto fields are stamped: the flush or the statement whose callbacks run now.

The :mod:`dbevents.fields` callbacks get no session, yet short ids are checked
through one and the actor may come from its :class:`~dbevents.Events`.  So a flush
or a statement sets a :class:`Scope` while its callbacks run, and ends it with
itself: a callback that writes through another session (an audit log of its own,
say) leaves the flush it runs in its own session.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from ._compat import dml_values, multi_values
from .context import current_actor
from .session import STATE_KEY

__all__ = [
    "Scope",
    "actor",
    "current",
    "entered",
    "statement_scope",
]


@dataclass(slots=True)
class Scope:
    """One flush or one statement: its session, what it writes, the ids handed out in it."""

    session: weakref.ref[sa_orm.Session]
    #: a flush (else a statement); a flush's scope ends when the flush does
    flush: bool = False
    #: the rows of an INSERT statement, by key; None for a flush (the session's new objects)
    rows: Sequence[Mapping[str, Any]] | None = None
    #: the one table the statement writes, when it can write no other (None: the model's)
    table: sa.FromClause | None = None
    #: the column keys an executemany UPDATE writes from its parameter sets
    param_keys: frozenset[str] = frozenset()
    #: a flush's: the scope it began in, current again once it ends
    parent: Scope | None = None
    issued: dict[sa.Column[Any], set[str]] = field(default_factory=dict)
    pools: dict[sa.Column[Any], list[str]] = field(default_factory=dict)
    #: ids set by the caller, with the size of the batch they were read from
    explicit: dict[sa.Column[Any], tuple[int, set[str]]] = field(default_factory=dict)


_current: ContextVar[Scope | None] = ContextVar("dbevents.fields.scope", default=None)


def current() -> Scope | None:
    """The scope of the flush or statement whose callbacks run now, if any."""
    return _current.get()


def _session() -> sa_orm.Session | None:
    """The session of the current scope, if any (and still alive)."""
    scope = _current.get()
    return scope.session() if scope is not None else None


def actor() -> Any:
    """The actor: :func:`acting_as`, else the ``actor`` callable of an installed Events."""
    found = current_actor()
    if found is None:
        owner = _session()
        for events in (owner.info.get(STATE_KEY) or {}) if owner is not None else ():
            if events.actor is not None:
                found = events.actor()
                if found is not None:
                    break
    return found


# -- a flush: begun in before_flush, ended with it -------------------------------------------


def _begin_flush(session: sa_orm.Session, context: Any, instances: Any) -> None:
    parent = _without_ended(session, _current.get())
    _current.set(Scope(weakref.ref(session), flush=True, parent=parent))


def _end_flush(session: sa_orm.Session, context: Any) -> None:
    """``session``'s flush wrote: its scope ends, and those of flushes begun inside it."""
    scope = _current.get()
    while scope is not None and scope.flush:
        if scope.session() is session:
            _current.set(scope.parent)
            return
        scope = scope.parent


def _end_transaction(session: sa_orm.Session, transaction: Any) -> None:
    """A transaction of ``session`` rolled back or ended: a flush of it is over, if any (one
    that failed, or found nothing left to write, has no ``after_flush``)."""
    scope = _current.get()
    kept = _without_ended(session, scope)
    if kept is not scope:
        _current.set(kept)


def _without_ended(session: sa_orm.Session, scope: Scope | None) -> Scope | None:
    """``scope`` without the flush scopes on top of it that are over: ``session``'s (a
    session flushes once at a time) and those of sessions gone."""
    while scope is not None and scope.flush:
        owner = scope.session()
        if owner is not None and owner is not session:
            break
        scope = scope.parent
    return scope


# on every session, once: the scope is set before dbevents' own before_flush listeners
# (insert=True), which run the callbacks
sa_event.listen(sa_orm.Session, "before_flush", _begin_flush, insert=True)
sa_event.listen(sa_orm.Session, "after_flush", _end_flush)
sa_event.listen(sa_orm.Session, "after_soft_rollback", _end_transaction)
sa_event.listen(sa_orm.Session, "after_transaction_end", _end_transaction)


# -- a statement: set around its execution ---------------------------------------------------


@contextmanager
def entered(scope: Scope) -> Iterator[None]:
    """Make ``scope`` the current one inside the block."""
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)


def statement_scope(orm_state: sa_orm.ORMExecuteState) -> Scope:
    """The scope of an INSERT or UPDATE handed to a session."""
    statement: Any = orm_state.statement
    params = orm_state.parameters
    several = params if isinstance(params, Sequence) and params else None  # an executemany
    scope = Scope(weakref.ref(orm_state.session))
    if orm_state.is_insert:
        scope.rows = _inserted_rows(statement, params)
        if not orm_state.is_orm_statement:
            scope.table = statement.table
        return scope
    if several is not None and statement.whereclause is None and dml_values(statement) is None:
        # the ORM's UPDATE by primary key writes each table of the class; a Core one, its own
        if not orm_state.is_orm_statement:
            scope.table = statement.table
        return scope
    scope.table = statement.table  # SQLAlchemy writes no other (a joined subclass's, say)
    if several is not None:
        scope.param_keys = _written_keys(statement.table, several)
    return scope


def _inserted_rows(statement: Any, params: Any) -> list[Mapping[str, Any]]:
    """The rows an INSERT sends, by key: its parameter sets, or its ``values([...])``."""
    if isinstance(params, Mapping):
        return [params]
    if isinstance(params, Sequence) and params:
        return [row for row in params if isinstance(row, Mapping)]
    table = statement.table
    rows: list[Mapping[str, Any]] = []
    for row in multi_values(statement) or ():
        items = row.items() if isinstance(row, Mapping) else zip(table.columns, row, strict=False)
        rows.append({_key(column): value for column, value in items})
    return rows


def _written_keys(table: Any, params: Sequence[Any]) -> frozenset[str]:
    """The keys of ``table``'s columns that an executemany's parameter sets give values."""
    keys = {key for row in params if isinstance(row, Mapping) for key in row}
    return frozenset(key for key in keys if key in table.c)


def _key(column: Any) -> str:
    """The key of a VALUES target: a name, a column or an attribute."""
    return column if isinstance(column, str) else str(getattr(column, "key", column))
