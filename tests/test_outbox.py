"""OutboxSink: the net change set is written inside the transaction that made it, or not at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import dbevents
from dbevents.changes import ChangeSet, Op
from dbevents.sinks.outbox import OutboxSink
from tests.fixtures import installed_on
from tests.models import Base, Company, Contact, Subgroup
from tests.servers import PostgresServer


@pytest.fixture
def outbox(tables: sa.Engine) -> OutboxSink:
    sink = OutboxSink()
    sink.create_table(tables)
    return sink


@pytest.fixture
def maker(
    tables: sa.Engine, outbox: OutboxSink, memory: dbevents.MemorySink, events: dbevents.Events
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    """Sessions whose Events has a MemorySink, then the outbox."""
    events.add_sink(outbox)
    factory = sa_orm.sessionmaker(tables)
    events.install(factory)
    yield factory
    events.uninstall(factory)


def outbox_rows(engine: sa.Engine, outbox: OutboxSink) -> list[ChangeSet]:
    with engine.connect() as conn:
        payloads = conn.execute(sa.select(outbox.table.c.payload).order_by(outbox.table.c.seq))
        return [ChangeSet.from_json(payload) for payload in payloads.scalars()]


def test_a_commit_writes_its_change_set(
    maker: sa_orm.sessionmaker[sa_orm.Session],
    tables: sa.Engine,
    outbox: OutboxSink,
    memory: dbevents.MemorySink,
) -> None:
    with maker() as session:
        session.add(Company(id=1, name="Acme"))
        session.add(Contact(id=1, email="a@x", company_id=1, subgroups=[Subgroup(id=1, name="g")]))
        session.commit()
    with maker() as session:
        session.get_one(Contact, 1).name = "Ann"
        session.commit()
    stored = outbox_rows(tables, outbox)
    assert stored == memory.changesets
    assert len(stored) == 2
    first, second = stored
    assert {(c.op, c.table) for c in first.changes} == {
        (Op.INSERT, "companies"),
        (Op.INSERT, "contacts"),
        (Op.INSERT, "subgroups"),
        (Op.LINK, "contact_subgroup"),
    }
    # the outbox's own row is bookkeeping: never captured
    assert all(c.table != outbox.table.name for cs in stored for c in cs.changes)
    (change,) = second.changes
    assert (change.op, change.old, change.new) == (Op.UPDATE, {"name": None}, {"name": "Ann"})


def test_rows_keep_insertion_order(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    for i in range(1, 6):
        with maker() as session:
            session.add(Company(id=i, name=f"c{i}"))
            session.commit()
    stored = outbox_rows(tables, outbox)
    assert [cs.changes[0].pk for cs in stored] == [(i,) for i in range(1, 6)]


def test_a_rollback_leaves_no_row(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    with maker() as session:
        session.add(Company(id=1, name="Acme"))
        session.flush()
        session.rollback()
    with maker() as session:
        session.add(Company(id=2, name="Closed without commit"))
        session.flush()
    with maker() as session:
        session.add(Company(id=3, name="Committed"))
        session.commit()
    with maker() as session:
        session.add(Company(id=3, name="Duplicate key"))
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
    stored = outbox_rows(tables, outbox)
    assert [cs.changes[0].pk for cs in stored] == [(3,)]


class FailingWrite:
    """An in-transaction sink that fails after the outbox wrote its row."""

    def write(self, session: sa_orm.Session, changeset: ChangeSet) -> None:
        raise RuntimeError("second sink failed")

    def publish(self, changeset: ChangeSet) -> None:
        raise AssertionError("a failed commit publishes nothing")


def test_a_commit_failing_after_the_write_takes_the_row_with_it(
    tables: sa.Engine, outbox: OutboxSink
) -> None:
    events = dbevents.Events(sinks=[outbox, FailingWrite()])
    factory = sa_orm.sessionmaker(tables)
    events.install(factory)
    try:
        with factory() as session:
            session.add(Company(id=1, name="Acme"))
            with pytest.raises(RuntimeError, match="second sink failed"):
                session.commit()
    finally:
        events.uninstall(factory)
    assert outbox_rows(tables, outbox) == []
    with tables.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Company.__table__)) == 0


def test_a_failing_before_commit_callback_leaves_no_row(
    tables: sa.Engine, outbox: OutboxSink, events: dbevents.Events
) -> None:
    events.add_sink(outbox)

    @events.listens_for(Company, "before_commit")
    def refuse(cls: type[Company], op: Op, change: object) -> None:
        raise RuntimeError("refused")

    factory = sa_orm.sessionmaker(tables)
    events.install(factory)
    try:
        with factory() as session:
            session.add(Company(id=1, name="Acme"))
            with pytest.raises(RuntimeError, match="refused"):
                session.commit()
    finally:
        events.uninstall(factory)
    assert outbox_rows(tables, outbox) == []
    with tables.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Company.__table__)) == 0


def test_savepoint_rollback_leaves_only_the_net_changes(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    with maker() as session:
        session.add(Company(id=1, name="Kept"))
        with session.begin_nested():
            session.add(Company(id=2, name="Released"))
        savepoint = session.begin_nested()
        session.add(Company(id=3, name="Rolled back"))
        session.get_one(Company, 1).name = "Renamed in vain"
        session.flush()
        savepoint.rollback()
        session.add(Company(id=4, name="Added"))
        session.flush()
        session.delete(session.get_one(Company, 4))  # insert + delete: nothing
        session.commit()
    (stored,) = outbox_rows(tables, outbox)
    assert {(c.op, c.pk, c.new["name"] if c.new else None) for c in stored.changes} == {
        (Op.INSERT, (1,), "Kept"),
        (Op.INSERT, (2,), "Released"),
    }


def _late_write(session: sa_orm.Session, late: str) -> None:
    """What a before_commit listener of the application's writes, as ``late`` says."""
    if late in ("add", "first"):
        session.add(Company(id=2, name="late"))
    elif late == "change":
        session.get_one(Company, 1).name = "renamed"
    elif late == "statement":
        session.execute(sa.update(Company).where(Company.id == 1).values(name="stated"))
    elif late == "undo":
        session.delete(session.get_one(Company, 1))


@pytest.mark.parametrize("late", ["add", "first", "change", "statement", "undo"])
def test_what_a_later_before_commit_listener_writes_is_in_the_outbox(
    maker: sa_orm.sessionmaker[sa_orm.Session],
    tables: sa.Engine,
    outbox: OutboxSink,
    memory: dbevents.MemorySink,
    events: dbevents.Events,
    late: str,
) -> None:
    """An application's before_commit listener registered after install runs after dbevents'
    own, and SQLAlchemy flushes what it leaves after both: the outbox row must still be the
    change set that commits, with before_commit callbacks for the rows it adds."""
    called: list[tuple[Op, tuple[object, ...]]] = []
    events.listens_for(Company, "before_commit")(
        lambda model, op, change: called.append((op, change.pk))
    )

    def listener(session: sa_orm.Session) -> None:
        _late_write(session, late)

    sa.event.listen(maker.class_, "before_commit", listener)
    try:
        with maker() as session:
            if late != "first":  # (first: the listener's rows are the transaction's only ones)
                session.add(Company(id=1, name="Acme"))
            session.commit()
    finally:
        sa.event.remove(maker.class_, "before_commit", listener)
    stored = outbox_rows(tables, outbox)
    assert stored == memory.changesets  # the same change set, however it was written
    if late == "undo":
        assert stored == [] and called == [(Op.INSERT, (1,))]
        return
    [changeset] = stored
    new = {change.pk: change.new or {} for change in changeset.changes}
    if late in ("add", "first"):
        assert new[(2,)]["name"] == "late"
        assert (Op.INSERT, (2,)) in called  # its before_commit callback ran too
    else:
        assert new[(1,)]["name"] == {"change": "renamed", "statement": "stated"}[late]


def test_a_session_bound_per_class_writes_the_outbox_where_its_rows_go(
    tables: sa.Engine, outbox: OutboxSink, memory: dbevents.MemorySink, events: dbevents.Events
) -> None:
    events.add_sink(outbox)
    maker = events.install(sa_orm.sessionmaker(binds={Base: tables}))  # none for the outbox
    try:
        with maker() as session:
            session.add(Company(id=1, name="Acme"))
            session.commit()
    finally:
        events.uninstall(maker)
    assert outbox_rows(tables, outbox) == memory.changesets != []


def test_a_transaction_without_net_change_writes_nothing(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    with maker() as session:
        session.commit()
    with maker() as session:
        session.add(Company(id=1, name="Brief"))
        session.flush()
        session.delete(session.get_one(Company, 1))
        session.commit()
    assert outbox_rows(tables, outbox) == []


def test_the_write_never_trips_the_raw_sql_detector(tables: sa.Engine, outbox: OutboxSink) -> None:
    events = dbevents.Events(sinks=[outbox], raw_sql="raise")
    with installed_on(events, tables) as factory, factory() as session:
        session.add(Company(id=1, name="Acme"))
        session.commit()
    assert len(outbox_rows(tables, outbox)) == 1


def test_a_missing_table_fails_the_commit(tables: sa.Engine) -> None:
    outbox = OutboxSink(table_name="no_such_outbox")
    events = dbevents.Events(sinks=[outbox])
    factory = sa_orm.sessionmaker(tables)
    events.install(factory)
    try:
        with factory() as session:
            session.add(Company(id=1, name="Acme"))
            with pytest.raises(sa.exc.DBAPIError):
                session.commit()
    finally:
        events.uninstall(factory)
    with tables.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Company.__table__)) == 0


def test_metadata_holds_both_tables_and_create_table_is_idempotent(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    outbox = OutboxSink(metadata)
    assert set(metadata.tables) == {"dbevents_outbox", "dbevents_outbox_dead"}
    assert outbox.table is metadata.tables["dbevents_outbox"]
    assert OutboxSink(metadata).table is outbox.table  # a second sink reuses the definition
    metadata.create_all(engine)
    outbox.create_table(engine)
    with engine.begin() as conn:
        outbox.create_table(conn)
    assert {"dbevents_outbox", "dbevents_outbox_dead"} <= set(sa.inspect(engine).get_table_names())


def test_a_declarative_base_and_a_custom_name(engine: sa.Engine) -> None:
    class Local(sa_orm.DeclarativeBase):
        pass

    outbox = OutboxSink(Local, table_name="events_out")
    assert set(Local.metadata.tables) == {"events_out", "events_out_dead"}
    outbox.create_table(engine)
    assert "events_out" in sa.inspect(engine).get_table_names()
    with pytest.raises(dbevents.ConfigurationError, match="MetaData"):
        OutboxSink("not metadata")  # type: ignore[arg-type]
    with pytest.raises(dbevents.ConfigurationError, match="table_name"):
        OutboxSink(table_name="")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_outbox_in_the_schema_of_its_metadata(
    tables: sa.Engine, events: dbevents.Events, app_schema: str
) -> None:
    metadata = sa.MetaData(schema=app_schema)
    outbox = OutboxSink(metadata)
    assert set(metadata.tables) == {
        f"{app_schema}.dbevents_outbox",
        f"{app_schema}.dbevents_outbox_dead",
    }
    again = OutboxSink(metadata)  # a second sink reuses the definitions
    assert (again.table, again.dead) == (outbox.table, outbox.dead)
    assert OutboxSink(schema=app_schema).table.fullname == f"{app_schema}.dbevents_outbox"
    outbox.create_table(tables)
    events.add_sink(outbox)
    with installed_on(events, tables) as factory, factory() as session:
        session.add(Company(id=1, name="Acme"))
        session.commit()
    (stored,) = outbox_rows(tables, outbox)
    assert stored.changes[0].pk == (1,)
    assert "dbevents_outbox" not in sa.inspect(tables).get_table_names()  # not on search_path


def test_async_sessions_write_the_outbox(async_engine: AsyncEngine, db_url: str) -> None:
    outbox = OutboxSink()
    sync = sa.create_engine(db_url)
    try:
        Base.metadata.create_all(sync)
        outbox.create_table(sync)
        events = dbevents.Events(sinks=[outbox])

        class Own(sa_orm.Session):
            pass

        factory = async_sessionmaker(async_engine, sync_session_class=Own)
        events.install(factory)

        async def work() -> None:
            async with factory() as session:
                session.add(Company(id=7, name="Async"))
                await session.commit()

        asyncio.run(work())
        (stored,) = outbox_rows(sync, outbox)
        assert stored.changes[0].pk == (7,)
    finally:
        sync.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_commit_notifies_listeners(
    maker: sa_orm.sessionmaker[sa_orm.Session], postgres: PostgresServer, outbox: OutboxSink
) -> None:
    import psycopg

    with psycopg.connect(postgres.url(driver=""), autocommit=True) as listener:
        listener.execute(f"LISTEN {outbox.table.name}")
        with maker() as session:
            session.add(Company(id=1, name="Acme"))
            session.flush()
            # nothing is sent before COMMIT
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
            session.commit()
        deadline = time.monotonic() + 10
        received: list[psycopg.Notify] = []
        while not received and time.monotonic() < deadline:
            received = list(listener.notifies(timeout=1, stop_after=1))
        assert [n.channel for n in received] == [outbox.table.name]
