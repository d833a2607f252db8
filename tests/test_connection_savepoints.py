"""SAVEPOINTs the application begins on the session's connection itself.

``session.connection().begin_nested()`` is no session transaction: SQLAlchemy
fires no session event for it.  The rows written inside one still leave the
database when it rolls back, so they must leave the change set too, and they
join the enclosing transaction when it is released.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents import ChangeSet
from tests.fixtures import Diff, committed_diff, delivered
from tests.models import Contact

TABLES = ("contacts",)
contacts: sa.Table = Contact.__table__  # type: ignore[assignment]

Write = Callable[[sa_orm.Session, int], object]


def _statement(session: sa_orm.Session, key: int) -> None:
    session.execute(sa.insert(Contact).values(id=key, email=f"{key}@x"))
    session.execute(sa.update(Contact).where(Contact.id == 1).values(name=f"set in {key}"))


def _core(session: sa_orm.Session, key: int) -> None:
    connection = session.connection()
    connection.execute(contacts.insert().values(id=key, email=f"{key}@x"))
    connection.execute(contacts.delete().where(contacts.c.id == 2))


def _unit_of_work(session: sa_orm.Session, key: int) -> None:
    session.add(Contact(id=key, email=f"{key}@x"))
    session.get_one(Contact, 1).name = f"set in {key}"
    session.flush()


WRITES = pytest.mark.parametrize("write", [_statement, _core, _unit_of_work])
Committed = Callable[[Callable[[sa_orm.Session], None]], Diff]


@pytest.fixture
def committed(
    Session: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, changesets: list[ChangeSet]
) -> Committed:
    """Run a transaction on two stored contacts and commit it; check that its change set is
    exactly what it changed in the table, and return that."""
    with Session() as session:
        session.add_all([Contact(id=1, email="1@x"), Contact(id=2, email="2@x")])
        session.commit()
    changesets.clear()

    def run(transaction: Callable[[sa_orm.Session], None]) -> Diff:
        diff = committed_diff(Session, tables, TABLES, transaction)
        if diff:
            (changeset,) = changesets
            assert delivered(changeset) == diff
        else:
            assert changesets == []
        changesets.clear()
        return diff

    return run


@WRITES
@pytest.mark.parametrize("end", ["rollback", "commit"])
def test_a_savepoint_on_the_connection_keeps_or_drops_its_rows(
    committed: Committed, write: Write, end: str
) -> None:
    def transaction(session: sa_orm.Session) -> None:
        session.add(Contact(id=10, email="before@x"))
        session.flush()
        savepoint = session.connection().begin_nested()
        write(session, 11)
        getattr(savepoint, end)()
        session.add(Contact(id=12, email="after@x"))

    assert (("contacts", (11,)) in committed(transaction)) is (end == "commit")


def test_a_rolled_back_savepoint_inside_a_session_savepoint(committed: Committed) -> None:
    def transaction(session: sa_orm.Session) -> None:
        with session.begin_nested():
            _statement(session, 10)
            savepoint = session.connection().begin_nested()
            _statement(session, 11)
            savepoint.rollback()
            _core(session, 12)

    assert {pk for _, pk in committed(transaction)} == {(1,), (2,), (10,), (12,)}


@WRITES
def test_a_rolled_back_savepoint_inside_another_on_the_connection(
    committed: Committed, write: Write
) -> None:
    def transaction(session: sa_orm.Session) -> None:
        outer = session.connection().begin_nested()
        write(session, 10)
        inner = session.connection().begin_nested()
        write(session, 11)
        inner.rollback()  # its rows only: the outer one's stay
        outer.commit()

    diff = committed(transaction)  # (delivered exactly as the table changed)
    assert ("contacts", (10,)) in diff and ("contacts", (11,)) not in diff


@pytest.mark.parametrize("end", ["rollback", "commit"])
def test_a_session_savepoint_inside_one_on_the_connection(committed: Committed, end: str) -> None:
    def transaction(session: sa_orm.Session) -> None:
        savepoint = session.connection().begin_nested()
        _statement(session, 10)
        with session.begin_nested():  # released into the connection's savepoint
            _core(session, 11)
        getattr(savepoint, end)()

    assert bool(committed(transaction)) is (end == "commit")


def test_a_savepoint_left_open_commits_with_the_transaction(committed: Committed) -> None:
    def transaction(session: sa_orm.Session) -> None:
        session.connection().begin_nested()
        _statement(session, 10)

    assert ("contacts", (10,)) in committed(transaction)


def test_a_savepoint_left_open_ends_with_a_rollback(committed: Committed) -> None:
    def transaction(session: sa_orm.Session) -> None:
        session.connection().begin_nested()
        _statement(session, 10)
        session.rollback()
        _core(session, 11)  # the next transaction starts clean

    assert set(committed(transaction)) == {("contacts", (11,)), ("contacts", (2,))}


def test_a_savepoint_begun_while_muted_still_drops_its_rows(
    committed: Committed, events: dbevents.Events
) -> None:
    def transaction(session: sa_orm.Session) -> None:
        with events.muted():
            savepoint = session.connection().begin_nested()
        _statement(session, 10)
        savepoint.rollback()
        _core(session, 11)

    assert ("contacts", (10,)) not in committed(transaction)


def test_a_session_joined_to_an_outer_transaction_keeps_its_own_savepoints(
    events: dbevents.Events, tables: sa.Engine, changesets: list[ChangeSet]
) -> None:
    # join_transaction_mode="create_savepoint": every transaction of the session is a
    # SAVEPOINT the session begins itself, and its commit is that SAVEPOINT's release
    with tables.connect() as connection:
        outer = connection.begin()
        maker = events.install(
            sa_orm.sessionmaker(connection, join_transaction_mode="create_savepoint")
        )
        try:
            with maker() as session:
                session.add(Contact(id=1, email="1@x"))
                session.commit()
                session.add(Contact(id=2, email="2@x"))
                session.rollback()
        finally:
            events.uninstall(maker)
            outer.rollback()
    (changeset,) = changesets
    assert [(c.table, c.pk) for c in changeset.changes] == [("contacts", (1,))]
