"""A new primary key on the unit of work, delivered as the old key's row deleted
and the new key's inserted: both whole rows, as the database has them.

The columns the object never loaded are read before the flush; those the UPDATE
sets itself (SQL and Python ``onupdate``) are read back after it, by the new key.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, deferred, mapped_column

import dbevents
from dbevents import ChangeSet
from tests.fixtures import committed_diff, delivered, installed

_revisions = itertools.count(100)


class KBase(sa_orm.DeclarativeBase):
    pass


class Doc(KBase):
    __tablename__ = "docs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    body: Mapped[str] = deferred(mapped_column(sa.Text))
    #: set by the UPDATE, in SQL and in Python
    rev: Mapped[int] = mapped_column(default=0, onupdate=sa.literal_column("7"))
    pyrev: Mapped[int] = mapped_column(default=0, onupdate=lambda: next(_revisions))


TABLES = ("docs",)


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    maker = next(gen := installed(events, engine, KBase.metadata))
    with maker() as session:
        session.add_all([Doc(id=i, name=f"d{i}", body=f"body {i}") for i in (1, 2, 3)])
        session.commit()
    yield maker
    next(gen, None)


def move(*ids: int) -> Callable[[sa_orm.Session], None]:
    def write(session: sa_orm.Session) -> None:
        for doc in session.scalars(sa.select(Doc).where(Doc.id.in_(ids))):
            doc.id *= 10  # body stays deferred: never loaded

    return write


def move_expired(session: sa_orm.Session) -> None:
    doc = session.get(Doc, 1)
    assert doc is not None
    session.expire(doc)
    doc.id = 10


@pytest.mark.parametrize(
    "write",
    [move(1), move(2, 3), move_expired],
    ids=["one row", "two rows in one flush", "expired object"],
)
def test_a_new_key_delivers_both_whole_rows_as_stored(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    changesets: list[ChangeSet],
    write: Callable[[sa_orm.Session], Any],
) -> None:
    changesets.clear()
    diff = committed_diff(Session, engine, TABLES, write)
    assert {op for op, _, _ in diff.values()} == {"delete", "insert"}
    [changeset] = changesets
    assert delivered(changeset) == diff
    assert dbevents.ChangeSet.from_json(changeset.to_json()) == changeset
