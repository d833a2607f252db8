"""Model callbacks and capture on the unit of work.

``before_*`` callbacks run in ``before_flush``, where a veto can still be honoured
by taking the object out of the flush.  Rows are recorded from the mapper
``after_insert``/``after_update``/``after_delete`` events, which fire exactly
for the rows the flush wrote, cascades and orphans included.  ``after_*``
callbacks run in ``after_flush_postexec``, once the flush succeeded, where they
may change objects and add new ones for the next flush.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE, committed_state, flush_running
from ..capture import Buffer, Row
from ..changes import Op
from ..exceptions import AbortError, ConfigurationError
from ..mapping import MapperSpec, TablePart, mapper_spec
from ..registry import Callbacks, first_veto
from ..rowset import RowSet

if TYPE_CHECKING:
    from ..events import Events
    from ..session import SessionState

__all__ = [
    "FlushState",
    "after_flush_postexec",
    "before_flush",
    "changed_fields",
    "run_before",
    "same",
    "select_by_identity",
]

State = sa_orm.InstanceState[Any]

_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
_FETCH_CHUNK: Final = 500


@final
class FlushState:
    """What one flush of one session has seen so far, for one :class:`Events`."""

    __slots__ = (
        "_buffer",
        "context",
        "events",
        "generated_old",
        "incomplete",
        "seen",
        "session",
        "st",
        "written",
    )

    def __init__(self, st: SessionState, session: sa_orm.Session, context: Any) -> None:
        self.st = st
        #: SQLAlchemy's UOWTransaction of this flush
        self.context = context
        self.events = st.events
        self.session = session
        self._buffer: Buffer | None = None
        #: states whose before_* callbacks already ran in before_flush
        self.seen: set[State] = set()
        #: (op, state, object, fields) for the after_* callbacks, in the order rows were
        #: written; the object is held so that it outlives the flush
        self.written: list[tuple[Op, State, object, dict[str, Any]]] = []
        #: rows recorded with some values the database generated: filled after the flush
        self.incomplete: list[tuple[MapperSpec, State, Row, TablePart]] = []
        #: values of onupdate / version columns before the UPDATE overwrote them
        self.generated_old: dict[State, dict[str, Any]] = {}

    @property
    def running(self) -> bool:
        """Whether this flush is writing now (mapper events, many-to-many statements)."""
        return flush_running(self.context)

    @property
    def buffer(self) -> Buffer:
        """The buffer rows go to; looked up late, as the flush begins the transaction."""
        if self._buffer is None:
            self._buffer = self.st.buffer(self.session)
        return self._buffer


# -- before_flush ---------------------------------------------------------------------------


def before_flush(st: SessionState, session: sa_orm.Session, context: Any) -> None:
    """Run before_* callbacks, apply vetoes, and load old values that are not loaded."""
    events = st.events
    if events.is_muted:
        st.flush = None
        return
    fs = st.flush = FlushState(st, session, context)
    _load_old_values(session, events, _changed_states(session))
    vetoes: list[tuple[str, State, Callable[..., Any]]] = []
    ran = True
    while ran:  # callbacks may add objects: those get their callbacks too
        ran = False
        for op, obj in _flush_candidates(session):
            state: State = sa.inspect(obj)
            if state in fs.seen or not fs.events.registry.table(type(obj)).writes:
                continue
            fs.seen.add(state)
            ran = True
            vetoer = run_before(fs, op, obj, state)
            if vetoer is not None:
                vetoes.append((op, state, vetoer))
    if vetoes:
        _apply_vetoes(session, events, vetoes)
    # callbacks may have set attributes whose old value is not loaded either
    _load_old_values(session, events, _changed_states(session))


def _flush_candidates(session: sa_orm.Session) -> Iterable[tuple[str, object]]:
    for obj in list(session.new):
        yield "insert", obj
    for obj in list(session.dirty):
        yield "update", obj
    for obj in list(session.deleted):
        yield "delete", obj


def run_before(fs: FlushState, op: str, obj: object, state: State) -> Callable[..., Any] | None:
    model = type(obj)
    table = fs.events.registry.table(model)
    if not table.writes:
        return None
    if op == "insert":
        return _before_save(table.get("before_save"), table.get("before_insert"), model, obj, state)
    if op == "update":
        return _before_update(fs, table.get("before_save"), table.get("before_update"), obj, state)
    rows = RowSet(model, fs.session, objects=[obj])
    return first_veto(table.get("before_destroy"), model, obj) or first_veto(
        table.get("before_delete"), model, rows
    )


def _before_save(
    save: Callbacks, insert: Callbacks, model: type[Any], obj: object, state: State
) -> Callable[..., Any] | None:
    if not (save or insert):
        return None
    vetoer = first_veto(save, model, obj)
    if vetoer is None and insert:
        spec = mapper_spec(state.mapper)
        values = state.dict
        fields = {k: v for k, v in spec.scalar_defaults.items() if k not in values}
        fields.update((k, values[k]) for k in spec.column_keys if k in values)
        vetoer = _with_fields(insert, model, spec, obj, fields, lambda f: (f,))
    return vetoer


def _before_update(
    fs: FlushState, save: Callbacks, update: Callbacks, obj: object, state: State
) -> Callable[..., Any] | None:
    if not (save or update):
        return None
    spec = mapper_spec(state.mapper)
    fields = changed_fields(spec, state)
    if not fields:  # nothing will be written for this row (e.g. only a collection changed)
        return None
    model = type(obj)
    vetoer = first_veto(save, model, obj)
    if vetoer is None and update:
        rows = RowSet(model, fs.session, objects=[obj])
        vetoer = _with_fields(update, model, spec, obj, fields, lambda f: (rows, f))
    return vetoer


def _with_fields(
    callbacks: Callbacks,
    model: type[Any],
    spec: MapperSpec,
    obj: object,
    fields: dict[str, Any],
    args: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> Callable[..., Any] | None:
    """Run callbacks that receive ``fields``; write back what they changed."""
    original = dict(fields)
    vetoer = first_veto(callbacks, model, *args(fields))
    if vetoer is None:
        for key, value in fields.items():
            if value is not original.get(key, _UNSET):
                if key not in spec.column_keys:
                    raise ConfigurationError(
                        f"{model.__name__}: a callback set fields[{key!r}], "
                        f"which is not a column attribute of {model.__name__}",
                        model=model,
                    )
                setattr(obj, key, value)
    return vetoer


_UNSET: Any = object()


def changed_fields(spec: MapperSpec, state: State) -> dict[str, Any]:
    """The column values an UPDATE of ``state`` will write, by attribute key.

    No-op assignments are left out; a changed many-to-one relationship shows as
    its foreign key columns when the target's key is already known.
    """
    values = state.dict
    fields: dict[str, Any] = {}
    for key, old in committed_state(state).items():
        if key in spec.column_keys:
            new = values.get(key, NO_VALUE)
            if new is not NO_VALUE and (old is NO_VALUE or not same(old, new)):
                fields[key] = new
        elif key in spec.many_to_one:
            target = values.get(key)
            target_values = sa.inspect(target).dict if target is not None else None
            for local, remote in spec.many_to_one[key]:
                new = None if target_values is None else target_values.get(remote)
                if (new is not None or target is None) and not same(values.get(local), new):
                    fields[local] = new
    return fields


def same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


# -- vetoes ----------------------------------------------------------------------------------


def _apply_vetoes(
    session: sa_orm.Session, events: Events, vetoes: list[tuple[str, State, Callable[..., Any]]]
) -> None:
    """Skip each vetoed operation, or raise AbortError before touching anything."""
    for op, state, fn in vetoes:
        reason = None
        if events.abort == "raise":
            reason = 'Events(abort="raise")'
        elif op == "insert":
            reason = _strands_insert(session, state)
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
            session.expunge(obj)
        elif op == "update":
            _revert(session, state, obj)
        else:
            _restore(session, state, obj)


def _strands_insert(session: sa_orm.Session, state: State) -> str | None:
    """Tell why expunging a pending object would strand other pending objects, if it would."""
    leaving = {state}
    leaving.update(st for _, _, st, _ in state.mapper.cascade_iterator("expunge", state))
    pending = {sa.inspect(obj) for obj in session.new} | {sa.inspect(o) for o in session.dirty}
    staying = pending - leaving
    for st in leaving:
        for other in _related_states(st):
            if other in staying:
                return f"{sa_orm.util.state_str(other)} is pending and related to it"
    for st in staying:
        for other in _related_states(st):
            if other in leaving:
                return f"{sa_orm.util.state_str(st)} is pending and refers to it"
    return None


def _related_states(state: State) -> Iterable[State]:
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


# -- old values ------------------------------------------------------------------------------


def _changed_states(session: sa_orm.Session) -> Iterable[tuple[State, bool]]:
    for obj in session.dirty:
        yield sa.inspect(obj), False
    for obj in session.deleted:
        yield sa.inspect(obj), True


def _load_old_values(
    session: sa_orm.Session, events: Events, states: Iterable[tuple[State, bool]]
) -> None:
    """Fetch the unknown old values of changed rows: one SELECT per mapper.

    A dirty attribute that was expired when it was set has no old value; a deleted
    object may have expired columns.  The values are put where SQLAlchemy itself
    keeps them, so its own no-op detection benefits as well.
    """
    missing: dict[sa_orm.Mapper[Any], list[tuple[State, bool, list[str]]]] = {}
    for state, deleted in states:
        mapper = state.mapper
        if not events.wants_old_values(mapper):
            continue
        spec = mapper_spec(mapper)
        if deleted:
            keys = [key for key in spec.column_keys if key not in state.dict]
        else:
            keys = [
                key
                for key, old in committed_state(state).items()
                if old is NO_VALUE and key in spec.column_keys
            ]
        if keys and state.key is not None:
            missing.setdefault(mapper, []).append((state, deleted, keys))
    for mapper, items in missing.items():
        keys = sorted({key for _, _, ks in items for key in ks})
        found = select_by_identity(session, mapper, keys, [st.identity for st, _, _ in items])
        for state, deleted, wanted in items:
            row = found.get(state.identity or ())
            if row is None:
                continue  # gone already: the flush will report it
            for key in wanted:
                if deleted:
                    sa_orm.attributes.set_committed_value(state.obj(), key, row[key])
                else:
                    committed_state(state)[key] = row[key]


def select_by_identity(
    session: sa_orm.Session | sa.Connection,
    mapper: sa_orm.Mapper[Any],
    keys: list[str],
    identities: list[Any],
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Load attribute values of the rows with these identities, keyed by identity."""
    pk_columns = list(mapper.primary_key)
    pk_attrs = [mapper.get_property_by_column(c).key for c in pk_columns]
    columns = [mapper.attrs[k].expression.label(k) for k in keys]  # type: ignore[attr-defined, unused-ignore]
    pk_labels = [c.label(f"_pk{i}") for i, c in enumerate(pk_columns)]
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for start in range(0, len(identities), _FETCH_CHUNK):
        chunk = identities[start : start + _FETCH_CHUNK]
        where = (
            pk_columns[0].in_([ident[0] for ident in chunk])
            if len(pk_columns) == 1
            else sa.tuple_(*pk_columns).in_(chunk)
        )
        query = sa.select(*pk_labels, *columns).select_from(mapper.persist_selectable).where(where)
        if isinstance(session, sa.Connection):
            rows = session.execute(query).mappings()
        else:
            rows = session.connection(bind_arguments={"mapper": mapper}).execute(query).mappings()
        for row in rows:
            ident = tuple(row[f"_pk{i}"] for i in range(len(pk_attrs)))
            found[ident] = dict(row)
    return found


# -- after the flush -------------------------------------------------------------------------


def after_flush_postexec(st: SessionState, session: sa_orm.Session) -> None:
    """Run after_* callbacks for the rows this flush wrote."""
    fs, st.flush = st.flush, None
    if fs is None or not fs.written:
        return
    registry = fs.events.registry
    for op, state, obj, fields in fs.written:
        model = type(obj)
        table = registry.table(model)
        if op is Op.INSERT:
            ident = state.identity or ()
            pk = ident[0] if len(ident) == 1 else ident
            for fn, _ in table.get("after_insert"):
                fn(model, fields, pk)
            for fn, _ in table.get("after_save"):
                fn(model, obj)
        elif op is Op.UPDATE:
            rows = RowSet(model, session, objects=[obj])
            for fn, _ in table.get("after_update"):
                fn(model, rows, fields)
            for fn, _ in table.get("after_save"):
                fn(model, obj)
        else:
            rows = RowSet(model, session, objects=[obj], pks=[state.identity or ()])
            for fn, _ in table.get("after_delete"):
                fn(model, rows)
            for fn, _ in table.get("after_destroy"):
                fn(model, obj)
