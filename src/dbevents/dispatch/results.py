"""Recording the rows a planned statement wrote (see :mod:`.dml`).

Once an INSERT, UPDATE or DELETE ran, :func:`record_result` takes its rows from
what it returned, or reads them (by key, by rowid, or again by the unique key an
upsert sent), records them in the buffers of the capturing sessions, and reports
them to the statement ``after_*`` callbacks waiting for them.  Rows that can't
be told are reported under the ``raw_sql`` policy, never guessed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .._compat import callers_return_defaults, explicit_returning, prefixes, upsert_clause
from ..changes import Op
from ..mapping import column_name
from .dml import StatementPlan
from .record import record_diffs, record_keys, record_rows, record_update, update_diffs
from .returning import (
    Returns,
)
from .rowids import rows_after
from .stored import (
    inserted_rows,
    keys_of,
    known_rowcount,
    pk_of,
    read_rows,
    returned_rows,
    rows_by_key,
)
from .uncaptured import uncaptured
from .upsert import upserted_rows
from .written import Written, collecting, report

__all__ = ["record_result"]

Row = dict[str, Any]


def record_result(
    connection: sa.Connection, plan: StatementPlan, result: sa.CursorResult[Any]
) -> None:
    """Record and report the rows the planned statement wrote."""
    spec = plan.spec
    if plan.untold or _translated_elsewhere(connection, plan, result):
        return
    if plan.keys_only:
        _after_keys(connection, plan, result)
    elif plan.replaced is not None:
        _after_replace(connection, plan, result)
    elif plan.op in (Op.INSERT, Op.LINK):
        inserted = _inserted_rows(connection, plan, result)
        if inserted is None:
            _untold(plan)
            return
        if plan.before:  # an upsert: a row that was there before was updated
            old = plan.before
            after = {pk: row for row in inserted if (pk := pk_of(spec, row)) in old}
            inserted = [row for row in inserted if pk_of(spec, row) not in old]
            before = {pk: old[pk] for pk in after}
            record_update(plan.session, plan.states, spec, before, after, sets_key=False)
            report(Written(spec, Op.UPDATE, list(after)))
        record_rows(plan.session, plan.states, spec, plan.op, None, inserted)
        report(Written(spec, plan.op, (), inserted))
    elif plan.returns is Returns.OLD:
        deleted = returned_rows(plan.columns, result) or []
        before = dict(zip(keys_of(spec, deleted), deleted, strict=True))
        record_rows(plan.session, plan.states, spec, plan.op, before, None)
        report(Written(spec, plan.op, list(before)))
    elif plan.returns is Returns.SET_OF_READ and result.rowcount != len(plan.old_rows):
        # the UPDATE left out rows the read found, by a criterion SQLAlchemy adds as it
        # compiles (a single-table subclass, with_loader_criteria): the rows it wrote are
        # those read whose values differ now (one it set to what it had can't be told)
        before = rows_by_key(spec, plan.columns, plan.old_rows)
        after = read_rows(connection, spec, None, [], pks=list(before), columns=plan.columns)
        record_update(plan.session, plan.states, spec, before, after, sets_key=False)
        report(Written(spec, Op.UPDATE, [pk for pk, row in after.items() if row != before[pk]]))
    elif (
        plan.returns in (Returns.OLD_AND_NEW, Returns.NEW_OF_READ, Returns.SET_OF_READ)
        and (
            changes := update_diffs(
                spec,
                plan.columns,
                result,
                old_columns=plan.old_columns,
                old_rows=plan.old_rows if plan.returns is not Returns.OLD_AND_NEW else None,
                set_to=plan.set_to if plan.returns is Returns.SET_OF_READ else None,
            )
        )
        is not None
    ):
        diffs, keys = changes
        record_diffs(plan.session, plan.states, spec, diffs)
        report(Written(spec, Op.UPDATE, keys))
    elif plan.returns is Returns.OLD_AND_NEW:  # keyed otherwise than by name: by key, as dicts
        names = [column_name(column) for column in plan.columns]
        olds = returned_rows(plan.old_columns, result, names=names) or []
        news = returned_rows(plan.columns, result) or []
        before = {pk_of(spec, row): row for row in olds}
        after = {pk_of(spec, row): row for row in news}
        record_update(plan.session, plan.states, spec, before, after, sets_key=False)
        report(Written(spec, Op.UPDATE, list(after)))
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
        elif sets_key:  # re-read by the keys its rows moved to
            moved = plan.moved
            pks = None if moved is None else list(dict.fromkeys(moved.values()))
            updated = {} if pks is None else read_rows(connection, spec, None, [], pks=pks)
            if pks is None or len(updated) < len(pks):
                _unmoved(plan)
                return
        else:  # re-read by key
            updated = read_rows(connection, spec, None, [], pks=list(before), columns=plan.columns)
        record_update(plan.session, plan.states, spec, before, updated, sets_key=sets_key)
        report(Written(spec, Op.UPDATE, list(updated)))
    else:
        record_rows(plan.session, plan.states, spec, plan.op, plan.before, None)
        report(Written(spec, plan.op, list(plan.before or ())))


def _inserted_rows(
    connection: sa.Connection, plan: StatementPlan, result: sa.CursorResult[Any]
) -> list[Row] | None:
    """The rows the planned INSERT added, as stored (the key alone if that is all wanted);
    an upsert's rows it updated too.  None when nothing tells them."""
    if plan.returns is Returns.AFTER_ROWID:
        assert plan.rowid is not None
        names = [column_name(column) for column in plan.columns]
        return [
            dict(zip(names, values))  # noqa: B905 (a hot loop; one value per name)
            for values in rows_after(connection, plan.columns, plan.rowid)
        ]
    statement = plan.statement
    upsert = upsert_clause(statement) is not None
    rows = inserted_rows(
        connection,
        plan.spec,
        plan.columns,
        statement,
        result,
        keys_only=plan.keys_only,
        sent=None if upsert else not prefixes(statement),
    )
    if rows is None and plan.conflicts is not None:  # read again, by the key values it sent
        rows = upserted_rows(connection, plan.spec, plan.conflicts, plan.before or {})
        count = known_rowcount(result)
        if count is not None and count < len(rows):
            return None  # (PostgreSQL: another transaction added one of them meanwhile)
    return rows


def _translated_elsewhere(
    connection: sa.Connection, plan: StatementPlan, result: sa.CursorResult[Any]
) -> bool:
    """Report a statement that ran with a ``schema_translate_map`` of its own (given to
    the statement or to ``execute()``) that puts its table in another schema than the
    connection's does, as the ``raw_sql`` policies ask; whether it was one.

    The SQL dbevents ran for it (the rows read first, keys drawn from a sequence) went
    where the connection's map puts the table: nothing it read tells these rows.
    """
    table = plan.spec.table
    given = result.context.execution_options.get("schema_translate_map")
    schema = given[table.schema] if given and table.schema in given else table.schema
    if schema == connection.schema_for_object(table):
        return False
    statement = plan.statement
    what = (
        "INSERT"
        if isinstance(statement, sa.Insert)
        else "UPDATE"
        if isinstance(statement, sa.Update)
        else "DELETE"
    )
    uncaptured(
        plan.states,
        f"dbevents cannot capture what this {what} wrote to "
        f"{plan.spec.name!r} in schema {schema!r}: it ran with a schema_translate_map of its "
        "own, and dbevents ran its own SQL for it where the connection's map puts the table "
        "(keys a bulk INSERT sent may come from that table's sequence); nothing of it is in "
        "the change set. Give the map to the session's connection (session.connection("
        "execution_options=...)) or to the engine it is bound to",
    )
    return True


def _after_replace(
    connection: sa.Connection, plan: StatementPlan, result: sa.CursorResult[Any]
) -> None:
    """Record and report the rows an INSERT OR REPLACE wrote, and those it replaced.

    Its rows and those read before it (:func:`~.dml.replaced_rows`) are read again by key:
    a row read before and gone now was deleted, one still there was replaced under its own
    key (an update, of the values that differ), and any other found is an insert (a row
    it added and then replaced itself with a later one is not).
    """
    spec, before = plan.spec, plan.replaced
    assert before is not None
    inserted = _inserted_rows(connection, plan, result)
    if inserted is None:
        _untold(plan)
        return
    pks = list(dict.fromkeys([*before, *keys_of(spec, inserted)]))
    after = read_rows(connection, spec, None, [], pks=pks)
    deleted = {pk: row for pk, row in before.items() if pk not in after}
    kept = [pk for pk in before if pk in after]
    added = [row for pk, row in after.items() if pk not in before]
    gone = Op.UNLINK if spec.link else Op.DELETE
    record_rows(plan.session, plan.states, spec, gone, deleted, None)
    record_update(
        plan.session,
        plan.states,
        spec,
        {pk: before[pk] for pk in kept},
        {pk: after[pk] for pk in kept},
        sets_key=False,
    )
    record_rows(plan.session, plan.states, spec, plan.op, None, added)
    report(Written(spec, gone, list(deleted)))
    report(Written(spec, Op.UPDATE, kept))
    report(Written(spec, plan.op, (), added))


def _unmoved(plan: StatementPlan) -> None:
    """Report an UPDATE that moved rows to keys nothing tells, as the ``raw_sql`` policies
    ask."""
    uncaptured(
        plan.states,
        f"dbevents cannot capture the rows this UPDATE moves to new keys in "
        f"{plan.spec.name!r}: it returns no rows, and its parameter sets don't tell where "
        "each went (a WHERE clause other than column = :param, a key set to SQL); they are "
        "missing from the change set. Update them one statement at a time",
    )


def _untold(plan: StatementPlan) -> None:
    """Report an INSERT whose rows nothing tells, as the ``raw_sql`` policies ask."""
    statement = plan.statement
    if upsert_clause(statement) is not None:
        why, fix = (
            "its rows can't be read again and told apart (a row sends the unique key it "
            "conflicts on as SQL or NULL, its DO UPDATE may set the primary key, or another "
            "transaction added one of them meanwhile)",
            "Send that key as plain values",
        )
    elif prefixes(statement):
        why, fix = "nothing tells which of the rows it sends it added", "Leave out the prefix"
    else:
        why, fix = (
            "the rows have no key it sent (as a value, not SQL)",
            "Execute it with a list of parameter sets "
            "(session.execute(insert(M).returning(...), [row])), or send the key",
        )
    if explicit_returning(statement) or callers_return_defaults(statement):
        what, returning = "INSERT ... RETURNING", "its own RETURNING leaves no room for dbevents'"
    else:
        what, returning = "INSERT", "the database returns no rows from it"
    uncaptured(
        plan.states,
        f"dbevents cannot capture the rows this {what} adds to {plan.spec.name!r}: "
        f"{returning}, and {why}; they are missing from the change set. {fix}",
    )


def _after_keys(
    connection: sa.Connection, plan: StatementPlan, result: sa.CursorResult[Any]
) -> None:
    """Record and report the rows of a statement whose keys are all that is wanted."""
    spec, op = plan.spec, plan.op
    rows: list[Row]
    if plan.returns in (Returns.AFTER_ROWID, Returns.KEYS_SENT):  # a bulk INSERT
        if plan.returns is Returns.KEYS_SENT:
            keys = list(plan.keys_sent)
        else:  # the key's columns, in the key's order: each row read is its key
            assert plan.rowid is not None
            keys = rows_after(connection, plan.columns, plan.rowid)
        rows = [dict(zip(spec.pk, key, strict=True)) for key in keys] if collecting() else []
    else:
        if op in (Op.INSERT, Op.LINK):
            inserted = _inserted_rows(connection, plan, result)
            if inserted is None:
                _untold(plan)
                return
            rows = inserted
        elif plan.before is not None:
            rows = list(plan.before.values())
        else:
            rows = returned_rows(plan.columns, result) or []
        keys = keys_of(spec, rows)
    record_keys(plan.session, plan.states, spec, op, keys)
    report(Written(spec, op, keys, rows if op in (Op.INSERT, Op.LINK) else ()))
