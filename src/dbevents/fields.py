"""Auto fields: unique string ids, timestamps and authorship, stamped by model callbacks.

::

    from dbevents.fields import UID, Authorship, Timestamps

    class Contact(UID, Timestamps, Authorship, Base):
        __tablename__ = "contacts"
        __uid_length__ = 5          # the CRM's short ids; the default is 22 characters

Every column is stamped by a ``before_insert`` / ``before_update`` callback, so
it works on every write path dbevents sees (the unit of work, bulk and WHERE
statements).  A value the caller set is kept, a no-op update bumps nothing, and
nothing is stamped while muted, so a load keeps the values of the mirror.
Models that don't want the mixins use the column factories and
:func:`auto_fields`.
"""

from __future__ import annotations

import datetime as dt
import secrets
import weakref
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped

from .callbacks import before_insert, before_update
from .context import current_actor
from .exceptions import ConfigurationError, DbEventsError
from .rowset import RowSet
from .session import STATE_KEY

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

BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: ``Column.info`` key naming what stamps the column
_KIND: Final = "dbevents.auto"
#: ``Column.info`` key holding a uid column's (length, alphabet)
_UID: Final = "dbevents.uid"
#: below this many possible ids, candidates are checked against the table
_CHECKED_SPACE: Final = 2**96
_FIRST_BATCH: Final = 16
_MAX_BATCH: Final = 500
_MAX_ROUNDS: Final = 32


# -- ids -------------------------------------------------------------------------------------


def new_uid(length: int = 22, alphabet: str = BASE62) -> str:
    """Return a random string of ``length`` characters of ``alphabet`` (from :mod:`secrets`)."""
    size = len(alphabet)
    limit = 256 - 256 % size  # bytes at or above it would favour the first characters
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(alphabet[b % size] for b in secrets.token_bytes(length + 8) if b < limit)
    return "".join(chars[:length])


def _check_uid_options(length: int, alphabet: str) -> None:
    if not isinstance(length, int) or length < 1:
        raise ConfigurationError(f"uid length must be a positive integer, not {length!r}")
    if not isinstance(alphabet, str) or not 2 <= len(alphabet) <= 256:
        raise ConfigurationError(f"uid alphabet must hold 2 to 256 characters, not {alphabet!r}")
    if len(set(alphabet)) != len(alphabet):
        raise ConfigurationError(f"uid alphabet {alphabet!r} repeats a character")


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
    and the rest of the batch before use, so a short id never collides in one
    process; the unique key stays the guard against concurrent writers.

    :param length: characters per id (22 base62 characters are about 131 bits).
    :param alphabet: the characters ids are made of.
    """
    _check_uid_options(length, alphabet)
    info = {_KIND: "uid", _UID: (length, alphabet), **kw.pop("info", {})}
    return sa_orm.mapped_column(sa.String(length), primary_key=primary_key, info=info, **kw)


def created_at(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A :class:`UTCDateTime` column stamped with the time of the insert."""
    return _stamped("created_at", UTCDateTime(), args, kw)


def updated_at(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A :class:`UTCDateTime` column stamped on insert and on every update that changes the row."""
    return _stamped("updated_at", UTCDateTime(), args, kw)


def created_by(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A column stamped with the actor of the insert (default type: ``String(255)``)."""
    return _stamped("created_by", sa.String(255), args, kw)


def updated_by(*args: Any, **kw: Any) -> sa_orm.MappedColumn[Any]:
    """A column stamped with the actor of the insert and of every update that changes the row."""
    return _stamped("updated_by", sa.String(255), args, kw)


def _stamped(
    kind: str, type_: Any, args: tuple[Any, ...], kw: dict[str, Any]
) -> sa_orm.MappedColumn[Any]:
    info = {_KIND: kind, **kw.pop("info", {})}
    has_type = args and isinstance(args[0], sa.types.TypeEngine | type)
    return sa_orm.mapped_column(*(args if has_type else (type_, *args)), info=info, **kw)


# -- where the callbacks run: the session, for the actor and the uniqueness checks --------------


@dataclass(slots=True)
class _Scope:
    """One flush or one statement: its session, and the ids handed out during it."""

    session: weakref.ref[sa_orm.Session]
    #: the parameters of an INSERT statement; None for a flush (the session's new objects)
    params: Sequence[Any] | None
    issued: dict[sa.Column[Any], set[str]] = field(default_factory=dict)
    pools: dict[sa.Column[Any], list[str]] = field(default_factory=dict)
    #: ids set by the caller, with the size of the batch they were read from
    explicit: dict[sa.Column[Any], tuple[int, set[str]]] = field(default_factory=dict)


_scope: ContextVar[_Scope | None] = ContextVar("dbevents.fields.scope", default=None)


def _on_flush(session: sa_orm.Session, context: Any, instances: Any) -> None:
    _scope.set(_Scope(weakref.ref(session), None))


def _on_execute(orm_state: sa_orm.ORMExecuteState) -> Any:
    if not (orm_state.is_insert or orm_state.is_update) or not _stamps(orm_state):
        return None
    params = orm_state.parameters
    rows = params if isinstance(params, Sequence) else [params] if params else []
    token = _scope.set(_Scope(weakref.ref(orm_state.session), rows))
    try:  # the later listeners (dbevents' own) run inside, with the scope set
        return orm_state.invoke_statement()
    finally:
        _scope.reset(token)


def _stamps(orm_state: sa_orm.ORMExecuteState) -> bool:
    """Whether a statement writes a table with auto fields."""
    mapper = orm_state.bind_mapper
    if mapper is not None:
        return bool(_plan(mapper.class_))
    table = getattr(orm_state.statement, "table", None)
    return isinstance(table, sa.Table) and any(_KIND in column.info for column in table.columns)


# on every session, once: these run before dbevents' own listeners (insert=True), so the
# callbacks they dispatch see the scope
sa_event.listen(sa_orm.Session, "before_flush", _on_flush, insert=True)
sa_event.listen(sa_orm.Session, "do_orm_execute", _on_execute, insert=True)


def _session() -> sa_orm.Session | None:
    scope = _scope.get()
    return scope.session() if scope is not None else None


def _actor() -> Any:
    """The actor: :func:`acting_as`, else the ``actor`` callable of an installed Events."""
    actor = current_actor()
    if actor is None:
        session = _session()
        for events in (session.info.get(STATE_KEY) or {}) if session is not None else ():
            if events.actor is not None:
                actor = events.actor()
                if actor is not None:
                    break
    return actor


def _next_uid(model: type[Any], item: _Field) -> str:
    length, alphabet = item.column.info[_UID]
    if len(alphabet) ** length >= _CHECKED_SPACE:
        return new_uid(length, alphabet)
    scope = _scope.get()
    session = scope.session() if scope is not None else None
    if scope is None or session is None:
        raise DbEventsError(
            f"{model.__name__}.{item.key}: short ids are checked against the table, "
            "which needs a session; write through a session with dbevents installed"
        )
    pool = scope.pools.setdefault(item.column, [])
    issued = scope.issued.setdefault(item.column, set())
    if not pool:
        pool.extend(_fresh_ids(session, scope, model, item, issued))
    value = pool.pop()
    issued.add(value)
    return value


def _fresh_ids(
    session: sa_orm.Session, scope: _Scope, model: type[Any], item: _Field, issued: set[str]
) -> list[str]:
    """Candidates unused in the table and in this batch: one SELECT per round."""
    length, alphabet = item.column.info[_UID]
    taken = issued | _batch_values(session, scope, model, item)
    size = min(_MAX_BATCH, max(_FIRST_BATCH, len(issued)))
    mapper = sa.inspect(model)
    connection = session.connection(bind_arguments={"mapper": mapper})
    column = item.column
    for _ in range(_MAX_ROUNDS):
        candidates = {new_uid(length, alphabet) for _ in range(size)} - taken
        if candidates:
            query = sa.select(column).where(column.in_(sorted(candidates)))
            candidates -= set(connection.execute(query).scalars())
        if candidates:
            return list(candidates)
        size = _MAX_BATCH
    raise DbEventsError(
        f"{model.__name__}.{item.key}: found no free id of {length} characters in "
        f"{_MAX_ROUNDS} rounds; the table is nearly full, use longer ids or a larger alphabet"
    )


def _batch_values(
    session: sa_orm.Session, scope: _Scope, model: type[Any], item: _Field
) -> set[str]:
    """The ids the caller set explicitly on the rows written together with this one."""
    size = len(scope.params) if scope.params is not None else len(session.new)
    known = scope.explicit.get(item.column)
    if known is not None and known[0] == size:  # read once per batch, unless it grew
        return known[1]
    values: list[Any] = []
    if scope.params is not None:
        for row in scope.params:
            if isinstance(row, dict):
                values += (row.get(item.key), row.get(item.column.name))
    else:
        base = sa.inspect(model).base_mapper.class_
        values = [
            sa.inspect(obj).dict.get(item.key) for obj in session.new if isinstance(obj, base)
        ]
    found = {value for value in values if isinstance(value, str)}
    scope.explicit[item.column] = (size, found)
    return found


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
    now: dt.datetime | None = None
    actor: Any = _NO_ACTOR
    for item in _plan(model):
        if fields.get(item.key) is not None:
            continue
        if item.kind == "uid":
            fields[item.key] = _next_uid(model, item)
        elif item.kind in ("created_at", "updated_at"):
            now = now or dt.datetime.now(dt.UTC)
            fields[item.key] = now
        else:
            if actor is _NO_ACTOR:
                actor = _actor()
            if actor is not None:
                fields[item.key] = _as_column_value(item.column, actor)


def stamp_update(model: type[Any], rows: RowSet[Any], fields: dict[str, Any]) -> None:
    """Bump ``updated_at`` / ``updated_by`` of rows that change, unless the caller set them.

    A ``before_update`` callback, for :meth:`Events.listens_for <dbevents.Events.listens_for>`.
    """
    if not fields:
        return
    for item in _plan(model):
        if item.key in fields:
            continue
        if item.kind == "updated_at":
            fields[item.key] = dt.datetime.now(dt.UTC)
        elif item.kind == "updated_by":
            actor = _actor()
            if actor is not None:
                fields[item.key] = _as_column_value(item.column, actor)


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
