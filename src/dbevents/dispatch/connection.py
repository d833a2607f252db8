"""Capture of Core statements on a session's connections.

The unit of work writes many-to-many rows with Core statements, legacy
``bulk_*`` methods do too, and so does code that calls
``session.connection().execute(...)``.  All of them pass through the
connection's ``before_execute`` / ``after_execute`` events, which are listened
to once per engine; a connection is attributed to the session that began it
(``after_begin``), and connections of sessions no :class:`Events` is installed
on are left alone.

Here a statement is told apart: not a write, a write no one captures, raw SQL
(:mod:`.uncaptured`), or a write to capture, whose plan :mod:`.dml` makes before it
runs and carries out after.  The SAVEPOINT statements of savepoints the
application begins on the connection itself are followed too: no session event
tells of those.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm
from sqlalchemy.sql.elements import False_
from sqlalchemy.sql.expression import (
    ReleaseSavepointClause,
    RollbackToSavepointClause,
    SavepointClause,
)

from .._compat import (
    as_without_returning,
    dml_entity,
    dml_table,
    mappers_own_rows,
    provisioning_connection,
    returns_rows_itself,
    root_engine,
    supplemental_returning,
    where_criteria,
)
from ..mapping import TableSpec, table_spec
from ..session import STATE_KEY
from .dml import StatementPlan, plan_statement
from .passivedeletes import tell_rows_a_delete_leaves, tell_rows_a_key_change_leaves
from .results import record_result
from .returning import set_columns
from .stored import SKIP_CAPTURE
from .uncaptured import raw_write, uncaptured
from .written import collecting

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["SKIP_CAPTURE", "bind_connection"]

_LISTENING: Final = "dbevents.listening"

_owners: weakref.WeakKeyDictionary[sa.Connection, weakref.ref[sa_orm.Session]] = (
    weakref.WeakKeyDictionary()
)
_plans: weakref.WeakKeyDictionary[sa.Connection, list[StatementPlan]] = weakref.WeakKeyDictionary()


def bind_connection(session: sa_orm.Session, connection: sa.Connection) -> None:
    """Attribute ``connection`` to ``session`` and make sure its engine is listened to."""
    _owners[connection] = weakref.ref(session)
    engine = root_engine(connection.engine)  # (one made by execution_options() shares its events)
    if not engine.__dict__.get(_LISTENING):
        engine.__dict__[_LISTENING] = True
        sa_event.listen(engine, "before_execute", _before_execute, retval=True)
        sa_event.listen(engine, "after_execute", _after_execute)
        sa_event.listen(engine, "before_cursor_execute", _before_cursor_execute)
        sa_event.listen(engine, "handle_error", _handle_error)


def _capturing(connection: sa.Connection) -> tuple[sa_orm.Session | None, list[SessionState]]:
    ref = _owners.get(connection)
    session = ref() if ref is not None else None
    if session is None:
        return None, []
    states = session.info.get(STATE_KEY)
    if not states:
        return session, []
    return session, [st for st in states.values() if not st.events.is_muted]


def _before_execute(
    connection: sa.Connection,
    statement: Any,
    multiparams: list[dict[str, Any]],
    params: dict[str, Any],
    execution_options: Mapping[str, Any],
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    session, states = _capturing(connection)
    if session is None:
        return statement, multiparams, params
    if not isinstance(statement, _WRITES):
        if isinstance(statement, _SAVEPOINT_STATEMENTS):
            _follow_savepoint(session, statement)
        elif (
            states
            and isinstance(statement, sa.TextClause)
            and not execution_options.get(SKIP_CAPTURE)
        ):
            raw_write(states, statement.text)
        return statement, multiparams, params  # (a SELECT, the usual case, leaves here)
    if not states or execution_options.get(SKIP_CAPTURE):
        return statement, multiparams, params
    table = dml_table(statement)
    if not isinstance(table, sa.Table):
        return statement, multiparams, params
    flushing = _flushing(states)
    if isinstance(statement, sa.Update):  # the flush's own too: the rows others refer to
        parameters = multiparams or [params]
        tell_rows_a_key_change_leaves(
            connection,
            states,
            table_spec(table),
            lambda: _set_by(table, statement, parameters),
            flushing=flushing,
        )
    if flushing and _objects_rows(table_spec(table), execution_options):
        return statement, multiparams, params  # the flush's own rows: mapper events have them
    spec = table_spec(table, dml_entity(statement))
    if flushing and _objects_rows(spec, execution_options):
        return statement, multiparams, params  # (an ORM statement of a class mapped to it)
    for criterion in where_criteria(statement):
        if isinstance(criterion, False_):
            return statement, multiparams, params  # WHERE false (a veto): no row can change
    if isinstance(statement, sa.Delete):
        tell_rows_a_delete_leaves(connection, states, spec)
    wanted = _wanted(states, spec, isinstance(statement, sa.Insert))
    if wanted is None:
        return statement, multiparams, params  # nobody needs these rows
    if isinstance(statement, sa.Insert) and statement.select is not None:
        # SQLAlchemy renders no RETURNING for return_defaults() here, and an explicit
        # RETURNING would change the caller's result: the new rows can't be known
        uncaptured(
            states,
            f"dbevents cannot capture the rows an INSERT ... FROM SELECT adds to {spec.name!r}: "
            f"they are missing from the change set; insert them with values() or the ORM, "
            f'or mute the block on purpose (Events(raw_sql="ignore") silences this)',
        )
        return statement, multiparams, params
    original = statement
    statement, parameters, plan = plan_statement(
        connection, session, states, statement, spec, multiparams or [params], wanted
    )
    if supplemental_returning(statement) and not supplemental_returning(original):
        # the caller's result would return dbevents' rows: they are taken out once read
        plan.bare_returns_rows = returns_rows_itself(connection, original, multiparams or [params])
    _plans.setdefault(connection, []).append(plan)
    if multiparams:
        multiparams = parameters  # a bulk INSERT's may come with keys drawn for its rows
    return statement, multiparams, params


def _set_by(table: sa.Table, statement: Any, parameters: list[dict[str, Any]]) -> set[str] | None:
    """The names of the columns an UPDATE SETs (None: can't be told); none when a veto
    made its WHERE clause false."""
    if any(isinstance(criterion, False_) for criterion in where_criteria(statement)):
        return set()
    return set_columns(table, statement, parameters)


_SAVEPOINT_STATEMENTS: Final = (SavepointClause, ReleaseSavepointClause, RollbackToSavepointClause)
_WRITES: Final = (sa.Insert, sa.Update, sa.Delete)


def _follow_savepoint(session: sa_orm.Session, statement: Any) -> None:
    """Give a SAVEPOINT the application begins on the connection a buffer of its own.

    Those the session begins itself (``begin_nested()``) have theirs already,
    through the session's transaction events.  Muted or not, every
    :class:`Events` follows it: a block unmuted inside it still ends with it.
    """
    states: dict[Any, SessionState] = session.info.get(STATE_KEY) or {}
    name = statement.ident
    for st in states.values():
        if isinstance(statement, SavepointClause):
            if not provisioning_connection(session):
                st.savepoint_begun(session, name)
        else:
            st.savepoint_ended(name, released=isinstance(statement, ReleaseSavepointClause))


def _flushing(states: list[SessionState]) -> bool:
    # (a loop: run on every statement, where a generator costs more)
    for st in states:  # noqa: SIM110
        if st.flush is not None and st.flush.running:
            return True
    return False


def _objects_rows(spec: TableSpec, execution_options: Mapping[str, Any]) -> bool:
    """Whether a statement the flush runs writes rows of objects, which mapper events report."""
    return not spec.link and not _secondary_rows(spec, execution_options)


def _secondary_rows(spec: TableSpec, execution_options: Mapping[str, Any]) -> bool:
    """Whether the flush writes rows of a mapped table for a relationship that has it as its
    ``secondary``: rows no object holds, so no mapper event reports them."""
    writers = spec.secondary_of_mapped
    return bool(writers) and not mappers_own_rows(execution_options, writers)


def _wanted(states: list[SessionState], spec: TableSpec, insert: bool) -> str | None:
    """What of the rows a statement writes is needed: ``"rows"``, ``"keys"`` or nothing."""
    if len(states) == 1:  # (the usual case: one Events on the session, no set to build)
        levels: Collection[str] = (states[0].events.level_of_table(spec),)
    else:
        levels = {st.events.level_of_table(spec) for st in states}
    waiting = collecting()  # statement after_* callbacks are waiting
    if "old+new" in levels or "new" in levels or (insert and waiting):
        return "rows"  # (after_insert receives the rows as stored)
    if "keys" in levels or waiting:
        return "keys"
    return None


def _after_execute(
    connection: sa.Connection,
    statement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    result: sa.CursorResult[Any],
) -> None:
    plans = _plans.get(connection)
    if not plans or plans[-1].statement is not statement:
        return
    plan = plans.pop()
    record_result(connection, plan, result)
    if plan.bare_returns_rows is not None:
        as_without_returning(result, returned_rows=plan.bare_returns_rows)


def _handle_error(context: Any) -> None:
    # statements on one connection run one at a time: a failure voids what is pending
    if context.connection is not None:
        _plans.pop(context.connection, None)


def _before_cursor_execute(
    connection: sa.Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    if context is not None and context.compiled is not None:
        return
    # dbevents' own driver SQL (load's executemany and TRUNCATE) is flagged like its statements
    if context is not None and context.execution_options.get(SKIP_CAPTURE):
        return
    _, states = _capturing(connection)  # driver-level SQL: exec_driver_sql()
    if states:
        raw_write(states, statement)
