"""Recording the rows a flush writes, from the mapper row events.

The mapper ``after_insert`` / ``after_update`` / ``after_delete`` events fire
exactly for the rows the flush wrote, cascades and delete-orphans included, so
rows are recorded there, with their old values; values the database generated
and SQLAlchemy did not fetch are filled in once the flush is over
(:mod:`.completion`).  The mapper ``before_*`` events catch objects that joined
the flush after ``before_flush`` (a cascade, a key a relationship sets), whose
``before_*`` callbacks run late.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from itertools import repeat
from typing import Any, Final

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE
from ..capture import Row
from ..changes import Op
from ..exceptions import AbortError
from ..mapping import MapperSpec, TablePart
from .flush import FlushState, State, active_flushes, remember, run_before, same
from .oldvalues import select_by_identity, unknown_old_values, unloaded_columns
from .plan import ModelPlan

__all__ = ["NO_FIELDS", "listen_mappers", "record_update"]

_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
#: a deleted row's fields, for after_* callbacks that get none
NO_FIELDS: Final[dict[str, Any]] = {}


# -- mapper events: the rows really written ---------------------------------------------------


def _on_before_write(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    flushes = active_flushes.get(state.session_id)
    if flushes is None:
        return
    for fs in flushes:
        plan = fs.plan_of(mapper)
        if (
            state.key is not None
            and plan.keep_old
            and _has_no_value(state.committed_state.values())
        ):
            # a row the flush found itself (a child whose key a one-to-many relationship
            # set), or one a listener of the application's changed since before_flush
            _read_unknown_old(connection, mapper, plan, state)
        if state.key is not None and (plan.capture or plan.after):
            _keep_generated_old(fs, plan, state)
        if plan.before and state not in fs.seen:
            late_before(fs, plan, "update" if state.key is not None else "insert", state)


def _keep_generated_old(fs: FlushState, plan: ModelPlan, state: State) -> None:
    """Keep the old values of the columns the UPDATE of ``state`` sets that its history
    loses as it is written: onupdate and version columns, and columns the application set
    to a SQL expression (``obj.count = Model.count + 1``, ``sa.null()``), which SQLAlchemy
    expires, history and all, once the UPDATE ran."""
    spec = plan.spec
    generated = spec.generated_keys
    values, committed = state.dict, state.committed_state
    as_sql: list[str] = []
    for key in committed:  # (a loop: a comprehension costs a frame, for every updated row)
        value = values.get(key)
        if type(value) not in _PLAIN and key in spec.column_keys and _is_sql(value):
            as_sql.append(key)
    if not (generated or as_sql):
        return
    old = {key: values.get(key, NO_VALUE) for key in generated}
    assigned = generated.intersection(committed).union(as_sql)
    if assigned:  # set by the application (a version it counts, SQL): old in history
        old.update((key, committed[key]) for key in assigned)
        fs.assigned[state] = assigned
    fs.generated_old[state] = old


def _read_unknown_old(
    connection: sa.Connection, mapper: sa_orm.Mapper[Any], plan: ModelPlan, state: State
) -> None:
    """Read the old values the history of a row about to be updated does not know.

    before_flush did so for the rows it saw, with one SELECT per mapper; a row
    the flush found itself, whose columns were expired, takes a SELECT of its own.
    """
    keys = unknown_old_values(plan, state)
    if keys:
        identity = state.identity or ()
        row = select_by_identity(connection, mapper, keys, [identity]).get(identity)
        if row is not None:
            committed = state.committed_state
            for key in keys:
                committed[key] = row[key]


def _on_before_delete(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    flushes = active_flushes.get(state.session_id)
    if flushes is None:
        return
    for fs in flushes:
        plan = fs.plan_of(mapper)
        if plan.wants_old and state not in fs.deleting:  # before_flush read the others
            _read_deleted_old(connection, mapper, plan, state)
        if plan.before and state not in fs.seen:
            late_before(fs, plan, "delete", state)


def _read_deleted_old(
    connection: sa.Connection, mapper: sa_orm.Mapper[Any], plan: ModelPlan, state: State
) -> None:
    """Read what the row of an orphan the flush found itself held, where the object does
    not tell: columns not loaded, and columns changed without their old value known."""
    unloaded = unloaded_columns(plan, state)
    expired = unknown_old_values(plan, state)
    if not (unloaded or expired):
        return
    identity = state.identity or ()
    row = select_by_identity(connection, mapper, [*unloaded, *expired], [identity]).get(identity)
    if row is None:
        return
    for key in unloaded:
        sa_orm.attributes.set_committed_value(state.obj(), key, row[key])
    for key in expired:
        state.committed_state[key] = row[key]


def late_before(fs: FlushState, plan: ModelPlan, op: str, state: State) -> None:
    """before_* callbacks for a row the flush found itself (an orphan, a key set by a relationship).

    The flush is already running: the row cannot be skipped any more, so a veto raises.
    """
    fs.seen.add(state)
    vetoer = run_before(fs, plan, op, state)
    if vetoer is not None:
        model = state.class_
        raise AbortError(
            f"{model.__name__}: {getattr(vetoer, '__qualname__', vetoer)} vetoed the {op} of "
            f"{sa_orm.util.state_str(state)}, a row the flush itself found; it cannot be skipped",
            model=model,
            callback=vetoer,
            instance=state.obj(),
        )


def _on_after_insert(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    flushes = active_flushes.get(state.session_id)
    if flushes is None:
        return
    for fs in flushes:
        plan = fs.plan_of(mapper)
        values = state.dict
        if plan.capture:
            spec = plan.spec
            buffer = fs.buffer
            for part in spec.parts:
                row, complete = _row_of(part, values)
                if part.left_to_defaults:  # a single-table subclass: its siblings' columns
                    complete = _add_defaults(part, row) and complete
                pk = tuple([row[name] for name in part.spec.pk])
                buffer.add(
                    part.spec.name, pk, Op.INSERT, spec.model, None, row if plan.keep_new else None
                )
                if not complete and plan.keep_new:
                    fs.incomplete.append((spec, state, part, (part.spec.name, *pk)))
        if plan.after:
            fields = NO_FIELDS
            if plan.after_insert:
                fields = {}
                for key in plan.spec.columns_of_key:  # (a comprehension costs a frame, per row)
                    if key in values:
                        fields[key] = values[key]
            remember(fs, Op.INSERT, plan, state, fields)


def _on_after_update(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    flushes = active_flushes.get(state.session_id)
    if flushes is None:
        return
    if state.key is None:
        _on_row_switch(flushes[0].session, mapper, connection, state)
        return
    for fs in flushes:
        plan = fs.plan_of(mapper)
        if not (plan.capture or plan.after):
            continue
        spec = plan.spec
        generated_old = fs.generated_old.pop(state, None) if fs.generated_old else None
        assigned = fs.assigned.pop(state, None) if generated_old else None
        fields = _written_fields(spec, state, generated_old, assigned)
        if not fields:
            continue  # SQLAlchemy reports every dirty object; no row was written for this one
        if plan.capture:
            record_update(fs, plan, state, fields, generated_old)
        if plan.after:
            known = fields if plan.after_update else NO_FIELDS
            if known and _has_no_value(known.values()):
                known = {k: v for k, v in fields.items() if v is not NO_VALUE}
            remember(fs, Op.UPDATE, plan, state, known)


def _on_row_switch(
    session: sa_orm.Session, mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State
) -> None:
    """A new object took the key of one deleted in the same flush.

    SQLAlchemy then UPDATEs the row rather than DELETE and INSERT it, and fires
    ``after_update`` for the new object alone.  Recorded as what was asked for,
    the old object's delete and the new one's insert: the buffer nets the two into
    the UPDATE the database saw, and each object gets the ``after_*`` callbacks
    that go with the ``before_*`` ones it had.
    """
    existing = session.identity_map.get(mapper.identity_key_from_instance(state.obj()))
    if existing is not None:
        old = sa_orm.attributes.instance_state(existing)
        _on_after_delete(old.mapper, connection, old)
    _on_after_insert(mapper, connection, state)


def _written_fields(
    spec: MapperSpec,
    state: State,
    generated_old: dict[str, Any] | None,
    assigned: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The columns the UPDATE of ``state`` wrote: new values by attribute key.

    NO_VALUE for a value not known before it is read back: set by a SQL expression,
    or by a Python onupdate (see ``MapperSpec.python_onupdate_keys``); ``generated_old``
    holds what onupdate and version columns were before the UPDATE set them, ``assigned``
    those of them the application set itself (SQLAlchemy takes them out of the history
    as it writes them): those count as written whenever they changed, the others only
    along with other columns, as only then was there an UPDATE to set them.
    """
    values = state.dict
    changed = state.committed_state
    columns_of_key = spec.columns_of_key
    fields: dict[str, Any] = {}
    for key, old in changed.items():
        if key in columns_of_key:
            new = values.get(key, NO_VALUE)
            if type(new) not in _PLAIN and _is_sql(new):
                new = NO_VALUE  # (a bound literal, which SQLAlchemy leaves in the object)
            if old is NO_VALUE or new is NO_VALUE or not same(old, new):
                fields[key] = new
    if generated_old and (fields or assigned):
        unreliable = spec.python_onupdate_keys
        written = bool(fields)
        for key, old in generated_old.items():
            by_app = assigned is not None and key in assigned
            if key not in changed and (written or by_app):
                new = NO_VALUE if key in unreliable and not by_app else values.get(key, NO_VALUE)
                if old is NO_VALUE or new is NO_VALUE or not same(old, new):
                    fields[key] = new
    return fields


def record_update(
    fs: FlushState,
    plan: ModelPlan,
    state: State,
    fields: dict[str, Any],
    generated_old: dict[str, Any] | None,
) -> None:
    """Record the written columns, old and new, in the rows of the tables they are stored in.

    Runs for every updated row: kept flat, without a comprehension or a call per column.
    """
    spec = plan.spec
    changed = state.committed_state
    columns_of_key = spec.columns_of_key
    parts = spec.parts
    olds: list[Row] = [{}] if len(parts) == 1 else [{} for _ in parts]
    news: list[Row] = [{}] if len(parts) == 1 else [{} for _ in parts]
    incomplete = False  # some new value was set by a SQL expression
    for key, new in fields.items():
        old = changed[key] if key in changed else generated_old[key]  # type: ignore[index]
        if old is not NO_VALUE and type(old) not in _PLAIN:
            old = _plain(old)
        if new is NO_VALUE:
            incomplete = True
        elif type(new) not in _PLAIN:
            new = _plain(new)
        for index, name in columns_of_key[key]:
            if old is not NO_VALUE:
                olds[index][name] = old
            news[index][name] = new  # NO_VALUE: set by a SQL expression, filled after the flush
    values = state.dict
    keep_old, keep_new = plan.keep_old, plan.keep_new
    buffer = fs.buffer
    for index, part in enumerate(parts):
        new = news[index]
        if not new:
            continue
        old = olds[index]
        pk = part.key_of(values)
        if not part.pk_names.isdisjoint(new):
            # a new primary key is a different row to every consumer keyed by pk
            before = {**_row_of(part, values, known_only=True)[0], **old}
            old_pk = tuple([before.get(name) for name in part.spec.pk])
            buffer.add(
                part.spec.name, old_pk, Op.DELETE, spec.model, before if keep_old else None, None
            )
            row, complete = _row_of(part, values)
            for key in spec.python_onupdate_keys:  # not reliable in the object: read back
                for at, name in columns_of_key[key]:
                    if at == index:
                        row[name], complete = NO_VALUE, False
            buffer.add(part.spec.name, pk, Op.INSERT, spec.model, None, row if keep_new else None)
            if not complete and keep_new:
                fs.incomplete.append((spec, state, part, (part.spec.name, *pk)))
            continue
        buffer.add(
            part.spec.name,
            pk,
            Op.UPDATE,
            spec.model,
            old if keep_old else None,
            new if keep_new else None,
        )
        if keep_new and incomplete:
            fs.incomplete.append((spec, state, part, (part.spec.name, *pk)))


def _on_after_delete(mapper: sa_orm.Mapper[Any], connection: sa.Connection, state: State) -> None:
    flushes = active_flushes.get(state.session_id)
    if flushes is None:
        return
    for fs in flushes:
        plan = fs.plan_of(mapper)
        if plan.capture:
            spec = plan.spec
            values = state.dict
            changed = state.committed_state
            if changed:  # modified before it was deleted: the row is what the database had
                values = {**values, **{k: v for k, v in changed.items() if v is not NO_VALUE}}
            buffer = fs.buffer
            for part in spec.parts:
                row = _row_of(part, values, known_only=True)[0]
                pk = tuple([row.get(name) for name in part.spec.pk])
                buffer.add(
                    part.spec.name, pk, Op.DELETE, spec.model, row if plan.keep_old else None, None
                )
        if plan.after:
            remember(fs, Op.DELETE, plan, state, NO_FIELDS)


def _has_no_value(values: Iterable[Any]) -> bool:
    """Whether any of ``values`` is NO_VALUE, by identity (never ``==``) and without a frame."""
    return any(map(operator.is_, values, repeat(NO_VALUE)))


def _row_of(part: TablePart, values: dict[str, Any], known_only: bool = False) -> tuple[Row, bool]:
    """A table row from attribute values; False when some column is not known.

    Columns not known are NO_VALUE in the row, or left out with ``known_only``.
    Columns the mapper does not map (``exclude_properties``) are left out: the
    unit of work never knows them.
    """
    row: Row = {}
    complete = True
    for name, key in part.columns:
        if key is None:
            continue
        value = values.get(key, NO_VALUE)
        if value is not NO_VALUE and type(value) not in _PLAIN:
            value = _plain(value)
        if value is not NO_VALUE:
            row[name] = value
        else:
            complete = False
            if not known_only:
                row[name] = NO_VALUE
    return row, complete


def _add_defaults(part: TablePart, row: Row) -> bool:
    """Put in ``row`` what the INSERT left in the columns of the classes stored in the same
    table that its mapper does not map; False when some is only known once read back."""
    complete = True
    for name, value in part.left_to_defaults:
        row[name] = value
        if value is NO_VALUE:
            complete = False
    return complete


def _plain(value: Any) -> Any:
    """A value safe to keep: mutable containers are copied, so later changes don't leak in.

    ``JSON.NULL`` (JSON's null, asked for by name) is stored as what reads back as None;
    a SQL expression is NO_VALUE, its value known once the row is read back.
    """
    if isinstance(value, dict | list | set):
        return copy.deepcopy(value)
    if value is _JSON_NULL:
        return None
    if _is_sql(value):
        return NO_VALUE
    return value


_JSON_NULL: Final = sa.JSON.NULL


def _is_sql(value: Any) -> bool:
    """Whether an attribute holds a SQL expression for the flush to write rather than a
    value (``Model.count + 1``, ``sa.null()``, ``sa.literal(7)``, another attribute)."""
    return isinstance(value, sa.ClauseElement) or hasattr(value, "__clause_element__")


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
        # retval: SQLAlchemy calls the function itself rather than through a wrapper that
        # only discards its return value (these events ignore it); one call less per row
        sa_event.listen(sa_orm.Mapper, name, fn, raw=True, retval=True)
    _listening = True
