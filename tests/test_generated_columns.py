"""Columns the write itself sets: onupdate (Python and SQL), and the version counter.

An UPDATE changes more than the values the application set: an ``onupdate``
default, a SQL expression evaluated by the database, the mapper's version
column.  The delivered change must hold those too, old and new, on every write
path, and equal the difference of the table read with plain SQL.
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
from dbevents import ChangeSet, RowSet
from tests.fixtures import delivered, snapshot, table_diff, table_rows

_stamps = itertools.count(1)


def _next_stamp() -> int:
    return next(_stamps)


class GBase(sa_orm.DeclarativeBase):
    pass


class Doc(GBase):
    __tablename__ = "docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40))
    #: set in Python by SQLAlchemy on every UPDATE
    stamp: Mapped[int] = mapped_column(default=0, onupdate=_next_stamp)
    #: computed by the database on every UPDATE; SQLAlchemy does not fetch it back
    edits: Mapped[int] = mapped_column(default=0, onupdate=sa.text("edits + 1"))
    #: set in Python by SQLAlchemy on every INSERT that gives none
    serial: Mapped[int | None] = mapped_column(default=_next_stamp)


class Versioned(GBase):
    __tablename__ = "versioned"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40))
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


class SelfCounted(GBase):
    """A version the application counts itself (``version_id_generator=False``)."""

    __tablename__ = "self_counted"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40))
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}


Write = Callable[[sa_orm.Session], object]


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    GBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Doc), [{"id": i, "title": f"t{i}", "stamp": 0} for i in (1, 2)])
        conn.execute(
            sa.insert(Versioned),
            [{"id": 1, "title": "v", "version": 1}, {"id": 2, "title": "v", "version": 5}],
        )
        conn.execute(sa.insert(SelfCounted), [{"id": 1, "title": "v", "version": 1}])
    maker = events.install(sa_orm.sessionmaker(engine))
    yield maker
    events.uninstall(maker)


def _uow(session: sa_orm.Session) -> None:
    for doc in session.scalars(sa.select(Doc)):
        doc.title = doc.title + "!"


def _uow_expired(session: sa_orm.Session) -> None:
    docs = list(session.scalars(sa.select(Doc)))
    for doc in docs:
        session.expire(doc)
        doc.title = "expired"  # no old value loaded: dbevents reads it


def _statement(session: sa_orm.Session) -> None:
    session.execute(sa.update(Doc).where(Doc.id >= 1).values(title="stmt"))


def _by_pk(session: sa_orm.Session) -> None:
    session.execute(sa.update(Doc), [{"id": 1, "title": "pk1"}, {"id": 2, "title": "pk2"}])


def _query_update(session: sa_orm.Session) -> None:
    session.query(Doc).filter(Doc.id >= 1).update({"title": "query"})


def _bulk_mappings(session: sa_orm.Session) -> None:
    session.bulk_update_mappings(Doc, [{"id": 1, "title": "m1"}, {"id": 2, "title": "m2"}])


WRITES: dict[str, Write] = {
    "unit of work": _uow,
    "unit of work, expired": _uow_expired,
    "statement": _statement,
    "bulk update by pk": _by_pk,
    "Query.update": _query_update,
    "bulk_update_mappings": _bulk_mappings,
}


@pytest.mark.parametrize("write", WRITES.values(), ids=list(WRITES))
def test_columns_the_update_sets_are_captured_old_and_new(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
    write: Write,
) -> None:
    before = snapshot(engine, ("docs",))
    with Session() as session:
        write(session)
        session.commit()
    want = table_diff(before, snapshot(engine, ("docs",)))
    assert set(want) == {("docs", (1,)), ("docs", (2,))}
    # the generated columns are part of what changed: stamp in Python, edits in SQL
    assert all({"title", "stamp", "edits"} <= set(new or ()) for _, _, new in want.values())
    (changeset,) = changesets
    assert delivered(changeset) == want


def test_inserts_have_the_defaults_each_row_was_given(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        session.add_all([Doc(id=i, title=f"new{i}", serial=None) for i in (3, 4, 5)])
        session.add_all([Doc(id=i, title=f"new{i}") for i in (6, 7, 8)])
        session.commit()
    stored = table_rows(engine, "docs")
    (changeset,) = changesets
    assert {c.pk: dict(c.new or {}) for c in changeset.created} == {
        pk: row for pk, row in stored.items() if pk not in {(1,), (2,)}
    }
    assert len({stored[(i,)]["serial"] for i in (6, 7, 8)}) == 3  # one call per row


def test_after_update_fields_hold_the_values_written(
    Session: sa_orm.sessionmaker[sa_orm.Session], events: dbevents.Events, engine: sa.Engine
) -> None:
    seen: list[dict[str, Any]] = []

    @events.listens_for(Doc, "after_update")
    def after_update(cls: type[Doc], rows: RowSet[Doc], fields: dict[str, Any]) -> None:
        seen.append(dict(fields))

    with Session() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.title = "new"
        session.commit()
    # what the UPDATE computed itself is not known before it is read back: it is in the
    # change set (above), not in the fields
    assert seen == [{"title": "new"}]


def test_the_version_counter_is_captured_on_every_update(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        rows = list(session.scalars(sa.select(Versioned)))
        for row in rows:
            row.title = "w"
        session.flush()
        for row in rows:
            row.title = "x"
        session.commit()
    stored = table_rows(engine, "versioned")
    assert [stored[(1,)]["version"], stored[(2,)]["version"]] == [3, 7]
    (changeset,) = changesets
    assert delivered(changeset) == {
        ("versioned", (1,)): ("update", {"title": "v", "version": 1}, {"title": "x", "version": 3}),
        ("versioned", (2,)): ("update", {"title": "v", "version": 5}, {"title": "x", "version": 7}),
    }


def test_a_version_the_application_counts_is_captured_when_it_sets_it(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    events: dbevents.Events,
    changesets: list[ChangeSet],
) -> None:
    seen: list[dict[str, Any]] = []

    @events.listens_for(SelfCounted, "after_update")
    def record(cls: Any, rows: RowSet[Any], fields: dict[str, Any]) -> None:
        seen.append(dict(fields))

    with Session() as session:
        row = session.get(SelfCounted, 1)
        assert row is not None
        row.title, row.version = "w", 2
        session.commit()
        row.version = 3  # the version alone
        session.commit()
    assert table_rows(engine, "self_counted")[(1,)]["version"] == 3
    assert [delivered(changeset) for changeset in changesets] == [
        {
            ("self_counted", (1,)): (
                "update",
                {"title": "v", "version": 1},
                {"title": "w", "version": 2},
            )
        },
        {("self_counted", (1,)): ("update", {"version": 2}, {"version": 3})},
    ]
    assert seen == [{"title": "w", "version": 2}, {"version": 3}]


def test_a_stale_version_fails_the_flush_and_delivers_nothing(
    Session: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    with Session(expire_on_commit=False) as session:
        row = session.get(Versioned, 1)
        assert row is not None
        session.commit()  # (SQLite: let the other writer in)
        with engine.begin() as conn:  # someone else updates the row meanwhile
            conn.execute(sa.update(Versioned).where(Versioned.id == 1).values(title="x", version=2))
        row.title = "mine"
        with pytest.raises(sa_orm.exc.StaleDataError):
            session.commit()
    assert changesets == []
    assert table_rows(engine, "versioned")[(1,)]["title"] == "x"
