"""AsyncSession (aiosqlite, asyncpg): callbacks, statements and async listeners."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)

import dbevents
from dbevents import ChangeSet
from dbevents._compat import await_in_greenlet
from tests.models import Base, Company


class AsyncBound(sa_orm.Session):
    """The sync session class of the async sessions under test (installed on, per test)."""


def installed(events: dbevents.Events, engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Async sessions of a sync session class of their own, with ``events`` installed on it."""

    class Bound(AsyncBound):
        pass

    maker = async_sessionmaker(engine, sync_session_class=Bound)
    events.install(maker)
    return maker


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


def test_async_session_runs_callbacks_and_awaits_async_listeners(
    async_engine: AsyncEngine,
) -> None:
    events = dbevents.Events()
    calls: list[tuple[str, Any]] = []
    order: list[str] = []

    @events.listens_for(Company, "before_insert")
    def upper(cls: type[Company], fields: dict[str, Any]) -> None:
        fields["name"] = fields["name"].upper()

    @events.listens_for(Company, "after_update")
    def updated(cls: type[Company], rows: dbevents.RowSet[Company], fields: dict[str, Any]) -> None:
        calls.append(("after_update", dict(fields)))

    @events.on_commit
    async def listener(changeset: ChangeSet) -> None:
        await asyncio.sleep(0)
        order.append("listener")
        calls.append(
            ("commit", sorted((c.op.value, (c.new or {}).get("name")) for c in changeset.changes))
        )

    maker = installed(events, async_engine)

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="uow"))
            await session.execute(sa.insert(Company), [{"name": "bulk"}])
            await session.commit()
            order.append("after commit()")
            await session.execute(sa.update(Company).where(Company.name == "BULK").values(rating=7))
            await session.commit()
        async with maker() as session:
            names = set((await session.scalars(sa.select(Company.name))).all())
        assert names == {"UOW", "BULK"}

    asyncio.run(main())
    assert calls == [
        ("commit", [("insert", "BULK"), ("insert", "UOW")]),
        ("after_update", {"rating": 7}),
        ("commit", [("update", None)]),
    ]
    assert order == ["listener", "after commit()", "listener"]  # awaited before commit() returned


def test_async_session_of_other_class_is_untouched(async_engine: AsyncEngine) -> None:
    events = dbevents.Events()
    received: list[ChangeSet] = []
    events.on_commit(received.append)

    installed(events, async_engine)

    async def main() -> None:
        await create_tables(async_engine)
        async with AsyncSession(async_engine) as session:
            session.add(Company(name="x"))
            await session.commit()

    asyncio.run(main())
    assert received == []


def test_a_commit_an_async_callback_makes_is_delivered_after_in_commit_order(
    async_engine: AsyncEngine,
) -> None:
    events = dbevents.Events()
    received: list[list[tuple[str, Any]]] = []
    events.on_commit(
        lambda cs: received.append([(c.op.value, (c.new or {}).get("name")) for c in cs.changes])
    )
    sessions: list[AsyncSession] = []

    @events.listens_for(Company, "after_commit", op=dbevents.Op.INSERT)
    async def rename(cls: type[Company], change: dbevents.Change) -> None:
        session = sessions[0]
        company = await session.get_one(Company, change.pk)
        company.name = company.name.upper()
        await session.commit()

    maker = installed(events, async_engine)

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            sessions.append(session)
            session.add(Company(name="acme"))
            await session.commit()

    asyncio.run(main())
    assert received == [[("insert", "acme")], [("update", "ACME")]]


def test_a_savepoint_on_the_connection_drops_its_rows_on_rollback(
    async_engine: AsyncEngine,
) -> None:
    events = dbevents.Events()
    received: list[ChangeSet] = []
    events.on_commit(received.append)
    maker = installed(events, async_engine)

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="kept"))
            await session.flush()
            connection = await session.connection()
            savepoint = await connection.begin_nested()
            await session.execute(sa.insert(Company).values(name="undone"))
            await session.execute(sa.update(Company).values(name="undone too"))
            await savepoint.rollback()
            await session.commit()

    asyncio.run(main())
    (changeset,) = received
    assert [dict(c.new or {})["name"] for c in changeset.changes] == ["kept"]


def test_a_task_started_while_delivering_gets_its_own_commits_delivered(
    async_engine: AsyncEngine,
) -> None:
    """A task copies the context it was started in, the delivery running there included:
    its commits are its own to deliver, and none is left behind."""
    events = dbevents.Events()
    delivered: list[list[str]] = []
    tasks: list[asyncio.Task[None]] = []
    maker = installed(events, async_engine)

    async def follow_up() -> None:
        await asyncio.sleep(0.05)  # the delivery that started it is over by now
        async with maker() as session:
            session.add(Company(name="from task"))
            await session.commit()

    @events.on_commit
    async def listener(changeset: ChangeSet) -> None:
        names = [(c.new or {}).get("name") for c in changeset.created]
        delivered.append(names)  # type: ignore[arg-type]
        if names == ["first"]:
            tasks.append(asyncio.create_task(follow_up()))  # not awaited here

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="first"))
            await session.commit()
        await asyncio.gather(*tasks)
        async with maker() as session:
            session.add(Company(name="last"))
            await session.commit()

    asyncio.run(main())
    assert delivered == [["first"], ["from task"], ["last"]]


def names_of(changeset: ChangeSet) -> list[str]:
    return [str((c.new or {}).get("name")) for c in changeset.changes]


def test_a_commit_cancelled_after_commit_is_delivered_when_its_task_ends(
    async_engine: AsyncEngine,
) -> None:
    """A cancellation (a request's timeout) that lands after COMMIT, while SQLAlchemy hands
    the connection back and before the transaction ends, leaves a committed change set:
    it is still delivered, once its task is over."""
    events = dbevents.Events()
    received: list[list[str]] = []

    @events.on_commit
    async def listener(changeset: ChangeSet) -> None:
        await asyncio.sleep(0)
        received.append(names_of(changeset))

    maker = installed(events, async_engine)
    handing_back = asyncio.Event()

    def slow_checkin(dbapi_connection: Any, record: Any) -> None:
        if not handing_back.is_set():
            handing_back.set()
            dbapi_connection.close()  # (closed first: cancelled, SQLAlchemy would leave it open)
            await_in_greenlet(asyncio.sleep(5))  # where the cancellation lands

    async def request() -> None:
        async with maker() as session:
            session.add(Company(name="committed"))
            await session.commit()

    async def main() -> None:
        await create_tables(async_engine)
        sa.event.listen(async_engine.sync_engine.pool, "checkin", slow_checkin)
        try:
            task = asyncio.create_task(request())
            await handing_back.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
            for _ in range(10):  # the delivery the task's end starts
                await asyncio.sleep(0.01)
        finally:
            sa.event.remove(async_engine.sync_engine.pool, "checkin", slow_checkin)

    asyncio.run(main())
    assert received == [["committed"]]


def test_a_receiver_cancelled_lets_the_others_have_the_change_set_then_cancels(
    async_engine: AsyncEngine,
) -> None:
    events = dbevents.Events()
    memory = dbevents.MemorySink()
    after: list[list[str]] = []

    @events.on_commit
    async def slow(changeset: ChangeSet) -> None:
        await asyncio.sleep(5)  # the request's timeout ends it

    events.add_sink(memory)
    events.on_commit(lambda changeset: after.append(names_of(changeset)))
    maker = installed(events, async_engine)

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="first"))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await session.commit()
        async with maker() as session:  # nothing of the first is left to deliver here
            session.add(Company(name="second"))
            async with asyncio.timeout(10):
                task = asyncio.create_task(session.commit())
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(main())
    assert after == [["first"], ["second"]]
    assert [names_of(cs) for cs in memory.changesets] == [["first"], ["second"]]


def test_a_listener_committing_through_maker_begin_comes_after_the_change_set(
    async_engine: AsyncEngine,
) -> None:
    """``async with maker.begin()`` commits in a task SQLAlchemy starts for it: that commit
    still comes after the change set being delivered, for every receiver."""
    events = dbevents.Events()
    memory = dbevents.MemorySink()
    maker = installed(events, async_engine)

    @events.on_commit
    async def enrich(changeset: ChangeSet) -> None:
        if names_of(changeset) == ["raw"]:
            async with maker.begin() as session:
                (await session.get_one(Company, changeset.changes[0].pk[0])).name = "enriched"

    events.add_sink(memory)  # after the listener: it gets the insert first, then the update

    async def main() -> None:
        await create_tables(async_engine)
        async with maker() as session:
            session.add(Company(name="raw"))
            await session.commit()

    asyncio.run(main())
    assert [names_of(cs) for cs in memory.changesets] == [["raw"], ["enriched"]]
    [row] = memory.rows("companies").values()
    assert row["name"] == "enriched"


def test_a_task_started_in_a_muted_block_is_muted_only_while_the_block_runs(
    async_engine: AsyncEngine,
) -> None:
    events = dbevents.Events()
    received: list[list[str]] = []
    events.on_commit(lambda changeset: received.append(names_of(changeset)))
    maker = installed(events, async_engine)
    block_over = asyncio.Event()

    async def write(name: str, wait: asyncio.Event | None = None) -> None:
        if wait is not None:
            await wait.wait()
        async with maker() as session:
            session.add(Company(name=name))
            await session.commit()

    async def main() -> None:
        await create_tables(async_engine)
        with events.muted():
            await asyncio.create_task(write("muted"))
            later = asyncio.create_task(write("after the block", block_over))
        assert not events.is_muted
        block_over.set()
        await later

    asyncio.run(main())
    assert received == [["after the block"]]


def test_async_scoped_sessions_can_be_installed_on(async_engine: AsyncEngine) -> None:
    events = dbevents.Events()
    received: list[list[str]] = []
    events.on_commit(lambda changeset: received.append(names_of(changeset)))

    class Scoped(AsyncBound):
        pass

    scoped = async_scoped_session(
        async_sessionmaker(async_engine, sync_session_class=Scoped),
        scopefunc=asyncio.current_task,
    )
    events.install(scoped)

    async def main() -> None:
        await create_tables(async_engine)
        scoped.add(Company(name="scoped"))
        await scoped.commit()
        await scoped.remove()

    asyncio.run(main())
    assert received == [["scoped"]]
