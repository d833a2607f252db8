"""Statements with a RETURNING or ``return_defaults()`` of the caller's own.

SQLAlchemy can't add dbevents' RETURNING next to the caller's, so these rows are
told otherwise: an INSERT's by the values it sent, an upsert's by reading them
again by the unique key it sent, an UPDATE's or DELETE's by reading them first.
Each statement runs on SQLite and PostgreSQL where it exists there; the delivered
change set is compared with the difference of the table before and after, read
with plain SQL, and the caller's result with the one SQLAlchemy gives without
dbevents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet
from dbevents.exceptions import DbEventsWarning
from tests.fixtures import (
    Diff,
    all_delivered,
    committed_diff,
    installed,
    installed_async,
    snapshot,
    table_diff,
    table_rows,
)

TABLES = ("items",)


class RBase(sa_orm.DeclarativeBase):
    pass


class Item(RBase):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    qty: Mapped[int] = mapped_column(server_default=sa.text("0"))


items: sa.Table = Item.__table__  # type: ignore[assignment]
Write = Callable[[sa_orm.Session], Any]


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    """The engine, with ``items`` holding n1, n2 and n3 (keys 1 to 3, qty 1 to 3)."""
    RBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"name": f"n{i}", "qty": i} for i in (1, 2, 3)])
    return engine


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, db: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, db, RBase.metadata)


def check_delivered(db: sa.Engine, maker: Any, changesets: list[ChangeSet], write: Write) -> Diff:
    """Run ``write`` and commit; the change set must be the table's difference, not empty."""
    diff = committed_diff(maker, db, TABLES, write)
    assert diff and all_delivered(changesets) == diff
    assert all(None not in change.pk for cs in changesets for change in cs.changes)
    return diff


def bare_and_installed(db: sa.Engine, maker: Any, write: Write) -> tuple[Any, Any, Diff]:
    """What ``write`` gives without dbevents (rolled back), then with it (committed), and
    what it changed in the table then."""
    with sa_orm.Session(db) as session:
        bare = write(session)
        session.rollback()
    got: list[Any] = []
    diff = committed_diff(maker, db, TABLES, lambda session: got.append(write(session)))
    return bare, got[0], diff


# -- an INSERT that sends its key, with a RETURNING of other columns -----------------------------

KEY_SENT: dict[str, Write] = {
    "orm": lambda s: s.execute(
        sa.insert(Item).values(id=100, name="orm").returning(Item.name, Item.qty)
    ).all(),
    "core": lambda s: s.execute(
        items.insert().values(id=100, name="core").returning(items.c.qty)
    ).all(),
    "connection": lambda s: (
        s.connection()
        .execute(items.insert().values(id=100, name="conn").returning(items.c.name))
        .all()
    ),
    "connection, parameter sets": lambda s: (
        s.connection()
        .execute(
            items.insert().returning(items.c.name, sort_by_parameter_order=True),
            [{"id": 100, "name": "a"}, {"id": 101, "name": "b"}],
        )
        .all()
    ),
    # a multi-row values() names its parameters by row (id_m0, id_m1): the rows are its values
    "multi-row values": lambda s: s.execute(
        items.insert()
        .values([{"id": 100, "name": "a"}, {"id": 101, "name": "b"}])
        .returning(items.c.qty)
    ).all(),
    "orm, multi-row values": lambda s: s.execute(
        sa.insert(Item)
        .values([{"id": 100, "name": "a", "qty": 4}, {"id": 101, "name": "b", "qty": 5}])
        .returning(Item.name)
    ).all(),
    "multi-row values in column order": lambda s: s.execute(
        items.insert().values([(100, "a", 4), (101, "b", 5)]).returning(items.c.name)
    ).all(),
    "multi-row values, a column as SQL": lambda s: s.execute(
        items.insert()
        .values([{"id": 100, "name": sa.func.lower("A")}, {"id": 101, "name": "b"}])
        .returning(items.c.id)
    ).all(),
}


@pytest.mark.parametrize("path", KEY_SENT)
def test_an_insert_returning_other_columns_than_the_key_it_sends_is_captured(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    # SQLite counts the rows of an INSERT ... RETURNING only as the caller fetches them: the
    # rows are the values sent, whatever the count says before
    results: list[Any] = []
    diff = check_delivered(db, Session, changesets, lambda s: results.append(KEY_SENT[path](s)))
    assert {op for op, _, _ in diff.values()} == {"insert"}
    assert results[0] and len(results[0]) == len(diff)


BULK_KEY_SENT: dict[str, Write] = {
    "two rows": lambda s: s.execute(
        sa.insert(Item).returning(Item.name), [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}]
    ).all(),
    "one row": lambda s: s.execute(
        sa.insert(Item).returning(Item.name), [{"id": 5, "name": "a"}]
    ).all(),
    "one parameter set": lambda s: s.execute(
        sa.insert(Item).returning(Item.name), {"id": 5, "name": "a"}
    ).all(),
    "returning the key too": lambda s: s.execute(
        sa.insert(Item).returning(Item.id, Item.name),
        [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}],
    ).all(),
}


@pytest.mark.parametrize("path", BULK_KEY_SENT)
def test_an_orm_insert_returning_other_columns_takes_the_key_from_the_parameters(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    # the ORM's RETURNING holds only the caller's columns when the key was sent
    bare, got, diff = bare_and_installed(db, Session, BULK_KEY_SENT[path])
    assert got == bare
    assert all_delivered(changesets) == diff
    assert {pk for _, pk in diff} == ({(5,)} if "one" in path else {(5,), (6,)})


def test_an_async_insert_returning_other_columns_than_the_key_it_sends_is_captured(
    events: dbevents.Events, changesets: list[ChangeSet], db: sa.Engine, async_engine: AsyncEngine
) -> None:
    # aiosqlite and asyncpg: the same database as ``db``, through AsyncSession
    maker = installed_async(events, async_engine)
    before = snapshot(db, TABLES)

    async def main() -> None:
        async with maker() as session:
            await session.execute(
                sa.insert(Item).returning(Item.name),
                [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}],
            )
            await session.execute(items.insert().values(id=7, name="c").returning(items.c.qty))
            await session.commit()

    asyncio.run(main())
    diff = table_diff(before, snapshot(db, TABLES))
    assert len(diff) == 3 and all_delivered(changesets) == diff


def test_an_insert_returning_without_a_key_is_reported_never_recorded_keyless(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    # neither the caller's RETURNING nor the values sent tell the keys of the rows
    insert = items.insert().returning(items.c.name)
    with Session() as session:
        with pytest.warns(DbEventsWarning, match="have no key it sent"):
            session.connection().execute(insert, [{"name": "a"}, {"name": "b"}])
        session.commit()
    assert changesets == []


def test_a_multi_row_insert_returning_whose_key_is_sql_is_reported(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    rows = [{"id": sa.literal_column("100"), "name": "a"}, {"id": 101, "name": "b"}]
    with Session() as session:
        with pytest.warns(DbEventsWarning, match="have no key it sent"):
            session.execute(items.insert().values(rows).returning(items.c.name)).all()
        session.commit()
    assert changesets == []


# -- an upsert with values() and a RETURNING of the caller's ------------------------------------


def dialect_insert(session: sa_orm.Session) -> Any:
    """The INSERT with ON CONFLICT of the session's database."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def upsert(target: Any, values: Any, *, connection: bool = False, sets: bool = False) -> Write:
    """An upsert of ``values`` (one row, or a list of rows) on the unique key ``target``
    that sets qty, with a RETURNING of the key and qty; through ``session.connection()``
    with ``connection``, and the rows given as parameter sets with ``sets``."""

    def write(session: sa_orm.Session) -> Any:
        statement = dialect_insert(session)(items if connection else Item)
        if not sets:
            statement = statement.values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[target], set_={"qty": statement.excluded.qty}
        ).returning(items.c.id, items.c.qty)
        run = session.connection().execute if connection else session.execute
        return sorted(run(statement, values if sets else None).all())

    return write


UPSERTS: dict[str, tuple[Write, dict[str, str]]] = {
    "orm, updates": (upsert("name", {"name": "n1", "qty": 7}), {"n1": "update"}),
    "orm, inserts": (upsert(Item.name, {"name": "new", "qty": 7}), {"new": "insert"}),
    "core, updates": (
        upsert("name", {"name": "n2", "qty": 9}, connection=True),
        {"n2": "update"},
    ),
    "core, inserts": (
        upsert(items.c.name, {"name": "new", "qty": 9}, connection=True),
        {"new": "insert"},
    ),
    "multi-row values": (
        upsert("name", [{"name": "n3", "qty": 30}, {"name": "new", "qty": 4}]),
        {"n3": "update", "new": "insert"},
    ),
    "orm, parameter sets": (
        upsert("name", [{"name": "n3", "qty": 30}, {"name": "new", "qty": 4}], sets=True),
        {"n3": "update", "new": "insert"},
    ),
    "core, parameter sets": (
        upsert(
            "name",
            [{"name": "n3", "qty": 30}, {"name": "new", "qty": 4}],
            connection=True,
            sets=True,
        ),
        {"n3": "update", "new": "insert"},
    ),
    "by key, one set to what it had": (
        upsert("id", [{"id": 1, "name": "n1", "qty": 1}, {"id": 2, "name": "n2", "qty": 20}]),
        {"n2": "update"},
    ),
}


@pytest.mark.parametrize("path", UPSERTS)
def test_an_upsert_with_its_own_returning_is_read_again_by_its_key(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    write, ops = UPSERTS[path]
    bare, got, diff = bare_and_installed(db, Session, write)
    if db.dialect.name == "sqlite":  # (PostgreSQL's sequence moved on in the rolled-back run)
        assert got == bare
    assert all_delivered(changesets) == diff
    names = {row["name"]: pk for pk, row in table_rows(db, "items").items()}
    assert {name: diff[("items", names[name])][0] for name in ops} == ops
    assert len(diff) == len(ops)


def test_an_upsert_with_its_own_returning_runs_after_insert_for_the_rows_it_inserted(
    events: dbevents.Events, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    inserted: list[tuple[str, Any]] = []

    @events.listens_for(Item, "after_insert")
    def after_insert(cls: type[Item], fields: dict[str, Any], pk: Any) -> None:
        inserted.append((fields["name"], pk))

    write, _ = UPSERTS["multi-row values"]
    _, returned, diff = bare_and_installed(db, Session, write)
    assert all_delivered(changesets) == diff
    [new_key] = [pk for (_, (pk,)), (op, _, _) in diff.items() if op == "insert"]
    assert inserted == [("new", new_key)] and (new_key, 4) in returned


def test_an_upsert_doing_nothing_with_its_own_returning_tells_the_rows_it_added(
    Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    def write(session: sa_orm.Session) -> Any:
        statement = dialect_insert(session)(items).values(
            [{"name": "n1", "qty": 8}, {"name": "new", "qty": 8}]
        )
        statement = statement.on_conflict_do_nothing(index_elements=["name"])
        return session.connection().execute(statement.returning(items.c.name)).all()

    diff = check_delivered(db, Session, changesets, write)
    assert [(op, new and new["name"]) for op, _, new in diff.values()] == [("insert", "new")]


def test_an_upsert_whose_rows_no_key_finds_again_is_reported(
    Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    with Session() as session:
        statement = dialect_insert(session)(items).values(name=sa.func.lower("N1"), qty=5)
        statement = statement.on_conflict_do_update(
            index_elements=["name"], set_={"qty": statement.excluded.qty}
        ).returning(items.c.id)
        with pytest.warns(DbEventsWarning, match="can't be read again and told apart"):
            session.connection().execute(statement)
        session.commit()
    assert changesets == []


# -- return_defaults() of the caller's ---------------------------------------------------------

RETURN_DEFAULTS: dict[str, Write] = {
    "update": lambda s: s.execute(
        items.update().where(items.c.id == 1).values(qty=5).return_defaults(items.c.name)
    ),
    "update of an expression": lambda s: s.execute(
        items.update()
        .where(items.c.id >= 2)
        .values(qty=items.c.qty + 1)
        .return_defaults(items.c.name)
    ),
    "orm update": lambda s: s.execute(
        sa.update(Item).where(Item.id == 1).values(qty=5).return_defaults(Item.name)
    ),
    "delete": lambda s: s.execute(
        items.delete().where(items.c.id == 3).return_defaults(items.c.name)
    ),
    "insert": lambda s: s.execute(items.insert().values(name="z").return_defaults(items.c.qty)),
    "insert sending its key": lambda s: s.execute(
        items.insert().values(id=50, name="z").return_defaults(items.c.qty)
    ),
}


def _returned(result: Any, *, new_key: bool) -> tuple[Any, ...]:
    """What the caller can tell of a result with return_defaults(): the returned defaults
    (a new key as a key alone: PostgreSQL's sequence moves on between the runs), the row
    count, and whether rows come back."""
    rows = result.returned_defaults_rows
    defaults = None if rows is None else [dict(row._mapping) for row in rows]
    for row in defaults or ():
        if new_key and "id" in row:
            row["id"] = "new key"
    return defaults, result.rowcount, result.returns_rows


@pytest.mark.parametrize("path", RETURN_DEFAULTS)
def test_the_callers_return_defaults_are_what_sqlalchemy_gives_and_captured(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    def write(session: sa_orm.Session) -> Any:
        return _returned(RETURN_DEFAULTS[path](session), new_key=path.startswith("insert"))

    bare, got, diff = bare_and_installed(db, Session, write)
    assert got == bare
    assert diff and all_delivered(changesets) == diff
