"""before_commit callbacks: each row's net change once, before COMMIT; what they change commits.

They run in the root's ``before_commit``, after the last flush: a callback may change its
own row or add others, which are flushed into the same transaction, and every row that
joins it gets its own before_commit callbacks too.
"""

from __future__ import annotations

import sqlalchemy.orm as sa_orm

import dbevents
from dbevents import Op
from tests.models import Company, Contact

Maker = sa_orm.sessionmaker[sa_orm.Session]


def test_a_row_a_callback_changes_is_delivered_as_stored(
    Session: Maker, events: dbevents.Events, memory: dbevents.MemorySink
) -> None:
    session: sa_orm.Session

    @events.listens_for(Contact, "before_commit")
    def name_it(cls: type[Contact], op: Op, change: dbevents.Change) -> None:
        if op is Op.INSERT and (change.new or {}).get("name") is None:
            session.get_one(Contact, change.pk).name = "named"

    with Session() as session:
        session.add(Contact(id=1, email="a@x"))
        session.commit()

    [changeset] = memory.changesets
    [change] = changeset.changes
    assert change.op is Op.INSERT and (change.new or {})["name"] == "named"
    with Session() as session:
        assert session.get_one(Contact, 1).name == "named"


def test_a_row_a_callback_adds_gets_its_own_before_commit(
    Session: Maker, events: dbevents.Events, memory: dbevents.MemorySink
) -> None:
    session: sa_orm.Session
    seen: list[tuple[Op, tuple[object, ...]]] = []

    @events.listens_for(Contact, "before_commit")
    def file_it(cls: type[Contact], op: Op, change: dbevents.Change) -> None:
        if op is Op.INSERT:
            session.add(Company(id=100 + int(change.pk[0]), name="made"))

    @events.listens_for(Company, "before_commit")
    def company(cls: type[Company], op: Op, change: dbevents.Change) -> None:
        seen.append((op, change.pk))

    with Session() as session:
        session.add(Contact(id=1, email="a@x"))
        session.commit()

    assert seen == [(Op.INSERT, (101,))]
    [changeset] = memory.changesets
    assert sorted((c.table, c.pk) for c in changeset.changes) == [
        ("companies", (101,)),
        ("contacts", (1,)),
    ]
