"""Unique random string ids, and the checks that keep short ones unique.

An id of 22 base62 characters (about 131 bits) is unique by chance alone.  With
fewer than 2**96 possible ids, candidates are checked against the table and the
rest of the batch before use, so a short id never collides in one process; the
unique key stays the guard against concurrent writers.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .dispatch.writelock import take_write_lock
from .exceptions import ConfigurationError, DbEventsError
from .fieldscope import Scope, current

__all__ = ["BASE62", "check_uid_options", "new_uid", "next_uid"]

BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: below this many possible ids, candidates are checked against the table
_CHECKED_SPACE: Final = 2**96
_FIRST_BATCH: Final = 16
_MAX_BATCH: Final = 500
_MAX_ROUNDS: Final = 32


def new_uid(length: int = 22, alphabet: str = BASE62) -> str:
    """Return a random string of ``length`` characters of ``alphabet`` (from :mod:`secrets`)."""
    size = len(alphabet)
    limit = 256 - 256 % size  # bytes at or above it would favour the first characters
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(alphabet[b % size] for b in secrets.token_bytes(length + 8) if b < limit)
    return "".join(chars[:length])


def check_uid_options(length: int, alphabet: str) -> None:
    """Raise :class:`ConfigurationError` unless ids of this shape can be made."""
    if not isinstance(length, int) or length < 1:
        raise ConfigurationError(f"uid length must be a positive integer, not {length!r}")
    if not isinstance(alphabet, str) or not 2 <= len(alphabet) <= 256:
        raise ConfigurationError(f"uid alphabet must hold 2 to 256 characters, not {alphabet!r}")
    if len(set(alphabet)) != len(alphabet):
        raise ConfigurationError(f"uid alphabet {alphabet!r} repeats a character")


def next_uid(model: type[Any], key: str, column: sa.Column[Any], length: int, alphabet: str) -> str:
    """A new id for ``model.key``, unused in the table and the batch if the space is small."""
    if len(alphabet) ** length >= _CHECKED_SPACE:
        return new_uid(length, alphabet)
    scope = current()
    session = scope.session() if scope is not None else None
    if scope is None or session is None:
        raise DbEventsError(
            f"{model.__name__}.{key}: short ids are checked against the table, "
            "which needs a session; write through a session with dbevents installed"
        )
    pool = scope.pools.setdefault(column, [])
    issued = scope.issued.setdefault(column, set())
    if not pool:
        pool.extend(_fresh_ids(session, scope, model, key, column, length, alphabet))
    value = pool.pop()
    issued.add(value)
    return value


def _fresh_ids(
    session: sa_orm.Session,
    scope: Scope,
    model: type[Any],
    key: str,
    column: sa.Column[Any],
    length: int,
    alphabet: str,
) -> list[str]:
    """Candidates unused in the table and in this batch: one SELECT per round."""
    issued = scope.issued[column]
    taken = issued | _batch_values(session, scope, model, key, column)
    size = min(_MAX_BATCH, max(_FIRST_BATCH, len(issued)))
    connection = session.connection(bind_arguments={"mapper": sa.inspect(model)})
    # SQLite: a read would hold a shared lock, and the INSERT that follows would then fail
    # at once with "database is locked" while another writer holds the write lock
    take_write_lock(connection, column.table, sa.Insert)
    for _ in range(_MAX_ROUNDS):
        candidates = {new_uid(length, alphabet) for _ in range(size)} - taken
        if candidates:
            query = sa.select(column).where(column.in_(sorted(candidates)))
            candidates -= set(connection.execute(query).scalars())
        if candidates:
            return list(candidates)
        size = _MAX_BATCH
    raise DbEventsError(
        f"{model.__name__}.{key}: found no free id of {length} characters in "
        f"{_MAX_ROUNDS} rounds; the table is nearly full, use longer ids or a larger alphabet"
    )


def _batch_values(
    session: sa_orm.Session, scope: Scope, model: type[Any], key: str, column: sa.Column[Any]
) -> set[str]:
    """The ids the caller set explicitly on the rows written together with this one."""
    size = len(scope.rows) if scope.rows is not None else len(session.new)
    known = scope.explicit.get(column)
    if known is not None and known[0] == size:  # read once per batch, unless it grew
        return known[1]
    values: list[Any] = []
    if scope.rows is not None:
        names = {key, column.key, column.name}
        values = [row.get(name) for row in scope.rows for name in names]
    else:
        base = sa.inspect(model).base_mapper.class_
        values = [sa.inspect(obj).dict.get(key) for obj in session.new if isinstance(obj, base)]
    found = {value for value in values if isinstance(value, str)}
    scope.explicit[column] = (size, found)
    return found
