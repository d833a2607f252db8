"""An async service as a new user writes it from the docs: a session per request, concurrent
requests, statements, savepoints, the outbox and its relay, and the mistakes made on the way."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import dbevents
from dbevents import ChangeSet
from tests.fixtures import installed_async
from tests.models import Base, Company


async def create_tables(engine: AsyncEngine, outbox: dbevents.OutboxSink | None = None) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        if outbox is not None:
            await conn.run_sync(outbox.create_table)


def names_of(changeset: ChangeSet) -> list[str]:
    return [str((c.new or {}).get("name")) for c in changeset.changes]


def count_companies(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(Company)) or 0


# -- the service -------------------------------------------------------------------------------


def test_a_service_gets_each_committed_request_once_in_its_sinks_and_through_the_relay(
    async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    """Requests in parallel, each with its own session that commits or rolls back: every
    committed one reaches the async listener, the MemorySink and (through the outbox and
    the relay) a second sink exactly once; the rolled-back ones reach none."""
    outbox = dbevents.OutboxSink()
    memory = dbevents.MemorySink()
    events = dbevents.Events(sinks=[outbox, memory])
    heard: Counter[str] = Counter()

    @events.on_commit
    async def broadcast(changeset: ChangeSet) -> None:
        await asyncio.sleep(0.001)  # e.g. a broker
        heard[changeset.id] += 1

    maker = installed_async(events, async_engine)
    maker.configure(expire_on_commit=False)

    async def session_per_request() -> AsyncGenerator[AsyncSession, None]:
        async with maker() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    async def handle(work: Callable[[AsyncSession], Awaitable[None]]) -> None:
        dependency = session_per_request()
        session = await anext(dependency)
        try:
            await work(session)
        except Exception as error:
            with pytest.raises(type(error)):
                await dependency.athrow(error)
            return
        with pytest.raises(StopAsyncIteration):
            await anext(dependency)

    async def create(session: AsyncSession, name: str) -> None:
        session.add(Company(name=name))
        await session.execute(sa.insert(Company), [{"name": f"{name} bulk"}])
        async with session.begin_nested():
            await session.execute(sa.update(Company).where(Company.name == name).values(rating=5))
        with pytest.raises(ValueError):
            async with session.begin_nested():
                session.add(Company(name=f"{name} scratch"))
                await session.flush()
                raise ValueError("dropped with its savepoint")

    async def fail(session: AsyncSession) -> None:
        session.add(Company(name="never"))
        await session.flush()
        raise LookupError("the request failed")

    async def in_sync_code(session: AsyncSession) -> None:
        def write(sync_session: sa_orm.Session) -> None:
            sync_session.add(Company(name="sync"))

        await session.run_sync(write)

    async def main() -> None:
        await create_tables(async_engine, outbox)
        requests = [lambda s, i=i: create(s, f"c{i}") for i in range(4)]
        await asyncio.gather(*(handle(r) for r in [*requests, fail, in_sync_code]))

    asyncio.run(main())
    committed = memory.changesets
    assert len(committed) == 5
    assert sorted(heard) == sorted(cs.id for cs in committed)
    assert set(heard.values()) == {1}
    assert sorted(name for cs in committed for name in names_of(cs)) == sorted(
        ["sync", *(n for i in range(4) for n in (f"c{i}", f"c{i} bulk"))]
    )
    relayed = dbevents.MemorySink()
    assert dbevents.relay(engine, [relayed], once=True) == 5
    assert sorted(cs.id for cs in relayed.changesets) == sorted(heard)
    assert relayed.rows("companies") == memory.rows("companies")
    assert count_companies(engine) == 9
    assert dbevents.relay(engine, [relayed], once=True) == 0  # nothing delivered twice


# -- installing --------------------------------------------------------------------------------


def test_installing_on_one_async_session_listens_on_that_session_alone(
    async_engine: AsyncEngine,
) -> None:
    events = dbevents.Events()
    received: list[list[str]] = []
    events.on_commit(lambda changeset: received.append(names_of(changeset)))

    class Shared(sa_orm.Session):
        pass

    async def main() -> None:
        await create_tables(async_engine)
        async with (
            AsyncSession(async_engine) as plain,
            AsyncSession(async_engine, sync_session_class=Shared) as own_class,
        ):
            assert events.install(plain) is plain
            events.install(own_class)
            for session, name, rating in [(plain, "plain", 1), (own_class, "own class", 2)]:
                session.add(Company(name=name))
                await session.execute(sa.update(Company).values(rating=rating))
                await session.commit()
        async with (
            AsyncSession(async_engine) as other,
            AsyncSession(async_engine, sync_session_class=Shared) as same_class,
        ):
            for session in (other, same_class):
                session.add(Company(name="not listened to"))
                await session.commit()

    asyncio.run(main())
    assert received == [["plain"], ["own class", "None"]]  # (an update: no name in new)


def test_an_async_sessionmaker_of_an_async_session_class_naming_its_sync_class(
    async_engine: AsyncEngine,
) -> None:
    """SQLAlchemy lets an AsyncSession subclass name its sync_session_class as a class
    attribute: a maker of that class is installed on as one given sync_session_class."""
    events = dbevents.Events()
    received: list[list[str]] = []
    events.on_commit(lambda changeset: received.append(names_of(changeset)))

    class Sync(sa_orm.Session):
        pass

    class AppSession(AsyncSession):
        sync_session_class = Sync

    maker = events.install(async_sessionmaker(async_engine, class_=AppSession))

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="app"))
            await session.commit()

    asyncio.run(main())
    assert received == [["app"]]


def test_a_plain_async_sessionmaker_is_still_refused() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(dbevents.ConfigurationError, match="sync_session_class=MySession"):
        dbevents.Events().install(async_sessionmaker(engine))
    asyncio.run(engine.dispose())


def test_installing_on_an_engine_says_to_install_on_the_session_factory(
    async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    for wrong in (async_engine, engine):
        with pytest.raises(dbevents.ConfigurationError, match="listens on sessions") as info:
            dbevents.Events().install(wrong)
        assert type(wrong).__name__ in str(info.value)
        assert "async_sessionmaker" in str(info.value)


# -- what runs synchronously -------------------------------------------------------------------


class AsyncBroker:
    """A sink whose publish is a coroutine, as a user of AsyncSession may write one."""

    def __init__(self) -> None:
        self.published: list[ChangeSet] = []

    async def publish(self, changeset: ChangeSet) -> None:
        await asyncio.sleep(0)
        self.published.append(changeset)


def test_a_sink_with_an_async_publish_is_awaited_by_async_sessions(
    async_engine: AsyncEngine,
) -> None:
    broker = AsyncBroker()
    maker = installed_async(dbevents.Events(sinks=[broker]), async_engine)

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="awaited"))
            await session.commit()

    asyncio.run(main())
    assert [names_of(cs) for cs in broker.published] == [["awaited"]]


def test_the_relay_refuses_a_sink_with_an_async_publish_and_keeps_the_rows(
    async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    """The relay calls publish synchronously: a coroutine it never awaited would have been
    taken as delivered, and its outbox row deleted."""
    outbox = dbevents.OutboxSink()
    maker = installed_async(dbevents.Events(sinks=[outbox]), async_engine)

    async def main() -> None:
        await create_tables(async_engine, outbox)
        async with maker() as session:
            session.add(Company(name="kept"))
            await session.commit()

    asyncio.run(main())
    broker = AsyncBroker()
    with pytest.raises(dbevents.ConfigurationError, match="async publish.*plain def"):
        dbevents.relay(engine, [broker], once=True)

    class AsyncBatches:
        def publish(self, changeset: ChangeSet) -> None: ...

        async def publish_many(self, changesets: list[ChangeSet]) -> None: ...

    with pytest.raises(dbevents.ConfigurationError, match="async publish_many"):
        dbevents.relay(engine, [AsyncBatches()], once=True)
    relayed = dbevents.MemorySink()
    assert dbevents.relay(engine, [relayed], once=True) == 1
    assert [names_of(cs) for cs in relayed.changesets] == [["kept"]]


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda bind, path: dbevents.dump(bind, Base, path), "dbevents.dump"),
        (lambda bind, path: dbevents.load(bind, Base, path), "dbevents.load"),
        (lambda bind, path: dbevents.verify(bind, Base, path), "dbevents.verify"),
        (lambda bind, path: dbevents.OutboxSink().create_table(bind), "create_table"),
    ],
    ids=["dump", "load", "verify", "create_table"],
)
def test_a_synchronous_function_given_an_async_engine_says_to_use_run_sync(
    async_engine: AsyncEngine,
    tmp_path: Path,
    call: Callable[[Any, Path], object],
    shown: str,
) -> None:
    async def connection_too() -> None:
        async with async_engine.connect() as conn:
            with pytest.raises(dbevents.ConfigurationError, match="AsyncConnection"):
                call(conn, tmp_path / "data")

    with pytest.raises(dbevents.ConfigurationError, match=f"{shown}.*run_sync") as info:
        call(async_engine, tmp_path / "data")
    assert "AsyncEngine" in str(info.value)
    asyncio.run(connection_too())
    assert not (tmp_path / "data").exists()


def test_load_given_the_url_of_an_asyncio_driver_says_so(tmp_path: Path) -> None:
    """As dump and verify do: SQLAlchemy would fail it with MissingGreenlet."""
    source = sa.create_engine(f"sqlite:///{tmp_path}/source.db")
    Base.metadata.create_all(source)
    dbevents.dump(source, Base, tmp_path / "data")
    source.dispose()
    with pytest.raises(dbevents.ConfigurationError, match="aiosqlite is an asyncio driver"):
        dbevents.load(f"sqlite+aiosqlite:///{tmp_path}/app.db", Base, tmp_path / "data")


def test_dump_load_verify_and_create_table_work_through_run_sync(
    async_engine: AsyncEngine, tmp_path: Path
) -> None:
    """What the refusal suggests works: an AsyncConnection's run_sync() passes a
    synchronous connection, in its transaction."""
    outbox = dbevents.OutboxSink()
    data = tmp_path / "data"

    async def main() -> tuple[dict[str, int], list[Any]]:
        async with async_engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(outbox.create_table)
            await conn.execute(sa.insert(Company), [{"name": "a"}, {"name": "b"}])
            await conn.run_sync(lambda sync_conn: dbevents.dump(sync_conn, Base, data))
            await conn.execute(sa.delete(Company))
            loaded = await conn.run_sync(lambda sync_conn: dbevents.load(sync_conn, Base, data))
            differences = await conn.run_sync(
                lambda sync_conn: dbevents.verify(sync_conn, Base, data)
            )
            outbox_rows = await conn.scalar(sa.select(sa.func.count()).select_from(outbox.table))
            assert outbox_rows == 0
        return loaded, differences

    loaded, differences = asyncio.run(main())
    assert loaded["companies"] == 2
    assert differences == []
