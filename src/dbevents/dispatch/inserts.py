"""Model callbacks around an INSERT run through the session.

A bulk INSERT (a list of parameter sets), a multi-row ``values([...])`` and a
one-row INSERT run ``before_insert`` (and ``before_save``) for each row, which
may change its values or veto it; the INSERT then writes the rows kept, and
``after_insert`` gets each row as stored, with its key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import dml_values, explicit_returning, multi_values, upsert_clause, with_multi_values
from ..changes import Op
from ..exceptions import ConfigurationError
from ..mapping import MapperSpec
from ..registry import Table, run_all
from .execution import Veto, invoke_with, nothing, written_objects
from .setvalues import SetValues, check_keys
from .written import Written, written_rows

__all__ = ["insert", "returning_one_row"]

Row = dict[str, Any]


def returning_one_row(orm_state: sa_orm.ORMExecuteState, spec: MapperSpec) -> Row | None:
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


def insert(
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
            return nothing(orm_state)
        with written_rows() as written:
            result = invoke_with(orm_state, [keys.params(fields) for fields in kept])
    else:
        statement: Any = orm_state.statement
        if multi_values(statement) is not None:  # insert(M).values([...]): callbacks per row
            statement = _kept_rows(spec, callbacks, veto, statement)
            if statement is None:
                return nothing(orm_state)
        elif _one_row(statement, params):  # insert(M).values(...), or one parameter set
            values = SetValues.of(spec, statement, params)
            if _veto_insert(spec, callbacks, veto, values.fields):
                return nothing(orm_state)
            if values.changed:
                statement, orm_state.parameters = values.applied(statement)
        with written_rows() as written:  # (from_select: no rows to tell, see limits)
            result = orm_state.invoke_statement(statement=statement)
    stored = _inserted(spec, written)
    after_insert, after_save = callbacks.get("after_insert"), callbacks.get("after_save")
    for pk, fields in stored.items():
        run_all(after_insert, "after_insert", model, fields, pk[0] if len(pk) == 1 else pk)
    if after_save:
        for obj in written_objects(orm_state.session, model, list(stored)):
            run_all(after_save, "after_save", model, obj)
    return result


def _veto_insert(spec: MapperSpec, callbacks: Table, veto: Veto, fields: Row) -> bool:
    before_save, before_insert = callbacks.get("before_save"), callbacks.get("before_insert")
    given = set(fields)  # (a composite or a synonym the row names is SQLAlchemy's to resolve)
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
    check_keys(spec, fields, given)
    return vetoed


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
