"""Columns the flush writes for a relationship: many-to-one keys, post_update, read-back rows.

SQLAlchemy copies a related object's key into the foreign key as it writes, after
``before_flush``; with ``post_update=True`` it does so in a second UPDATE that no
mapper event reports.  The delivered change must still be what the table holds,
with the key's old value even when the object was expired.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column, relationship

import dbevents
from dbevents import ChangeSet, Op, RowSet
from tests.fixtures import delivered, installed, snapshot, table_diff, table_rows
from tests.models import Company, Contact


class RBase(sa_orm.DeclarativeBase):
    pass


class Widget(RBase):
    __tablename__ = "widgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    favorite_id: Mapped[int | None] = mapped_column(sa.ForeignKey("entries.id", name="fk_fav"))
    #: the two tables point at each other: this side is written by a second UPDATE
    favorite: Mapped[Entry | None] = relationship(foreign_keys=[favorite_id], post_update=True)
    entries: Mapped[list[Entry]] = relationship(
        foreign_keys="Entry.widget_id", back_populates="widget"
    )


class Entry(RBase):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    widget_id: Mapped[int | None] = mapped_column(sa.ForeignKey("widgets.id"))
    widget: Mapped[Widget | None] = relationship(foreign_keys=[widget_id], back_populates="entries")


class Board(RBase):
    """A versioned row with a post_update key: that UPDATE counts the version up too."""

    __tablename__ = "boards"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(20))
    version: Mapped[int] = mapped_column()
    pin_id: Mapped[int | None] = mapped_column(sa.ForeignKey("pins.id", name="fk_pin"))
    pin: Mapped[Pin | None] = relationship(foreign_keys=[pin_id], post_update=True)
    __mapper_args__ = {"version_id_col": version}


class Pin(RBase):
    __tablename__ = "pins"

    id: Mapped[int] = mapped_column(primary_key=True)
    board_id: Mapped[int | None] = mapped_column(sa.ForeignKey("boards.id"))


class Folder(RBase):
    __tablename__ = "folders"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: one-to-many without a backref: the flush alone sets the files' keys
    files: Mapped[list[File]] = relationship()


class File(RBase):
    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(sa.ForeignKey("folders.id"))
    name: Mapped[str | None] = mapped_column(sa.String(20))


_stamps = iter(range(100, 10_000))

#: an association table with a column of its own, set anew each time a pair is linked
widget_tags = sa.Table(
    "widget_tags",
    RBase.metadata,
    sa.Column("widget_id", sa.ForeignKey("widgets.id"), primary_key=True),
    sa.Column("label_id", sa.ForeignKey("labels.id"), primary_key=True),
    sa.Column("linked", sa.Integer, default=lambda: next(_stamps)),
)


class Label(RBase):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    widgets: Mapped[list[Widget]] = relationship(secondary=widget_tags)


@pytest.fixture
def WidgetSession(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, engine, RBase.metadata)


# -- many-to-one on an expired object -----------------------------------------------------------


@pytest.mark.parametrize("target", ["other", "none", "new"])
def test_a_many_to_one_change_has_the_old_key_of_an_expired_object(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    tables: sa.Engine,
    changesets: list[ChangeSet],
    target: str,
) -> None:
    with Session() as session:
        a, b = Company(name="a"), Company(name="b")
        contact = Contact(email="x@x", company=a)
        session.add_all([a, b, contact])
        session.commit()  # expires everything: company_id is not loaded any more
        old_id = a.id  # (loads the company, not the contact)
        before = snapshot(tables, ("companies", "contacts"))
        contact.company = {"other": b, "none": None, "new": Company(name="c")}[target]
        session.commit()
    (_, changeset) = changesets
    assert delivered(changeset) == table_diff(before, snapshot(tables, ("companies", "contacts")))
    (update,) = changeset.updated
    assert update.old == {"company_id": old_id}


def test_a_one_to_many_move_reads_the_old_keys_of_expired_children_with_one_select(
    WidgetSession: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    tables = ("folders", "files")
    with WidgetSession() as session:
        a, b = Folder(id=1), Folder(id=2)
        files = [File(id=i, name=f"file {i}") for i in range(1, 6)]
        a.files.extend(files)
        session.add_all([a, b])
        session.commit()  # the files are expired, and only the folder changes below
        before = snapshot(engine, tables)
        files[0].name = "renamed"  # set while expired: not to be overwritten by the read
        b.files.extend(files)
        selects: list[str] = []

        @sa.event.listens_for(engine, "before_cursor_execute")
        def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            if sql.lstrip().upper().startswith("SELECT") and "files" in sql:
                selects.append(sql)

        try:
            session.commit()
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
    # SQLAlchemy alone loads each expired file as the flush writes its key: five SELECTs
    assert len(selects) == 1
    (_, changeset) = changesets
    assert delivered(changeset) == table_diff(before, snapshot(engine, tables))
    assert {c.pk: dict(c.old or {}) for c in changeset.changes} == {
        (1,): {"folder_id": 1, "name": "file 1"},
        **{(i,): {"folder_id": 1} for i in range(2, 6)},
    }
    assert dict(changeset.changes[0].new or {}) == {"folder_id": 2, "name": "renamed"}


# -- post_update ----------------------------------------------------------------------------


def test_post_update_keys_are_captured_on_every_kind_of_write(
    WidgetSession: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    tables = ("widgets", "entries")
    with WidgetSession() as session:

        def commit_and_check() -> None:
            before = snapshot(engine, tables)
            count = len(changesets)
            session.commit()
            want = table_diff(before, snapshot(engine, tables))
            assert want, "each step changes the tables"
            assert len(changesets) == count + 1
            assert delivered(changesets[-1]) == want

        widget = Widget(name="w")
        first = Entry(widget=widget)
        widget.favorite = first  # a cycle: the widget's key is written after both inserts
        session.add(widget)
        commit_and_check()
        second = Entry(widget=widget)
        widget.favorite = second  # only the post_update UPDATE writes the widget
        commit_and_check()
        widget.favorite = None
        commit_and_check()
        widget.favorite = first
        widget.name = "renamed"  # the widget's own UPDATE, then the post_update one
        commit_and_check()
        widget.favorite = None
        session.delete(first)  # the key is cleared by the post_update before the DELETE
        commit_and_check()
        widget_id = widget.id
    assert table_rows(engine, "widgets")[(widget_id,)]["favorite_id"] is None


def test_a_post_update_of_a_versioned_row_delivers_the_new_version(
    WidgetSession: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    with WidgetSession() as session:
        board = Board(id=1)
        board.pin = Pin(id=1, board_id=1)
        session.add(board)
        session.commit()
        session.add(Pin(id=2, board_id=1))
        session.flush()
        board.pin = session.get(Pin, 2)  # only the post_update UPDATE writes the board
        session.commit()
        board.pin = session.get(Pin, 1)
        board.name = "b"  # an UPDATE of its own first, then the post_update one
        session.commit()
    assert table_rows(engine, "boards")[(1,)]["version"] == 4
    inserted, pinned, both = ([c for c in cs.changes if c.table == "boards"] for cs in changesets)
    assert dict(inserted[0].new or {}) == {"id": 1, "name": None, "version": 1, "pin_id": 1}
    # the version before a post_update alone is not known: the old values leave it out
    assert (dict(pinned[0].old or {}), dict(pinned[0].new or {})) == (
        {"pin_id": 1},
        {"pin_id": 2, "version": 2},
    )
    assert (dict(both[0].old or {}), dict(both[0].new or {})) == (
        {"name": None, "version": 2, "pin_id": 2},
        {"name": "b", "version": 4, "pin_id": 1},
    )


def test_after_update_runs_for_a_row_only_a_post_update_wrote(
    WidgetSession: sa_orm.sessionmaker[sa_orm.Session], events: dbevents.Events
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    @events.listens_for(Widget, "after_update")
    def after_update(cls: type[Widget], rows: RowSet[Widget], fields: dict[str, Any]) -> None:
        calls.append(("after_update", dict(fields)))

    @events.listens_for(Widget, "after_insert")
    def after_insert(cls: type[Widget], fields: dict[str, Any], pk: Any) -> None:
        calls.append(("after_insert", dict(fields)))

    with WidgetSession() as session:
        widget = Widget(name="w")
        entry = Entry(widget=widget)
        widget.favorite = entry
        session.add(widget)
        session.commit()
        assert [name for name, _ in calls] == ["after_insert"]  # its after_* ran already
        other = Entry(widget=widget)
        session.add(other)
        session.flush()
        widget.favorite = other
        session.commit()
        assert calls[1:] == [("after_update", {"favorite_id": other.id})]


# -- rows read back after the flush -----------------------------------------------------------


def test_a_row_deleted_and_inserted_again_is_read_back_once_merged(
    Session: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        session.add(Contact(id=1, email="a@x"))
        session.commit()
        before = snapshot(tables, ("contacts",))
        session.execute(sa.delete(Contact).where(Contact.id == 1))
        # name and company_id are never set: not known until read back after the flush,
        # by which time this insert has merged with the delete into an update
        session.add(Contact(id=1, email="b@x"))
        session.commit()
    (_, changeset) = changesets
    assert delivered(changeset) == table_diff(before, snapshot(tables, ("contacts",)))
    assert [(c.op, dict(c.new or {})) for c in changeset.changes] == [(Op.UPDATE, {"email": "b@x"})]


# -- an association row unlinked and linked again ------------------------------------------------


def test_a_pair_unlinked_and_linked_again_reports_its_own_columns_changed(
    WidgetSession: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    with WidgetSession() as session:
        widget, label = Widget(id=1, name="w"), Label(id=1)
        label.widgets.append(widget)
        session.add(label)
        session.commit()
        before = snapshot(engine, ("widget_tags",))
        label.widgets.remove(widget)
        session.flush()
        label.widgets.append(widget)
        session.commit()
    diff = table_diff(before, snapshot(engine, ("widget_tags",)))
    assert [op for op, _, _ in diff.values()] == ["update"]  # linked holds a new value
    assert delivered(changesets[-1]) == diff
