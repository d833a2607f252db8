"""Capture of Core statements on a session's connections.

The unit of work writes many-to-many rows with Core statements, legacy
``bulk_*`` methods do too, and so does code that calls
``session.connection().execute(...)``.  All of them pass through the
connection's ``before_execute`` / ``after_execute`` events, which are listened
to once per engine; a connection is attributed to the session that began it
(``after_begin``), and connections of sessions no :class:`Events` is installed
on are left alone.

INSERT and UPDATE take the rows as stored through ``return_defaults()`` (the
caller's result keeps its type and ``rowcount``); UPDATE and DELETE read the
affected rows first (``FOR UPDATE`` where the database has it).
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm
from sqlalchemy.sql.elements import False_

from .._compat import dml_table, explicit_returning, upsert_clause, where_criteria
from ..changes import Op
from ..exceptions import DbEventsWarning, UncapturedWriteError
from ..mapping import TableSpec, column_name, table_spec
from ..session import STATE_KEY
from .record import record_diffs, record_keys, record_rows, record_update, update_diffs
from .returning import Returns, set_columns, update_from_locked, updated_columns
from .stored import (
    SKIP_CAPTURE,
    inserted_rows,
    keys_of,
    pk_of,
    read_rows,
    read_tuples,
    returned_rows,
    rows_by_key,
)
from .upsert import conflicting_rows

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["SKIP_CAPTURE", "Written", "bind_connection", "written_rows"]

_LISTENING: Final = "dbevents.listening"

Row = dict[str, Any]

_owners: weakref.WeakKeyDictionary[sa.Connection, weakref.ref[sa_orm.Session]] = (
    weakref.WeakKeyDictionary()
)
_plans: weakref.WeakKeyDictionary[sa.Connection, list[_Plan]] = weakref.WeakKeyDictionary()

_WRITE_SQL = re.compile(
    r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:WITH\b.*?\b)?"
    r"(INSERT|UPDATE|DELETE|MERGE|REPLACE|UPSERT|TRUNCATE)\b",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Written:
    """What one statement wrote: the keys of the rows, and the inserted rows as stored."""

    spec: TableSpec
    op: Op
    keys: Sequence[tuple[Any, ...]]
    rows: Sequence[Row] = ()


_written: ContextVar[list[Written] | None] = ContextVar("dbevents.written", default=None)


@contextmanager
def written_rows() -> Iterator[list[Written]]:
    """Collect what the statements run inside the block wrote (for statement after_* callbacks)."""
    collected: list[Written] = []
    token = _written.set(collected)
    try:
        yield collected
    finally:
        _written.reset(token)


def bind_connection(session: sa_orm.Session, connection: sa.Connection) -> None:
    """Attribute ``connection`` to ``session`` and make sure its engine is listened to."""
    _owners[connection] = weakref.ref(session)
    engine = connection.engine
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


@final
class _Plan:
    """What to do after one statement ran."""

    __slots__ = (
        "before",
        "columns",
        "keys_only",
        "old_columns",
        "old_rows",
        "op",
        "returns",
        "session",
        "sets_key",
        "spec",
        "statement",
        "states",
    )

    def __init__(
        self,
        statement: Any,
        op: Op,
        spec: TableSpec,
        session: sa_orm.Session,
        states: list[SessionState],
        before: dict[tuple[Any, ...], Row] | None,
        columns: Sequence[sa.ColumnElement[Any]],
        returns: Returns,
        keys_only: bool,
        old_columns: Sequence[sa.ColumnElement[Any]] = (),
        sets_key: bool = False,
        old_rows: Sequence[Sequence[Any]] = (),
    ) -> None:
        self.statement = statement
        #: only the primary keys of the rows are wanted (and read)
        self.keys_only = keys_only
        self.returns = returns
        #: the statement's own column objects (annotated in ORM statements): RETURNING keys
        self.columns = columns
        #: Returns.OLD_AND_NEW: the labelled old values, one for each of ``columns``
        self.old_columns = old_columns
        #: UPDATE: the statement sets primary key columns (rows may move to new keys)
        self.sets_key = sets_key
        self.session = session
        self.op = op
        self.spec = spec
        self.states = states
        #: UPDATE / DELETE: the affected rows as they were, by primary key
        self.before = before
        #: Returns.NEW_OF_READ: the affected rows as they were, ``columns`` by position
        self.old_rows = old_rows


def _before_execute(
    connection: sa.Connection,
    statement: Any,
    multiparams: list[dict[str, Any]],
    params: dict[str, Any],
    execution_options: Mapping[str, Any],
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    session, states = _capturing(connection)
    if session is None or not states:
        return statement, multiparams, params
    if execution_options.get(SKIP_CAPTURE):
        return statement, multiparams, params
    if isinstance(statement, sa.TextClause):
        _raw_write(states, statement.text)
        return statement, multiparams, params
    if not isinstance(statement, sa.Insert | sa.Update | sa.Delete):
        return statement, multiparams, params
    table = dml_table(statement)
    if not isinstance(table, sa.Table):
        return statement, multiparams, params
    spec = table_spec(table)
    if not spec.link and any(st.flush is not None and st.flush.running for st in states):
        return statement, multiparams, params  # the flush's own rows: mapper events have them
    if any(isinstance(c, False_) for c in where_criteria(statement)):
        return statement, multiparams, params  # WHERE false (a veto): no row can change
    wanted = _wanted(states, spec, isinstance(statement, sa.Insert))
    if wanted is None:
        return statement, multiparams, params  # nobody needs these rows
    if isinstance(statement, sa.Insert) and statement.select is not None:
        # SQLAlchemy renders no RETURNING for return_defaults() here, and an explicit
        # RETURNING would change the caller's result: the new rows can't be known
        _uncaptured(
            states,
            f"dbevents cannot capture the rows an INSERT ... FROM SELECT adds to {spec.name!r}: "
            f"they are missing from the change set; insert them with values() or the ORM, "
            f'or mute the block on purpose (Events(raw_sql="ignore") silences this)',
        )
        return statement, multiparams, params
    parameters = multiparams or [params]
    dialect = connection.dialect
    # an upsert's rows are inserts or updates: which, only the rows read first can tell
    upserted = (
        conflicting_rows(connection, spec, statement, parameters)
        if isinstance(statement, sa.Insert) and not spec.link
        else None
    )
    keys_only = wanted == "keys" and upserted is None
    if keys_only:
        columns: list[Any] = [table.c[name] for name in spec.pk]
    elif isinstance(statement, sa.Update):
        columns = updated_columns(table, spec, statement, parameters)
    else:
        columns = list(table.columns)
    before = None
    returns = Returns.NEW
    old_columns: list[Any] = []
    old_rows: Sequence[Sequence[Any]] = ()
    sets_key = isinstance(statement, sa.Update) and bool(
        (set_columns(table, statement, parameters) or set()) & set(spec.pk)
    )
    if isinstance(statement, sa.Insert):
        op = Op.LINK if spec.link else Op.INSERT
        before = upserted
        if not explicit_returning(statement) and (
            dialect.insert_executemany_returning
            if len(parameters) > 1
            else dialect.insert_returning
        ):
            statement = statement.return_defaults(supplemental_cols=columns)
    else:
        op = (
            Op.UPDATE
            if isinstance(statement, sa.Update)
            else (Op.UNLINK if spec.link else Op.DELETE)
        )
        single = len(parameters) == 1 and not explicit_returning(statement)
        returning = (
            dialect.update_executemany_returning
            if len(parameters) > 1
            else dialect.update_returning
        )
        if single and op is not Op.UPDATE and dialect.delete_returning:
            # DELETE ... RETURNING: the deleted rows, exactly, in the statement itself
            statement = statement.return_defaults(supplemental_cols=columns)
            returns = Returns.OLD
        elif single and op is Op.UPDATE and keys_only and dialect.update_returning:
            statement = statement.return_defaults(supplemental_cols=columns)
        elif (
            single
            and op is Op.UPDATE
            and dialect.name == "postgresql"
            and table.primary_key
            and not sets_key  # old and new rows are paired by key, which must hold still
        ):
            statement, old_columns = update_from_locked(statement, spec, columns)
            returns = Returns.OLD_AND_NEW
        elif (
            single
            and op is Op.UPDATE
            and returning
            and table.primary_key
            and not keys_only
            and not sets_key  # old and new rows are paired by key, which must hold still
        ):
            # read first (locked where the database can), paired with RETURNING by position
            old_rows = read_tuples(connection, columns, statement.whereclause, parameters[0])
            if old_rows:
                statement = statement.return_defaults(supplemental_cols=columns)
            returns = Returns.NEW_OF_READ
        else:  # read first, locked where the database can
            before = read_rows(connection, spec, statement.whereclause, parameters, columns=columns)
            if (
                op is Op.UPDATE
                and before
                and returning
                and not keys_only
                and not explicit_returning(statement)
            ):
                statement = statement.return_defaults(supplemental_cols=columns)
    plan = _Plan(
        statement,
        op,
        spec,
        session,
        states,
        before,
        columns,
        returns,
        keys_only,
        old_columns,
        sets_key,
        old_rows,
    )
    _plans.setdefault(connection, []).append(plan)
    return statement, multiparams, params


def _wanted(states: list[SessionState], spec: TableSpec, insert: bool) -> str | None:
    """What of the rows a statement writes is needed: ``"rows"``, ``"keys"`` or nothing."""
    levels = {st.events.level_of_table(spec) for st in states}
    collecting = _written.get() is not None  # statement after_* callbacks are waiting
    if "old+new" in levels or "new" in levels or (insert and collecting):
        return "rows"  # (after_insert receives the rows as stored)
    if "keys" in levels or collecting:
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
    spec = plan.spec
    if plan.keys_only:
        _after_keys(connection, plan, result)
    elif plan.op in (Op.INSERT, Op.LINK):
        inserted = inserted_rows(connection, spec, plan.columns, result)
        if not inserted and _unidentified(plan.statement, result):
            _uncaptured(
                plan.states,
                f"dbevents cannot capture the rows this INSERT ... RETURNING adds to "
                f"{spec.name!r}: its own RETURNING leaves no room for dbevents', and the rows "
                f"have no key it sent; they are missing from the change set. Execute it with "
                f"a list of parameter sets (session.execute(insert(M).returning(...), [row])), "
                f"or send the key",
            )
        if plan.before:  # an upsert: a row that was there before was updated
            old = plan.before
            after = {pk: row for row in inserted if (pk := pk_of(spec, row)) in old}
            inserted = [row for row in inserted if pk_of(spec, row) not in old]
            before = {pk: old[pk] for pk in after}
            record_update(plan.session, plan.states, spec, before, after, sets_key=False)
            _report(Written(spec, Op.UPDATE, list(after)))
        record_rows(plan.session, plan.states, spec, plan.op, None, inserted)
        _report(Written(spec, plan.op, (), inserted))
    elif plan.returns is Returns.OLD:
        deleted = returned_rows(plan.columns, result) or []
        before = dict(zip(keys_of(spec, deleted), deleted, strict=True))
        record_rows(plan.session, plan.states, spec, plan.op, before, None)
        _report(Written(spec, plan.op, list(before)))
    elif (
        plan.returns in (Returns.OLD_AND_NEW, Returns.NEW_OF_READ)
        and (
            changes := update_diffs(
                spec,
                plan.columns,
                result,
                old_columns=plan.old_columns,
                old_rows=plan.old_rows if plan.returns is Returns.NEW_OF_READ else None,
            )
        )
        is not None
    ):
        diffs, keys = changes
        record_diffs(plan.session, plan.states, spec, diffs)
        _report(Written(spec, Op.UPDATE, keys))
    elif plan.returns is Returns.OLD_AND_NEW:  # keyed otherwise than by name: by key, as dicts
        names = [column_name(column) for column in plan.columns]
        olds = returned_rows(plan.old_columns, result, names=names) or []
        news = returned_rows(plan.columns, result) or []
        before = {pk_of(spec, row): row for row in olds}
        after = {pk_of(spec, row): row for row in news}
        record_update(plan.session, plan.states, spec, before, after, sets_key=False)
        _report(Written(spec, Op.UPDATE, list(after)))
    elif plan.op is Op.UPDATE:
        if plan.returns is Returns.NEW_OF_READ:  # returned keyed otherwise: by key, as dicts
            plan.before = rows_by_key(spec, plan.columns, plan.old_rows)
        if not plan.before:
            return
        before = plan.before
        returned = returned_rows(plan.columns, result)
        width = len(plan.columns)
        sets_key = plan.sets_key
        if returned is not None and all(len(row) == width for row in returned):
            updated = dict(zip(keys_of(spec, returned), returned, strict=True))
        else:  # re-read by key: a row the UPDATE moved to a new key can't be found
            sets_key = False
            updated = read_rows(connection, spec, None, [], pks=list(before), columns=plan.columns)
        record_update(plan.session, plan.states, spec, before, updated, sets_key=sets_key)
        _report(Written(spec, Op.UPDATE, list(updated)))
    else:
        record_rows(plan.session, plan.states, spec, plan.op, plan.before, None)
        _report(Written(spec, plan.op, list(plan.before or ())))


def _unidentified(statement: Any, result: sa.CursorResult[Any]) -> bool:
    """Whether an INSERT that wrote rows left dbevents no way to tell which: an explicit
    RETURNING of the caller's, and no key among the values sent."""
    if not explicit_returning(statement) or upsert_clause(statement) is not None:
        return False  # (an upsert may have inserted nothing: every row conflicted)
    compiled = getattr(result.context, "compiled_parameters", None)
    return bool(compiled)


def _after_keys(connection: sa.Connection, plan: _Plan, result: sa.CursorResult[Any]) -> None:
    """Record and report the rows of a statement whose keys are all that is wanted."""
    spec, op = plan.spec, plan.op
    if op in (Op.INSERT, Op.LINK):
        rows = inserted_rows(connection, spec, plan.columns, result, keys_only=True)
    elif plan.before is not None:
        rows = list(plan.before.values())
    else:
        rows = returned_rows(plan.columns, result) or []
    keys = keys_of(spec, rows)
    record_keys(plan.session, plan.states, spec, op, keys)
    _report(Written(spec, op, keys, rows if op in (Op.INSERT, Op.LINK) else ()))


def _report(written: Written) -> None:
    collected = _written.get()
    if collected is not None:
        collected.append(written)


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
        _raw_write(states, statement)


def _raw_write(states: list[SessionState], sql: str) -> None:
    if _WRITE_SQL.match(sql):
        _uncaptured(
            states,
            f"dbevents cannot see what this SQL writes, so no callbacks ran and nothing was "
            f"captured: {sql.strip()[:200]!r}; use a Core or ORM statement, or mute the block "
            'on purpose (Events(raw_sql="ignore") silences this)',
        )


def _uncaptured(states: list[SessionState], message: str) -> None:
    """Say that a write went by uncaptured, as the ``raw_sql`` policies of ``states`` ask."""
    policies = {st.events.raw_sql for st in states}
    if "raise" in policies:
        raise UncapturedWriteError(message)
    if "warn" in policies:
        warnings.warn(message, DbEventsWarning, stacklevel=2)
