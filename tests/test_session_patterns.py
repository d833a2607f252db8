"""Session and transaction patterns of real applications: receivers that write through the
session they are told of, flushes that fail part-way, cascades the database runs itself."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents import ChangeSet
from tests.models import Contact


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
