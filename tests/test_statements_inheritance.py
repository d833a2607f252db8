"""Statements on a joined-inheritance model: one statement per table, each captured as its own.

SQLAlchemy's bulk INSERT and UPDATE by primary key write each table of the
mapper with a statement of its own, which still names the subclass's table as
its ``.table``; the changes must land on the table each statement wrote.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents import ChangeSet
from tests.fixtures import table_rows
from tests.models import Animal, Base, Dog
from tests.test_statements import Write, delivered, diff

TABLES = ("animals", "dogs")

WRITES: dict[str, Write] = {
    "bulk insert": lambda s: s.execute(
        sa.insert(Dog),
        [{"id": 10, "name": "max", "bark": "wuff"}, {"id": 11, "name": "bo", "bark": "yip"}],
    ),
    "bulk update by key, one row": lambda s: s.execute(
        sa.update(Dog), [{"id": 1, "name": "rex II", "bark": "grr"}]
    ),
    "bulk update by key, two rows": lambda s: s.execute(
        sa.update(Dog), [{"id": 1, "name": "rex II", "bark": "grr"}, {"id": 2, "name": "fi"}]
    ),
    "update of the subclass's table": lambda s: s.execute(
        sa.update(Dog).where(Dog.id == 1).values(bark="grr")
    ),
    "delete from the subclass's table": lambda s: s.execute(sa.delete(Dog).where(Dog.id == 1)),
    "legacy bulk_insert_mappings": lambda s: s.bulk_insert_mappings(
        Dog, [{"id": 10, "name": "max", "bark": "wuff"}]
    ),
    "legacy bulk_update_mappings": lambda s: s.bulk_update_mappings(
        Dog, [{"id": 1, "name": "rex II", "bark": "grr"}]
    ),
    "legacy bulk_save_objects": lambda s: s.bulk_save_objects(
        [Dog(id=10, name="max", bark="wuff")]
    ),
}


@pytest.mark.parametrize("path", WRITES)
def test_each_table_gets_the_changes_its_statement_made(path: str, engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)
    events = dbevents.Events()
    changesets: list[ChangeSet] = []
    events.on_commit(changesets.append)
    maker = events.install(sa_orm.sessionmaker(engine))
    with maker() as session:
        dogs = [Dog(id=1, name="rex", bark="woof"), Dog(id=2, name="fido", bark="arf")]
        session.add_all([*dogs, Animal(id=3, name="tom")])
        session.commit()
    changesets.clear()
    before = {table: table_rows(engine, table) for table in TABLES}

    with maker() as session:
        WRITES[path](session)
        session.commit()

    expected = {
        (table, *change)
        for table in TABLES
        for change in diff(before[table], table_rows(engine, table))
    }
    assert expected, "the write changed nothing"
    assert delivered(changesets, tables=True) == expected
    if not path.startswith("legacy"):  # (which run Core statements that name no class)
        # the base table's rows too are the subclass's, as on the unit of work
        assert {c.model for cs in changesets for c in cs.changes} == {"Dog"}
