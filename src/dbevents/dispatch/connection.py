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

import enum
import re
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import False_

from .._compat import explicit_returning, where_criteria
from ..changes import Op
from ..exceptions import DbEventsWarning, UncapturedWriteError
from ..mapping import TableSpec, table_spec
from ..session import STATE_KEY

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = [
    "SKIP_CAPTURE",
    "Written",
    "bind_connection",
    "read_rows",
    "record_rows",
    "written_rows",
]

#: execution option: this statement is dbevents' own bookkeeping (the outbox, load):
#: neither captured nor reported as raw SQL, on a statement or on a whole connection
SKIP_CAPTURE: Final = "dbevents_skip_capture"
_CHUNK: Final = 500
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
    """The rows one statement wrote: ``before`` by primary key, ``after`` as stored."""

    spec: TableSpec
    op: Op
    before: Mapping[tuple[Any, ...], Row] | None
    after: Sequence[Row] | None


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


class Returns(enum.Enum):
    """What the RETURNING clause dbevents added gives back."""

    NEW = "new"  # INSERT / UPDATE: the rows as stored (the old ones were read first)
    OLD = "old"  # DELETE: the rows as they were
    OLD_AND_NEW = "old+new"  # PostgreSQL UPDATE ... FROM (SELECT ... FOR UPDATE): both


_OLD_PREFIX: Final = "dbevents_old_"


@final
class _Plan:
    """What to do after one statement ran."""

    __slots__ = ("before", "columns", "op", "returns", "session", "spec", "statement", "states")

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
    ) -> None:
        self.statement = statement
        self.returns = returns
        #: the statement's own column objects (annotated in ORM statements): RETURNING keys
        self.columns = columns
        self.session = session
        self.op = op
        self.spec = spec
        self.states = states
        #: UPDATE / DELETE: the affected rows as they were, by primary key
        self.before = before


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
    table = statement.table
    if not isinstance(table, sa.Table):
        return statement, multiparams, params
    spec = table_spec(table)
    if not spec.link and any(st.flush is not None and st.flush.running for st in states):
        return statement, multiparams, params  # the flush's own rows: mapper events have them
    if any(isinstance(c, False_) for c in where_criteria(statement)):
        return statement, multiparams, params  # WHERE false (a veto): no row can change
    parameters = multiparams or [params]
    dialect = connection.dialect
    columns: list[Any] = list(table.columns)
    before = None
    returns = Returns.NEW
    if isinstance(statement, sa.Insert):
        op = Op.LINK if spec.link else Op.INSERT
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
        if single and op is not Op.UPDATE and dialect.delete_returning:
            # DELETE ... RETURNING: the deleted rows, exactly, in the statement itself
            statement = statement.return_defaults(supplemental_cols=columns)
            returns = Returns.OLD
        elif single and op is Op.UPDATE and dialect.name == "postgresql" and table.primary_key:
            statement, old_columns = _update_from_locked(statement, spec)
            columns = [*old_columns, *columns]
            returns = Returns.OLD_AND_NEW
        else:  # read first, locked where the database can
            before = read_rows(connection, spec, statement.whereclause, parameters)
            returning = (
                dialect.update_executemany_returning
                if len(parameters) > 1
                else dialect.update_returning
            )
            if op is Op.UPDATE and before and returning and not explicit_returning(statement):
                statement = statement.return_defaults(supplemental_cols=columns)
    plan = _Plan(statement, op, spec, session, states, before, columns, returns)
    _plans.setdefault(connection, []).append(plan)
    return statement, multiparams, params


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
    if plan.op in (Op.INSERT, Op.LINK):
        inserted = _inserted_rows(connection, plan, result)
        record_rows(plan.session, plan.states, spec, plan.op, None, inserted)
        _report(Written(spec, plan.op, None, inserted))
    elif plan.returns is not Returns.NEW:
        both = _returned_rows(plan, result) or []
        before = {_pk_of(spec, old): old for old in (_old_part(row) for row in both)}
        if plan.returns is Returns.OLD:
            record_rows(plan.session, plan.states, spec, plan.op, before, None)
            _report(Written(spec, plan.op, before, None))
        else:
            after = [{k: v for k, v in row.items() if k in spec.columns} for row in both]
            by_pk = {_pk_of(spec, row): row for row in after}
            record_rows(plan.session, plan.states, spec, Op.UPDATE, before, by_pk)
            _report(Written(spec, Op.UPDATE, before, after))
    elif plan.op is Op.UPDATE:
        if not plan.before:
            return
        returned = _returned_rows(plan, result)
        if returned is not None and all(len(row) == len(spec.columns) for row in returned):
            updated = {_pk_of(spec, row): row for row in returned}
        else:
            updated = read_rows(connection, spec, None, [], pks=list(plan.before))
        record_rows(plan.session, plan.states, spec, Op.UPDATE, plan.before, updated)
        _report(Written(spec, Op.UPDATE, plan.before, list(updated.values())))
    else:
        record_rows(plan.session, plan.states, spec, plan.op, plan.before, None)
        _report(Written(spec, plan.op, plan.before, None))


def _update_from_locked(statement: Any, spec: TableSpec) -> tuple[Any, list[Any]]:
    """``UPDATE t SET ... FROM (SELECT t.* ... WHERE <where> FOR UPDATE) old WHERE t.pk = old.pk``.

    One statement gives old and new values of exactly the rows it locked and changed,
    so a row another transaction inserts meanwhile can't be updated uncaptured.
    """
    table = statement.table
    old_query = sa.select(*(c.label(_OLD_PREFIX + c.name) for c in table.columns))
    if statement.whereclause is not None:
        old_query = old_query.where(statement.whereclause)
    old = old_query.with_for_update().subquery("dbevents_old")
    same_row = [table.c[name] == old.c[_OLD_PREFIX + name] for name in spec.pk]
    old_columns = list(old.c)
    statement = statement.where(*same_row).return_defaults(
        supplemental_cols=[*old_columns, *table.columns]
    )
    return statement, old_columns


def _old_part(row: Row) -> Row:
    """The old values of a row RETURNING gave with both (DELETE: all of them)."""
    if not any(key.startswith(_OLD_PREFIX) for key in row):
        return row
    return {k[len(_OLD_PREFIX) :]: v for k, v in row.items() if k.startswith(_OLD_PREFIX)}


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
    if not _WRITE_SQL.match(sql):
        return
    policies = {st.events.raw_sql for st in states}
    message = (
        f"dbevents cannot see what this SQL writes, so no callbacks ran and nothing was "
        f"captured: {sql.strip()[:200]!r}; use a Core or ORM statement, or mute the block "
        'on purpose (Events(raw_sql="ignore") silences this)'
    )
    if "raise" in policies:
        raise UncapturedWriteError(message)
    if "warn" in policies:
        warnings.warn(message, DbEventsWarning, stacklevel=2)


# -- reading and recording rows ----------------------------------------------------------------


def read_rows(
    connection: sa.Connection,
    spec: TableSpec,
    where: Any,
    parameters: Sequence[Mapping[str, Any]],
    *,
    pks: Sequence[tuple[Any, ...]] | None = None,
) -> dict[tuple[Any, ...], Row]:
    """The rows a WHERE clause selects (locked on databases that can), by primary key."""
    table = spec.table
    lock = connection.dialect.name != "sqlite"
    if pks is None:
        criteria = _equality_criteria(table, where)
        if (
            criteria is not None
            and parameters
            and all(all(key in p for key in criteria.values()) for p in parameters)
        ):
            # the unit of work's many-to-many DELETE: one row per parameter set
            values = [tuple(p[key] for key in criteria.values()) for p in parameters]
            columns = [table.c[name] for name in criteria]
            if set(criteria) == set(spec.columns):
                return {
                    _pk_of(spec, dict(zip(criteria, v, strict=True))): dict(
                        zip(criteria, v, strict=True)
                    )
                    for v in values
                }
            return _select_in(connection, spec, columns, values, lock)
        query = sa.select(*table.columns)
        if where is not None:
            query = query.where(where)
        if lock:
            query = query.with_for_update()
        found: dict[tuple[Any, ...], Row] = {}
        for p in parameters or [{}]:
            for row in connection.execute(query, dict(p)).mappings():
                values_row = dict(row)
                found[_pk_of(spec, values_row)] = values_row
        return found
    columns = [table.c[name] for name in spec.pk]
    return _select_in(connection, spec, columns, list(pks), False)


def _select_in(
    connection: sa.Connection,
    spec: TableSpec,
    columns: list[sa.Column[Any]],
    values: list[tuple[Any, ...]],
    lock: bool,
) -> dict[tuple[Any, ...], Row]:
    found: dict[tuple[Any, ...], Row] = {}
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        where = (
            columns[0].in_([v[0] for v in chunk])
            if len(columns) == 1
            else sa.tuple_(*columns).in_(chunk)
        )
        query = sa.select(*spec.table.columns).where(where)
        if lock:
            query = query.with_for_update()
        for row in connection.execute(query, execution_options={SKIP_CAPTURE: True}).mappings():
            values_row = dict(row)
            found[_pk_of(spec, values_row)] = values_row
    return found


def _equality_criteria(table: sa.Table, where: Any) -> dict[str, str] | None:
    """``col = :param AND ...`` -> {column name: parameter key}, else None."""
    if where is None:
        return None
    clauses = where.clauses if isinstance(where, sa.BooleanClauseList) else [where]
    if isinstance(where, sa.BooleanClauseList) and where.operator is not operators.and_:
        return None
    criteria: dict[str, str] = {}
    for clause in clauses:
        if not isinstance(clause, sa.BinaryExpression) or clause.operator is not operators.eq:
            return None
        left, right = clause.left, clause.right
        if not (isinstance(left, sa.Column) and left.table is table):
            return None
        if not isinstance(right, sa.BindParameter) or right.value is not None:
            return None
        criteria[left.name] = right.key
    return criteria or None


def _inserted_rows(
    connection: sa.Connection, plan: _Plan, result: sa.CursorResult[Any]
) -> list[Row]:
    """The inserted rows as stored: from RETURNING, else from what was sent, then re-read."""
    spec = plan.spec
    rows = _returned_rows(plan, result)
    if rows is None and result.rowcount == 0:
        rows = []
    if rows is None:  # no RETURNING: the values sent, and the key where the driver tells it
        compiled = result.context.compiled_parameters  # type: ignore[attr-defined, unused-ignore]
        try:
            keys: Iterable[Any] = result.inserted_primary_key_rows
        except sa.exc.InvalidRequestError:
            keys = [None] * len(compiled)
        rows = []
        for params, key in zip(compiled, keys, strict=False):
            row = {c.name: params[c.key] for c in spec.table.columns if c.key in params}
            for column, value in zip(spec.table.primary_key.columns, key or (), strict=False):
                if value is not None:
                    row[column.name] = value
            if any(row.get(name) is not None for name in spec.pk):  # else not identifiable
                rows.append(row)
    # server defaults the statement did not return: one SELECT for the rows that lack them
    width = len(spec.columns)
    partial = [pk for row in rows if len(row) < width and None not in (pk := _pk_of(spec, row))]
    if partial:
        stored = read_rows(connection, spec, None, [], pks=partial)
        rows = [stored.get(_pk_of(spec, row), row) if len(row) < width else row for row in rows]
    return rows


def _returned_rows(plan: _Plan, result: sa.CursorResult[Any]) -> list[Row] | None:
    """The rows RETURNING gave back (only the columns it returned), or None without it."""
    try:
        returned = result.returned_defaults_rows
    except sa.exc.InvalidRequestError:
        return None
    if returned is None:
        return None
    if not returned:
        return []
    mapping = returned[0]._mapping
    # ORM statements key their rows by name, not by column object; an explicit RETURNING
    # of the caller's may hold only some columns
    keys = [
        (c.name, c if c in mapping else c.name)
        for c in plan.columns
        if c in mapping or c.name in mapping
    ]
    return [{name: record._mapping[key] for name, key in keys} for record in returned]


def _pk_of(spec: TableSpec, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(name) for name in spec.pk)


def record_rows(
    session: sa_orm.Session,
    states: Iterable[SessionState],
    spec: TableSpec,
    op: Op,
    before: Mapping[tuple[Any, ...], Row] | None,
    after: Iterable[Row] | Mapping[tuple[Any, ...], Row] | None,
) -> None:
    """Record row changes of one statement into each capturing session's buffer."""
    model = spec.mapped_class()
    for st in states:
        level = st.events.level_of_table(spec)
        if level == "off":
            continue
        buffer = st.buffer(session)
        keep_new = level != "keys"
        keep_old = level == "old+new"
        if op in (Op.INSERT, Op.LINK):
            assert after is not None
            for row in after.values() if isinstance(after, Mapping) else after:
                buffer.add(spec.name, _pk_of(spec, row), op, model, None, row if keep_new else None)
        elif op is Op.UPDATE:
            assert before is not None and isinstance(after, Mapping)
            for pk, old in before.items():
                new = after.get(pk)
                if new is None:
                    continue
                changed = [name for name, value in new.items() if old.get(name) != value]
                if changed:
                    buffer.add(
                        spec.name,
                        pk,
                        op,
                        model,
                        {n: old[n] for n in changed} if keep_old else None,
                        {n: new[n] for n in changed} if keep_new else None,
                    )
        else:
            assert before is not None
            for pk, old in before.items():
                buffer.add(spec.name, pk, op, model, old if keep_old else None, None)
