"""Vetoes on the unit of work: take the vetoed operation out of the flush, or abort it.

A vetoed insert is expunged, a vetoed update reverted, a vetoed delete undone,
before the flush computes its work.  Where that would leave other pending rows
pointing at something that is not written, nothing is written at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE, committed_state
from ..exceptions import AbortError
from ..mapping import attribute_key, mapper_spec

if TYPE_CHECKING:
    from ..events import Events

__all__ = ["apply_vetoes"]

State = sa_orm.InstanceState[Any]


def apply_vetoes(
    session: sa_orm.Session, events: Events, vetoes: list[tuple[str, State, Callable[..., Any]]]
) -> None:
    """Skip each vetoed operation, or raise AbortError before touching anything."""
    # the rows a skipped delete keeps: the vetoed ones, and what their delete cascades to
    kept = {
        row
        for op, state, _ in vetoes
        if op == "delete"
        for row in (state, *(st for _, _, st, _ in state.mapper.cascade_iterator("delete", state)))
    }
    stranded = (_replaced(session, kept) or _strands_delete(session, kept)) if kept else None
    vetoed_inserts = {state for op, state, _ in vetoes if op == "insert"}
    leaving = {row for state in vetoed_inserts for row in _expunged_with(state)}
    for op, state, fn in vetoes:
        reason = None
        if events.abort == "raise":
            reason = 'Events(abort="raise")'
        elif op == "insert":
            reason = _strands_insert(session, state, vetoed_inserts, leaving)
        elif op == "delete" and state.obj() not in session.deleted:
            reason = "it is an orphan (delete-orphan): the flush deletes it whatever happens"
        elif op == "delete":
            reason = stranded
        elif op == "update" and any(
            key not in mapper_spec(state.mapper).column_keys for key in committed_state(state)
        ):
            reason = "its relationships changed too, and other rows would follow them"
        if reason is not None:
            model = state.class_
            raise AbortError(
                f"{model.__name__}: {getattr(fn, '__qualname__', fn)} vetoed the {op} of "
                f"{sa_orm.util.state_str(state)}, which cannot be skipped alone: {reason}; "
                "nothing was written",
                model=model,
                callback=fn,
                instance=state.obj(),
            )
    for op, state, _ in vetoes:
        obj = state.obj()
        if op == "insert":
            if obj in session:  # else already expunged with another vetoed object
                session.expunge(obj)
        elif op == "update":
            _revert(session, state, obj)
        else:
            _restore(session, state, obj)


def _expunged_with(state: State) -> set[State]:
    """``state`` and what expunging it takes along (relationships cascading ``expunge``)."""
    return {state, *(st for _, _, st, _ in state.mapper.cascade_iterator("expunge", state))}


def _strands_insert(
    session: sa_orm.Session, state: State, vetoed: set[State], leaving: set[State]
) -> str | None:
    """Tell why expunging a pending object would strand other pending objects, if it would.

    ``vetoed`` holds every object whose insert was vetoed, ``leaving`` those and
    what leaves the session with them.
    """
    own = _expunged_with(state)
    new = {sa.inspect(obj) for obj in session.new}
    for st in own:
        # expunge cascades (cascade="all"): a new object whose insert nobody vetoed
        # would silently leave the session with it
        if st in new and st not in vetoed:
            return f"{sa_orm.util.state_str(st)} is pending and would be expunged with it"
    staying = (new | {sa.inspect(o) for o in session.dirty}) - leaving
    for st in own:
        for other in _related_states(st):
            if other in staying:
                return f"{sa_orm.util.state_str(other)} is pending and related to it"
    for st in staying:
        for other in _related_states(st):
            if other in own:
                return f"{sa_orm.util.state_str(st)} is pending and refers to it"
    return None


def _replaced(session: sa_orm.Session, kept: set[State]) -> str | None:
    """Tell which new object takes the key of one of these rows, if one does.

    SQLAlchemy would write the pair as one UPDATE of the row (a row switch): with
    the delete undone, the new object's INSERT would fail on the key.
    """
    keys = {state.key: state for state in kept if state.key is not None}
    for obj in session.new:
        mapper = sa.inspect(obj).mapper
        old = keys.get(mapper.identity_key_from_instance(obj))
        if old is not None:
            return (
                f"{sa_orm.util.state_str(sa.inspect(obj))}, a new object, takes the key of "
                f"{sa_orm.util.state_str(old)}"
            )
    return None


def _strands_delete(session: sa_orm.Session, kept: set[State]) -> str | None:
    """Tell why keeping these rows would leave one of them referring to a row still deleted.

    A row whose parent's delete cascades to it cannot stay when the parent goes (when
    the delete does not cascade, SQLAlchemy sets the row's key to NULL instead).  Told
    by the key values, so that collections not loaded (dynamic, write-only) count too.
    """
    # per one-to-many relationship whose delete cascades: its deleted parents, by the key
    # values their rows are referred to by (synchronize_pairs: parent column, child column)
    parents: dict[sa_orm.RelationshipProperty[Any], dict[tuple[Any, ...], State]] = {}
    for parent in {sa.inspect(obj) for obj in session.deleted} - kept:
        for rel in _delete_cascades(parent.mapper):
            key = _key_values(parent, [local for local, _ in rel.synchronize_pairs])
            if key is not None:
                parents.setdefault(rel, {})[key] = parent
    for child in kept:
        for rel, by_key in parents.items():
            if child.mapper.isa(rel.mapper):
                key = _key_values(child, [remote for _, remote in rel.synchronize_pairs])
                if key is not None and key in by_key:
                    return _stranded(child, by_key[key])
    return None


def _key_values(state: State, columns: list[sa.ColumnElement[Any]]) -> tuple[Any, ...] | None:
    """The values of ``state`` for these columns; None when one is not mapped, loaded or set."""
    values = []
    for column in columns:
        key = attribute_key(state.mapper, column)
        value = state.dict.get(key) if key is not None else None
        if value is None:
            return None
        values.append(value)
    return tuple(values)


def _delete_cascades(mapper: sa_orm.Mapper[Any]) -> list[sa_orm.RelationshipProperty[Any]]:
    """The one-to-many relationships of ``mapper`` whose delete cascades to their rows."""
    relationships = mapper.relationships
    return [
        relationships[key]
        for key in mapper_spec(mapper).one_to_many
        if relationships[key].cascade.delete
    ]


def _stranded(child: State, parent: State) -> str:
    return (
        f"{sa_orm.util.state_str(child)} would stay, while {sa_orm.util.state_str(parent)}, "
        "whose delete cascades to it, is deleted"
    )


def _related_states(state: State) -> Iterable[State]:
    """The objects ``state``'s loaded relationships hold."""
    values = state.dict
    for rel in state.mapper.relationships:
        value = values.get(rel.key)
        if value is None:
            continue
        items = value if rel.uselist and not isinstance(value, dict) else [value]
        if isinstance(value, dict):
            items = value.values()
        for item in items:
            yield sa.inspect(item)


def _revert(session: sa_orm.Session, state: State, obj: object) -> None:
    for key, old in list(committed_state(state).items()):
        if old is NO_VALUE:
            session.expire(obj, [key])
        else:
            sa_orm.attributes.set_committed_value(obj, key, old)


def _restore(session: sa_orm.Session, state: State, obj: object) -> None:
    deleted = {sa.inspect(o) for o in session.deleted}
    cascade = [st for _, _, st, _ in state.mapper.cascade_iterator("delete", state)]
    # Session.add() takes a not yet flushed deletion back (SQLAlchemy's own undelete)
    session.add(obj)
    for st in cascade:
        if st in deleted and st.obj() is not None:
            session.add(st.obj())
