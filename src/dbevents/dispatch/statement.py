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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import (
    dml_values,
    explicit_returning,
    multi_values,
    upsert_clause,
    with_multi_values,
    without_values,
)
from ..changes import Op
from ..exceptions import AbortError, ConfigurationError
from ..mapping import MapperSpec, mapper_spec, table_spec
from ..registry import Callbacks, Table, first_veto, run_all
from ..rowset import RowSet
from .setvalues import SetValues, check_keys, selected
from .stored import SKIP_CAPTURE
from .written import Written, written_rows

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
    if not isinstance(table, sa.Table):
        return None
    mapper = orm_state.bind_mapper
    model = mapper.class_ if mapper is not None else table_spec(table).mapped_class()
    if model is None:
        return None
    callbacks = st.events.registry.table(model)
    spec = mapper_spec(sa.inspect(model))
    one_row = _returning_one_row(orm_state, spec) if orm_state.is_insert else None
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
        return _insert(orm_state, spec, callbacks, veto)
    params = orm_state.parameters
    if orm_state.is_update and _by_primary_key(orm_state.statement, params):
        rows = [dict(p) for p in (params if isinstance(params, Sequence) else [params]) if p]
        return _update_by_key(orm_state, spec, callbacks, veto, rows)
    captured = st.events.level_of(spec.mapper) != "off"
    return _update_or_delete(orm_state, spec, callbacks, veto, captured)


class Veto:
    """Runs a statement's ``before_*`` callbacks and tells whether one vetoed.

    With ``Events(abort="raise")`` a veto raises :class:`AbortError` instead: the
    callbacks all run before the statement, so nothing has been written then.
    """

    __slots__ = ("abort", "model")

    def __init__(self, model: type[Any], abort: str) -> None:
        self.model, self.abort = model, abort

    def __call__(self, callbacks: Callbacks, *args: Any) -> bool:
        vetoer = first_veto(callbacks, self.model, *args) if callbacks else None
        if vetoer is None:
            return False
        if self.abort == "raise":
            name = self.model.__name__
            raise AbortError(
                f"{name}: {getattr(vetoer, '__qualname__', vetoer)} vetoed a statement's "
                f'write of {name} rows: Events(abort="raise"); nothing was written',
                model=self.model,
                callback=vetoer,
            )
        return True


def _returning_one_row(orm_state: sa_orm.ORMExecuteState, spec: MapperSpec) -> Row | None:
    """The row of ``insert(M).values(...).returning(...)`` without its key, if plain values."""
    statement = orm_state.statement
    pairs = dml_values(statement)
    if (
        not pairs
        or not orm_state.is_orm_statement  # a Core INSERT has no bulk form returning keys
        or orm_state.parameters
        or not explicit_returning(statement)
        or multi_values(statement) is not None
        or upsert_clause(statement) is not None
        or not all(isinstance(value, sa.BindParameter) for _, value in pairs)
    ):
        return None
    fields = SetValues.of(spec, statement).fields
    pk_keys = [key for part in spec.parts for _, key in part.pk if key is not None]
    if any(key in fields for key in pk_keys) or not set(fields) <= spec.column_keys:
        return None  # the key is sent (dbevents reads it there), or not plain attributes
    return fields


def _one_row(statement: Any, params: Any) -> bool:
    """An INSERT of one row: ``insert(M).values(...)`` or one parameter set (not a
    ``from_select()``, whose rows only its ``after_*`` callbacks see)."""
    if statement.select is not None:
        return False
    return dml_values(statement) is not None or isinstance(params, Mapping)


def _kept_rows(spec: MapperSpec, callbacks: Table, veto: Veto, statement: Any) -> Any | None:
    """Run the before_* callbacks of each row of ``insert(M).values([...])``; return the
    INSERT of the rows kept, as the callbacks left them (None: every row was vetoed)."""
    rows = [SetValues(spec, row.items()) for row in multi_values(statement) or ()]
    kept = [values for values in rows if not _veto_insert(spec, callbacks, veto, values.fields)]
    if not kept:
        return None
    if len(kept) == len(rows) and not any(values.changed for values in kept):
        return statement
    if len({frozenset(values.fields) for values in kept}) > 1 and any(
        values.fields.keys() != values.original.keys() for values in kept
    ):
        # SQLAlchemy writes the columns of the first row only, and refuses a row without one
        raise ConfigurationError(
            f"{spec.name}: callbacks gave the rows of one multi-row INSERT different columns; "
            "give every row the same fields, or insert them as a list of parameter sets",
            model=spec.model,
        )
    return with_multi_values(statement, [dict(values.pairs()) for values in kept])


def _by_primary_key(statement: Any, params: Any) -> bool:
    """``session.execute(update(M), [{pk..., values...}])``: ORM bulk UPDATE by primary key."""
    return bool(params) and statement.whereclause is None and dml_values(statement) is None


# -- INSERT ----------------------------------------------------------------------------------


def _insert(
    orm_state: sa_orm.ORMExecuteState, spec: MapperSpec, callbacks: Table, veto: Veto
) -> Any:
    params = orm_state.parameters
    model = spec.model
    if isinstance(params, Sequence) and params:  # bulk: callbacks per row, veto per row
        keys = _ParamKeys(spec, orm_state)
        kept = [
            fields
            for fields in map(keys.fields, params)
            if not _veto_insert(spec, callbacks, veto, fields)
        ]
        if not kept:
            return _nothing(orm_state)
        with written_rows() as written:
            result = _invoke_with(orm_state, [keys.params(fields) for fields in kept])
    else:
        statement: Any = orm_state.statement
        if multi_values(statement) is not None:  # insert(M).values([...]): callbacks per row
            statement = _kept_rows(spec, callbacks, veto, statement)
            if statement is None:
                return _nothing(orm_state)
        elif _one_row(statement, params):  # insert(M).values(...), or one parameter set
            values = SetValues.of(spec, statement, params)
            if _veto_insert(spec, callbacks, veto, values.fields):
                return _nothing(orm_state)
            if values.changed:
                statement, orm_state.parameters = values.applied(statement)
        with written_rows() as written:  # (from_select: no rows to tell, see limits)
            result = orm_state.invoke_statement(statement=statement)
    stored = _inserted(spec, written)
    after_insert, after_save = callbacks.get("after_insert"), callbacks.get("after_save")
    for pk, fields in stored.items():
        run_all(after_insert, "after_insert", model, fields, pk[0] if len(pk) == 1 else pk)
    if after_save:
        for obj in _written_objects(orm_state.session, model, list(stored)):
            run_all(after_save, "after_save", model, obj)
    return result


def _veto_insert(spec: MapperSpec, callbacks: Table, veto: Veto, fields: Row) -> bool:
    before_save, before_insert = callbacks.get("before_save"), callbacks.get("before_insert")
    for key, value in spec.scalar_defaults.items():  # shown as on the unit of work
        fields.setdefault(key, value)
    if before_save:
        obj = spec.mapper.class_manager.new_instance()
        for key, value in fields.items():
            setattr(obj, key, value)
        if veto(before_save, obj):
            return True
        state = sa.inspect(obj)
        fields.update((key, state.dict[key]) for key in spec.column_keys if key in state.dict)
    vetoed = veto(before_insert, fields)
    check_keys(spec, fields)
    return vetoed


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
    rows = RowSet(model, session, where=selected(statement, params))
    values = SetValues.of(spec, statement, params)
    fields = values.fields
    if veto(set_before, *((rows, fields) if update else (rows,))):
        return orm_state.invoke_statement(statement=statement.where(sa.false()))
    if update and values.changed:
        statement, orm_state.parameters = values.applied(statement)
    doomed: list[Any] = []
    if row_before or (row_after and not update):
        doomed = rows.select()  # loaded before the write: a deleted row can't be loaded after
        vetoed = [obj for obj in doomed if veto(row_before, obj)]
        if vetoed:
            keep_out = RowSet(model, session, objects=vetoed).where
            statement = statement.where(sa.not_(keep_out))
            doomed = [obj for obj in doomed if obj not in vetoed]
    set_after = callbacks.get("after_update" if update else "after_delete")
    if not (set_after or row_after):
        return orm_state.invoke_statement(statement=statement)  # nobody asks what was written
    if captured or row_after:
        with written_rows() as written:
            result = orm_state.invoke_statement(statement=statement)
        pks = _written_keys(spec, written, Op.UPDATE if update else Op.DELETE)
        done = RowSet(model, session, pks=pks)
    else:  # nothing captured: the rows are named by the WHERE clause, and nothing is read back
        result = orm_state.invoke_statement(statement=statement)
        done = RowSet(model, session, where=selected(statement, orm_state.parameters))
    if update:
        run_all(set_after, "after_update", model, done, fields)
    else:
        run_all(set_after, "after_delete", model, done)
    if row_after:
        objects = _written_objects(session, model, pks) if update else doomed
        for obj in objects:
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
    objects: dict[tuple[Any, ...], Any] = {}
    if before_save or callbacks.get("after_save"):
        keys = [tuple(row.get(k) for k in pk_keys) for row in params]
        objects = {sa.inspect(obj).identity: obj for obj in _objects(session, model, keys)}
    kept: list[Row] = []
    for row in map(dict, params):
        pk = tuple(row.get(k) for k in pk_keys)
        fields = {k: v for k, v in row.items() if k not in pk_keys}
        if veto(before_save, objects.get(pk)):
            continue
        if veto(before_update, RowSet(model, session, pks=[pk]), fields):
            continue
        check_keys(spec, fields)
        kept.append({**fields, **dict(zip(pk_keys, pk, strict=True))})
    if not kept:
        return _nothing(orm_state)
    with written_rows() as written:
        result = _invoke_with(orm_state, kept)
    by_pk = {tuple(row[k] for k in pk_keys): row for row in kept}
    for pk in _written_keys(spec, written, Op.UPDATE):
        row = by_pk.get(pk, {})
        fields = {k: v for k, v in row.items() if k not in pk_keys}
        rows = RowSet(model, session, pks=[pk])
        run_all(callbacks.get("after_update"), "after_update", model, rows, fields)
    if callbacks.get("after_save"):
        written_objects = _written_objects(session, model, list(by_pk))
        for obj in written_objects:
            run_all(callbacks.get("after_save"), "after_save", model, obj)
    return result


# -- helpers ------------------------------------------------------------------------------------


def _inserted(spec: MapperSpec, written: list[Written]) -> dict[tuple[Any, ...], Row]:
    """The rows of this model a statement inserted, by primary key, keyed by attribute."""
    names = {part.spec.name: part for part in spec.parts}
    merged: dict[tuple[Any, ...], Row] = {}
    for item in written:
        part = names.get(item.spec.name)
        if part is None or item.op is not Op.INSERT:
            continue
        pk_names = [name for name, _ in part.pk]
        columns = [(name, key) for name, key in part.columns if key]
        for row in item.rows:
            pk = tuple([row.get(name) for name in pk_names])
            target = merged.get(pk)
            if target is None:
                target = merged[pk] = {}
            for name, key in columns:
                if name in row:
                    target[key] = row[name]
    return merged


def _written_keys(spec: MapperSpec, written: list[Written], op: Op) -> list[tuple[Any, ...]]:
    """The primary keys of the rows of this model a statement updated or deleted."""
    names = {part.spec.name for part in spec.parts}
    keys: dict[tuple[Any, ...], None] = {}
    for item in written:
        if item.spec.name in names and item.op is op:
            keys.update(dict.fromkeys(item.keys))
    return list(keys)


def _objects(session: sa_orm.Session, model: type[Any], pks: list[tuple[Any, ...]]) -> list[Any]:
    return RowSet(model, session, pks=pks).select() if pks else []


def _written_objects(
    session: sa_orm.Session, model: type[Any], pks: list[tuple[Any, ...]]
) -> list[Any]:
    """The objects of rows a statement wrote, as stored now, for the after_save callbacks.

    One already in the session holds what it held before the statement unless
    SQLAlchemy synchronized it: it is loaded anew, unless it holds changes of its
    own not flushed yet, which loading it anew would throw away.
    """
    if not pks:
        return []
    mapper = sa.inspect(model)
    identity_map = session.identity_map
    for pk in pks:
        obj = identity_map.get(mapper.identity_key_from_primary_key(pk))
        if obj is not None and sa.inspect(obj).modified:
            return _objects(session, model, pks)
    query = sa.select(model).where(RowSet(model, session, pks=pks).where)
    with session.no_autoflush:
        return list(session.scalars(query.execution_options(populate_existing=True)))


class _ParamKeys:
    """The keys of a bulk statement's parameter sets, and the attribute keys of ``fields``.

    An ORM statement's parameters are keyed by attribute, a Core ``Table``'s by
    column key or name, which differ where the attribute is named otherwise than its
    column; the callbacks' values go back keyed by column key.
    """

    __slots__ = ("_attribute_of", "_param_of")

    def __init__(self, spec: MapperSpec, orm_state: sa_orm.ORMExecuteState) -> None:
        self._attribute_of: dict[str, str] = {}
        self._param_of: dict[str, str] = {}
        if not orm_state.is_orm_statement:
            table = getattr(orm_state.statement, "table", None)
            for column in getattr(table, "columns", ()):
                attribute = spec.attribute_of_param.get(column.key)
                if attribute is None:
                    continue
                for key in {column.key, column.name} - {attribute}:  # SQLAlchemy takes either
                    self._attribute_of[key] = attribute
                if attribute != column.key:
                    self._param_of[attribute] = column.key

    def fields(self, params: Mapping[str, Any]) -> Row:
        """A parameter set's values by attribute key (a copy, for the callbacks to change)."""
        attribute_of = self._attribute_of
        return {attribute_of.get(key, key): value for key, value in params.items()}

    def params(self, fields: Row) -> Row:
        """The values as the statement takes them."""
        param_of = self._param_of
        if not param_of:
            return fields
        return {param_of.get(key, key): value for key, value in fields.items()}


def _invoke_with(orm_state: sa_orm.ORMExecuteState, params: list[Row]) -> Any:
    # replaced, not merged: invoke_statement(params=...) can neither drop a row nor a key
    orm_state.parameters = params
    return orm_state.invoke_statement()


def _nothing(orm_state: sa_orm.ORMExecuteState) -> Any:
    """Every row was vetoed: run an INSERT of no rows, so the result is real and of its shape."""
    statement: Any = orm_state.statement
    table = statement.table
    key = list(table.primary_key.columns)[:1] or list(table.columns)[:1]
    empty = sa.insert(table).from_select(key, sa.select(*key).where(sa.false()))
    returning = getattr(statement, "_returning", ())
    if returning:
        empty = empty.returning(*returning)
    orm_state.parameters = None
    # one statement, no parameter sets: not the bulk strategy a bulk INSERT was given
    options = {SKIP_CAPTURE: True, "dml_strategy": "orm"}
    return orm_state.invoke_statement(statement=empty, execution_options=options)
