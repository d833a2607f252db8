"""Recording the rows a flush writes, from the mapper row events.

The mapper ``after_insert`` / ``after_update`` / ``after_delete`` events fire
exactly for the rows the flush wrote, cascades and delete-orphans included, so
rows are recorded there, with their old values; values the database generated
and SQLAlchemy did not fetch are filled in once the flush is over, with one
SELECT per mapper.  The mapper ``before_*`` events catch objects that joined the
flush after ``before_flush`` (a cascade), whose ``before_*`` callbacks run late.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE, committed_state
from ..capture import Row
from ..changes import Op
from ..exceptions import AbortError
from ..mapping import MapperSpec, TablePart, mapper_spec
from ..session import STATE_KEY
from .flush import FlushState, State, run_before, same, select_by_identity

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["after_flush", "listen_mappers"]

_PLAIN: Final = frozenset({str, int, float, bool, type(None)})


# -- mapper events: the rows really written ---------------------------------------------------


def _flushes(state: State) -> list[FlushState]:
    session = state.session
    if session is None:
        return []
    states = session.info.get(STATE_KEY)
    if not states:
        return []
    return [st.flush for st in states.values() if st.flush is not None]


def _on_before_write(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    for fs in _flushes(state):
        spec = mapper_spec(mapper)
        if spec.generated_keys and state.key is not None:
            fs.generated_old[state] = {k: state.dict.get(k, NO_VALUE) for k in spec.generated_keys}
        if state not in fs.seen:
            late_before(fs, "update" if state.key is not None else "insert", state)


def _on_before_delete(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    for fs in _flushes(state):
        if fs.events.wants_old_values(mapper):
            spec = mapper_spec(mapper)
            keys = [key for key in spec.column_keys if key not in state.dict]
            if keys:  # an orphan found by the flush itself, with columns not loaded
                identity = state.identity or ()
                row = select_by_identity(connection, mapper, keys, [identity]).get(identity)
                for key, value in (row or {}).items():
                    if key in keys:
                        sa_orm.attributes.set_committed_value(state.obj(), key, value)
        if state not in fs.seen:
            late_before(fs, "delete", state)


def late_before(fs: FlushState, op: str, state: State) -> None:
    """before_* callbacks for a row the flush found itself (an orphan, a key set by a relationship).

    The flush is already running: the row cannot be skipped any more, so a veto raises.
    """
    fs.seen.add(state)
    obj = state.obj()
    vetoer = run_before(fs, op, obj, state)
    if vetoer is not None:
        model = state.class_
        raise AbortError(
            f"{model.__name__}: {getattr(vetoer, '__qualname__', vetoer)} vetoed the {op} of "
            f"{sa_orm.util.state_str(state)}, a row the flush itself found; it cannot be skipped",
            model=model,
            callback=vetoer,
            instance=obj,
        )


def _on_after_insert(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    for fs in _flushes(state):
        spec = mapper_spec(mapper)
        level = fs.events.level_of(mapper)
        values = state.dict
        if level != "off":
            for part in spec.parts:
                row, complete = _row_of(part, values)
                pk = tuple(row.get(name) for name in part.spec.pk)
                fs.buffer.add(
                    part.spec.name,
                    pk,
                    Op.INSERT,
                    spec.model,
                    None,
                    row if level != "keys" else None,
                )
                if not complete:
                    fs.incomplete.append((spec, state, row, part))
        if fs.events.registry.table(spec.model).writes:
            fields = {key: values[key] for key in spec.column_keys if key in values}
            fs.written.append((Op.INSERT, state, state.obj(), fields))


def _on_after_update(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    for fs in _flushes(state):
        spec = mapper_spec(mapper)
        values = state.dict
        changed = committed_state(state)
        olds: list[Row] = [{} for _ in spec.parts]
        news: list[Row] = [{} for _ in spec.parts]
        fields: dict[str, Any] = {}
        generated_old = fs.generated_old.pop(state, None)
        for key, columns in _changed_keys(spec, changed):
            _note_update(key, changed[key], values.get(key, NO_VALUE), columns, olds, news, fields)
        if not fields:
            continue  # SQLAlchemy reports every dirty object; no row was written for this one
        if generated_old:  # onupdate and version columns, set by the UPDATE itself
            for key, old in generated_old.items():
                if key not in changed:
                    new = values.get(key, NO_VALUE)
                    columns = spec.columns_of_key[key]
                    _note_update(key, old, new, columns, olds, news, fields)
        level = fs.events.level_of(mapper)
        if level != "off":
            _record_update(fs, spec, state, level, olds, news)
        if fs.events.registry.table(spec.model).writes:
            known = {k: v for k, v in fields.items() if v is not NO_VALUE}
            fs.written.append((Op.UPDATE, state, state.obj(), known))


def _changed_keys(
    spec: MapperSpec, changed: dict[str, Any]
) -> Iterable[tuple[str, tuple[tuple[int, str], ...]]]:
    columns_of_key = spec.columns_of_key
    for key in changed:
        columns = columns_of_key.get(key)
        if columns is not None:
            yield key, columns


def _note_update(
    key: str,
    old: Any,
    new: Any,
    columns: tuple[tuple[int, str], ...],
    olds: list[Row],
    news: list[Row],
    fields: dict[str, Any],
) -> None:
    if old is not NO_VALUE and new is not NO_VALUE and same(old, new):
        return
    fields[key] = new
    for index, name in columns:
        if old is not NO_VALUE:
            olds[index][name] = _plain(old)
        news[index][name] = new  # NO_VALUE: set by a SQL expression, filled after the flush


def _record_update(
    fs: FlushState,
    spec: MapperSpec,
    state: State,
    level: str,
    olds: list[Row],
    news: list[Row],
) -> None:
    values = state.dict
    for index, part in enumerate(spec.parts):
        new = news[index]
        if not new:
            continue
        old = olds[index]
        pk = tuple(values.get(key) if key else None for _, key in part.pk)
        if any(name in new for name, _ in part.pk):
            # a new primary key is a different row to every consumer keyed by pk
            before = {**_row_of(part, values)[0], **old}
            old_pk = tuple(before.get(name) for name, _ in part.pk)
            fs.buffer.add(
                part.spec.name,
                old_pk,
                Op.DELETE,
                spec.model,
                before if level == "old+new" else None,
                None,
            )
            row, complete = _row_of(part, values)
            fs.buffer.add(
                part.spec.name, pk, Op.INSERT, spec.model, None, row if level != "keys" else None
            )
            if not complete:
                fs.incomplete.append((spec, state, row, part))
            continue
        incomplete = any(value is NO_VALUE for value in new.values())
        fs.buffer.add(
            part.spec.name,
            pk,
            Op.UPDATE,
            spec.model,
            old if level == "old+new" else None,
            new if level != "keys" else None,
        )
        if incomplete:
            fs.incomplete.append((spec, state, new, part))


def _on_after_delete(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    for fs in _flushes(state):
        spec = mapper_spec(mapper)
        level = fs.events.level_of(mapper)
        if level != "off":
            values = state.dict
            changed = committed_state(state)
            merged = {**values, **{k: v for k, v in changed.items() if v is not NO_VALUE}}
            for part in spec.parts:
                row = {k: v for k, v in _row_of(part, merged)[0].items() if v is not NO_VALUE}
                pk = tuple(row.get(name) for name in part.spec.pk)
                fs.buffer.add(
                    part.spec.name,
                    pk,
                    Op.DELETE,
                    spec.model,
                    row if level == "old+new" else None,
                    None,
                )
        if fs.events.registry.table(spec.model).writes:
            fs.written.append((Op.DELETE, state, state.obj(), {}))


def _row_of(part: TablePart, values: dict[str, Any]) -> tuple[Row, bool]:
    """A table row from attribute values; False when some column is not known."""
    row: Row = {}
    complete = True
    for name, key in part.columns:
        if key is not None and key in values:
            value = values[key]
            row[name] = value if type(value) in _PLAIN else _plain(value)
        else:
            row[name] = NO_VALUE
            complete = False
    return row, complete


def _plain(value: Any) -> Any:
    """A value safe to keep: mutable containers are copied, so later changes don't leak in."""
    if isinstance(value, dict | list | set):
        return copy.deepcopy(value)
    return value


# -- after the flush -------------------------------------------------------------------------


def after_flush(st: SessionState, session: sa_orm.Session) -> None:
    """Fill in values the database generated and SQLAlchemy did not fetch: one SELECT per mapper."""
    fs = st.flush
    if fs is None or not fs.incomplete:
        return
    by_mapper: dict[sa_orm.Mapper[Any], list[tuple[MapperSpec, State, Row, TablePart]]] = {}
    for item in fs.incomplete:
        by_mapper.setdefault(item[0].mapper, []).append(item)
    fs.incomplete = []
    for mapper, items in by_mapper.items():
        spec = items[0][0]
        keys = sorted(spec.column_keys)
        idents = [_identity(mapper, st) for _, st, _, _ in items]
        found = select_by_identity(session, mapper, keys, idents)
        for (_, _, row, part), ident in zip(items, idents, strict=True):
            values = found.get(ident, {})
            for name, key in part.columns:
                if row.get(name, None) is NO_VALUE:
                    row[name] = values.get(key) if key else None


def _identity(mapper: sa_orm.Mapper[Any], state: State) -> tuple[Any, ...]:
    if state.key is not None:
        return state.key[1]
    return tuple(mapper.primary_key_from_instance(state.obj()))


_listening = False


def listen_mappers() -> None:
    """Listen to every mapper's row events, once per process.

    The listeners do nothing for a session no :class:`Events` is installed on.
    """
    global _listening
    if _listening:
        return
    for name, fn in (
        ("before_insert", _on_before_write),
        ("before_update", _on_before_write),
        ("before_delete", _on_before_delete),
        ("after_insert", _on_after_insert),
        ("after_update", _on_after_update),
        ("after_delete", _on_after_delete),
    ):
        sa_event.listen(sa_orm.Mapper, name, fn, raw=True)
    _listening = True
