"""AsyncSession (aiosqlite, asyncpg): callbacks, statements and async listeners."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import dbevents
from dbevents import ChangeSet
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
