"""Engines made from a database URL a user typed: refused with a clear message when they can't work.

The commands and :func:`dbevents.relay` take URLs; what would otherwise surface
as a traceback deep inside SQLAlchemy or the driver (a driver not installed, an
asyncio driver where dbevents runs synchronously, a mistyped SQLite path that
connecting would create, empty) is a :class:`ConfigurationError` saying what to do.
So is an ``AsyncEngine`` given where dbevents runs synchronously (:func:`refuse_async`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .exceptions import ConfigurationError

__all__ = ["engine_from_url", "refuse_async", "require_sqlite_file"]


def engine_from_url(url: str, *, existing: bool = True, **options: Any) -> sa.Engine:
    """An engine for ``url``, checked before it connects.

    :param existing: refuse a SQLite database file that does not exist yet.
    :raises ConfigurationError: the URL does not parse, names an asyncio driver or one
        that is not installed, or (with ``existing``) a SQLite file that is not there.
    """
    try:
        parsed = sa.make_url(url)
        dialect = parsed.get_dialect()
    except sa.exc.ArgumentError as error:  # (NoSuchModuleError: an unknown dialect)
        raise ConfigurationError(f"database URL {url!r}: {error}") from None
    shown = parsed.render_as_string(hide_password=True)
    if dialect.is_async:
        raise ConfigurationError(
            f"{shown}: {parsed.drivername} is an asyncio driver; give the URL of a synchronous "
            "one (postgresql+psycopg://, sqlite://)"
        )
    if existing:
        require_sqlite_file(parsed)
    try:
        return sa.create_engine(parsed, **options)
    except ImportError as error:
        raise ConfigurationError(
            f"{shown}: the driver of {parsed.drivername} is not installed ({error}); "
            f"{_driver_advice(parsed)}"
        ) from None


def refuse_async(bind: object, call: str, run_sync_arg: str) -> None:
    """Raise :class:`ConfigurationError` when ``bind`` is an ``AsyncEngine`` or
    ``AsyncConnection``, which ``call`` (run synchronously) would fail on with a ``TypeError``
    from deep inside; show how to reach it from async code: ``conn.run_sync(run_sync_arg)``."""
    if not hasattr(bind, "sync_engine"):  # (duck-typed: the asyncio extension is optional)
        return
    raise ConfigurationError(
        f"{call} runs synchronously and can't use an {type(bind).__name__}; from async code, "
        f"run it on the connection run_sync() passes: async with engine.begin() as conn: "
        f"await conn.run_sync({run_sync_arg})"
    )


def _driver_advice(url: sa.URL) -> str:
    """What to do about a missing driver.  ``dbevents[postgresql]`` installs psycopg (3),
    which a plain ``postgresql://`` URL names on SQLAlchemy 2.1 but not on 2.0 (psycopg2)."""
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
        return (
            "install it, or name psycopg in the URL (postgresql+psycopg://...), "
            "which pip install 'dbevents[postgresql]' installs"
        )
    return "install it, or name a driver that is installed in the URL"


#: why a missing SQLite file is refused when reading it
READING = "check the database URL (reading does not create the database)"
#: ... and when loading into it, which needs the tables too
LOADING = (
    "create it and its tables first (metadata.create_all(engine) or your migrations), "
    "or check the database URL"
)


def require_sqlite_file(url: sa.URL, advice: str = READING) -> None:
    """Refuse a SQLite database file that does not exist: sqlite3 would create it, empty."""
    database = url.database
    if url.get_backend_name() != "sqlite" or url.query.get("uri"):
        return  # a URI filename says itself whether it may create the file (mode=ro)
    if database in (None, "", ":memory:") or Path(database).exists():
        return
    raise ConfigurationError(f"there is no SQLite database {Path(database).absolute()}; {advice}")
