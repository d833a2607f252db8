"""What :meth:`Events.install` listens on, and what it checks there.

A session factory is resolved to the Session class (or instance) whose events
to listen to: never SQLAlchemy's own ``Session`` class, which every session of
the process shares.  A SQLite engine known at install time (or at a session's
first BEGIN) is checked for :func:`dbevents.sqlite.configure`.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from . import sqlite
from .exceptions import ConfigurationError
from .warn import warn

__all__ = ["known_bind", "session_target_of", "warn_unconfigured_sqlite"]


def _is_async_scoped(target: Any) -> bool:
    """Whether ``target`` is an ``async_scoped_session`` (looked up only when loaded)."""
    module = sys.modules.get("sqlalchemy.ext.asyncio")
    return module is not None and isinstance(target, module.async_scoped_session)


def _is_async_session(target: Any) -> bool:
    """Whether ``target`` is an ``AsyncSession`` instance (looked up only when loaded)."""
    module = sys.modules.get("sqlalchemy.ext.asyncio")
    return module is not None and isinstance(target, module.AsyncSession)


def session_target_of(target: Any) -> Any:
    """The Session class (or instance) whose events to listen to."""
    if isinstance(target, sa_orm.scoped_session) or _is_async_scoped(target):
        target = target.session_factory
    if _is_async_session(target):
        # its own sync session, as for a Session instance: its sync_session_class would
        # reach every other session of that class
        return target.sync_session
    if isinstance(target, sa_orm.sessionmaker):
        return target.class_
    sync_class = getattr(target, "sync_session_class", None)
    if sync_class is None and hasattr(target, "kw") and hasattr(target, "class_"):
        # an async_sessionmaker: its own sync_session_class, else that of its class_ (an
        # AsyncSession subclass may name one as a class attribute)
        sync_class = target.kw.get("sync_session_class") or target.class_.sync_session_class
        if sync_class is sa_orm.Session:
            raise ConfigurationError(
                "an async_sessionmaker shares the plain Session class with every other "
                "session; make it with async_sessionmaker(..., sync_session_class=MySession) "
                "and install on that"
            )
    if sync_class is not None:
        target = sync_class
    if target is sa_orm.Session:
        # listening on the base class would touch every session of the process
        raise ConfigurationError(
            "cannot install on sqlalchemy.orm.Session itself: every session of the process "
            "would run the callbacks; install on a subclass (class MySession(Session): pass), "
            "a sessionmaker(class_=MySession), or for async sessions an "
            "async_sessionmaker(..., sync_session_class=MySession)"
        )
    if isinstance(target, type) and issubclass(target, sa_orm.Session):
        return target
    if isinstance(target, sa_orm.Session):
        return target
    if hasattr(target, "dialect"):  # an Engine or Connection, sync or async
        raise ConfigurationError(
            f"cannot install on {type(target).__name__}: dbevents listens on sessions, not on "
            "engines or connections; install on the sessionmaker (or async_sessionmaker, "
            "with a sync_session_class of your own) that makes your sessions"
        )
    raise ConfigurationError(
        f"cannot install on {target!r}: expected a Session subclass or instance, "
        "a sessionmaker, a scoped_session, an async_sessionmaker or an AsyncSession"
    )


def known_bind(target: Any) -> Any:
    """The engine ``target`` makes sessions bound to, when it says (None otherwise)."""
    if isinstance(target, sa_orm.scoped_session) or _is_async_scoped(target):
        target = target.session_factory
    kw = getattr(target, "kw", None)
    bind = kw.get("bind") if isinstance(kw, dict) else getattr(target, "bind", None)
    return getattr(bind, "sync_engine", bind)


_CHECKED: Final = "dbevents.sqlite_checked"


def warn_unconfigured_sqlite(bind: Any) -> None:
    """Warn, once per engine, about a SQLite engine without :func:`dbevents.sqlite.configure`."""
    engine = getattr(bind, "engine", bind)
    if not isinstance(engine, sa.Engine) or engine.__dict__.get(_CHECKED):
        return  # (checked on every transaction begun: once is enough)
    engine.__dict__[_CHECKED] = True
    if engine.dialect.name != "sqlite" or sqlite.is_configured(engine):
        return
    warn(
        f"{engine.url!r}: with the sqlite3 driver's default transaction handling a released "
        "SAVEPOINT commits for real; call dbevents.sqlite.configure(engine) before using it"
    )
