"""Auto fields on statements: ORM bulk INSERT, ``insert().values()``, WHERE and by-key UPDATE."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import dbevents
from dbevents import fields
from tests.test_fields import PAST, Code, FBase, Note, Octet, Session, Tiny

__all__ = ["Session"]  # the fixture, shared with test_fields

Maker = sa_orm.sessionmaker[sa_orm.Session]


def _rows(engine: sa.Engine, table: str) -> dict[str, dict[str, Any]]:
    t = FBase.metadata.tables[table]
    with engine.connect() as conn:
        return {row["id"]: dict(row) for row in conn.execute(sa.select(t)).mappings()}


def _aware(value: Any) -> dt.datetime:
    """A stored timestamp as the model reads it (SQLite keeps naive UTC)."""
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _seed(session: sa_orm.Session) -> None:
    session.execute(
        sa.insert(Note),
        [
            {"id": f"n{i}", "title": f"t{i}", "created_at": PAST, "updated_at": PAST}
            | {"created_by": "bob", "updated_by": "bob"}
            for i in range(3)
        ],
    )
    session.commit()


def test_bulk_insert_stamps_each_row(engine: sa.Engine, Session: Maker) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        session.execute(
            sa.insert(Note),
            [{"title": "a"}, {"title": "b", "id": "given", "created_at": PAST, "created_by": "x"}],
        )
        session.commit()
    rows = {row["title"]: row for row in _rows(engine, "notes").values()}
    generated = rows["a"]
    assert len(generated["id"]) == 22 and set(generated["id"]) <= set(fields.BASE62)
    assert generated["created_at"] is not None
    assert generated["created_at"] == generated["updated_at"]
    assert (generated["created_by"], generated["updated_by"]) == ("ada", "ada")
    given = rows["b"]
    assert given["id"] == "given"
    assert _aware(given["created_at"]) == PAST
    assert (given["created_by"], given["updated_by"]) == ("x", "ada")


def test_insert_values_stamps_the_row(
    engine: sa.Engine, Session: Maker, changesets: list[dbevents.ChangeSet]
) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        session.execute(sa.insert(Note).values(title="one"))
        session.commit()
    (row,) = _rows(engine, "notes").values()
    assert len(row["id"]) == 22 and row["created_by"] == "ada" and row["created_at"] is not None
    (change,) = changesets[0].changes
    assert change.new is not None and change.new["id"] == row["id"]


def test_an_insert_of_one_parameter_set_stamps_the_row(engine: sa.Engine, Session: Maker) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        session.execute(sa.insert(Note), {"title": "one"})
        session.commit()
    (row,) = _rows(engine, "notes").values()
    assert len(row["id"]) == 22 and row["created_by"] == "ada" and row["created_at"] is not None


def test_update_where_bumps_updated_fields(engine: sa.Engine, Session: Maker) -> None:
    with Session() as session:
        _seed(session)
        with dbevents.acting_as("ada"):
            session.execute(sa.update(Note).where(Note.id != "n2").values(title="new"))
            session.commit()
    rows = _rows(engine, "notes")
    for pk in ("n0", "n1"):
        assert (rows[pk]["title"], rows[pk]["created_by"], rows[pk]["updated_by"]) == (
            "new",
            "bob",
            "ada",
        )
        assert _aware(rows[pk]["created_at"]) == PAST
        assert _aware(rows[pk]["updated_at"]) > PAST
    assert (rows["n2"]["updated_by"], _aware(rows["n2"]["updated_at"])) == ("bob", PAST)


def test_update_where_keeps_explicit_values(engine: sa.Engine, Session: Maker) -> None:
    later = PAST + dt.timedelta(days=1)
    with Session() as session:
        _seed(session)
        with dbevents.acting_as("ada"):
            session.execute(
                sa.update(Note)
                .where(Note.id == "n0")
                .values(title="new", updated_at=later, updated_by="carol")
            )
            session.commit()
    row = _rows(engine, "notes")["n0"]
    assert (_aware(row["updated_at"]), row["updated_by"]) == (later, "carol")


def test_bulk_update_by_key_bumps_each_row(engine: sa.Engine, Session: Maker) -> None:
    with Session() as session:
        _seed(session)
        with dbevents.acting_as("ada"):
            session.execute(
                sa.update(Note),
                [{"id": "n0", "title": "x"}, {"id": "n1", "title": "y", "updated_by": "carol"}],
            )
            session.commit()
    rows = _rows(engine, "notes")
    assert (rows["n0"]["title"], rows["n0"]["updated_by"]) == ("x", "ada")
    assert (rows["n1"]["title"], rows["n1"]["updated_by"]) == ("y", "carol")
    assert _aware(rows["n0"]["updated_at"]) > PAST and _aware(rows["n1"]["updated_at"]) > PAST
    assert (rows["n2"]["updated_by"], _aware(rows["n2"]["updated_at"])) == ("bob", PAST)


def test_statements_stamp_nothing_while_muted(
    events: dbevents.Events, engine: sa.Engine, Session: Maker
) -> None:
    with Session() as session, dbevents.acting_as("ada"), events.muted():
        session.execute(sa.insert(Note), [{"id": "m", "title": "t", "created_by": "bob"}])
        session.execute(sa.update(Note).where(Note.id == "m").values(title="u"))
        session.execute(sa.update(Note), [{"id": "m", "title": "v"}])
        session.commit()
    row = _rows(engine, "notes")["m"]
    assert (row["title"], row["created_by"], row["updated_by"]) == ("v", "bob", None)
    assert (row["created_at"], row["updated_at"]) == (None, None)


def test_short_ids_in_bulk_are_checked_against_the_table_and_the_batch(
    engine: sa.Engine, Session: Maker
) -> None:
    everything = sorted(a + b + c for a in "xy" for b in "xy" for c in "xy")
    with Session() as session:
        session.execute(sa.insert(Octet), [{"id": i} for i in everything[:4]])
        session.commit()
        session.execute(sa.insert(Octet), [{}, *({"id": i} for i in everything[4:7])])
        session.commit()
        assert set(_rows(engine, "octet")) == set(everything)
        with pytest.raises(dbevents.DbEventsError, match="no free id"):
            session.execute(sa.insert(Octet), [{}])


def test_colliding_short_ids_are_retried_in_bulk(Session: Maker) -> None:
    """900 of 1024 possible ids, in statements of 100 rows."""
    with Session() as session:
        for _ in range(9):
            session.execute(sa.insert(Tiny), [{} for _ in range(100)])
        session.commit()
        assert session.scalar(sa.select(sa.func.count(sa.distinct(Tiny.id)))) == 900


def test_async_bulk_insert_stamps_short_ids_and_actor(
    events: dbevents.Events, async_engine: AsyncEngine
) -> None:
    class TaskSession(sa_orm.Session):
        pass

    events.install(TaskSession)
    maker = async_sessionmaker(async_engine, sync_session_class=TaskSession)

    async def main() -> list[tuple[str, str | None]]:
        async with async_engine.begin() as conn:
            await conn.run_sync(FBase.metadata.create_all)
        async with maker() as session:
            with dbevents.acting_as("ada"):
                await session.execute(sa.insert(Tiny), [{} for _ in range(300)])
                await session.execute(sa.insert(Note), [{"title": "async"}])
                await session.commit()
            count = await session.scalar(sa.select(sa.func.count(sa.distinct(Tiny.id))))
            assert count == 300
            rows = await session.execute(sa.select(Note.title, Note.created_by))
            return [(title, author) for title, author in rows]

    try:
        assert asyncio.run(main()) == [("async", "ada")]
    finally:
        events.uninstall(TaskSession)


@pytest.mark.soak
def test_hundred_thousand_short_ids_in_bulk(Session: Maker) -> None:
    with Session() as session:
        for _ in range(10):
            session.execute(sa.insert(Code), [{"label": "x"} for _ in range(10_000)])
            session.commit()
        assert session.scalar(sa.select(sa.func.count(sa.distinct(Code.id)))) == 100_000
