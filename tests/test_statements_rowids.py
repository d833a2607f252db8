"""A bulk INSERT on SQLite: its rows read back as those above the largest rowid.

Where that holds (a plain INSERT that sets no rowid, into an ordinary rowid
table without triggers, inside a transaction), the INSERT runs as the caller
wrote it, without RETURNING; anywhere else it returns its rows as before.  Each
case checks which way was taken, and that the change set is what the table
shows.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from tests.fixtures import committed_diff, delivered, installed_async, recorded_sql, returned_or


class RBase(sa_orm.DeclarativeBase):
    pass


class Plain(RBase):
    __tablename__ = "plain"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    score: Mapped[int] = mapped_column(server_default="5")


class Counted(RBase):
    """AUTOINCREMENT: new rowids come after the largest ever used, not the largest there."""

    __tablename__ = "counted"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Pair(RBase):
    """A composite key: never the rowid, which SQLite then assigns itself."""

    __tablename__ = "pairs"

    a: Mapped[int] = mapped_column(primary_key=True)
    b: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Listed(RBase):
    __tablename__ = "listed"
    __table_args__ = {"sqlite_with_rowid": False}

    a: Mapped[int] = mapped_column(primary_key=True)
    b: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


_serial = itertools.count(1000)


class Defaulted(RBase):
    __tablename__ = "defaulted"

    id: Mapped[int] = mapped_column(primary_key=True, default=lambda: next(_serial))
    name: Mapped[str]


class RowidNamed:
    """Columns named as two of the rowid's three names."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    rowid: Mapped[int | None] = mapped_column("rowid")
    rowid_: Mapped[int | None] = mapped_column("_rowid_")


class Shadowed(RowidNamed, RBase):
    """The third name still reads the rowid."""

    __tablename__ = "shadowed"


class Hidden(RowidNamed, RBase):
    """Named as all three: the rowid can't be read."""

    __tablename__ = "hidden"

    oid: Mapped[int | None]


class Audited(RBase):
    """A table with a trigger, created in :func:`Session`."""

    __tablename__ = "audited"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


TABLES = tuple(RBase.metadata.tables)
plain: sa.Table = Plain.__table__  # type: ignore[assignment]
AUDIT = (
    "CREATE TABLE audit_log (name TEXT)",
    "CREATE TRIGGER audited_log AFTER INSERT ON audited "
    "BEGIN INSERT INTO audit_log (name) VALUES (new.name); END",
)


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[sa.Engine]:
    eng = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{tmp_path / 'rowids.db'}"))
    RBase.metadata.create_all(eng)
    with eng.begin() as conn:
        for ddl in AUDIT:
            conn.exec_driver_sql(ddl)
    yield eng
    eng.dispose()


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    maker = events.install(sa_orm.sessionmaker(engine))
    yield maker
    events.uninstall(maker)


def strategy(sent: list[str]) -> str:
    """How the INSERT's rows were known: ``"rowid"`` (read back after it) or ``"returning"``."""
    return returned_or(sent, "rowid", " > ? ORDER BY ")


Write = Callable[[sa_orm.Session], object]


def _bulk(model: type[Any], rows: list[dict[str, Any]]) -> Write:
    return lambda session: session.execute(sa.insert(model), rows)


def _named(n: int, **more: Any) -> list[dict[str, Any]]:
    return [{"name": f"n{i}", **more} for i in range(n)]


CASES: dict[str, tuple[Write | None, Write, str]] = {
    # name: (written and committed first, the bulk INSERT, expected strategy)
    "plain": (None, _bulk(Plain, _named(5)), "rowid"),
    "after rows": (_bulk(Plain, _named(3)), _bulk(Plain, _named(4)), "rowid"),
    "after the last row is deleted": (
        lambda s: (
            s.execute(sa.insert(Plain), _named(3)),
            s.execute(sa.delete(Plain).where(Plain.id == 3)),
        ),
        _bulk(Plain, _named(3)),
        "rowid",
    ),
    "autoincrement, largest deleted": (
        lambda s: (
            s.execute(sa.insert(Counted), _named(3)),
            s.execute(sa.delete(Counted).where(Counted.id >= 2)),
        ),
        _bulk(Counted, _named(3)),
        "rowid",
    ),
    "negative rowids only": (
        _bulk(Plain, [{"id": -10, "name": "a"}, {"id": -7, "name": "b"}]),
        _bulk(Plain, _named(3)),
        "rowid",
    ),
    "composite key": (
        None,
        _bulk(Pair, [{"a": i, "b": 1, "name": "x"} for i in range(4)]),
        "rowid",
    ),
    "legacy bulk_insert_mappings": (
        None,
        lambda s: s.bulk_insert_mappings(Plain, _named(4)),
        "rowid",
    ),
    "two of three rowid names taken": (None, _bulk(Shadowed, _named(3, rowid=7)), "rowid"),
    "every key sent": (
        None,
        _bulk(Plain, [{"id": 10 + i, "name": "x"} for i in range(3)]),
        "returning",
    ),
    "a key below the largest sent": (
        lambda s: (
            s.execute(sa.insert(Plain), _named(10)),
            s.execute(sa.delete(Plain).where(Plain.id == 5)),
        ),
        lambda s: s.connection().execute(
            sa.insert(plain), [{"id": 5, "name": "x"}, {"id": None, "name": "y"}]
        ),
        "returning",
    ),
    "a default for the key": (None, _bulk(Defaulted, _named(3)), "returning"),
    "WITHOUT ROWID": (
        None,
        _bulk(Listed, [{"a": i, "b": 2, "name": "x"} for i in range(3)]),
        "returning",
    ),
    "every rowid name taken": (None, _bulk(Hidden, _named(3)), "returning"),
    "a trigger on the table": (
        None,
        _bulk(Audited, _named(2)),
        "returning",
    ),
    "near the last rowid": (
        _bulk(Plain, [{"id": 2**62, "name": "top"}]),
        _bulk(Plain, _named(3)),
        "returning",
    ),
    "OR IGNORE": (
        _bulk(Plain, [{"id": 2, "name": "there"}]),
        lambda s: s.execute(sa.insert(Plain).prefix_with("OR IGNORE"), _named(3)),
        "returning",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bulk_insert_delivers_the_rows_the_table_gained(
    case: str,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    statements: list[str],
    changesets: list[dbevents.ChangeSet],
) -> None:
    first, write, expected = CASES[case]
    if first is not None:
        with Session() as session:
            first(session)
            session.commit()
    changesets.clear()
    statements.clear()
    gained = committed_diff(Session, engine, TABLES, write)
    assert strategy(statements) == expected
    assert [delivered(cs) for cs in changesets] == [gained]
    assert all(op == "insert" for op, _, _ in gained.values())


def test_in_autocommit_the_insert_returns_its_rows(
    events: dbevents.Events, tmp_path: Any, changesets: list[dbevents.ChangeSet]
) -> None:
    """A connection in autocommit mode holds no lock from one statement to the next: the
    largest rowid read before the INSERT could be stale by then."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plain.db'}", isolation_level="AUTOCOMMIT")
    RBase.metadata.create_all(engine)
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    with pytest.warns(dbevents.DbEventsWarning, match="sqlite.configure"):
        maker = events.install(sa_orm.sessionmaker(engine))
    try:
        with maker() as session:
            session.execute(sa.insert(Plain), _named(3))
            session.commit()
    finally:
        events.uninstall(maker)
        engine.dispose()
    assert strategy(sent) == "returning"
    assert [c.pk for c in changesets[0].created] == [(1,), (2,), (3,)]


@pytest.mark.parametrize("level", ["keys", "new"])
def test_after_insert_gets_each_row_as_stored_in_the_order_sent(
    level: str,
    events: dbevents.Events,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    statements: list[str],
    changesets: list[dbevents.ChangeSet],
) -> None:
    events.set_capture_level(Plain, level)  # type: ignore[arg-type]
    seen: list[tuple[Any, dict[str, Any]]] = []
    events.listens_for(Plain, "after_insert")(lambda cls, fields, pk: seen.append((pk, fields)))
    with Session() as session:
        session.execute(sa.insert(Plain), [{"name": "b"}, {"name": "a"}, {"name": "c"}])
        session.commit()
    assert strategy(statements) == "rowid"
    assert seen == [
        (1, {"id": 1, "name": "b", "score": 5}),
        (2, {"id": 2, "name": "a", "score": 5}),
        (3, {"id": 3, "name": "c", "score": 5}),
    ]
    assert [c.pk for c in changesets[0].created] == [(1,), (2,), (3,)]


def test_keys_level_records_the_key_of_each_new_row(
    events: dbevents.Events,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    statements: list[str],
    changesets: list[dbevents.ChangeSet],
) -> None:
    events.set_capture_level(Pair, "keys")
    with Session() as session:
        session.execute(sa.insert(Pair), [{"a": 9 - i, "b": i, "name": "x"} for i in range(4)])
        session.commit()
    assert strategy(statements) == "rowid"
    assert [(c.pk, c.new) for c in changesets[0].created] == [
        ((9, 0), None),
        ((8, 1), None),
        ((7, 2), None),
        ((6, 3), None),
    ]


@pytest.fixture
def backend() -> str:
    return "sqlite"  # of async_engine: aiosqlite


def test_async_session_through_aiosqlite(
    events: dbevents.Events, async_engine: AsyncEngine
) -> None:
    sent = recorded_sql(async_engine.sync_engine)
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = installed_async(events, async_engine)

    async def main() -> None:
        async with async_engine.begin() as conn:
            await conn.run_sync(RBase.metadata.create_all)
        async with maker() as session:
            await session.execute(sa.insert(Plain), _named(3))
            await session.commit()

    asyncio.run(main())
    assert strategy(sent) == "rowid"
    assert [(c.pk, c.new and c.new["score"]) for c in got[0].created] == [
        ((1,), 5),
        ((2,), 5),
        ((3,), 5),
    ]
