"""Statements on a single-table inheritance subclass.

SQLAlchemy adds the subclass's discriminator (``WHERE kind IN (...)``) to an ORM
statement on a subclass as it compiles it: the statement dbevents sees has no such
criterion.  Rows of the other classes in the table must be neither changed nor
reported, whatever dbevents reads or rewrites around the statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet
from tests.fixtures import committed_diff, delivered, installed, row_sets


class IBase(sa_orm.DeclarativeBase):
    pass


class Employee(IBase):
    __tablename__ = "employees"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}


class Manager(Employee):
    __mapper_args__ = {"polymorphic_identity": "manager"}


TABLES = ("employees",)

WRITES: dict[str, Any] = {
    "update": lambda s: s.execute(sa.update(Manager).values(name="boss")),
    "update where": lambda s: s.execute(
        sa.update(Manager).where(Manager.name != "nobody").values(name="boss")
    ),
    "update, fetch": lambda s: s.execute(
        sa.update(Manager).values(name="boss"), execution_options={"synchronize_session": "fetch"}
    ),
    "query update": lambda s: s.query(Manager).update({"name": "boss"}),
    "delete": lambda s: s.execute(sa.delete(Manager)),
    "query delete": lambda s: s.query(Manager).delete(),
}


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    sessions = installed(events, engine, IBase.metadata)
    maker = next(sessions)
    with maker() as session:
        session.add_all(
            [Employee(id=1, name="ann"), Manager(id=2, name="bob"), Employee(id=3, name="cy")]
        )
        session.commit()
    yield maker
    yield from sessions  # (uninstalls)


@pytest.mark.parametrize("path", WRITES)
def test_a_statement_on_a_subclass_changes_and_reports_its_rows_only(
    path: str,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    seen = row_sets(events, Manager)
    changed = committed_diff(Session, engine, TABLES, WRITES[path])
    assert {pk for _, pk in changed} == {(2,)}  # the manager alone
    assert delivered(changesets[-1]) == changed
    assert seen == [[(2,)]]


@pytest.mark.parametrize("path", [*WRITES, "insert", "bulk insert", "bulk update by key"], ids=str)
def test_a_statement_on_a_subclass_reports_its_rows_as_the_subclass_s(
    path: str,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    changesets: list[ChangeSet],
) -> None:
    """As on the unit of work: ``for_model``, the subclass's after_commit callbacks and its
    capture level all apply to the rows a statement on it writes."""
    committed: list[tuple[Any, ...]] = []
    events.listens_for(Manager, "after_commit")(lambda cls, op, change: committed.append(change.pk))
    write = {
        "insert": lambda s: s.execute(sa.insert(Manager).values(id=4, name="di", kind="manager")),
        "bulk insert": lambda s: s.execute(sa.insert(Manager), [{"id": 4, "name": "di"}]),
        "bulk update by key": lambda s: s.execute(sa.update(Manager), [{"id": 2, "name": "b"}]),
    }.get(path) or WRITES[path]
    with Session() as session:
        write(session)
        session.commit()
    [change] = changesets[-1].changes
    assert change.model == "Manager"
    assert changesets[-1].for_model(Manager) == (change,)
    assert committed == [change.pk]


def test_a_statement_on_a_subclass_is_captured_at_its_level(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    changesets: list[ChangeSet],
) -> None:
    events.set_capture_level(Manager, "off")
    with Session() as session:
        session.execute(sa.update(Manager).values(name="boss"))
        session.execute(sa.update(Employee).where(Employee.id == 1).values(name="al"))
        session.commit()
    assert [(c.model, c.pk) for c in changesets[-1].changes] == [("Employee", (1,))]
