"""A vetoed insert on the unit of work next to the pending rows that go with it.

Skipping an insert expunges the object; a relationship whose cascade includes
``expunge`` (``cascade="all"``) takes its pending children along.  A child whose
own insert nobody vetoed must not vanish with it: that raises AbortError before
anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column, relationship

import dbevents
from tests.fixtures import installed


class IBase(sa_orm.DeclarativeBase):
    pass


class Blockable:
    """Rows with status "blocked" veto their insert."""

    status: Mapped[str] = mapped_column(sa.String(20))

    @dbevents.before_insert
    def blocked(cls, fields: dict[str, Any]) -> bool:
        return bool(fields["status"] == "blocked")


class Order(Blockable, IBase):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    lines: Mapped[list[Line]] = relationship(back_populates="order", cascade="all")


class Line(Blockable, IBase):
    __tablename__ = "lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"))
    order: Mapped[Order | None] = relationship(back_populates="lines")


class Folder(Blockable, IBase):
    __tablename__ = "folders"

    id: Mapped[int] = mapped_column(primary_key=True)


class File(Blockable, IBase):
    """Points to its folder, which knows nothing of it: no backref, no cascade from it."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(sa.ForeignKey("folders.id"))
    folder: Mapped[Folder | None] = relationship()


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, engine, IBase.metadata)


def counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        orders = conn.scalar(sa.text("select count(*) from orders"))
        lines = conn.scalar(sa.text("select count(*) from lines"))
    return orders, lines


def test_a_vetoed_insert_whose_expunge_cascades_to_a_pending_child_aborts(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine
) -> None:
    with Session() as session:
        order = Order(status="blocked", lines=[Line(status="ok")])
        session.add(order)
        with pytest.raises(dbevents.AbortError, match="would be expunged with it") as info:
            session.commit()
        assert info.value.instance is order
        assert counts(engine) == (0, 0)
        # nothing was taken out of the session, and it is still usable
        assert order in session and order.lines[0] in session
        order.status = "ok"
        session.commit()
    assert counts(engine) == (1, 1)


def test_vetoed_inserts_that_leave_together_are_skipped(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine
) -> None:
    with Session() as session:
        order = Order(status="blocked", lines=[Line(status="blocked")])
        session.add_all([order, Order(status="ok")])
        session.commit()
        assert order not in session
    assert counts(engine) == (1, 0)


def test_a_vetoed_insert_a_pending_row_refers_to_aborts(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine
) -> None:
    """Skipped, the folder would leave the file pointing at nothing (written with a NULL
    key, SQLAlchemy only warning): the commit refuses."""
    with Session() as session:
        session.add(File(id=1, status="ok", folder=Folder(id=1, status="blocked")))
        with pytest.raises(dbevents.AbortError, match="is pending and refers to it"):
            session.commit()
    with engine.connect() as conn:
        assert conn.scalar(sa.text("select count(*) from files")) == 0
        assert conn.scalar(sa.text("select count(*) from folders")) == 0
