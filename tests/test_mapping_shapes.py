"""Mapping shapes beyond one class per table: single-table inheritance with columns of
each subclass's own, and a class mapped to a join of two tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet, RowSet
from tests.fixtures import all_delivered, committed_diff, installed


class ShapesBase(sa_orm.DeclarativeBase):
    pass


class Staff(ShapesBase):
    __tablename__ = "shape_staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(40))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "staff"}


class Engineer(Staff):
    language: Mapped[str | None] = mapped_column(sa.String(20))
    level: Mapped[int | None] = mapped_column(default=1)
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Boss(Staff):
    office: Mapped[str | None] = mapped_column(sa.String(20), server_default="hq")
    __mapper_args__ = {"polymorphic_identity": "boss"}


part_a = sa.Table(
    "shape_a",
    ShapesBase.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20)),
)
part_b = sa.Table(
    "shape_b",
    ShapesBase.metadata,
    sa.Column("a_id", sa.ForeignKey("shape_a.id"), primary_key=True),
    sa.Column("email", sa.String(40)),
)


class Account(ShapesBase):
    __table__ = part_a.join(part_b)

    id = sa_orm.column_property(part_a.c.id, part_b.c.a_id)


TABLES = ("shape_staff", "shape_a", "shape_b")


@pytest.fixture
def maker(
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, engine, ShapesBase.metadata)


@pytest.fixture
def received(events: dbevents.Events) -> list[ChangeSet]:
    out: list[ChangeSet] = []
    events.on_commit(out.append)
    return out


def test_a_single_table_subclass_insert_holds_its_siblings_columns(
    maker: sa_orm.sessionmaker[sa_orm.Session], engine: sa.Engine, received: list[ChangeSet]
) -> None:
    # the INSERT leaves the columns only the other subclasses map to their defaults: none
    # (NULL), a Python scalar, a server default read back
    diff = committed_diff(
        maker,
        engine,
        TABLES,
        lambda s: s.add_all([Engineer(id=1, name="ada", language="py"), Boss(id=2, name="bo")]),
    )
    assert diff[("shape_staff", (1,))][2] == {
        "id": 1, "kind": "engineer", "name": "ada", "language": "py", "level": 1, "office": "hq"
    }  # fmt: skip
    assert all_delivered(received) == diff
    [changeset] = received
    assert ChangeSet.from_json(changeset.to_json()) == changeset


def test_a_mirror_of_single_table_subclasses_verifies(
    events: dbevents.Events, engine: sa.Engine, tmp_path: Path
) -> None:
    events.add_sink(dbevents.MirrorSink(tmp_path, metadata=ShapesBase))
    for maker in installed(events, engine, ShapesBase.metadata):
        with maker() as session:
            session.add_all([Engineer(id=1, name="ada"), Boss(id=2, name="bo", office="b2")])
            session.commit()
        assert dbevents.verify(engine, ShapesBase, tmp_path, tables=["shape_staff"]) == []


def test_a_single_table_subclass_delete_leaves_out_its_siblings_columns(
    maker: sa_orm.sessionmaker[sa_orm.Session], received: list[ChangeSet]
) -> None:
    # documented in limits.md: the unit of work holds no value of columns its mapper
    # does not map
    with maker() as session:
        session.add(Engineer(id=1, name="ada"))
        session.commit()
    received.clear()
    with maker() as session:
        session.delete(session.get(Engineer, 1))
        session.commit()
    [change] = received[0].changes
    assert change.old == {"id": 1, "kind": "engineer", "name": "ada", "language": None, "level": 1}


def test_bulk_update_by_key_of_a_class_mapped_to_a_join_runs_its_callbacks(
    events: dbevents.Events,
    maker: sa_orm.sessionmaker[sa_orm.Session],
    engine: sa.Engine,
    received: list[ChangeSet],
) -> None:
    calls: list[tuple[Any, ...]] = []

    @events.listens_for(Account, "before_update")
    def before(cls: type[Account], rows: RowSet[Account], fields: dict[str, Any]) -> None:
        calls.append(("before_update", dict(fields)))
        fields["email"] = fields["email"].lower()

    @events.listens_for(Account, "after_update")
    def after(cls: type[Account], rows: RowSet[Account], fields: dict[str, Any]) -> None:
        calls.append(("after_update", rows.pks, dict(fields)))

    with maker() as session:
        session.add(Account(id=1, name="a", email="a@x"))
        session.commit()
    received.clear()
    diff = committed_diff(
        maker,
        engine,
        TABLES,
        lambda s: s.execute(sa.update(Account), [{"id": 1, "name": "b", "email": "B@X"}]),
    )
    assert calls == [
        ("before_update", {"name": "b", "email": "B@X"}),
        ("after_update", ((1,),), {"name": "b", "email": "b@x"}),
    ]
    assert diff == {
        ("shape_a", (1,)): ("update", {"name": "a"}, {"name": "b"}),
        ("shape_b", (1,)): ("update", {"email": "a@x"}, {"email": "b@x"}),
    }
    assert all_delivered(received) == diff
    assert {c.model for c in received[0].changes} == {"Account"}
