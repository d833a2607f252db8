r"""Model callbacks and capture on the unit of work.

``before_*`` callbacks run in ``before_flush``, where a veto can still be honoured
by taking the object out of the flush.  Rows are recorded from the mapper
``after_insert``/``after_update``/``after_delete`` events (:mod:`.rows`), which
fire exactly for the rows the flush wrote, cascades and orphans included.
``after_*`` callbacks run in ``after_flush_postexec``, once the flush succeeded,
where they may change objects and add new ones for the next flush.

Everything here runs once per row of every flush, so it works on instance
states (never ``inspect(obj)``) and on per-mapper :class:`~.plan.ModelPlan`\ s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE, flush_candidates, flush_running
from ..capture import Buffer, Key, same
from ..changes import Op
from ..exceptions import ConfigurationError
from ..mapping import MapperSpec, TablePart, mapper_spec
from ..registry import Callbacks, first_veto, vetoes_nothing
from ..rowset import RowSet
from .oldvalues import load_old_values
from .passivedeletes import tell_rows_left_to_the_database
from .plan import ModelPlan
from .vetoes import apply_vetoes

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = [
    "FlushState",
    "active_flushes",
    "after_flush_postexec",
    "before_flush",
    "changed_fields",
    "end_flushes",
    "remember",
    "run_before",
    "same",
]

State = sa_orm.InstanceState[Any]

_OPS: Final = ("insert", "update", "delete")

#: the flushes running now, per ``Session.hash_key``: the mapper row events look
#: them up here, which is cheaper than through the session of each state
active_flushes: dict[int | None, list[FlushState]] = {}


@final
class FlushState:
    """What one flush of one session has seen so far, for one :class:`Events`."""

    __slots__ = (
        "_buffer",
        "assigned",
        "context",
        "deleting",
        "events",
        "generated_old",
        "incomplete",
        "plan_of",
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
        self.plan_of: Callable[[sa_orm.Mapper[Any]], ModelPlan] = st.events.plan_of
        self.session = session
        self._buffer: Buffer | None = None
        #: states before_flush visited: their before_* callbacks, if they have any, ran
        self.seen: set[State] = set()
        #: deleted states whose unloaded columns before_flush already read
        self.deleting: set[State] = set()
        #: the rows for the after_* callbacks, in the order they were written, in one flat
        #: list (see :func:`remember`)
        self.written: list[Any] = []
        #: rows recorded with some values the database generated, by buffer key: filled in
        #: after the flush
        self.incomplete: list[tuple[MapperSpec, State, TablePart, Key]] = []
        #: values of onupdate / version columns before the UPDATE overwrote them
        self.generated_old: dict[State, dict[str, Any]] = {}
        #: those of them the application set itself (a version it counts itself)
        self.assigned: dict[State, frozenset[str]] = {}

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


def _start(fs: FlushState) -> None:
    key = fs.session.hash_key
    flushes = active_flushes.get(key)
    if flushes is None or flushes[0].context is not fs.context:
        flushes = active_flushes[key] = []  # the first Events of this flush (or a failed one)
    flushes.append(fs)


def end_flushes(session: sa_orm.Session) -> None:
    """Forget the session's flush; called once it is over, and when its transaction ends."""
    active_flushes.pop(session.hash_key, None)


# -- before_flush ---------------------------------------------------------------------------


def before_flush(st: SessionState, session: sa_orm.Session, context: Any) -> None:
    """Run before_* callbacks, apply vetoes, and load old values that are not loaded."""
    events = st.events
    if events.is_muted:
        st.flush = None
        return
    fs = st.flush = FlushState(st, session, context)
    _start(fs)
    candidates = flush_candidates(session)
    load_old_values(session, fs.plan_of, candidates)
    vetoes: list[tuple[str, State, Callable[..., Any]]] = []
    seen, plan_of = fs.seen, fs.plan_of
    while True:  # callbacks may add or change objects: those get their callbacks too
        ran = False
        for op, states in zip(_OPS, candidates, strict=True):
            for state in states:
                if state in seen:
                    continue
                seen.add(state)
                plan = plan_of(state.mapper)
                if not plan.before:
                    continue
                ran = True
                vetoer = run_before(fs, plan, op, state)
                if vetoer is not None:
                    vetoes.append((op, state, vetoer))
        if not ran:
            break
        candidates = flush_candidates(session)
        # what the callbacks set may have no loaded old value either; a deleted row
        # seen before has had its columns loaded already
        added, dirty, deleted = candidates
        load_old_values(session, plan_of, (added, dirty, [s for s in deleted if s not in seen]))
        if all(map(seen.issuperset, candidates)):
            break  # no object joined the flush: walking them all again would find nothing
    fs.deleting = set(candidates[2])
    if candidates[2]:
        tell_rows_left_to_the_database(fs, candidates[2])
    if vetoes:
        apply_vetoes(session, events, vetoes)


def run_before(fs: FlushState, plan: ModelPlan, op: str, state: State) -> Callable[..., Any] | None:
    """Run the before_* callbacks of one row; return the callback that vetoed it, if any."""
    model, obj = plan.model, state.obj()
    if op == "insert":
        vetoer = first_veto(plan.before_save, model, obj) if plan.before_save else None
        if vetoer is None and plan.before_insert:
            values, defaults = state.dict, plan.spec.scalar_defaults
            # in column order; scalar defaults shown as the INSERT will write them (a loop:
            # a comprehension costs a frame, for every row)
            fields: dict[str, Any] = {}
            for key in plan.spec.columns_of_key:
                if key in values:
                    fields[key] = values[key]
                elif key in defaults:
                    fields[key] = defaults[key]
            vetoer = _with_fields(plan.before_insert, plan, obj, fields, (fields,))
        return vetoer
    if op == "update":
        if not (plan.before_save or plan.before_update):
            return None
        fields, keys_pending = changed_fields(plan.spec, state)
        if not (fields or keys_pending):  # nothing will be written (only a collection changed)
            return None
        vetoer = first_veto(plan.before_save, model, obj) if plan.before_save else None
        if vetoer is None and plan.before_update:
            rows = RowSet._flushed(model, fs.session, obj)
            vetoer = _with_fields(plan.before_update, plan, obj, fields, (rows, fields))
        return vetoer
    vetoer = first_veto(plan.before_destroy, model, obj) if plan.before_destroy else None
    if vetoer is None and plan.before_delete:
        vetoer = first_veto(plan.before_delete, model, RowSet._flushed(model, fs.session, obj))
    return vetoer


def _with_fields(
    callbacks: Callbacks,
    plan: ModelPlan,
    obj: object,
    fields: dict[str, Any],
    args: tuple[Any, ...],
) -> Callable[..., Any] | None:
    """Run before_insert / before_update with ``fields``; write back what they changed."""
    original = dict(fields)
    vetoer = first_veto(callbacks, plan.model, *args)
    if vetoer is None:
        column_keys = plan.spec.column_keys
        for key, value in fields.items():
            if value is original.get(key, _UNSET):
                continue
            if key not in column_keys:
                name = plan.model.__name__
                raise ConfigurationError(
                    f"{name}: a callback set fields[{key!r}], which is not a column attribute "
                    f"of {name}",
                    model=plan.model,
                )
            setattr(obj, key, value)
    return vetoer


_UNSET: Any = object()


def changed_fields(spec: MapperSpec, state: State) -> tuple[dict[str, Any], bool]:
    """The column values an UPDATE of ``state`` will write, by attribute key, and whether it
    will write foreign keys not known yet too.

    No-op assignments are left out.  A changed many-to-one relationship shows as its
    foreign key columns, the key of the object it points to (as loaded, else its
    identity); those the flush takes from an object not inserted yet are not known
    before it writes them.
    """
    values = state.dict
    fields: dict[str, Any] = {}
    keys_pending = False
    column_keys = spec.column_keys
    for key, old in state.committed_state.items():
        if key in column_keys:
            new = values.get(key, NO_VALUE)
            if new is not NO_VALUE and (old is NO_VALUE or not same(old, new)):
                fields[key] = new
        elif key in spec.many_to_one:
            target = values.get(key)
            target_state = sa_orm.attributes.instance_state(target) if target is not None else None
            for local, remote in spec.many_to_one[key]:
                new = None if target_state is None else key_value(target_state, remote)
                if new is NO_VALUE:
                    keys_pending = True
                elif not same(values.get(local), new):
                    fields[local] = new
    return fields, keys_pending


def key_value(state: State, key: str) -> Any:
    """The value of ``state``'s attribute ``key`` as loaded, else from its identity when
    it is a key column (an expired object); NO_VALUE when not known."""
    value = state.dict.get(key, NO_VALUE)
    if value is None and state.key is None:
        return NO_VALUE  # a key the INSERT of a new object will generate
    if value is NO_VALUE and state.key is not None:
        for name, ident in zip(mapper_spec(state.mapper).identity_keys, state.key[1], strict=False):
            if name == key:
                return ident
    return value


# -- after the flush -------------------------------------------------------------------------


def remember(fs: FlushState, op: Op, plan: ModelPlan, state: State, fields: dict[str, Any]) -> None:
    """Keep a written row for its after_* callbacks, which run once the flush is over.

    Each row is op, plan, state, object (held so that it outlives the flush),
    the number of fields, their keys, their values: flat, because every object
    kept until the end of the flush (a tuple or a dict per row) counts towards
    the garbage collector's next collection, and for a big flush one more of
    them can be a full collection.
    """
    written = fs.written
    written += (op, plan, state, state.obj(), len(fields))
    written += fields
    written += fields.values()


def after_flush_postexec(st: SessionState, session: sa_orm.Session) -> None:
    """Run after_* callbacks for the rows this flush wrote."""
    end_flushes(session)
    fs, st.flush = st.flush, None
    if fs is None or not fs.written:
        return
    written = fs.written
    at, end = 0, len(written)
    while at < end:
        op, plan, state, obj, size = written[at : at + 5]
        keys = at + 5
        at = keys + 2 * size
        fields: dict[str, Any] = {}
        for key in range(keys, keys + size):  # (a comprehension costs more, per row)
            fields[written[key]] = written[key + size]
        model = plan.model
        # (a callback returning True vetoes nothing here: vetoes_nothing says so)
        if op is Op.INSERT:
            ident: tuple[Any, ...] = state.identity or ()
            pk = ident[0] if len(ident) == 1 else ident
            for fn, _ in plan.after_insert:
                if fn(model, fields, pk) is True:
                    vetoes_nothing(fn, "after_insert")
            for fn, _ in plan.after_save:
                if fn(model, obj) is True:
                    vetoes_nothing(fn, "after_save")
        elif op is Op.UPDATE:
            if plan.after_update:
                rows = RowSet._flushed(model, session, obj)
                for fn, _ in plan.after_update:
                    if fn(model, rows, fields) is True:
                        vetoes_nothing(fn, "after_update")
            for fn, _ in plan.after_save:
                if fn(model, obj) is True:
                    vetoes_nothing(fn, "after_save")
        else:
            if plan.after_delete:
                rows = RowSet._flushed(model, session, obj, state.identity or ())
                for fn, _ in plan.after_delete:
                    if fn(model, rows) is True:
                        vetoes_nothing(fn, "after_delete")
            for fn, _ in plan.after_destroy:
                if fn(model, obj) is True:
                    vetoes_nothing(fn, "after_destroy")
