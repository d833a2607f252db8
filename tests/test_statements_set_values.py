"""An UPDATE statement's new values, whichever way they are known.

Where the database can't return old and new values from one statement (SQLite),
the rows are read before the UPDATE.  When it SETs plain values that are stored
exactly as sent, those are the new values and nothing is returned; otherwise the
UPDATE returns the rows as stored.  Either way the change set holds what a read
of the table through the model gives back.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet, Op, RowSet


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class TBase(sa_orm.DeclarativeBase):
    pass


class Thing(TBase):
    __tablename__ = "things"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str | None] = mapped_column(sa.String(20))
    count: Mapped[int | None]
    flag: Mapped[bool | None]
    price: Mapped[decimal.Decimal | None] = mapped_column(sa.Numeric(10, 2))
    ratio: Mapped[float | None] = mapped_column(sa.Float())
    at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    code: Mapped[str | None] = mapped_column(sa.CHAR(4))
    color: Mapped[Color | None] = mapped_column(sa.Enum(Color))
    data: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON())


things: sa.Table = Thing.__table__  # type: ignore[assignment]

AWARE = dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, engine: sa.Engine
) -> Any:
    from tests.fixtures import installed

    with engine.begin() as conn:
        TBase.metadata.create_all(conn)
        conn.execute(things.insert(), [{"id": i, "text": f"t{i}", "count": i} for i in (1, 2, 3)])
    yield from installed(events, engine, TBase.metadata)


def _stored(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    """The rows read back through the model's own column types."""
    with engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(sa.select(things))}


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("text", "new"),
        ("count", 7),
        ("flag", True),
        ("text", None),
        ("count", "7"),  # a string for an integer column: stored as the integer
        ("flag", 1),  # an int for a boolean column: read back as True
        ("price", decimal.Decimal("1.005")),  # rounded to the column's scale
        ("ratio", 1.5),
        ("at", AWARE),  # SQLite keeps no time zone
        ("code", "ab"),  # CHAR pads
        ("color", Color.RED),
        ("data", {"a": [1, 2]}),
    ],
)
def test_the_new_values_are_the_stored_ones(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
    column: str,
    value: Any,
) -> None:
    before = _stored(engine)
    with Session() as session:
        session.execute(sa.update(Thing).where(Thing.id >= 2).values({column: value}))
        session.commit()
    after = _stored(engine)
    (changeset,) = changesets
    assert {c.pk: (c.op, dict(c.old or {}), dict(c.new or {})) for c in changeset.changes} == {
        (key,): (Op.UPDATE, {column: before[key][column]}, {column: after[key][column]})
        for key in (2, 3)
    }


def test_a_value_bound_at_execution(
    Session: sa_orm.sessionmaker[sa_orm.Session], changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        statement = sa.update(Thing).where(Thing.id == 1).values(text=sa.bindparam("given"))
        session.execute(statement, {"given": "bound"})
        session.commit()
    (changeset,) = changesets
    assert [(c.pk, dict(c.new or {})) for c in changeset.changes] == [((1,), {"text": "bound"})]


def test_rows_set_to_what_they_had_are_written_but_unchanged(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    changesets: list[ChangeSet],
) -> None:
    written: list[list[tuple[Any, ...]]] = []

    @events.listens_for(Thing, "after_update")
    def after_update(cls: type[Thing], rows: RowSet[Thing], fields: dict[str, Any]) -> None:
        written.append(sorted(rows.pks or ()))

    with Session() as session:
        session.execute(sa.update(Thing).values(text="t2"))
        session.commit()
    assert written == [[(1,), (2,), (3,)]]  # every row the UPDATE matched
    (changeset,) = changesets
    assert [(c.pk, dict(c.old or {}), dict(c.new or {})) for c in changeset.changes] == [
        ((1,), {"text": "t1"}, {"text": "t2"}),
        ((3,), {"text": "t3"}, {"text": "t2"}),
    ]


def test_columns_set_by_the_parameters_too(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    """SQLAlchemy SETs a column named by a parameter besides the statement's values."""
    with Session() as session:
        session.execute(sa.update(Thing).where(Thing.id == 1).values(text="x"), {"count": 10})
        by_key = sa.update(things).where(things.c.id == sa.bindparam("key")).values(text="y")
        session.execute(by_key, [{"key": 2, "count": 20}, {"key": 3, "count": 30}])
        session.commit()
    assert {key: (row["text"], row["count"]) for key, row in _stored(engine).items()} == {
        1: ("x", 10),
        2: ("y", 20),
        3: ("y", 30),
    }
    (changeset,) = changesets
    assert {c.pk: (dict(c.old or {}), dict(c.new or {})) for c in changeset.changes} == {
        (i,): ({"text": f"t{i}", "count": i}, {"text": new, "count": 10 * i})
        for i, new in ((1, "x"), (2, "y"), (3, "y"))
    }
