"""Session and transaction patterns of real applications: receivers that write through the
session they are told of, flushes that fail part-way, cascades the database runs itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column, relationship

import dbevents
from dbevents import ChangeSet
from dbevents.exceptions import DbEventsWarning, UncapturedWriteError
from tests.fixtures import delivered, installed, snapshot, table_diff
from tests.models import Contact, Tag


class PBase(sa_orm.DeclarativeBase):
    pass


class Folder(PBase):
    __tablename__ = "folders"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: the children not loaded are left to the database's ON DELETE CASCADE
    files: Mapped[list[File]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    #: no ON DELETE on this one's key: the database refuses, never deletes
    links: Mapped[list[Link]] = relationship(passive_deletes=True)


class File(PBase):
    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(sa.ForeignKey("folders.id", ondelete="CASCADE"))


class Link(PBase):
    __tablename__ = "links"

    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(sa.ForeignKey("folders.id"))


@pytest.fixture
def FolderSession(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    if engine.dialect.name == "sqlite":  # (SQLite enforces foreign keys only when told to)
        sa.event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    yield from installed(events, engine, PBase.metadata)


def emails(changesets: list[ChangeSet]) -> list[list[str]]:
    return [[c.new["email"] for c in cs.changes if c.new] for cs in changesets]


def test_a_receiver_that_writes_without_committing_leaves_the_next_commit_whole_for_every_events(
    tables: sa.Engine,
) -> None:
    """The first Events delivers the change sets of both: its listener's flush begins the
    session's next transaction before the second Events heard that the first one ended."""
    first, second = dbevents.Events(), dbevents.Events()
    to_first: list[ChangeSet] = []
    to_second: list[ChangeSet] = []
    maker = sa_orm.sessionmaker(tables)
    first.install(maker)
    second.install(maker)
    second.on_commit(to_second.append)
    with maker() as session:

        @first.on_commit
        def follow_up(changeset: ChangeSet) -> None:
            to_first.append(changeset)
            if emails([changeset]) == [["signed-up@x"]]:
                session.add(Contact(email="welcome@x"))
                session.flush()  # committed with the application's next commit

        session.add(Contact(email="signed-up@x"))
        session.commit()
        session.add(Contact(email="next@x"))
        session.commit()
    assert emails(to_first) == [["signed-up@x"], ["welcome@x", "next@x"]]
    assert emails(to_second) == emails(to_first)


def test_a_receiver_that_begins_a_savepoint_keeps_it_for_every_events(tables: sa.Engine) -> None:
    first, second = dbevents.Events(), dbevents.Events()
    to_second: list[ChangeSet] = []
    maker = sa_orm.sessionmaker(tables)
    first.install(maker)
    second.install(maker)
    second.on_commit(to_second.append)
    savepoints: list[Any] = []
    with maker() as session:

        @first.on_commit
        def follow_up(changeset: ChangeSet) -> None:
            if not savepoints:
                savepoints.append(session.begin_nested())
                session.add(Contact(email="in-savepoint@x"))
                session.flush()

        session.add(Contact(email="first@x"))
        session.commit()
        savepoints[0].commit()
        session.commit()
    assert emails(to_second) == [["first@x"], ["in-savepoint@x"]]


def _two_folders(maker: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    with maker() as session:
        session.add_all([Folder(id=1, files=[File(id=1), File(id=2)]), Folder(id=2)])
        session.add(Link(id=1))
        session.commit()


def test_children_a_passive_delete_leaves_to_the_database_are_told_of(
    FolderSession: Any, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    _two_folders(FolderSession)
    before = snapshot(engine, ("folders", "files"))
    with FolderSession() as session:
        session.delete(session.get_one(Folder, 1))  # its files are not loaded
        with pytest.warns(DbEventsWarning, match=r"deletes the File rows of Folder\.files"):
            session.commit()
    after = snapshot(engine, ("folders", "files"))
    assert after["files"] == {}  # the database deleted them
    assert delivered(changesets[-1]) != table_diff(before, after)
    assert [c.table for c in changesets[-1].changes] == ["folders"]


def test_children_loaded_before_a_passive_delete_are_captured_without_a_word(
    FolderSession: Any, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    _two_folders(FolderSession)
    before = snapshot(engine, ("folders", "files"))
    with FolderSession() as session:
        folder = session.get_one(Folder, 1)
        assert len(folder.files) == 2
        session.delete(folder)
        empty = session.get_one(Folder, 2)
        assert empty.files == []  # (its links are not loaded, but have no ON DELETE)
        session.delete(empty)
        session.commit()
    assert delivered(changesets[-1]) == table_diff(before, snapshot(engine, ("folders", "files")))


def test_a_passive_delete_under_raw_sql_raise_writes_nothing(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    events = dbevents.Events(raw_sql="raise")
    maker = next(installed(events, engine, PBase.metadata))
    _two_folders(maker)
    with maker() as session:
        session.delete(session.get_one(Folder, 1))
        with pytest.raises(UncapturedWriteError, match="passive_deletes and ON DELETE CASCADE"):
            session.flush()
    with maker() as session:
        assert session.get(Folder, 1) is not None


def test_expire_on_commit_false_delivers_old_values_as_loaded(
    events: dbevents.Events, tables: sa.Engine, changesets: list[ChangeSet]
) -> None:
    """The documented limit: an object kept loaded across commits has no fresh old value."""
    maker = events.install(sa_orm.sessionmaker(tables, expire_on_commit=False))
    with maker() as session:
        contact = Contact(id=1, email="a@x", name="first")
        session.add(contact)
        session.commit()
        with maker() as other:
            other.get_one(Contact, 1).name = "second"
            other.commit()
        contact.name = "third"
        session.commit()
        session.refresh(contact)
        session.commit()  # (ends the read: SQLite lets the other session write then)
        with maker() as other:
            other.get_one(Contact, 1).name = "fourth"
            other.commit()
        session.get_one(Contact, 1, populate_existing=True)
        contact.name = "fifth"
        session.commit()
    updates = [(dict(c.old or {}), dict(c.new or {})) for cs in changesets[1:] for c in cs.changes]
    assert updates == [
        ({"name": "first"}, {"name": "second"}),
        ({"name": "first"}, {"name": "third"}),  # (the row held "second")
        ({"name": "third"}, {"name": "fourth"}),
        ({"name": "fourth"}, {"name": "fifth"}),
    ]


def test_a_statement_that_fails_part_way_on_sqlite_leaves_rows_uncaptured(
    Session: Any, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    """The documented limit, and its way out: a savepoint around the statement."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL fails the whole transaction")
    with Session() as session:
        session.add(Tag(namespace="n", name="taken"))
        session.commit()
    rows = [{"namespace": "n", "name": "first"}, {"namespace": "n", "name": "taken"}]
    with Session() as session:
        with pytest.raises(sa.exc.IntegrityError):
            session.execute(sa.insert(Tag), rows)
        with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
            session.execute(sa.insert(Tag), [{"namespace": "n", "name": "second"}, rows[1]])
        session.execute(sa.insert(Tag), [{"namespace": "n", "name": "last"}])
        session.commit()
    with engine.connect() as conn:
        stored = {tuple(row) for row in conn.execute(sa.select(Tag.namespace, Tag.name))}
    assert stored == {("n", "taken"), ("n", "first"), ("n", "last")}
    assert [c.pk for c in changesets[-1].changes] == [("n", "last")]  # ("n", "first") is not
