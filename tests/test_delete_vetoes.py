"""A vetoed delete on the unit of work next to the deletes of related rows.

Skipping a delete keeps the row, and what the delete cascades to.  A row a
parent's delete cascades to cannot stay while that parent goes: that raises
AbortError before anything is written.  Where the parent's delete does not
cascade, SQLAlchemy sets the kept row's key to NULL, and the veto holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import DynamicMapped, Mapped, mapped_column, relationship

import dbevents
from dbevents import ChangeSet, RowSet
from tests.fixtures import delivered, installed, snapshot, table_diff


class VBase(sa_orm.DeclarativeBase):
    pass


class Vetoing:
    """Rows titled "keep" veto their delete."""

    title: Mapped[str] = mapped_column(sa.String(20))

    @dbevents.before_delete
    def keep(cls, rows: RowSet[Any]) -> bool:
        return any(row.title == "keep" for row in rows)


class Shelf(Vetoing, VBase):
    __tablename__ = "shelves"

    id: Mapped[int] = mapped_column(primary_key=True)
    books: Mapped[list[Book]] = relationship(back_populates="shelf", cascade="all, delete-orphan")
    #: no delete cascade: a shelf's delete sets its posters' key to NULL
    posters: Mapped[list[Poster]] = relationship(back_populates="shelf")
    #: a collection never loaded into the object, with no relationship back
    labels: DynamicMapped[Label] = relationship(cascade="all, delete-orphan")


class Book(Vetoing, VBase):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(sa.ForeignKey("shelves.id"))
    shelf: Mapped[Shelf] = relationship(back_populates="books")


class Poster(Vetoing, VBase):
    __tablename__ = "posters"

    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(sa.ForeignKey("shelves.id"))
    shelf: Mapped[Shelf | None] = relationship(back_populates="posters")


class Label(Vetoing, VBase):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(sa.ForeignKey("shelves.id"))


TABLES = ("shelves", "books", "posters", "labels")


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, engine, VBase.metadata)


def shelf(title: str, books: list[str], posters: list[str] = []) -> Shelf:  # noqa: B006
    return Shelf(
        title=title,
        books=[Book(title=t) for t in books],
        posters=[Poster(title=t) for t in posters],
    )


def test_a_kept_row_whose_parents_delete_cascades_to_it_aborts(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        session.add(shelf("s", ["keep", "other"]))
        session.commit()
        before = snapshot(engine, TABLES)
        session.delete(session.scalars(sa.select(Shelf)).one())
        with pytest.raises(dbevents.AbortError, match="whose delete cascades to it") as info:
            session.commit()
        assert isinstance(info.value.instance, Book) and info.value.instance.title == "keep"
        session.rollback()
    assert snapshot(engine, TABLES) == before
    assert len(changesets) == 1  # the first commit's


def test_a_kept_row_of_a_dynamic_collection_whose_delete_cascades_aborts(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine
) -> None:
    with Session() as session:
        the_shelf = shelf("s", [])
        the_shelf.labels.append(Label(title="keep"))
        session.add(the_shelf)
        session.commit()
        before = snapshot(engine, TABLES)
        session.delete(session.scalars(sa.select(Label)).one())
        session.delete(the_shelf)
        with pytest.raises(dbevents.AbortError, match="whose delete cascades to it"):
            session.commit()
        session.rollback()
    assert snapshot(engine, TABLES) == before


def test_a_vetoed_parent_keeps_what_its_delete_cascades_to(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        session.add_all([shelf("keep", ["a", "b"]), shelf("gone", ["c"])])
        session.commit()
        before = snapshot(engine, TABLES)
        for each in session.scalars(sa.select(Shelf)):
            session.delete(each)
        session.commit()
    after = snapshot(engine, TABLES)
    assert sorted(str(row["title"]) for row in after["books"].values()) == ["a", "b"]
    assert delivered(changesets[-1]) == table_diff(before, after)


def test_a_kept_row_whose_parents_delete_does_not_cascade_loses_its_key(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        session.add(shelf("s", [], ["keep", "other"]))
        session.commit()
        before = snapshot(engine, TABLES)
        the_shelf = session.scalars(sa.select(Shelf)).one()
        for poster in the_shelf.posters:
            session.delete(poster)
        session.delete(the_shelf)
        session.commit()
    after = snapshot(engine, TABLES)
    assert [(row["title"], row["shelf_id"]) for row in after["posters"].values()] == [
        ("keep", None)
    ]
    assert after["shelves"] == {}
    assert delivered(changesets[-1]) == table_diff(before, after)
