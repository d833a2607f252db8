"""Fixtures for tests of the library: a fresh Events installed on a fresh sessionmaker.

Every test gets its own ``Events`` and its own session class, so no listener
outlives the test that registered it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from click.testing import CliRunner, Result
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import dbevents
import dbevents.testing
from dbevents.cli import main
from dbevents.testing import changesets  # noqa: F401 - the public fixture, used by tests
from tests.datamodels import fill
from tests.models import Base
from tests.servers import PostgresServer


def run_cli(*args: str) -> Result:
    """Run the ``dbevents`` command with ``args``; its exceptions propagate."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def filled(engine: sa.Engine) -> sa.Engine:
    """The test database, with the rows of :func:`tests.datamodels.fill`."""
    fill(engine)
    return engine


@pytest.fixture
def events() -> dbevents.Events:
    """A fresh ``Events`` with a ``MemorySink``."""
    return dbevents.Events(sinks=[dbevents.MemorySink()])


@pytest.fixture
def app_schema(postgres: PostgresServer) -> Iterator[str]:
    """A PostgreSQL schema of its own, off the test's search_path, dropped with all in it
    afterwards."""
    name = f"app_{uuid4().hex}"
    postgres.execute(f"CREATE SCHEMA {name}")
    yield name
    postgres.drop_schema(name)


@pytest.fixture
def memory(events: dbevents.Events) -> dbevents.MemorySink:
    """The ``MemorySink`` of :func:`events`."""
    sink = events.sinks[0]
    assert isinstance(sink, dbevents.MemorySink)
    return sink


@pytest.fixture
def tables(engine: sa.Engine) -> sa.Engine:
    """The engine, with the tables of ``tests.models`` created."""
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, tables: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    """A sessionmaker on the test database, with :func:`events` installed."""
    yield from installed(events, tables, Base.metadata)


def installed(
    events: dbevents.Events, engine: sa.Engine, metadata: sa.MetaData
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    """For a fixture: ``metadata``'s tables created, and a sessionmaker with ``events``
    installed, uninstalled once the test is over."""
    metadata.create_all(engine)
    maker = events.install(sa_orm.sessionmaker(engine))
    yield maker
    events.uninstall(maker)


@contextlib.contextmanager
def installed_on(
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    """A sessionmaker of ``engine`` with ``events`` installed, uninstalled when the block ends."""
    factory = events.install(sa_orm.sessionmaker(engine))
    try:
        yield factory
    finally:
        events.uninstall(factory)


def recorded_sql(engine: sa.Engine) -> list[str]:
    """The SQL ``engine`` sends to the database, statement by statement, from here on."""
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


@pytest.fixture
def statements(engine: sa.Engine) -> list[str]:
    """The SQL :func:`engine` sends to the database (:func:`recorded_sql`)."""
    return recorded_sql(engine)


def installed_async(events: dbevents.Events, engine: AsyncEngine) -> async_sessionmaker[Any]:
    """An async_sessionmaker of a Session class of its own, with ``events`` installed."""
    own = type("Installed", (sa_orm.Session,), {})
    maker = async_sessionmaker(engine, sync_session_class=own)
    events.install(maker)
    return maker


@contextlib.contextmanager
def another_writer(engine: sa.Engine, write: Callable[[sa.Connection], object]) -> Iterator[None]:
    """Another transaction that has run ``write`` and holds its locks until 0.3 s into the
    block, then commits: what the block writes meanwhile waits for it, or fails."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.begin() as conn:
            write(conn)
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        threading.Timer(0.3, release.set).start()
        yield
    finally:
        release.set()
        thread.join()


def returned_or(sent: list[str], way: str, sign: str) -> str:
    """How an INSERT's rows were known, from the SQL :func:`statements` recorded:
    ``"returning"`` when it returned them, else ``way``, which ``sign`` shows (a piece of
    the SQL dbevents sent for it)."""
    inserts = [sql for sql in sent if sql.startswith("INSERT")]
    assert inserts, sent
    if any("RETURNING" in sql for sql in inserts):
        return "returning"
    assert any(sign in sql for sql in sent), sent
    return way


def table_rows(engine: sa.Engine, table: str) -> dict[tuple[object, ...], dict[str, object]]:
    """A table's rows read back with plain SQL, keyed by primary key (all columns if none)."""
    meta = sa.MetaData()
    t = sa.Table(table, meta, autoload_with=engine)
    key = [c.name for c in t.primary_key.columns] or [c.name for c in t.columns]
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(t)).mappings()]
    return {tuple(r[k] for k in key): r for r in rows}


Snapshot = dict[str, dict[tuple[object, ...], dict[str, object]]]
#: (table, pk) -> (op, old, new): a change set, or the difference of two snapshots
Diff = dict[tuple[str, tuple[Any, ...]], tuple[str, dict[str, Any] | None, dict[str, Any] | None]]


def snapshot(engine: sa.Engine, tables: tuple[str, ...]) -> Snapshot:
    """These tables' rows, read back with plain SQL."""
    return {table: table_rows(engine, table) for table in tables}


def table_diff(before: Snapshot, after: Snapshot) -> Diff:
    """The net change of every row between two snapshots; updates as changed columns only."""
    out: Diff = {}
    for table in before:
        old_rows, new_rows = before[table], after[table]
        for pk in old_rows.keys() | new_rows.keys():
            old, new = old_rows.get(pk), new_rows.get(pk)
            if old is None:
                out[(table, pk)] = ("insert", None, new)
            elif new is None:
                out[(table, pk)] = ("delete", old, None)
            elif old != new:
                keys = [k for k in new if old[k] != new[k]]
                out[(table, pk)] = ("update", {k: old[k] for k in keys}, {k: new[k] for k in keys})
    return out


def committed_diff(
    maker: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    tables: tuple[str, ...],
    write: Callable[[sa_orm.Session], object],
) -> Diff:
    """Run ``write`` in a session of ``maker`` and commit; return what it changed in ``tables``."""
    before = snapshot(engine, tables)
    with maker() as session:
        write(session)
        session.commit()
    return table_diff(before, snapshot(engine, tables))


def row_sets(events: dbevents.Events, model: type[Any]) -> list[list[tuple[Any, ...]]]:
    """The rows each ``before_update`` / ``before_delete`` of ``model`` receives, loaded and
    named by primary key, call by call: filled in as the callbacks run."""
    seen: list[list[tuple[Any, ...]]] = []

    def record(cls: type[Any], rows: dbevents.RowSet[Any], *fields: Any) -> None:
        seen.append(sorted(sa.inspect(row).identity for row in rows))

    events.listens_for(model, "before_update")(record)
    events.listens_for(model, "before_delete")(record)
    return seen


def delivered(changeset: dbevents.ChangeSet) -> Diff:
    """A change set in the shape of :func:`table_diff`."""
    return {
        (c.table, c.pk): (
            c.op.value,
            None if c.old is None else dict(c.old),
            None if c.new is None else dict(c.new),
        )
        for c in changeset.changes
    }


def all_delivered(received: list[dbevents.ChangeSet]) -> Diff:
    """Several change sets in the shape of :func:`table_diff`, later ones over earlier ones."""
    out: Diff = {}
    for changeset in received:
        out.update(delivered(changeset))
    return out
