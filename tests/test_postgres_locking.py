"""PostgreSQL: the rows a captured statement reads first are locked no more strongly than
the statement itself locks them.

An UPDATE that sets no key column takes PostgreSQL's ``FOR NO KEY UPDATE`` row
lock, which lets another transaction insert rows that refer to the updated ones
(its foreign key check takes ``FOR KEY SHARE``).  dbevents reads an UPDATE's old
rows under that same lock, so capturing it blocks no such insert; it still waits
for, and is waited for by, every other writer of those rows, which keeps the old
values it read those the UPDATE changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from tests.fixtures import another_writer
from tests.models import Base, Company, Contact

companies: sa.Table = Company.__table__  # type: ignore[assignment]
contacts: sa.Table = Contact.__table__  # type: ignore[assignment]


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def seeded(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(companies), [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)])
    yield engine


Write = Callable[[sa_orm.Session], object]

#: UPDATEs that set no key column, one for each way their old rows are read
UPDATES: dict[str, Write] = {
    # UPDATE ... FROM (SELECT ... locked) RETURNING old and new: one statement
    "statement": lambda s: s.execute(
        sa.update(Company).where(Company.id <= 2).values(name="renamed")
    ),
    # the rows read first by key, then the UPDATE: an executemany
    "by key": lambda s: s.execute(
        sa.update(Company), [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    ),
    # the rows it may update read first by the unique key it names, then the upsert
    "upsert": lambda s: s.execute(
        sa.dialects.postgresql.insert(Company)
        .values([{"id": 1, "name": "one"}, {"id": 2, "name": "two"}])
        .on_conflict_do_update(index_elements=[Company.id], set_={"name": "renamed"})
    ),
}


def _row_locks(sent: list[str]) -> set[str]:
    """The row locks the SQL sent takes."""
    return set(re.findall(r"FOR (?:NO KEY )?UPDATE", "\n".join(sent)))


def _insert_referring_row(engine: sa.Engine) -> None:
    """Insert a contact of company 1 in a transaction of its own; fail rather than wait."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
        conn.execute(sa.insert(contacts).values(id=50, email="e@example.com", company_id=1))


@pytest.mark.parametrize("write", list(UPDATES))
def test_an_update_lets_others_insert_rows_referring_to_its_rows(
    write: str, events: dbevents.Events, seeded: sa.Engine, statements: list[str]
) -> None:
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = events.install(sa_orm.sessionmaker(seeded))
    try:
        with maker() as session:
            UPDATES[write](session)  # its rows stay locked until the commit below
            # the other transaction's foreign key check locks company 1 FOR KEY SHARE
            _insert_referring_row(seeded)
            session.commit()
    finally:
        events.uninstall(maker)
    assert _row_locks(statements) == {"FOR NO KEY UPDATE"}, statements
    (changeset,) = got
    assert sorted(c.pk for c in changeset.updated) == [(1,), (2,)]
    assert {c.pk: dict(c.old or {}) for c in changeset.updated} == {
        (1,): {"name": "c1"},
        (2,): {"name": "c2"},
    }
    with seeded.connect() as conn:  # the other transaction's row is there
        assert conn.scalar(sa.select(contacts.c.company_id).where(contacts.c.id == 50)) == 1


def test_an_update_still_waits_for_another_writer_and_captures_what_it_changed(
    events: dbevents.Events, seeded: sa.Engine
) -> None:
    """The lock conflicts with every other writer's: the old values read are those the
    UPDATE changed, the other writer's committed ones."""
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = events.install(sa_orm.sessionmaker(seeded))
    other = sa.update(companies).where(companies.c.id == 2).values(name="other")
    try:
        with another_writer(seeded, lambda conn: conn.execute(other)), maker() as session:
            UPDATES["statement"](session)
            session.commit()
    finally:
        events.uninstall(maker)
    (changeset,) = got
    assert {c.pk: dict(c.old or {}) for c in changeset.updated} == {
        (1,): {"name": "c1"},
        (2,): {"name": "other"},
    }


def test_a_delete_locks_its_rows_as_the_delete_does(
    events: dbevents.Events, seeded: sa.Engine, statements: list[str]
) -> None:
    """A DELETE read first (one by key for each parameter set) locks FOR UPDATE, as
    PostgreSQL's DELETE itself does: a row referred to can't be deleted meanwhile."""
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = events.install(sa_orm.sessionmaker(seeded))
    by_key = sa.delete(companies).where(companies.c.id == sa.bindparam("key"))
    try:
        with maker() as session:
            session.execute(by_key, [{"key": 2}, {"key": 3}])
            session.commit()
    finally:
        events.uninstall(maker)
    assert _row_locks(statements) == {"FOR UPDATE"}, statements
    (changeset,) = got
    assert sorted(c.pk for c in changeset.deleted) == [(2,), (3,)]


class KBase(sa_orm.DeclarativeBase):
    pass


class Coded(KBase):
    """A unique column besides the key: another key a foreign key may refer to."""

    __tablename__ = "coded"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str]


def _upsert(**set_: Any) -> Any:
    statement = sa.dialects.postgresql.insert(Coded).values(id=1, code="a", name="n")
    return statement.on_conflict_do_update(index_elements=[Coded.id], set_=set_)


#: (statement, parameter sets, the row lock PostgreSQL takes for it)
KEY_WRITES: dict[str, tuple[Any, list[dict[str, Any]] | None, str]] = {
    "a plain column": (sa.update(Coded).values(name="x"), None, "FOR NO KEY UPDATE"),
    "a unique column": (sa.update(Coded).values(code=Coded.code + "!"), None, "FOR UPDATE"),
    "the primary key": (sa.update(Coded).values(id=Coded.id + 10), None, "FOR UPDATE"),
    "a unique column by key": (
        sa.update(Coded),
        [{"id": 1, "code": "z"}, {"id": 2, "code": "y"}],
        "FOR UPDATE",
    ),
    "an upsert of a plain column": (_upsert(name="x"), None, "FOR NO KEY UPDATE"),
    "an upsert of a unique column": (_upsert(code="z"), None, "FOR UPDATE"),
}


@pytest.mark.parametrize("write", list(KEY_WRITES))
def test_an_update_of_a_unique_key_locks_as_it_does(
    write: str, events: dbevents.Events, engine: sa.Engine, statements: list[str]
) -> None:
    """An UPDATE that sets a column of a unique key takes PostgreSQL's FOR UPDATE lock
    itself: the rows read for it are locked so from the start."""
    KBase.metadata.create_all(engine)
    with engine.begin() as conn:
        rows = [{"id": 1, "code": "a", "name": "n"}, {"id": 2, "code": "b", "name": "m"}]
        conn.execute(sa.insert(Coded), rows)
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = events.install(sa_orm.sessionmaker(engine))
    statement, parameters, lock = KEY_WRITES[write]
    del statements[:]
    try:
        with maker() as session:
            session.execute(statement, parameters)
            session.commit()
    finally:
        events.uninstall(maker)
    assert _row_locks(statements) == {lock}, statements
    (changeset,) = got
    assert changeset.changes
