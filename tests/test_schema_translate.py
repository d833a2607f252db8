"""A ``schema_translate_map`` on the session's connection: dbevents' own SQL follows it.

A statement of a table in no schema writes, under ``{None: "tenant"}``, the table
of that name in ``tenant``.  The SQL dbevents runs for it (the rows it reads,
SQLite's write lock, PostgreSQL's keys drawn from the key's sequence, SQLite's
largest rowid) must go to that same table, never to the one of that name the
search path finds.  On PostgreSQL the tenant is a schema of its own; on SQLite a
database attached to every connection as ``tenant``.  A table of the same name
outside the tenant holds other rows, and its sequence is far ahead, so that SQL
sent to the wrong table shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet
from dbevents.exceptions import DbEventsWarning
from dbevents.relay import relay
from dbevents.sinks.outbox import OutboxSink
from tests.fixtures import Diff, another_writer, delivered, installed_on, recorded_sql, returned_or


class TBase(sa_orm.DeclarativeBase):
    pass


class Entry(TBase):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(primary_key=True)  # serial on PostgreSQL
    name: Mapped[str] = mapped_column(sa.String(20), unique=True)
    qty: Mapped[int] = mapped_column(default=0)


entries: sa.Table = Entry.__table__  # type: ignore[assignment]
NOW = dt.datetime.now(dt.UTC)
Write = Callable[[sa_orm.Session], Any]


@pytest.fixture
def tenant(engine: sa.Engine, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The schema the session's writes are translated to, without the tables yet."""
    if engine.dialect.name == "postgresql":
        name: str = request.getfixturevalue("app_schema")
        return name
    path = tmp_path / "tenant.db"

    def attach(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute(f"ATTACH DATABASE '{path}' AS tenant")

    sa.event.listen(engine, "connect", attach)
    engine.dispose()
    return "tenant"


def translated(tenant: str) -> dict[str, Any]:
    """The execution options that put the tables of no schema in ``tenant``."""
    return {"schema_translate_map": {None: tenant}}


def tenant_rows(engine: sa.Engine, tenant: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows of the tenant's ``entries``, by key."""
    with engine.connect() as conn:
        conn = conn.execution_options(**translated(tenant))
        return {(row["id"],): dict(row) for row in conn.execute(sa.select(entries)).mappings()}


def rows_elsewhere(engine: sa.Engine) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows of the ``entries`` the search path finds."""
    with engine.connect() as conn:
        return {(row["id"],): dict(row) for row in conn.execute(sa.select(entries)).mappings()}


def make_tables(engine: sa.Engine, tenant: str, *, elsewhere: bool) -> None:
    """``entries`` in the tenant, holding t1 and t2 (keys 1 and 2, from its sequence), and
    with ``elsewhere`` also where the search path finds it, holding d1 to d3, its sequence
    far ahead."""
    with engine.begin() as conn:
        conn = conn.execution_options(**translated(tenant))
        TBase.metadata.create_all(conn)
        conn.execute(sa.insert(entries), [{"name": "t1"}, {"name": "t2"}])
    if not elsewhere:
        return
    TBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(entries), [{"name": f"d{i}"} for i in (1, 2, 3)])
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('entries', 'id'), 1000)")


def upsert(session: sa_orm.Session) -> Any:
    """An upsert of t1 (which updates it) and of a new row, by the unique name."""
    dialect = session.get_bind().dialect.name
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Entry)
    statement = statement.values([{"name": "t1", "qty": 5}, {"name": "new", "qty": 6}])
    return session.execute(
        statement.on_conflict_do_update(index_elements=["name"], set_={"qty": 5})
    )


def flush(session: sa_orm.Session) -> None:
    """An insert, an update and a delete on the unit of work."""
    session.add(Entry(name="z"))
    session.get_one(Entry, 1).qty = 7
    session.delete(session.get_one(Entry, 2))


WRITES: dict[str, Write] = {
    "bulk insert": lambda s: s.execute(sa.insert(Entry), [{"name": "x"}, {"name": "y"}]),
    "insert": lambda s: s.execute(sa.insert(Entry).values(name="x", qty=1)),
    "update": lambda s: s.execute(sa.update(Entry).where(Entry.id <= 2).values(qty=Entry.qty + 1)),
    "update of a key": lambda s: s.execute(sa.update(Entry).where(Entry.id == 1).values(id=10)),
    "delete": lambda s: s.execute(sa.delete(Entry).where(Entry.name == "t2")),
    "upsert": upsert,
    "unit of work": flush,
}


def diff_of(before: dict[Any, Any], after: dict[Any, Any], *, keys: bool) -> Diff:
    """What changed between two reads of ``entries`` (with ``keys``, which rows only), in the
    shape of a change set (:func:`~tests.fixtures.delivered`)."""
    out: Diff = {}
    for pk in before.keys() | after.keys():
        old, new = before.get(pk), after.get(pk)
        if old == new:
            continue
        op = "insert" if old is None else "delete" if new is None else "update"
        if keys:
            out[("entries", pk)] = (op, None, None)
        elif op == "update":
            assert old is not None and new is not None
            changed = [k for k in new if old[k] != new[k]]
            out[("entries", pk)] = (op, {k: old[k] for k in changed}, {k: new[k] for k in changed})
        else:
            out[("entries", pk)] = (op, old, new)
    return out


@pytest.fixture(params=[True, False], ids=["a table of that name elsewhere", "none elsewhere"])
def elsewhere(request: pytest.FixtureRequest) -> bool:
    """Whether a table of the tenant's name is also where the search path finds it."""
    value: bool = request.param
    return value


@pytest.mark.parametrize("keys", [False, True], ids=["old+new", "keys"])
@pytest.mark.parametrize("write", list(WRITES))
def test_the_rows_delivered_are_those_of_the_tenants_table(
    write: str, keys: bool, elsewhere: bool, engine: sa.Engine, tenant: str
) -> None:
    make_tables(engine, tenant, elsewhere=elsewhere)
    outside = rows_elsewhere(engine) if elsewhere else {}
    events = dbevents.Events(capture={Entry: "keys" if keys else "old+new"})
    got: list[ChangeSet] = []
    events.on_commit(got.append)
    before = tenant_rows(engine, tenant)
    with installed_on(events, engine) as maker, maker() as session:
        session.connection(execution_options=translated(tenant))
        WRITES[write](session)
        session.commit()
    diff = diff_of(before, tenant_rows(engine, tenant), keys=keys)
    [changeset] = got
    assert delivered(changeset) == diff
    if elsewhere:
        assert rows_elsewhere(engine) == outside


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("where", ["connection", "engine"])
def test_keys_drawn_for_a_bulk_insert_come_from_the_tenants_sequence(
    where: str, elsewhere: bool, engine: sa.Engine, tenant: str
) -> None:
    """With the map on the session's connection, or on the engine the session is bound to."""
    make_tables(engine, tenant, elsewhere=elsewhere)
    events = dbevents.Events(capture={Entry: "keys"})
    got: list[ChangeSet] = []
    events.on_commit(got.append)
    sent = recorded_sql(engine)
    bind = engine.execution_options(**translated(tenant)) if where == "engine" else engine
    with installed_on(events, bind) as maker, maker() as session:
        if where == "connection":
            session.connection(execution_options=translated(tenant))
        session.execute(sa.insert(Entry), [{"name": "x"}, {"name": "y"}])
        session.commit()
    assert returned_or(sent, "drawn", "nextval") == "drawn"
    [changeset] = got
    assert [c.pk for c in changeset.changes] == [(3,), (4,)]
    with engine.begin() as conn:  # the tenant's sequence moved on: its next key is free
        conn = conn.execution_options(**translated(tenant))
        assert conn.execute(sa.insert(entries).values(name="next")).inserted_primary_key == (5,)
    if elsewhere:
        with engine.connect() as conn:
            sequence = "SELECT last_value FROM entries_id_seq"
            assert conn.exec_driver_sql(sequence).scalar() == 1000


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_takes_the_write_lock_of_the_tenants_database(
    engine: sa.Engine, tenant: str
) -> None:
    """The write lock of an attached database is its own: taken on the main database, the
    rows read would let the UPDATE fail at once on another writer of the tenant's."""
    make_tables(engine, tenant, elsewhere=True)
    events = dbevents.Events()
    got: list[ChangeSet] = []
    events.on_commit(got.append)

    def other(conn: sa.Connection) -> None:
        conn.exec_driver_sql("UPDATE tenant.entries SET qty = 9 WHERE id = 2")

    with installed_on(events, engine) as maker, another_writer(engine, other), maker() as session:
        session.connection(execution_options=translated(tenant))
        session.execute(sa.update(Entry).where(Entry.id <= 2).values(qty=Entry.qty + 1))
        session.commit()
    [changeset] = got
    assert {c.pk: c.new for c in changeset.changes} == {(1,): {"qty": 1}, (2,): {"qty": 10}}


TRIGGER = """
CREATE TRIGGER tenant.entries_audit AFTER INSERT ON entries
BEGIN UPDATE entries SET qty = qty + 1 WHERE id = NEW.id; END
"""


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("trigger", [False, True], ids=["plain", "with a trigger"])
def test_sqlite_asks_the_tenants_database_how_its_table_is_stored(
    trigger: bool, engine: sa.Engine, tenant: str
) -> None:
    """The rows of a bulk INSERT are those above the largest rowid only in an ordinary
    table without triggers: the tenant's, whatever the table elsewhere is."""
    make_tables(engine, tenant, elsewhere=trigger)
    if trigger:
        with engine.begin() as conn:
            conn.exec_driver_sql(TRIGGER)
    events = dbevents.Events(capture={Entry: "keys"})
    got: list[ChangeSet] = []
    events.on_commit(got.append)
    sent = recorded_sql(engine)
    with installed_on(events, engine) as maker, maker() as session:
        session.connection(execution_options=translated(tenant))
        session.execute(sa.insert(Entry), [{"name": "x"}, {"name": "y"}])
        session.commit()
    way = returned_or(sent, "rowid", " > ? ORDER BY ")
    assert way == ("returning" if trigger else "rowid")
    [changeset] = got
    assert [c.pk for c in changeset.changes] == [(3,), (4,)]


def test_a_map_given_to_one_statement_alone_is_reported_never_captured_elsewhere(
    engine: sa.Engine, tenant: str
) -> None:
    """dbevents' own SQL follows the connection's map: a statement that runs with a map of
    its own, which puts its table elsewhere, is reported rather than told from another
    table's rows.  With the connection's own map it is captured as any other."""
    make_tables(engine, tenant, elsewhere=True)
    events = dbevents.Events()
    got: list[ChangeSet] = []
    events.on_commit(got.append)
    moved = sa.update(Entry).where(Entry.id == 1).values(id=10)
    with installed_on(events, engine) as maker, maker() as session:
        with pytest.warns(DbEventsWarning, match="ran with a schema_translate_map of its own"):
            session.execute(moved, execution_options=translated(tenant))
        with pytest.warns(DbEventsWarning, match="ran with a schema_translate_map of its own"):
            session.execute(
                sa.delete(Entry).where(Entry.id == 2).execution_options(**translated(tenant))
            )
        session.commit()
    assert got == []
    before = tenant_rows(engine, tenant)
    with installed_on(events, engine) as maker, maker() as session:
        session.connection(execution_options=translated(tenant))
        session.execute(sa.update(Entry).values(qty=4), execution_options=translated(tenant))
        session.commit()
    [changeset] = got
    assert delivered(changeset) == diff_of(before, tenant_rows(engine, tenant), keys=False)


def test_a_relay_under_a_map_takes_and_acknowledges_the_tenants_outbox(
    engine: sa.Engine, tenant: str
) -> None:
    """A relay given an engine with the map reads the tenant's outbox, and deletes what it
    delivered there too: never from the outbox of that name the search path finds."""
    make_tables(engine, tenant, elsewhere=False)
    outbox = OutboxSink()
    tenant_engine = engine.execution_options(**translated(tenant))
    outbox.create_table(tenant_engine)
    outbox.create_table(engine)  # another outbox, outside the tenant, with a row of its own
    with engine.begin() as conn:
        conn.execute(outbox.table.insert(), {"id": "0" * 26, "created_at": NOW, "payload": "{}"})
    events = dbevents.Events(sinks=[outbox])
    with installed_on(events, engine) as maker, maker() as session:
        session.connection(execution_options=translated(tenant))
        session.execute(sa.insert(Entry), [{"name": "x"}])
        session.commit()
    sink = dbevents.MemorySink()
    assert relay(tenant_engine, [sink], once=True) == 1
    assert relay(tenant_engine, [sink], once=True) == 0  # acknowledged: not delivered again
    [changeset] = sink.changesets
    assert [c.new for c in changeset.changes] == [{"id": 3, "name": "x", "qty": 0}]
    with tenant_engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(outbox.table)) == 0
    with engine.connect() as conn:
        assert conn.scalar(sa.select(outbox.table.c.id)) == "0" * 26
