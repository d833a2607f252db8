"""Fixtures: real PostgreSQL and Redis servers, and a fresh database per test.

- ``postgres``: a session-wide :class:`~tests.servers.PostgresServer`, started
  the first time a test needs it.
- ``redis_url``: the URL of a session-wide :class:`~tests.servers.RedisServer`.
- ``backend``: ``"sqlite"`` or ``"postgresql"``; every test that uses
  ``db_url``, ``engine`` or ``async_engine`` runs once on each.
- ``db_url``: an empty database of its own for this test.
- ``engine`` / ``async_engine``: engines on that database, disposed at teardown.

A missing PostgreSQL is an error, never a skip: the default run covers it.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

import dbevents.sqlite
from tests.servers import PostgresServer, RedisServer, search_path_of

# the library's own fixtures (events, Session, changesets, ...) live in tests/fixtures.py
pytest_plugins = ["tests.fixtures"]

BACKENDS = ["sqlite", "postgresql"]


class LeakedConnectionWarning(UserWarning):
    """A test left a transaction open on its PostgreSQL schema."""


def pytest_report_header() -> list[str]:
    return [f"sqlalchemy: {sa.__version__}"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1, superuser ``postgres``, for the whole session."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server on 127.0.0.1 for the whole session (keys persist between tests)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's Redis server."""
    return redis_server.url


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: ``"sqlite"`` or ``"postgresql"``."""
    name: str = request.param
    return name


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of this test's own.

    SQLite: ``sqlite:///<tmp_path>/test.db``.  PostgreSQL: the server's
    ``postgres`` database with ``search_path`` set to a fresh schema
    ``t_<hex>`` (psycopg driver), dropped with all in it at teardown.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    assert backend == "postgresql", backend
    server: PostgresServer = request.getfixturevalue("postgres")
    schema = f"t_{uuid4().hex}"
    server.execute(f"CREATE SCHEMA {schema}")
    yield server.schema_url(schema)
    terminated = server.drop_schema(schema)
    if terminated:
        warnings.warn(
            f"connections still held locks in schema {schema} at teardown "
            f"(a transaction left open); terminated backends {terminated}",
            LeakedConnectionWarning,
            stacklevel=1,
        )


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """``create_engine(db_url)``, with :func:`dbevents.sqlite.configure` applied."""
    eng = dbevents.sqlite.configure(sa.create_engine(db_url))
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def async_engine(db_url: str) -> Iterator[AsyncEngine]:
    """The ``db_url`` database through aiosqlite or asyncpg.

    A sync fixture: use it from ``asyncio.run(...)`` in a plain test function.
    It has no pool (``NullPool``): a pooled connection belongs to the event
    loop that opened it, and each ``asyncio.run`` has a loop of its own.
    """
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        eng = create_async_engine(url.set(drivername="sqlite+aiosqlite"), poolclass=NullPool)
    else:
        eng = create_async_engine(
            url.set(drivername="postgresql+asyncpg", query={}),
            poolclass=NullPool,
            connect_args={"server_settings": {"search_path": search_path_of(db_url)}},
        )
    dbevents.sqlite.configure(eng)
    try:
        yield eng
    finally:
        asyncio.run(eng.dispose())
