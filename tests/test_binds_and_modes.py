"""Engines, binds and transaction modes of real applications.

A session bound per class to two databases, with savepoints across both; a
``get_bind()`` that routes (horizontal sharding); two-phase commit; AUTOCOMMIT,
read-only and SERIALIZABLE transactions; connections invalidated or failing at
COMMIT; pools without connections kept; tables in PostgreSQL schemas.  Every
change set delivered must be the net difference read back with plain SQL, and
nothing may be delivered for work that did not commit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.pool import NullPool

import dbevents
import dbevents.sqlite
from dbevents.exceptions import DbEventsWarning
from tests.fixtures import Snapshot, all_delivered, snapshot, table_diff
from tests.servers import PostgresServer


class MBase(sa_orm.DeclarativeBase):
    pass


class Left(MBase):
    __tablename__ = "lefts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))


class Right(MBase):
    __tablename__ = "rights"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))


class Kid(MBase):
    """A row whose key to ``rights`` PostgreSQL checks at COMMIT."""

    __tablename__ = "kids"
    id: Mapped[int] = mapped_column(primary_key=True)
    right_id: Mapped[int] = mapped_column(
        sa.ForeignKey("rights.id", deferrable=True, initially="DEFERRED")
    )


class Received:
    """A fresh ``Events`` and the change sets its ``on_commit`` receives."""

    def __init__(self, *sinks: dbevents.Sink) -> None:
        self.events = dbevents.Events(sinks=list(sinks))
        self.changesets: list[dbevents.ChangeSet] = []
        self.events.on_commit(self.changesets.append)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    schema = f"t_{uuid4().hex}"
    postgres.execute(f"CREATE SCHEMA {schema}")
    yield postgres.schema_url(schema)
    postgres.drop_schema(schema)


@pytest.fixture
def pg(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    MBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{tmp_path / 'lite.db'}"))
    MBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


def both(lite: sa.Engine, pg: sa.Engine) -> Snapshot:
    return {**snapshot(lite, ("lefts",)), **snapshot(pg, ("rights",))}


# -- two databases in one session -------------------------------------------------------


def test_a_session_bound_per_class_delivers_the_net_difference_of_both_databases(
    lite: sa.Engine, pg: sa.Engine
) -> None:
    got = Received()
    maker = got.events.install(sa_orm.sessionmaker(binds={Left: lite, Right: pg}))
    before = both(lite, pg)
    with maker() as session:
        session.add_all([Left(id=1, name="a"), Right(id=1, name="a")])
        session.flush()
        savepoint = session.begin_nested()  # a SAVEPOINT on each connection
        session.add_all([Left(id=2, name="b"), Right(id=2, name="b")])
        session.flush()
        session.execute(sa.update(Left).where(Left.id == 1).values(name="x"))
        session.execute(sa.update(Right).where(Right.id == 1).values(name="x"))
        savepoint.rollback()
        with session.begin_nested():
            session.execute(sa.insert(Right).values(id=3, name="c"))
            session.execute(sa.insert(Left).values(id=3, name="c"))
        session.commit()
    assert all_delivered(got.changesets) == table_diff(before, both(lite, pg))
    assert len(got.changesets) == 1
    with maker() as session:
        session.add_all([Left(id=9, name="a"), Right(id=9, name="a")])
        session.flush()
        session.rollback()
    assert len(got.changesets) == 1


def test_an_outbox_on_one_of_two_databases_holds_each_committed_transaction(
    lite: sa.Engine, pg: sa.Engine
) -> None:
    outbox = dbevents.OutboxSink()
    outbox.create_table(pg)
    events = dbevents.Events(sinks=[outbox])
    maker = events.install(sa_orm.sessionmaker(binds={Left: lite, Right: pg, outbox.table: pg}))
    with maker() as session:
        session.add_all([Left(id=1, name="a"), Right(id=1, name="a")])
        session.commit()
    with maker() as session:
        session.add(Left(id=2, name="b"))  # the SQLite database alone
        session.commit()
    with maker() as session:
        session.add(Left(id=3, name="c"))
        session.flush()
        session.rollback()
    memory = dbevents.MemorySink()
    assert dbevents.relay(pg, [memory], once=True) == 2
    assert set(memory.rows("lefts")) == {(1,), (2,)}
    assert set(memory.rows("rights")) == {(1,)}


class Sharded(sa_orm.Session):
    """Routes by the ``shard`` execution option, else by class (horizontal sharding)."""

    shards: dict[str, sa.Engine] = {}

    def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Any:
        shard = (kw.get("execution_options") or {}).get("shard")
        if shard is None:
            shard = "lite" if mapper is not None and mapper.class_ is Left else "pg"
        return self.shards[shard]


def test_a_session_that_routes_in_get_bind_delivers_what_each_database_committed(
    lite: sa.Engine, pg: sa.Engine
) -> None:
    got = Received()
    routed = type("Routed", (Sharded,), {"shards": {"lite": lite, "pg": pg}})
    maker: sa_orm.sessionmaker[Sharded] = got.events.install(sa_orm.sessionmaker(class_=routed))
    before = both(lite, pg)
    with maker() as session:
        session.add_all([Left(id=1, name="a"), Right(id=1, name="a")])
        session.flush()
        on_pg = {"shard": "pg"}
        session.execute(
            sa.update(Right).where(Right.id == 1).values(name="q"), execution_options=on_pg
        )
        session.execute(sa.insert(Right).values(id=5, name="q"), execution_options=on_pg)
        session.commit()
    assert all_delivered(got.changesets) == table_diff(before, both(lite, pg))


def test_a_failed_commit_of_a_second_database_delivers_nothing_though_the_first_committed(
    lite: sa.Engine, pg: sa.Engine
) -> None:
    # the documented limit: without two-phase commit SQLAlchemy COMMITs the databases one
    # after another, and one may fail after another has committed
    got = Received()
    maker = got.events.install(
        sa_orm.sessionmaker(binds={Left: lite, Kid: pg, Right: pg}, twophase=False)
    )
    with maker() as session:
        session.add_all([Left(id=1, name="a"), Kid(id=1, right_id=99)])
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
    assert got.changesets == []
    assert set(snapshot(lite, ("lefts",))["lefts"]) <= {(1,)}  # committed, or not, first


@pytest.fixture(scope="module")
def two_phase_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server that accepts PREPARE TRANSACTION."""
    server = PostgresServer(settings={"max_prepared_transactions": "10"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_two_phase_session_with_an_outbox_commits_and_delivers(
    two_phase_server: PostgresServer,
) -> None:
    engines = []
    for _ in range(2):
        schema = f"t_{uuid4().hex}"
        two_phase_server.execute(f"CREATE SCHEMA {schema}")
        engines.append(sa.create_engine(two_phase_server.schema_url(schema)))
        MBase.metadata.create_all(engines[-1])
    left_db, right_db = engines
    outbox = dbevents.OutboxSink()
    outbox.create_table(right_db)
    got = Received(outbox)
    binds = {Left: left_db, Right: right_db, outbox.table: right_db}
    maker = got.events.install(sa_orm.sessionmaker(binds=binds, twophase=True))
    before = {**snapshot(left_db, ("lefts",)), **snapshot(right_db, ("rights",))}
    try:
        with maker() as session:
            session.add_all([Left(id=1, name="a"), Right(id=1, name="a")])
            session.flush()
            with session.begin_nested():
                session.execute(sa.update(Left).values(name="z"))
            session.commit()  # PostgreSQL refused to PREPARE after the outbox's NOTIFY
        after = {**snapshot(left_db, ("lefts",)), **snapshot(right_db, ("rights",))}
        assert all_delivered(got.changesets) == table_diff(before, after)
        memory = dbevents.MemorySink()
        assert dbevents.relay(right_db, [memory], once=True) == 1
        assert memory.rows("lefts") == {(1,): {"id": 1, "name": "z"}}
    finally:
        for engine in engines:
            engine.dispose()


# -- transaction modes ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["engine", "connection"])
def test_a_rollback_on_an_autocommit_connection_warns_of_the_rows_it_leaves_written(
    pg_url: str, where: str
) -> None:
    engine = sa.create_engine(
        pg_url, **({"isolation_level": "AUTOCOMMIT"} if where == "engine" else {})
    )
    MBase.metadata.create_all(engine)
    got = Received()
    maker = got.events.install(sa_orm.sessionmaker(engine))
    try:
        with maker() as session:
            if where == "connection":
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            session.add(Right(id=1, name="a"))
            session.flush()
            with pytest.warns(DbEventsWarning, match="AUTOCOMMIT.*no change set is delivered"):
                session.rollback()
        assert set(snapshot(engine, ("rights",))["rights"]) == {(1,)}  # durable all the same
        assert got.changesets == []  # no commit is claimed
        with maker() as session:
            if where == "connection":
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            session.add(Right(id=2, name="b"))
            session.commit()
        assert [c.pk for cs in got.changesets for c in cs.changes] == [(2,)]
    finally:
        engine.dispose()


def test_autocommit_on_a_configured_sqlite_engine_stays_transactional(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    engine = dbevents.sqlite.configure(sa.create_engine(url, isolation_level="AUTOCOMMIT"))
    MBase.metadata.create_all(engine)
    got = Received()
    maker = got.events.install(sa_orm.sessionmaker(engine))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DbEventsWarning)
            with maker() as session:
                session.add(Right(id=1, name="a"))
                session.flush()
                session.rollback()
        assert snapshot(engine, ("rights",))["rights"] == {}
        assert got.changesets == []
    finally:
        engine.dispose()


def test_a_read_only_transaction_that_fails_delivers_nothing(pg: sa.Engine) -> None:
    got = Received()
    maker = got.events.install(sa_orm.sessionmaker(pg))
    with maker() as session:
        session.connection(execution_options={"postgresql_readonly": True})
        session.add(Right(id=1, name="a"))
        with pytest.raises(sa.exc.DBAPIError):
            session.commit()
        session.rollback()
        session.add(Right(id=2, name="b"))
        session.commit()
    assert [c.pk for cs in got.changesets for c in cs.changes] == [(2,)]


def test_a_serializable_retry_delivers_the_attempt_that_committed_once(pg: sa.Engine) -> None:
    with pg.begin() as conn:
        conn.execute(sa.insert(Right).values(id=1, name="a"))
    got = Received()
    maker = got.events.install(
        sa_orm.sessionmaker(pg.execution_options(isolation_level="SERIALIZABLE"))
    )
    before = snapshot(pg, ("rights",))
    for attempt in (1, 2):
        try:
            with maker() as session:
                session.execute(sa.insert(Right).values(id=100 + attempt, name="n"))
                session.add(Right(id=200 + attempt, name="m"))
                session.flush()
                if attempt == 1:  # another transaction changes the row after our snapshot
                    with pg.begin() as other:
                        other.execute(sa.update(Right).where(Right.id == 1).values(name="o"))
                session.execute(sa.update(Right).where(Right.id == 1).values(name="s"))
                session.commit()
            break
        except sa.exc.OperationalError as error:
            assert "could not serialize" in str(error.orig)
    assert attempt == 2
    assert len(got.changesets) == 1
    after = snapshot(pg, ("rights",))
    diff = table_diff(before, after)
    diff[("rights", (1,))] = ("update", {"name": "o"}, {"name": "s"})  # the other's commit
    assert all_delivered(got.changesets) == diff


# -- connections lost, failing, or never pooled -----------------------------------------


def test_an_invalidated_connection_delivers_nothing_and_the_session_goes_on(
    pg: sa.Engine,
) -> None:
    got = Received()
    maker = got.events.install(sa_orm.sessionmaker(pg))
    with maker() as session:
        session.add(Right(id=1, name="a"))
        session.flush()
        session.connection().invalidate()
        with pytest.raises(sa.exc.PendingRollbackError):
            session.commit()
        session.rollback()
        session.add(Right(id=2, name="b"))
        session.commit()
    assert [c.pk for cs in got.changesets for c in cs.changes] == [(2,)]
    assert set(snapshot(pg, ("rights",))["rights"]) == {(2,)}


def test_a_deferred_constraint_failing_at_commit_delivers_nothing(pg: sa.Engine) -> None:
    outbox = dbevents.OutboxSink()
    outbox.create_table(pg)
    got = Received(outbox)
    maker = got.events.install(sa_orm.sessionmaker(pg))
    with maker() as session:
        session.add(Kid(id=1, right_id=99))
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
        assert got.changesets == []
        session.rollback()
        session.add_all([Right(id=99, name="x"), Kid(id=2, right_id=99)])
        session.commit()
    [changeset] = got.changesets
    assert {(c.table, c.pk) for c in changeset.changes} == {("rights", (99,)), ("kids", (2,))}
    memory = dbevents.MemorySink()
    assert dbevents.relay(pg, [memory], once=True) == 1


@pytest.mark.parametrize(
    "pooling", [{"poolclass": NullPool}, {"pool_pre_ping": True}], ids=["null", "pre_ping"]
)
def test_every_commit_is_delivered_whatever_the_pool(pg_url: str, pooling: dict[str, Any]) -> None:
    engine = sa.create_engine(pg_url, **pooling)
    MBase.metadata.create_all(engine)
    got = Received()
    maker = got.events.install(sa_orm.sessionmaker(engine))
    try:
        for i in range(3):
            with maker() as session:
                session.add(Right(id=i, name="a"))
                session.execute(sa.update(Right).values(name=f"n{i}"))
                session.commit()
        engine.dispose()  # mid-way: the next session connects anew
        with maker() as session:
            session.execute(sa.delete(Right).where(Right.id == 0))
            session.commit()
    finally:
        engine.dispose()
    assert [len(cs.changes) for cs in got.changesets] == [1, 2, 3, 1]


# -- PostgreSQL schemas -----------------------------------------------------------------


class SBase(sa_orm.DeclarativeBase):
    pass


class Thing(SBase):
    __tablename__ = "things"
    __table_args__ = {"schema": "tenant"}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))


def test_tenants_by_schema_translate_map_with_the_outbox_in_a_schema_of_its_own(
    postgres: PostgresServer,
) -> None:
    tenants = [f"ten_{uuid4().hex}" for _ in range(2)]
    box = f"box_{uuid4().hex}"
    postgres.execute(*(f"CREATE SCHEMA {name}" for name in [*tenants, box]))
    engine = sa.create_engine(postgres.url())
    outbox = dbevents.OutboxSink(schema=box)
    outbox.create_table(engine)
    got = Received(outbox)
    maker = got.events.install(sa_orm.sessionmaker(engine))
    try:
        for n, tenant in enumerate(tenants):
            in_tenant = {"schema_translate_map": {"tenant": tenant}}
            with engine.begin() as conn:
                SBase.metadata.create_all(conn.execution_options(**in_tenant))
            with maker() as session:
                session.connection(execution_options=in_tenant)
                session.add(Thing(id=1, name="a"))
                session.flush()
                session.execute(sa.update(Thing).values(name=f"t{n}"))
                session.execute(sa.insert(Thing).values(id=2, name="c"))
                session.commit()
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(f"SELECT id, name FROM {tenant}.things ORDER BY id")
                assert rows.all() == [(1, f"t{n}"), (2, "c")]
            assert {c.pk: c.new for c in got.changesets[-1].changes} == {
                (1,): {"id": 1, "name": f"t{n}"},
                (2,): {"id": 2, "name": "c"},
            }
        memory = dbevents.MemorySink()
        assert dbevents.relay(engine, [memory], once=True, schema=box) == 2
    finally:
        engine.dispose()
        for name in [*tenants, box]:
            postgres.drop_schema(name)
