"""A model whose attribute keys are not its column names (``mapped_column("db_name")``).

Change sets are keyed by column name, as the table is; callbacks' ``fields`` by
attribute key, as the model is.  Both must hold on every write path.
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
from tests.fixtures import committed_diff, delivered, installed


class KBase(sa_orm.DeclarativeBase):
    pass


class Person(KBase):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column("person_id", primary_key=True)
    name: Mapped[str] = mapped_column("full_name", sa.String(40))
    age: Mapped[int] = mapped_column("age_years", default=0)


TABLES = ("people",)


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    sessions = installed(events, engine, KBase.metadata)
    maker = next(sessions)
    with engine.begin() as conn:
        conn.execute(
            Person.__table__.insert(),  # type: ignore[attr-defined]
            [{"full_name": "ann", "age_years": 30}],  # (person_id 1, from the sequence)
        )
    yield maker
    yield from sessions  # (uninstalls)


def _unit_of_work(s: sa_orm.Session) -> None:
    s.add(Person(id=2, name="bob", age=40))
    s.get_one(Person, 1).age = 31


def _unit_of_work_expired(s: sa_orm.Session) -> None:
    person = s.get_one(Person, 1)
    s.expire(person)
    person.name = "anna"  # its old value is not loaded


WRITES: dict[str, Any] = {
    "unit of work": _unit_of_work,
    "unit of work, expired": _unit_of_work_expired,
    "unit of work, delete": lambda s: s.delete(s.get_one(Person, 1)),
    "bulk insert": lambda s: s.execute(sa.insert(Person), [{"id": 2, "name": "bob", "age": 40}]),
    "insert values": lambda s: s.execute(sa.insert(Person).values(name="bob")),
    "update where": lambda s: s.execute(
        sa.update(Person).where(Person.name == "ann").values(age=Person.age + 1)
    ),
    "update by key": lambda s: s.execute(sa.update(Person), [{"id": 1, "name": "anna"}]),
    "update of the key": lambda s: s.execute(sa.update(Person).values(id=Person.id + 10)),
    "query update": lambda s: s.query(Person).filter(Person.id == 1).update({"age": 32}),
    "delete where": lambda s: s.execute(sa.delete(Person).where(Person.age > 0)),
    "bulk_update_mappings": lambda s: s.bulk_update_mappings(Person, [{"id": 1, "age": 50}]),
    "bulk_insert_mappings": lambda s: s.bulk_insert_mappings(Person, [{"id": 3, "name": "cy"}]),
    "core bulk insert": lambda s: s.execute(
        Person.__table__.insert(),  # type: ignore[attr-defined]
        [
            {"person_id": 2, "full_name": "bob", "age_years": 40},
            {"person_id": 3, "full_name": "cy"},
        ],
    ),
    "core insert": lambda s: s.execute(
        Person.__table__.insert(),  # type: ignore[attr-defined]
        {"person_id": 2, "full_name": "bob"},
    ),
}


@pytest.mark.parametrize("path", WRITES)
def test_changes_are_keyed_by_column_and_fields_by_attribute(
    path: str,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    keys: set[str] = set()

    @events.listens_for(Person, "before_insert")
    def named(cls: type[Any], fields: dict[str, Any]) -> None:
        keys.update(fields)
        fields["name"] = fields.get("name", "") + "!"  # written back, by attribute key

    @events.listens_for(Person, "after_insert")
    def inserted(cls: type[Any], fields: dict[str, Any], pk: Any) -> None:
        keys.update(fields)

    @events.listens_for(Person, "after_update")
    def updated(cls: type[Any], rows: Any, fields: dict[str, Any]) -> None:
        keys.update(fields)

    changed = committed_diff(Session, engine, TABLES, WRITES[path])
    assert changed  # (every path changes something)
    assert delivered(changesets[-1]) == changed
    assert keys <= {"id", "name", "age"}
