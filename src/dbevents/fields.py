"""Auto fields: unique string ids, timestamps and authorship, stamped by model callbacks.

::

    from dbevents.fields import UID, Authorship, Timestamps

    class Contact(UID, Timestamps, Authorship, Base):
        __tablename__ = "contacts"
        __uid_length__ = 5          # the CRM's short ids; the default is 22 characters

Every column is stamped by a ``before_insert`` / ``before_update`` callback, so
it works on every write path dbevents sees (the unit of work, bulk and WHERE
statements; an upsert's ``DO UPDATE`` is stamped as an update).  A value the
caller set is kept, a no-op update bumps nothing, and nothing is stamped while
muted, so a load keeps the values of the mirror.  Models that don't want the
mixins use the column factories and :func:`auto_fields`.

:mod:`dbevents.uids` makes the ids, and :mod:`dbevents.fieldscope` tells the
callbacks the session they run in.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped

from . import fieldscope
from ._compat import upsert_clause, upsert_set_keys, with_upsert_set
from .callbacks import before_insert, before_update, callable_of
from .mapping import table_spec
from .rowset import RowSet
from .session import STATE_KEY
from .uids import BASE62, check_uid_options, new_uid, next_uid

__all__ = [
    "BASE62",
    "UID",
    "Authorship",
    "AutoFields",
    "Timestamps",
    "UTCDateTime",
    "auto_fields",
    "created_at",
    "created_by",
    "new_uid",
    "stamp_insert",
    "stamp_update",
    "uid",
    "updated_at",
    "updated_by",
]

C = TypeVar("C", bound=type[Any])

#: ``Column.info`` key naming what stamps the column
_KIND: Final = "dbevents.auto"
#: ``Column.info`` key holding a uid column's (length, alphabet)
_UID: Final = "dbevents.uid"
_UPDATED: Final = ("updated_at", "updated_by")


# -- the timezone-aware column type -----------------------------------------------------------


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware datetime, stored in UTC and read back aware in UTC on every database.

    SQLite keeps no zone, so the value is stored as naive UTC there.  A naive
    datetime is refused: it names no moment.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        utc: dt.datetime = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        stored: dt.datetime = value
        return stored.replace(tzinfo=dt.UTC) if stored.tzinfo is None else stored.astimezone(dt.UTC)


# -- column factories ------------------------------------------------------------------------


def uid(
    length: int = 22, alphabet: str = BASE62, *, primary_key: bool = True, **kw: Any
) -> sa_orm.MappedColumn[Any]:
    """A string column holding a unique random id, stamped on insert when missing.

    With fewer than 2**96 possible ids, candidates are checked against the table
    and the rest of the batch before use (see :mod:`dbevents.uids`).

    :param length: characters per id (22 base62 characters are about 131 bits).
    :param alphabet: the characters ids are made of.
    """
    check_uid_options(length, alphabet)
    info = {_KIND: "uid", _UID: (length, alphabet), **kw.pop("info", {})}
    return sa_orm.mapped_column(sa.String(length), primary_key=primary_key, info=info, **kw)


def created_at(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A :class:`UTCDateTime` column stamped with the time of the insert.

    It takes what :func:`~sqlalchemy.orm.mapped_column` takes (a name first, then a type).
    """
    return _stamped("created_at", UTCDateTime(), args, kw)


def updated_at(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A :class:`UTCDateTime` column stamped on insert and on every update that changes the row.

    It takes what :func:`~sqlalchemy.orm.mapped_column` takes (a name first, then a type).
    """
    return _stamped("updated_at", UTCDateTime(), args, kw)


def created_by(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A column stamped with the actor of the insert (default type: ``String(255)``).

    It takes what :func:`~sqlalchemy.orm.mapped_column` takes (a name first, then a type).
    """
    return _stamped("created_by", sa.String(255), args, kw)


def updated_by(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A column stamped with the actor of the insert and of every update that changes the row.

    It takes what :func:`~sqlalchemy.orm.mapped_column` takes (a name first, then a type).
    """
    return _stamped("updated_by", sa.String(255), args, kw)


def _stamped(
    kind: str, type_: Any, args: tuple[Any, ...], kw: dict[str, Any]
) -> sa_orm.MappedColumn[Any]:
    """``mapped_column(*args, **kw)``, of type ``type_`` unless ``args`` name one."""
    info = {_KIND: kind, **kw.pop("info", {})}
    name, rest = (args[:1], args[1:]) if args and isinstance(args[0], str) else ((), args)
    if not (rest and isinstance(rest[0], sa.types.TypeEngine | type)):
        rest = (type_, *rest)
    return sa_orm.mapped_column(*name, *rest, info=info, **kw)


# -- the callbacks -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    kind: str
    key: str
    column: sa.Column[Any]


_plans: weakref.WeakKeyDictionary[type[Any], tuple[_Field, ...]] = weakref.WeakKeyDictionary()


def _plan(model: type[Any]) -> tuple[_Field, ...]:
    """The stamped columns of a mapped class, by attribute key."""
    plan = _plans.get(model)
    if plan is None:
        found = []
        for prop in sa.inspect(model).column_attrs:
            for column in prop.columns:
                kind = column.info.get(_KIND) if isinstance(column, sa.Column) else None
                if kind is not None:
                    found.append(_Field(kind, prop.key, column))
                    break
        plan = _plans[model] = tuple(found)
    return plan


def stamp_insert(model: type[Any], fields: dict[str, Any]) -> None:
    """Fill the auto fields of a row about to be inserted; values already set are kept.

    A ``before_insert`` callback, for :meth:`Events.listens_for <dbevents.Events.listens_for>`.
    """
    scope = fieldscope.current()
    table = scope.table if scope is not None else None
    now: dt.datetime | None = None
    actor: Any = _NO_ACTOR
    for item in _plan(model):
        if fields.get(item.key) is not None or not _on_table(table, item):
            continue
        if item.kind == "uid":
            length, alphabet = item.column.info[_UID]
            fields[item.key] = next_uid(model, item.key, item.column, length, alphabet)
        elif item.kind in ("created_at", "updated_at"):
            now = now or dt.datetime.now(dt.UTC)
            fields[item.key] = now
        else:
            if actor is _NO_ACTOR:
                actor = fieldscope.actor()
            if actor is not None:
                fields[item.key] = _as_column_value(item.column, actor)


def stamp_update(model: type[Any], rows: RowSet[Any], fields: dict[str, Any]) -> None:
    """Bump ``updated_at`` / ``updated_by`` of rows that change, unless the caller set them.

    A ``before_update`` callback, for :meth:`Events.listens_for <dbevents.Events.listens_for>`.
    An UPDATE statement of one table (a joined-inheritance subclass's, say) bumps the
    columns of that table only: SQLAlchemy writes no other.
    """
    scope = fieldscope.current()
    if scope is None:
        written: Collection[str] = fields.keys()
        table = None
    else:  # an executemany UPDATE writes what its parameter sets hold, too
        written = fields.keys() | scope.param_keys if scope.param_keys else fields.keys()
        table = scope.table
    if written:
        fields.update(_update_stamps(model, written, table))


def _update_stamps(
    model: type[Any], written: Collection[str], table: sa.FromClause | None
) -> dict[str, Any]:
    """The ``updated_at`` / ``updated_by`` values of an update that writes ``written`` (keys)
    to ``table`` (None: to every table of ``model``)."""
    stamps: dict[str, Any] = {}
    for item in _plan(model):
        if (
            item.kind not in _UPDATED
            or item.key in written
            or item.column.key in written
            or not _on_table(table, item)
        ):
            continue
        if item.kind == "updated_at":
            stamps[item.key] = dt.datetime.now(dt.UTC)
        else:
            actor = fieldscope.actor()
            if actor is not None:
                stamps[item.key] = _as_column_value(item.column, actor)
    return stamps


def _on_table(table: sa.FromClause | None, item: _Field) -> bool:
    return table is None or table.is_derived_from(item.column.table)


def _as_column_value(column: sa.Column[Any], actor: Any) -> Any:
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return actor
    return str(actor) if python_type is str and not isinstance(actor, str) else actor


_NO_ACTOR: Any = object()


class AutoFields:
    """Mixin: stamps the columns made by this module's factories (see :func:`auto_fields`)."""

    @before_insert
    @classmethod
    def _dbevents_stamp_insert(cls, fields: dict[str, Any]) -> None:
        stamp_insert(cls, fields)

    @before_update
    @classmethod
    def _dbevents_stamp_update(cls, rows: RowSet[Any], fields: dict[str, Any]) -> None:
        stamp_update(cls, rows, fields)


def auto_fields(model: C) -> C:
    """Class decorator: stamp ``model``'s factory-made columns without inheriting a mixin."""
    for name in ("_dbevents_stamp_insert", "_dbevents_stamp_update"):
        setattr(model, name, AutoFields.__dict__[name])
    return model


class UID(AutoFields):
    """Mixin: a string primary key ``id`` holding a unique random id.

    Set ``__uid_length__`` (default 22) and ``__uid_alphabet__`` (default
    :data:`BASE62`) on the model to change its shape.
    """

    __uid_length__: ClassVar[int] = 22
    __uid_alphabet__: ClassVar[str] = BASE62

    @sa_orm.declared_attr
    def id(cls) -> Mapped[str]:
        return uid(cls.__uid_length__, cls.__uid_alphabet__)


class Timestamps(AutoFields):
    """Mixin: ``created_at`` and ``updated_at``, timezone-aware UTC."""

    created_at: Mapped[dt.datetime | None] = created_at()
    updated_at: Mapped[dt.datetime | None] = updated_at()


class Authorship(AutoFields):
    """Mixin: ``created_by``, the original author, and ``updated_by``, the latest one."""

    created_by: Mapped[str | None] = created_by()
    updated_by: Mapped[str | None] = updated_by()


#: the ``before_update`` callbacks that stamp, as a registry holds them
_STAMPS_UPDATES: Final = (stamp_update, callable_of(AutoFields.__dict__["_dbevents_stamp_update"]))


# -- statements ------------------------------------------------------------------------------


def _on_execute(orm_state: sa_orm.ORMExecuteState) -> Any:
    if not (orm_state.is_insert or orm_state.is_update):
        return None
    model = _model_of(orm_state)
    if model is None or not _plan(model):
        return None
    with fieldscope.entered(fieldscope.statement_scope(orm_state)):
        if orm_state.is_insert:
            _stamp_upsert(orm_state, model)
        # the later listeners (dbevents' own, which run the callbacks) run inside
        return orm_state.invoke_statement()


def _model_of(orm_state: sa_orm.ORMExecuteState) -> type[Any] | None:
    mapper = orm_state.bind_mapper
    if mapper is not None:
        return mapper.class_
    table = getattr(orm_state.statement, "table", None)
    return table_spec(table).mapped_class() if isinstance(table, sa.Table) else None


def _stamp_upsert(orm_state: sa_orm.ORMExecuteState, model: type[Any]) -> None:
    """Stamp what an ``ON CONFLICT DO UPDATE`` SETs, as :func:`stamp_update` stamps an
    UPDATE (its insert callbacks stamp the rows it inserts)."""
    statement: Any = orm_state.statement
    clause = upsert_clause(statement)
    set_keys = upsert_set_keys(clause) if clause is not None else None
    if not set_keys or not _stamps_updates(orm_state, model):
        return  # (MySQL's ON DUPLICATE KEY UPDATE keeps its SET otherwise: not stamped)
    written = {key if isinstance(key, str) else str(getattr(key, "key", key)) for key in set_keys}
    stamps = _update_stamps(model, written, statement.table)
    if stamps:
        columns = {item.key: item.column for item in _plan(model)}
        values = {
            columns[key].key: sa.literal(value, columns[key].type) for key, value in stamps.items()
        }
        orm_state.statement = with_upsert_set(statement, values)


def _stamps_updates(orm_state: sa_orm.ORMExecuteState, model: type[Any]) -> bool:
    """Whether an installed Events, not muted, runs a stamping ``before_update`` of ``model``."""
    if orm_state.execution_options.get("skip_callbacks"):
        return False
    session = orm_state.session
    if STATE_KEY not in session.info:
        # the Events installed on a session know it once it began its transaction
        session.connection(bind_arguments=orm_state.bind_arguments)
    for events in session.info.get(STATE_KEY) or ():
        callbacks = events.registry.table(model).get("before_update")
        if not events.is_muted and any(fn in _STAMPS_UPDATES for fn, _ in callbacks):
            return True
    return False


# on every session, once: this runs before dbevents' own listeners (insert=True), so the
# callbacks they run see the statement's scope
sa_event.listen(sa_orm.Session, "do_orm_execute", _on_execute, insert=True)
