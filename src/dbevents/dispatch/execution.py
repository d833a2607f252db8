"""What the statement callbacks share: vetoes, running the statement, and its rows.

The ``before_*`` callbacks run before a statement and may veto it (:class:`Veto`);
the statement then runs through :meth:`~sqlalchemy.orm.ORMExecuteState.invoke_statement`
(:func:`invoke_with`, or :func:`nothing` when every row was vetoed), and the
``after_*`` callbacks get the rows it wrote: their keys, or their objects as stored.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from ..changes import Op
from ..exceptions import AbortError
from ..mapping import MapperSpec
from ..registry import Callbacks, first_veto
from ..rowset import RowSet
from .stored import SKIP_CAPTURE
from .written import Written

__all__ = ["Veto", "invoke_with", "nothing", "objects", "written_keys", "written_objects"]

Row = dict[str, Any]


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


def written_keys(spec: MapperSpec, written: list[Written], op: Op) -> list[tuple[Any, ...]]:
    """The primary keys of the rows of this model a statement updated or deleted."""
    names = {part.spec.name for part in spec.parts}
    keys: dict[tuple[Any, ...], None] = {}
    for item in written:
        if item.spec.name in names and item.op is op:
            keys.update(dict.fromkeys(item.keys))
    return list(keys)


def objects(session: sa_orm.Session, model: type[Any], pks: list[tuple[Any, ...]]) -> list[Any]:
    return RowSet(model, session, pks=pks).select() if pks else []


def written_objects(
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
            return objects(session, model, pks)
    query = sa.select(model).where(RowSet(model, session, pks=pks).where)
    with session.no_autoflush:
        return list(session.scalars(query.execution_options(populate_existing=True)))


def invoke_with(orm_state: sa_orm.ORMExecuteState, params: list[Row]) -> Any:
    # replaced, not merged: invoke_statement(params=...) can neither drop a row nor a key
    orm_state.parameters = params
    return orm_state.invoke_statement()


def nothing(orm_state: sa_orm.ORMExecuteState) -> Any:
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
