"""SQLite statements with a conflict prefix: ``INSERT OR REPLACE``, ``UPDATE OR REPLACE``.

``OR REPLACE`` deletes every row whose unique key (the primary key or another)
a row it writes would duplicate, then writes the row.  dbevents reads the rows
it may replace first, by the unique key values the rows send, and reads them
again after it with the rows it added: a row gone is a delete, one replaced under
its own key an update of the values that differ.  Where the values sent can't
tell which rows it replaces, the statement is reported before it runs, never
captured half.  Each delivered change set is compared with the difference of the
table before and after, read with plain SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet
from dbevents.exceptions import DbEventsWarning, UncapturedWriteError
from tests.fixtures import (
    all_delivered,
    committed_diff,
    installed,
    installed_on,
    snapshot,
)

TABLES = ("items", "tokens")


@pytest.fixture
def backend() -> str:
    return "sqlite"


class PBase(sa_orm.DeclarativeBase):
    pass


class Item(PBase):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(20), unique=True)
    qty: Mapped[int] = mapped_column(default=0)


class Token(PBase):
    """A unique column whose value a function makes as the INSERT runs."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(unique=True, default=lambda: uuid.uuid4().hex)


items: sa.Table = Item.__table__  # type: ignore[assignment]
tokens: sa.Table = Token.__table__  # type: ignore[assignment]
Write = Callable[[sa_orm.Session], Any]


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    """The engine, with ``items`` holding (1, a, 1) and (3, c, 3), and one token."""
    PBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            items.insert(), [{"id": 1, "sku": "a", "qty": 1}, {"id": 3, "sku": "c", "qty": 3}]
        )
        conn.execute(tokens.insert().values(id=1, code="t1"))
    return engine


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, db: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, db, PBase.metadata)


REPLACE = sa.insert(Item).prefix_with("OR REPLACE")
ROWS = [
    {"id": 2, "sku": "a", "qty": 2},  # replaces 1, by sku
    {"id": 4, "sku": "d", "qty": 4},  # added, then replaced by the next row
    {"id": 5, "sku": "d", "qty": 5},
    {"id": 3, "sku": "x", "qty": 9},  # replaces 3 under its own key
]

REPLACES: dict[str, tuple[Write, dict[tuple[int], str]]] = {
    "by another unique key": (
        lambda s: s.execute(REPLACE.values(id=2, sku="a", qty=2)),
        {(1,): "delete", (2,): "insert"},
    ),
    "under its own key": (
        lambda s: s.execute(REPLACE.values(id=1, sku="b", qty=1)),
        {(1,): "update"},
    ),
    "both, one row": (
        lambda s: s.execute(REPLACE.values(id=1, sku="c")),
        {(1,): "update", (3,): "delete"},
    ),
    "multi-row values": (
        lambda s: s.execute(REPLACE.values(ROWS)),
        {(1,): "delete", (2,): "insert", (3,): "update", (5,): "insert"},
    ),
    "parameter sets": (
        lambda s: s.execute(REPLACE, ROWS),
        {(1,): "delete", (2,): "insert", (3,): "update", (5,): "insert"},
    ),
    "core, on the connection": (
        lambda s: s.connection().execute(
            items.insert().prefix_with("OR REPLACE").values(id=7, sku="c", qty=7)
        ),
        {(3,): "delete", (7,): "insert"},
    ),
    "no key sent": (
        lambda s: s.execute(REPLACE, [{"sku": "a", "qty": 5}, {"sku": "new"}]),
        {(1,): "delete", (4,): "insert", (5,): "insert"},
    ),
    "nothing to replace": (
        lambda s: s.execute(REPLACE.values(id=9, sku="z")),
        {(9,): "insert"},
    ),
}


@pytest.mark.parametrize("path", REPLACES)
def test_an_insert_or_replace_delivers_the_rows_it_replaced(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    write, ops = REPLACES[path]
    diff = committed_diff(Session, db, TABLES, write)
    assert all_delivered(changesets) == diff
    assert {pk: op for (_, pk), (op, _, _) in diff.items()} == ops


def test_a_row_replaced_by_the_same_values_is_no_change(
    Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    diff = committed_diff(
        Session, db, TABLES, lambda s: s.execute(REPLACE.values(id=1, sku="a", qty=1))
    )
    assert diff == {} and changesets == []


def test_at_the_keys_level_the_replaced_rows_are_told_by_key(db: sa.Engine) -> None:
    events = dbevents.Events(capture={Item: "keys"})
    got: list[ChangeSet] = []
    events.on_commit(got.append)
    with installed_on(events, db) as maker, maker() as session:
        session.execute(REPLACE, ROWS)
        session.commit()
    [changeset] = got
    assert sorted((c.op.value, c.pk, c.old, c.new) for c in changeset.changes) == [
        ("delete", (1,), None, None),
        ("insert", (2,), None, None),
        ("insert", (5,), None, None),
        ("update", (3,), None, None),
    ]


def test_after_insert_runs_for_the_rows_it_added_only(
    events: dbevents.Events, Session: Any, changesets: list[ChangeSet]
) -> None:
    inserted: list[Any] = []

    @events.listens_for(Item, "after_insert")
    def after_insert(cls: type[Item], fields: dict[str, Any], pk: Any) -> None:
        inserted.append(pk)

    with Session() as session:
        session.execute(REPLACE.values(ROWS))
        session.commit()
    assert sorted(inserted) == [2, 5]


UNTOLD: dict[str, Write] = {
    "a unique key sent as SQL": lambda s: s.execute(REPLACE.values(id=2, sku=sa.func.lower("C"))),
    "a unique key a function makes": lambda s: s.execute(
        sa.insert(Token).prefix_with("OR REPLACE").values(id=1)
    ),
    "an upsert too": lambda s: s.execute(
        sqlite.insert(Item)
        .prefix_with("OR REPLACE")
        .values(id=1, sku="c")
        .on_conflict_do_update(index_elements=["id"], set_={"qty": 5})
    ),
    "an update setting a unique key": lambda s: s.execute(
        sa.update(Item).prefix_with("OR REPLACE").where(Item.id == 1).values(sku="c")
    ),
}


@pytest.mark.parametrize("path", UNTOLD)
def test_one_whose_replaced_rows_cant_be_told_is_reported_before_it_runs(
    path: str, db: sa.Engine
) -> None:
    before = snapshot(db, TABLES)
    events = dbevents.Events(raw_sql="raise")
    with installed_on(events, db) as maker, maker() as session:
        with pytest.raises(UncapturedWriteError, match="OR REPLACE writes to"):
            UNTOLD[path](session)
        session.commit()
    assert snapshot(db, TABLES) == before  # nothing written


@pytest.mark.parametrize("path", UNTOLD)
def test_one_whose_replaced_rows_cant_be_told_is_warned_about_and_left_out(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    with Session() as session:
        with pytest.warns(DbEventsWarning, match="deletes the rows whose unique key"):
            UNTOLD[path](session)
        session.commit()
    assert changesets == []


def test_an_update_or_replace_of_other_columns_is_captured(
    Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    def write(session: sa_orm.Session) -> None:
        session.execute(sa.update(Item).prefix_with("OR REPLACE").where(Item.id == 1).values(qty=8))

    diff = committed_diff(Session, db, TABLES, write)
    assert diff == {("items", (1,)): ("update", {"qty": 1}, {"qty": 8})}
    assert all_delivered(changesets) == diff


def test_with_a_returning_of_its_own_it_is_reported(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    # its RETURNING is the caller's, and the rows it sends don't tell which it added
    with Session() as session:
        with pytest.warns(DbEventsWarning, match="nothing tells which of the rows"):
            session.execute(REPLACE.values(id=1, sku="c").returning(Item.qty)).all()
        session.commit()
    assert changesets == []


def test_or_ignore_delivers_the_rows_it_added(
    Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    def write(session: sa_orm.Session) -> None:
        session.execute(sa.insert(Item).prefix_with("OR IGNORE").values(id=2, sku="a"))
        session.execute(sa.insert(Item).prefix_with("OR IGNORE").values(id=2, sku="b"))

    diff = committed_diff(Session, db, TABLES, write)
    assert list(diff) == [("items", (2,))] and all_delivered(changesets) == diff
