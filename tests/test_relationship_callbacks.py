"""The before_* callbacks of rows whose write a relationship decides.

A many-to-one change writes the foreign key of the object it now points to,
whether that object is loaded, expired or not inserted yet; a child its parent
lets go of in a ``delete-orphan`` collection is deleted by the flush.  Their
``before_*`` callbacks run for what the flush will really do, and can veto it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column, relationship

import dbevents
from tests.fixtures import installed, table_rows


class OBase(sa_orm.DeclarativeBase):
    pass


class Parent(OBase):
    __tablename__ = "parents"

    id: Mapped[int] = mapped_column(primary_key=True)
    kids: Mapped[list[Kid]] = relationship(cascade="all, delete-orphan", back_populates="parent")


class Kid(OBase):
    __tablename__ = "kids"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("parents.id"))
    parent: Mapped[Parent | None] = relationship(back_populates="kids")


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    makers = installed(events, engine, OBase.metadata)
    maker = next(makers)
    with maker() as session:
        session.add_all([Parent(id=1, kids=[Kid(id=1), Kid(id=2)]), Parent(id=2)])
        session.commit()
    yield maker
    yield from makers


def recorded(events: dbevents.Events, veto: str | None = None) -> list[tuple[Any, ...]]:
    """The before_* callbacks of Kid as they run; ``veto`` names the one that vetoes."""
    calls: list[tuple[Any, ...]] = []

    def on(event: str) -> None:
        def record(cls: type[Kid], *args: Any) -> bool:
            fields = [dict(a) for a in args if isinstance(a, dict)]
            calls.append((event, *fields))
            return event == veto

        events.listens_for(Kid, event)(record)

    for event in ("before_update", "before_save", "before_delete", "before_destroy"):
        on(event)
    return calls


@pytest.mark.parametrize("target", ["expired", "new"])
def test_a_many_to_one_change_runs_before_update_whatever_its_target(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    engine: sa.Engine,
    target: str,
) -> None:
    calls = recorded(events, veto="before_update")
    before = table_rows(engine, "kids")
    with Session() as session:
        kid = session.get_one(Kid, 1)
        kid.parent = session.get_one(Parent, 2) if target == "expired" else Parent(id=None)
        if target == "expired":
            session.expire(kid.parent)  # its key is known by its identity only
        with pytest.raises(dbevents.AbortError, match="relationships changed"):
            session.commit()
        session.rollback()
    expected_fields = {"parent_id": 2} if target == "expired" else {}
    assert ("before_update", expected_fields) in calls
    assert table_rows(engine, "kids") == before  # the veto held


def test_an_orphan_runs_the_delete_callbacks_and_its_veto_holds(
    Session: sa_orm.sessionmaker[sa_orm.Session], events: dbevents.Events, engine: sa.Engine
) -> None:
    calls = recorded(events, veto="before_delete")
    with Session() as session:
        parent = session.get_one(Parent, 1)
        parent.kids.remove(parent.kids[0])  # delete-orphan: the flush deletes the kid
        with pytest.raises(dbevents.AbortError, match="orphan"):
            session.commit()
        session.rollback()
    assert [call[0] for call in calls] == ["before_destroy", "before_delete"]
    assert set(table_rows(engine, "kids")) == {(1,), (2,)}


def test_an_orphan_is_delivered_as_deleted(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    changesets: list[dbevents.ChangeSet],
) -> None:
    calls = recorded(events)
    with Session() as session:
        parent = session.get_one(Parent, 1)
        parent.kids.remove(parent.kids[0])
        session.commit()
    assert [call[0] for call in calls] == ["before_destroy", "before_delete"]
    [change] = changesets[-1].changes
    assert (change.op, change.pk, change.old) == (
        dbevents.Op.DELETE,
        (1,),
        {"id": 1, "parent_id": 1},
    )


def test_a_many_to_one_set_back_to_its_target_is_no_update(
    Session: sa_orm.sessionmaker[sa_orm.Session], events: dbevents.Events, engine: sa.Engine
) -> None:
    calls = recorded(events)
    delivered: list[dbevents.ChangeSet] = []
    events.on_commit(delivered.append)
    with Session() as session:
        kid = session.get_one(Kid, 1)
        first = kid.parent
        kid.parent = session.get_one(Parent, 2)
        kid.parent = first  # the same parent again: nothing to write
        session.commit()
    assert calls == [] and delivered == []


def test_a_before_save_veto_holds_when_before_update_lets_the_row_go(
    Session: sa_orm.sessionmaker[sa_orm.Session], events: dbevents.Events, engine: sa.Engine
) -> None:
    events.listens_for(Kid, "before_save")(lambda cls, kid: kid.parent_id == 2)
    events.listens_for(Kid, "before_update")(lambda cls, rows, fields: False)
    before = table_rows(engine, "kids")
    with Session() as session:
        session.get_one(Kid, 1).parent_id = 2
        session.commit()
    assert table_rows(engine, "kids") == before


def test_an_orphan_whose_columns_a_later_listener_expired_is_delivered_whole(
    Session: sa_orm.sessionmaker[sa_orm.Session], events: dbevents.Events, engine: sa.Engine
) -> None:
    """A before_flush listener of the application's runs after dbevents' own: the orphan it
    makes, with columns it expired, is found by the flush itself, which reads them."""
    delivered: list[dbevents.ChangeSet] = []
    events.on_commit(delivered.append)
    before = table_rows(engine, "kids")

    def let_go(session: sa_orm.Session, context: Any, instances: Any) -> None:
        for parent in [o for o in session.dirty if isinstance(o, Parent)]:
            kid = parent.kids[0]
            session.expire(kid, ["parent_id"])
            parent.kids.remove(kid)

    with Session() as session:
        sa.event.listen(session, "before_flush", let_go)
        parent = session.get_one(Parent, 1, options=[sa_orm.selectinload(Parent.kids)])
        sa_orm.attributes.flag_modified(parent, "kids")
        session.commit()
    [changeset] = delivered
    [change] = changeset.changes
    assert change.op is dbevents.Op.DELETE and change.old == before[(1,)]
