"""SQLite transaction handling that makes savepoints behave.

Python's ``sqlite3`` driver emits ``BEGIN`` lazily and, in its legacy mode, a
``RELEASE SAVEPOINT`` that is not preceded by a ``BEGIN`` commits for real.  A
rolled-back outer transaction would then keep the work of a released savepoint,
and a change set would be delivered for data that is gone.  :func:`configure`
installs SQLAlchemy's documented recipe: the driver's own transaction control
is switched off and SQLAlchemy emits ``BEGIN`` itself.

A transaction so begun reads first and takes the write lock when it first
writes; when another connection holds it then, SQLite fails the write at once
("database is locked") rather than wait, since waiting could deadlock.
``begin="IMMEDIATE"`` takes the write lock at ``BEGIN``, where the connection's
busy timeout makes a second writer wait its turn: transactions, read-only ones
included, then run one at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypeVar

import sqlalchemy as sa
import sqlalchemy.event as sa_event

from ._compat import root_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["configure", "is_configured"]

E = TypeVar("E", "sa.Engine", "AsyncEngine")

_CONFIGURED_KEY = "dbevents.sqlite_configured"


def configure(engine: E, *, begin: Literal["DEFERRED", "IMMEDIATE"] = "DEFERRED") -> E:
    """Make ``engine`` emit its own ``BEGIN`` so that savepoints nest correctly.

    Safe to call more than once (the first call's ``begin`` holds), and a no-op for
    engines that are not SQLite.  Call it before the engine's first connection
    (connections already in the pool keep the driver's behaviour).

    :param engine: a SQLite :class:`~sqlalchemy.engine.Engine` or
        :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (pysqlite or aiosqlite).
    :param begin: ``"DEFERRED"`` (SQLite's default) takes the write lock at the first
        write, and fails it at once while another transaction holds it;
        ``"IMMEDIATE"`` takes it at ``BEGIN``, waiting for it as long as the
        connection's busy timeout allows: for several threads or processes that
        read, then write, the same database.
    :returns: the same engine, for chaining.
    """
    if begin not in ("DEFERRED", "IMMEDIATE"):
        raise ValueError(f"begin must be 'DEFERRED' or 'IMMEDIATE', not {begin!r}")
    # duck-typed: importing sqlalchemy.ext.asyncio needs greenlet, an optional extra
    sync_engine: sa.Engine = getattr(engine, "sync_engine", None) or engine  # type: ignore[assignment, unused-ignore]
    if sync_engine.dialect.name != "sqlite" or is_configured(sync_engine):
        return engine
    sa_event.listen(sync_engine, "connect", _disable_driver_transactions)
    sa_event.listen(
        sync_engine, "begin", _emit_begin_immediate if begin == "IMMEDIATE" else _emit_begin
    )
    sync_engine.__dict__[_CONFIGURED_KEY] = True
    return engine


def is_configured(engine: sa.Engine) -> bool:
    """Tell whether :func:`configure` ran on ``engine`` (or the one it was made from with
    ``execution_options()``, whose pool it shares)."""
    return bool(root_engine(engine).__dict__.get(_CONFIGURED_KEY))


def _disable_driver_transactions(dbapi_connection: Any, connection_record: Any) -> None:
    # aiosqlite proxies the attribute to the sqlite3 connection it wraps
    dbapi_connection.isolation_level = None


def _emit_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def _emit_begin_immediate(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
