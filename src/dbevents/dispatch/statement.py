"""Model callbacks on statements run through ``session.execute()``.

``do_orm_execute`` sees every INSERT, UPDATE and DELETE handed to a session,
ORM-enabled or on a Core ``Table``, before it runs.  Here the ``before_*``
callbacks run (and may edit the values or veto), then the statement runs; the
connection layer (:mod:`.connection`) captures its rows as it does for every
statement and hands them back through :func:`~.written.written_rows`, so the
``after_*`` callbacks see exactly the rows that were written.

Row-level callbacks (``before_save``, ``after_destroy``, ...) make the affected
rows be loaded as objects; models without them never pay for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import dml_values, without_values
from ..changes import Op
from ..mapping import MapperSpec, mapper_spec, table_spec
from ..registry import Table, run_all
from ..rowset import RowSet
from .execution import Veto, invoke_with, nothing, objects, written_keys, written_objects
from .inserts import insert, returning_one_row
from .setvalues import SetValues, check_keys, selected
from .written import written_rows

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["do_orm_execute"]

Row = dict[str, Any]


def do_orm_execute(st: SessionState, orm_state: sa_orm.ORMExecuteState) -> Any:
    """Run the callbacks of a DML statement around it; return its result, or None to pass."""
    if not (orm_state.is_insert or orm_state.is_update or orm_state.is_delete):
        return None
    if st.events.is_muted or orm_state.execution_options.get("skip_callbacks"):
        return None
    table = getattr(orm_state.statement, "table", None)
    mapper = orm_state.bind_mapper
    if isinstance(table, sa.Table):
        model = mapper.class_ if mapper is not None else table_spec(table).mapped_class()
    elif isinstance(table, sa.Join) and mapper is not None:
        # a class mapped to a join of tables (``__table__ = a.join(b)``), whose bulk UPDATE
        # by primary key SQLAlchemy runs table by table
        model = mapper.class_
    else:
        return None
    if model is None:
        return None
    callbacks = st.events.registry.table(model)
    spec = mapper_spec(sa.inspect(model))
    one_row = returning_one_row(orm_state, spec) if orm_state.is_insert else None
    if one_row is not None:
        # insert(M).values(...).returning(...): the caller's RETURNING leaves no room for
        # dbevents' own, which a new key can be read by; as the one parameter set it is, the
        # ORM's bulk INSERT returns both (and gives the caller the same rows)
        orm_state.statement = without_values(orm_state.statement)
        orm_state.parameters = [one_row]
        # SQLAlchemy chose its strategy by the statement's values: choose again
        orm_state.local_execution_options = orm_state.local_execution_options.union(
            {"dml_strategy": "bulk"}
        )
        if not callbacks.writes:
            return orm_state.invoke_statement()
    if not callbacks.writes:
        return None
    veto = Veto(spec.model, st.events.abort)
    if orm_state.is_insert:
        return insert(orm_state, spec, callbacks, veto)
    params = orm_state.parameters
    if orm_state.is_update and _by_primary_key(orm_state.statement, params):
        rows = [dict(p) for p in (params if isinstance(params, Sequence) else [params]) if p]
        return _update_by_key(orm_state, spec, callbacks, veto, rows)
    captured = st.events.level_of(spec.mapper) != "off"
    return _update_or_delete(orm_state, spec, callbacks, veto, captured)


def _by_primary_key(statement: Any, params: Any) -> bool:
    """``session.execute(update(M), [{pk..., values...}])``: ORM bulk UPDATE by primary key."""
    return bool(params) and statement.whereclause is None and dml_values(statement) is None


# -- UPDATE / DELETE with a WHERE clause --------------------------------------------------------


def _update_or_delete(
    orm_state: sa_orm.ORMExecuteState,
    spec: MapperSpec,
    callbacks: Table,
    veto: Veto,
    captured: bool,
) -> Any:
    """A statement UPDATE or DELETE with a WHERE clause (or none: every row).

    The after_* ``rows`` name the rows written by their keys when the model's rows
    are captured; with capture ``"off"`` nothing is read back, and ``rows`` is the
    statement's WHERE clause, as Emmett's ``dbset`` (``rows.pks`` is None).
    """
    statement: Any = orm_state.statement
    session, model = orm_state.session, spec.model
    update = orm_state.is_update
    row_before = callbacks.get("before_save" if update else "before_destroy")
    row_after = callbacks.get("after_save" if update else "after_destroy")
    set_before = callbacks.get("before_update" if update else "before_delete")
    params = orm_state.parameters
    rows = RowSet._selecting(model, session, partial(selected, statement, params))
    values = SetValues.of(spec, statement, params)
    fields = values.fields
    if veto(set_before, *((rows, fields) if update else (rows,))):
        return orm_state.invoke_statement(statement=statement.where(sa.false()))
    if update and values.changed:
        statement, orm_state.parameters = values.applied(statement)
    doomed: list[Any] = []
    done = rows  # the rows written, named as the statement names them (unless some were vetoed)
    if row_before or (row_after and not update):
        doomed = rows.select()  # loaded before the write: a deleted row can't be loaded after
        vetoed = [obj for obj in doomed if veto(row_before, obj)]
        if vetoed:
            keep_out = RowSet(model, session, objects=vetoed).where
            statement = statement.where(sa.not_(keep_out))
            doomed = [obj for obj in doomed if obj not in vetoed]
            done = RowSet._selecting(model, session, partial(selected, statement, params))
    set_after = callbacks.get("after_update" if update else "after_delete")
    if not (set_after or row_after):
        return orm_state.invoke_statement(statement=statement)  # nobody asks what was written
    if captured or row_after:
        with written_rows() as written:
            result = orm_state.invoke_statement(statement=statement)
        pks = written_keys(spec, written, Op.UPDATE if update else Op.DELETE)
        done = RowSet(model, session, pks=pks)
    else:  # nothing captured: the rows are named by the WHERE clause, and nothing is read back
        result = orm_state.invoke_statement(statement=statement)
    if update:
        run_all(set_after, "after_update", model, done, fields)
    else:
        run_all(set_after, "after_delete", model, done)
    if row_after:
        for obj in written_objects(session, model, pks) if update else doomed:
            run_all(row_after, "after_save" if update else "after_destroy", model, obj)
    return result


# -- UPDATE by primary key ---------------------------------------------------------------------


def _update_by_key(
    orm_state: sa_orm.ORMExecuteState,
    spec: MapperSpec,
    callbacks: Table,
    veto: Veto,
    params: list[Row],
) -> Any:
    session, model = orm_state.session, spec.model
    pk_keys = [key for _, key in spec.parts[0].pk if key is not None]
    if len(pk_keys) != len(spec.parts[0].pk):
        return None
    before_save, before_update = callbacks.get("before_save"), callbacks.get("before_update")
    loaded: dict[tuple[Any, ...], Any] = {}
    if before_save or callbacks.get("after_save"):
        keys = [tuple(row.get(k) for k in pk_keys) for row in params]
        loaded = {sa.inspect(obj).identity: obj for obj in objects(session, model, keys)}
    kept: list[Row] = []
    for row in map(dict, params):
        pk = tuple(row.get(k) for k in pk_keys)
        fields = {k: v for k, v in row.items() if k not in pk_keys}
        if veto(before_save, loaded.get(pk)):
            continue
        if veto(before_update, RowSet(model, session, pks=[pk]), fields):
            continue
        check_keys(spec, fields, row)
        kept.append({**fields, **dict(zip(pk_keys, pk, strict=True))})
    if not kept:
        return nothing(orm_state)
    with written_rows() as written:
        result = invoke_with(orm_state, kept)
    by_pk = {tuple(row[k] for k in pk_keys): row for row in kept}
    for pk in written_keys(spec, written, Op.UPDATE):
        row = by_pk.get(pk, {})
        fields = {k: v for k, v in row.items() if k not in pk_keys}
        rows = RowSet(model, session, pks=[pk])
        run_all(callbacks.get("after_update"), "after_update", model, rows, fields)
    if callbacks.get("after_save"):
        for obj in written_objects(session, model, list(by_pk)):
            run_all(callbacks.get("after_save"), "after_save", model, obj)
    return result
