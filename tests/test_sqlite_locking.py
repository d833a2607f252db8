"""SQLite: a captured statement waits for another writer, as it would without dbevents.

dbevents reads rows before some statements write them.  On SQLite, a connection
that has read in its transaction and then asks for the write lock another
connection holds is refused at once (``database is locked``) instead of waiting.
dbevents takes the write lock before it reads, so the statement waits for the
other writer to commit, as it would on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from tests.fixtures import another_writer
from tests.models import Base, Company

companies: sa.Table = Company.__table__  # type: ignore[assignment]


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'locking.db'}"
    eng = dbevents.sqlite.configure(sa.create_engine(url, connect_args={"timeout": 10}))
    Base.metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(companies), [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)])
    yield eng
    eng.dispose()


Write = Callable[[sa_orm.Session], object]


def _update_company_2(conn: sa.Connection) -> None:
    conn.execute(sa.update(companies).where(companies.c.id == 2).values(name="other"))


WRITES: dict[str, Write] = {
    "update": lambda s: s.execute(sa.update(Company).where(Company.id <= 2).values(rating=5)),
    "delete": lambda s: s.execute(sa.delete(Company).where(Company.id == 3)),
    "bulk insert": lambda s: s.execute(sa.insert(Company), [{"name": "x"}, {"name": "y"}]),
    "upsert": lambda s: s.execute(
        sa.dialects.sqlite.insert(Company)
        .values([{"id": 1, "name": "one"}, {"id": 9, "name": "nine"}])
        .on_conflict_do_update(index_elements=[Company.id], set_={"name": "one"})
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_statement_waits_for_the_other_writer(
    write: str, events: dbevents.Events, engine: sa.Engine
) -> None:
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = events.install(sa_orm.sessionmaker(engine))
    try:
        with another_writer(engine, _update_company_2), maker() as session:
            WRITES[write](session)
            session.commit()
    finally:
        events.uninstall(maker)
    (changeset,) = got
    assert changeset.changes


def test_a_flush_reading_old_values_waits_for_the_other_writer(
    events: dbevents.Events, engine: sa.Engine
) -> None:
    """Attributes set while expired have their old values read before the flush writes."""
    got: list[dbevents.ChangeSet] = []
    events.on_commit(got.append)
    maker = events.install(sa_orm.sessionmaker(engine))
    try:
        with maker() as session:
            loaded = session.scalars(sa.select(Company).order_by(Company.id)).all()
            ids = [company.id for company in loaded]
            session.commit()  # expires them: their old values are no longer known
            insert_7 = sa.insert(companies).values(id=7, name="other")
            with another_writer(engine, lambda conn: conn.execute(insert_7)):
                for company, id_ in zip(loaded, ids, strict=True):
                    company.name = f"renamed {id_}"  # nothing loaded: SQLAlchemy reads nothing
                session.commit()
    finally:
        events.uninstall(maker)
    (changeset,) = got
    assert sorted((c.pk, dict(c.old or {})) for c in changeset.updated) == [
        ((i,), {"name": f"c{i}"}) for i in (1, 2, 3)
    ]


_stamps = itertools.count(1)


class LBase(sa_orm.DeclarativeBase):
    pass


class Stamped(LBase):
    __tablename__ = "stamped"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    stamp: Mapped[int | None] = mapped_column(onupdate=lambda: next(_stamps))


def test_taking_the_lock_runs_no_default_of_the_table(
    events: dbevents.Events, engine: sa.Engine
) -> None:
    """The statement that takes the lock is not one SQLAlchemy computes defaults for: a
    Python ``onupdate`` is called for the UPDATE alone."""
    LBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Stamped), [{"id": 1, "name": "a"}])
    maker = events.install(sa_orm.sessionmaker(engine))
    before = next(_stamps)
    try:
        with maker() as session:
            session.execute(sa.update(Stamped).where(Stamped.id == 1).values(name="b"))
            session.commit()
    finally:
        events.uninstall(maker)
    assert next(_stamps) == before + 2  # one call in between: the UPDATE's own
    with engine.connect() as conn:
        assert conn.execute(sa.select(Stamped.stamp)).scalar_one() == before + 1


@pytest.mark.parametrize("begin", ["DEFERRED", "IMMEDIATE"])
def test_two_transactions_that_read_then_write(tmp_path: Any, begin: Any) -> None:
    """With BEGIN (deferred) the second writer fails at once, since waiting could
    deadlock; with BEGIN IMMEDIATE it waits for the first to end, then writes."""
    engine = dbevents.sqlite.configure(
        sa.create_engine(f"sqlite:///{tmp_path}/rw.db", connect_args={"timeout": 5}), begin=begin
    )
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Company), [{"id": 1, "name": "a", "rating": 0}])
    bump = sa.update(Company).where(Company.id == 1).values(rating=Company.rating + 1)

    def read_then_write(conn: sa.Connection) -> None:
        conn.execute(sa.select(Company.rating)).all()
        conn.execute(bump)

    with another_writer(engine, read_then_write):  # holds the write lock for a while
        try:
            with engine.begin() as conn:
                read_then_write(conn)
            failed = False
        except sa.exc.OperationalError as error:
            assert "database is locked" in str(error)
            failed = True
    with engine.connect() as conn:
        rating = conn.scalar(sa.select(Company.rating))
    assert (failed, rating) == ((True, 1) if begin == "DEFERRED" else (False, 2))
    engine.dispose()
