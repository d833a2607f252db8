"""How one INSERT, UPDATE or DELETE on a session's connection is captured.

Before it runs, :func:`plan_statement` decides how its rows will be known, and
may add ``return_defaults()`` or rewrite the UPDATE (never the caller's result
type or ``rowcount``): INSERT and UPDATE return the rows as stored; UPDATE and
DELETE read the affected rows first (``FOR UPDATE`` where the database has it),
or, on PostgreSQL, return old and new values from one statement.  A statement
with a RETURNING or ``return_defaults()`` of the caller's is left as it is: an
INSERT's rows are then the values it sent, an upsert's are read again by the
unique key it sent, and an UPDATE's or DELETE's are read first.  SQLite's
``INSERT OR REPLACE`` has the rows it may replace read first, by the unique key
values it sends.  After it ran, :func:`~.results.record_result` records its rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import (
    callers_return_defaults,
    explicit_returning,
    rendered_prefixes,
    upsert_clause,
)
from ..changes import Op
from ..mapping import TableSpec, column_name
from .moves import moved_keys
from .returning import (
    Returns,
    changes_keys,
    set_columns,
    set_literals,
    update_from_locked,
    updated_columns,
)
from .rowids import last_rowid
from .sent import AS_SQL, sent_values
from .sequences import drawn_keys
from .stored import read_matching, read_rows, read_tuples
from .uncaptured import uncaptured
from .upsert import KeyValues, conflicting_rows
from .writelock import take_write_lock

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["StatementPlan", "plan_statement", "replaced_rows"]

Row = dict[str, Any]

_OR_REPLACE: Final = re.compile(r"\s*OR\s+REPLACE\s*", re.IGNORECASE)


@final
class StatementPlan:
    """What to do after one statement ran."""

    __slots__ = (
        "bare_returns_rows",
        "before",
        "columns",
        "conflicts",
        "keys_only",
        "keys_sent",
        "moved",
        "old_columns",
        "old_rows",
        "op",
        "replaced",
        "returns",
        "rowid",
        "session",
        "set_to",
        "sets_key",
        "spec",
        "statement",
        "states",
        "untold",
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
        set_to: tuple[Any, ...] = (),
        rowid: tuple[str, int] | None = None,
        keys_sent: Sequence[tuple[Any, ...]] = (),
        conflicts: KeyValues | None = None,
        replaced: dict[tuple[Any, ...], Row] | None = None,
        untold: bool = False,
        moved: dict[tuple[Any, ...], tuple[Any, ...]] | None = None,
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
        #: Returns.NEW_OF_READ / SET_OF_READ: the affected rows as they were, ``columns``
        #: by position
        self.old_rows = old_rows
        #: Returns.SET_OF_READ: the values the UPDATE SETs, one for each non-key column
        self.set_to = set_to
        #: Returns.AFTER_ROWID: the rowid's name and the largest before the INSERT
        self.rowid = rowid
        #: Returns.KEYS_SENT: the keys drawn for the rows, one per parameter set
        self.keys_sent = keys_sent
        #: an upsert that returns dbevents no rows: the key values to read them again by
        self.conflicts = conflicts
        #: an INSERT OR REPLACE: the rows it may replace, as they were, by primary key
        self.replaced = replaced
        #: its rows can't be told (it was reported before it ran): nothing is recorded
        self.untold = untold
        #: an UPDATE that sets key columns and returns no rows: each row's new key, by
        #: its old one (None: not told)
        self.moved = moved
        #: when dbevents' RETURNING made the caller's result return rows: whether SQLAlchemy
        #: makes the statement RETURN rows itself (then none are left for the caller either)
        self.bare_returns_rows: bool | None = None


def plan_statement(
    connection: sa.Connection,
    session: sa_orm.Session,
    states: list[SessionState],
    statement: Any,
    spec: TableSpec,
    parameters: list[dict[str, Any]],
    wanted: str,
) -> tuple[Any, list[dict[str, Any]], StatementPlan]:
    """The statement and parameter sets to run instead of those given, and how to record
    what it writes.

    :param wanted: ``"rows"`` (their values are captured) or ``"keys"`` (only which rows).
    """
    table = spec.table
    dialect = connection.dialect
    take_write_lock(connection, table, type(statement))  # SQLite: before any row is read
    changed = set_columns(table, statement, parameters)
    # PostgreSQL: rows read first are locked as the statement will lock them
    keys_change = changes_keys(spec, statement, changed)
    # a RETURNING or return_defaults() of the caller's: its result is the caller's alone
    own = explicit_returning(statement) or callers_return_defaults(statement)
    insert_returning = not own and (
        dialect.insert_executemany_returning if len(parameters) > 1 else dialect.insert_returning
    )
    # SQLite's OR REPLACE deletes the rows whose unique key a row it writes would duplicate:
    # those are read first, and its rows are read again after it
    replaced = None
    if _replaces(statement, dialect.name) and spec.unique_keys:
        if isinstance(statement, sa.Insert) and upsert_clause(statement) is None:
            replaced = replaced_rows(connection, spec, statement, parameters)
        if replaced is None and _reported_replace(states, spec, statement, changed):
            op = Op.INSERT if isinstance(statement, sa.Insert) else Op.UPDATE
            untold = StatementPlan(
                statement, op, spec, session, states, None, (), Returns.NEW, True, untold=True
            )
            return statement, parameters, untold
    # an upsert's rows are inserts or updates: which, only the rows read first can tell
    upserted = (
        conflicting_rows(
            connection,
            spec,
            statement,
            parameters,
            keys_change=keys_change,
            changed=changed,
            returns_rows=insert_returning,
        )
        if isinstance(statement, sa.Insert) and not spec.link
        else None
    )
    sets_key = isinstance(statement, sa.Update) and not set(spec.pk).isdisjoint(changed or ())
    # (an UPDATE that moves rows to new keys: only the rows read first tell their old ones)
    keys_only = wanted == "keys" and upserted is None and replaced is None and not sets_key
    if keys_only:
        columns: list[Any] = [table.c[name] for name in spec.pk]
    elif isinstance(statement, sa.Update):
        columns = updated_columns(table, spec, changed)
    else:
        columns = list(table.columns)
    before = None
    returns = Returns.NEW
    old_columns: list[Any] = []
    old_rows: Sequence[Sequence[Any]] = ()
    set_to: tuple[Any, ...] = ()
    rowid: tuple[str, int] | None = None
    keys_sent: list[tuple[Any, ...]] = []
    moved: dict[tuple[Any, ...], tuple[Any, ...]] | None = None
    if isinstance(statement, sa.Insert):
        op = Op.LINK if spec.link else Op.INSERT
        before = upserted.before if upserted is not None else None
        drawn = None
        if upserted is None and len(parameters) > 1:
            # a bulk INSERT, which RETURNING slows down: on SQLite, its rows are those above
            # the largest rowid once it ran; on PostgreSQL, its keys can be drawn first
            rowid = last_rowid(connection, spec, statement, parameters)
            if rowid is None and keys_only:
                drawn = drawn_keys(connection, spec, statement, parameters)
        if rowid is not None:
            returns = Returns.AFTER_ROWID
        elif drawn is not None:
            parameters, keys_sent = drawn
            returns = Returns.KEYS_SENT
        elif insert_returning:
            statement = statement.return_defaults(supplemental_cols=columns)
    else:
        op = (
            Op.UPDATE
            if isinstance(statement, sa.Update)
            else (Op.UNLINK if spec.link else Op.DELETE)
        )
        single = len(parameters) == 1 and not own
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
            statement, old_columns = update_from_locked(
                statement, spec, columns, keys_change=keys_change
            )
            returns = Returns.OLD_AND_NEW
        elif (
            single
            and op is Op.UPDATE
            and returning
            and table.primary_key
            and not keys_only
            and not sets_key  # old and new rows are paired by key, which must hold still
        ):
            # read first (locked where the database can); the new values are those it SETs,
            # or what RETURNING gives back, paired with the rows read by position
            old_rows = read_tuples(
                connection, columns, statement.whereclause, parameters[0], keys_change=keys_change
            )
            names = [name for name in map(column_name, columns) if name not in spec.pk]
            literals = set_literals(table, statement, parameters[0], names, dialect.name)
            if literals is not None:  # plain values: the rows read tell what it writes
                set_to, returns = literals, Returns.SET_OF_READ
            else:
                if old_rows:
                    statement = statement.return_defaults(supplemental_cols=columns)
                returns = Returns.NEW_OF_READ
        else:  # read first, locked where the database can
            before = read_rows(
                connection,
                spec,
                statement.whereclause,
                parameters,
                columns=columns,
                keys_change=keys_change,
            )
            if op is Op.UPDATE and before and returning and not keys_only and not own:
                statement = statement.return_defaults(supplemental_cols=columns)
            elif sets_key and before:  # no RETURNING to tell where its rows went
                moved = moved_keys(spec, statement, parameters, before)
    plan = StatementPlan(
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
        set_to,
        rowid,
        keys_sent,
        upserted.keys if upserted is not None else None,
        replaced,
        moved=moved,
    )
    return statement, parameters, plan


def _replaces(statement: Any, dialect: str) -> bool:
    """Whether ``statement`` is SQLite's ``INSERT OR REPLACE`` or ``UPDATE OR REPLACE``
    (a ``prefix_with("OR REPLACE")``), which deletes the rows whose unique key a row it
    writes would duplicate, and then writes the row."""
    return dialect == "sqlite" and any(
        _OR_REPLACE.fullmatch(text) for text in rendered_prefixes(statement, dialect)
    )


def replaced_rows(
    connection: sa.Connection,
    spec: TableSpec,
    statement: Any,
    parameters: Sequence[Mapping[str, Any]],
) -> dict[tuple[Any, ...], Row] | None:
    """The rows an ``INSERT OR REPLACE`` may replace, whole, by primary key: those holding,
    in a unique key, the values one of its rows sends (the write lock was taken: they
    can't change before it runs).  None when a row sends a unique key as SQL, or leaves
    it to a default computed as it runs: which rows that replaces, nothing tells."""
    table = spec.table
    rows = sent_values(spec, statement, parameters)
    unsent = {
        name: _unsent_value(column)
        for name, column in zip(spec.columns, table.columns, strict=True)
        if name in spec.key_columns
    }
    before: dict[tuple[Any, ...], Row] = {}
    for names in spec.unique_keys:
        values = {tuple([row.get(name, unsent[name]) for name in names]) for row in rows}
        if any(AS_SQL in key for key in values):
            return None
        known = sorted((key for key in values if None not in key), key=repr)  # NULL: no match
        if known:
            before.update(read_matching(connection, spec, names, known, lock=False))
    return before


def _unsent_value(column: sa.Column[Any]) -> Any:
    """The value a column not sent takes: its scalar default, else NULL (or a new rowid,
    which matches no row either); :data:`~.sent.AS_SQL` for a default computed as the
    statement runs."""
    default = column.default
    if default is not None:
        return (
            default.arg if isinstance(default, sa.ColumnDefault) and default.is_scalar else AS_SQL
        )
    return AS_SQL if column.server_default is not None else None


def _reported_replace(
    states: list[SessionState], spec: TableSpec, statement: Any, changed: set[str] | None
) -> bool:
    """Report an OR REPLACE whose replaced rows can't be told (see :func:`replaced_rows`),
    as the ``raw_sql`` policies ask, before it runs; whether it was.  An UPDATE that sets
    no column of a unique key replaces no row, and is captured as any other."""
    name = spec.name
    if isinstance(statement, sa.Insert) and upsert_clause(statement) is not None:
        what, fix = "INSERT OR REPLACE", "Leave out the prefix"
        why = "it is an upsert too, whose conflicts the two resolve in turn"
    elif isinstance(statement, sa.Insert):
        what, fix = "INSERT OR REPLACE", "Send the value of each unique key"
        why = "a row sends a unique key as SQL or leaves it to a default computed as it runs"
    elif changed is not None and spec.key_columns.isdisjoint(changed):
        return False
    else:
        what, fix = "UPDATE OR REPLACE", "Leave out the prefix"
        why = "it sets a unique key, and nothing tells which rows already hold the values it sets"
    uncaptured(
        states,
        f"dbevents cannot capture what this {what} writes to {name!r}: it deletes the rows "
        f"whose unique key a row it writes would duplicate, and {why}; neither those nor "
        f"the rows it writes are in the change set. {fix}, or mute the block on purpose "
        '(Events(raw_sql="ignore") silences this)',
    )
    return True
