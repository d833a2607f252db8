"""Completing the rows a flush wrote, once it wrote them all (``after_flush``).

Two things only the end of the flush can tell: the values the database
generated that SQLAlchemy did not fetch (read back with one SELECT per mapper),
and the keys a ``relationship(post_update=True)`` wrote with a second UPDATE,
which no mapper event reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE, post_updated
from ..capture import Key
from ..changes import Op
from ..mapping import MapperSpec, TablePart, attribute_key
from .flush import FlushState, State, remember, same
from .oldvalues import column_label, select_by_identity
from .rows import NO_FIELDS, record_update

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["after_flush"]


def after_flush(st: SessionState, session: sa_orm.Session) -> None:
    """Complete what the flush wrote: values the database generated that SQLAlchemy did
    not fetch (one SELECT per mapper), then the rows a ``post_update`` relationship
    wrote a second time, which no mapper event reports."""
    fs = st.flush
    if fs is None:
        return
    if fs.incomplete:
        _fill_incomplete(fs, session)
    post_updates = post_updated(fs.context)
    if post_updates:
        _record_post_updates(fs, post_updates)


def _fill_incomplete(fs: FlushState, session: sa_orm.Session) -> None:
    by_mapper: dict[sa_orm.Mapper[Any], list[tuple[MapperSpec, State, TablePart, Key]]] = {}
    for item in fs.incomplete:
        by_mapper.setdefault(item[0].mapper, []).append(item)
    fs.incomplete = []
    buffer = fs.buffer
    for mapper, items in by_mapper.items():
        spec = items[0][0]
        keys = sorted(spec.column_keys)
        idents = [_identity(spec, st) for _, st, _, _ in items]
        # the columns of a single-table subclass's siblings, which it has no attribute for
        others = [
            part.spec.table.c[name] for part in spec.parts for name, _ in part.left_to_defaults
        ]
        found = select_by_identity(session, mapper, keys, idents, others)
        for (_, _, part, key), ident in zip(items, idents, strict=True):
            values = found.get(ident, {})
            stored = {name: values.get(attr) for name, attr in part.columns if attr}
            for name, _ in part.left_to_defaults:
                stored[name] = values.get(column_label(name))
            buffer.complete(key, stored, NO_VALUE)


def _record_post_updates(fs: FlushState, post_updates: list[tuple[State, set[Any]]]) -> None:
    """Record the foreign keys a post_update UPDATE set, as an update of each row.

    SQLAlchemy set them on the object just before that UPDATE, so they are in its
    history: old to new.  A row the flush already recorded merges with it (an
    insert keeps its final values); its after_update callbacks run only if the
    flush ran none of its after_* callbacks yet.
    """
    remembered = _remembered_states(fs.written) if fs.written else set()
    for state, columns in post_updates:
        plan = fs.plan_of(state.mapper)
        if not (plan.capture or plan.after):
            continue
        mapper, committed, values = state.mapper, state.committed_state, state.dict
        fields: dict[str, Any] = {}
        for column in columns:
            key = attribute_key(mapper, column)
            if key is None or key not in committed:
                continue
            old, new = committed[key], values.get(key, NO_VALUE)
            if new is not NO_VALUE and (old is NO_VALUE or not same(old, new)):
                fields[key] = new
        if not fields:
            continue
        bumped = _post_update_version(mapper, state)
        if bumped is not None:  # the UPDATE counted the version up, outside any history
            fields[bumped] = values.get(bumped)
        if plan.capture:
            # the version's value before this UPDATE is not known: kept from an UPDATE of the
            # row earlier in the flush, if any, else left out of the old values
            record_update(fs, plan, state, fields, {bumped: NO_VALUE} if bumped else None)
        if plan.after and state not in remembered:
            remember(fs, Op.UPDATE, plan, state, fields if plan.after_update else NO_FIELDS)


def _post_update_version(mapper: sa_orm.Mapper[Any], state: State) -> str | None:
    """The key of the version counter a post_update UPDATE of ``state`` counted up, if any
    (SQLAlchemy does so for a row that existed before the flush)."""
    column = mapper.version_id_col
    if column is None or state.key is None or mapper.version_id_generator is False:
        return None
    return attribute_key(mapper, column)


def _remembered_states(written: list[Any]) -> set[State]:
    """The states in a flush's list of rows for the after_* callbacks (see ``remember``)."""
    states: set[State] = set()
    at, end = 0, len(written)
    while at < end:
        states.add(written[at + 2])
        at += 5 + 2 * written[at + 4]
    return states


def _identity(spec: MapperSpec, state: State) -> tuple[Any, ...]:
    """The key the row has now.  Not ``state.key`` while it can still be the old one: the
    session takes a changed primary key into the identity map only after this event."""
    values = state.dict
    ident = [values.get(key) if key else None for key in spec.identity_keys]
    if None not in ident:
        return tuple(ident)
    if state.key is not None:
        return state.key[1]
    return tuple(spec.mapper.primary_key_from_instance(state.obj()))
