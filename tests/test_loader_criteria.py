"""Statements under a global ``with_loader_criteria`` (multi-tenancy, soft delete).

The application adds its criterion in its own ``do_orm_execute`` listener, and
SQLAlchemy applies it as the statement compiles: the WHERE clause dbevents sees
does not hold it.  Rows the criterion leaves out must be neither changed nor
reported, and the callbacks' row sets must not hold them either.
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
from tests.fixtures import committed_diff, delivered, row_sets


class TBase(sa_orm.DeclarativeBase):
    pass


class Note(TBase):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(10))
    text: Mapped[str] = mapped_column(sa.String(20))


TABLES = ("notes",)

WRITES: dict[str, Any] = {
    "update": lambda s: s.execute(sa.update(Note).values(text="changed")),
    "update where": lambda s: s.execute(
        sa.update(Note).where(Note.text != "none").values(text="changed")
    ),
    "bulk update by key": lambda s: s.execute(
        sa.update(Note), [{"id": 1, "text": "changed"}, {"id": 2, "text": "changed"}]
    ),
    "query update": lambda s: s.query(Note).update({"text": "changed"}),
    "delete": lambda s: s.execute(sa.delete(Note)),
    "query delete": lambda s: s.query(Note).delete(),
}


@pytest.fixture(params=["listened before", "listened after"])
def Session(  # noqa: N802
    request: pytest.FixtureRequest, events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    """Sessions that only ever see tenant "a", whose criterion is listened to before or
    after dbevents is installed."""
    TBase.metadata.create_all(engine)

    class TenantSession(sa_orm.Session):
        pass

    def only_tenant_a(state: sa_orm.ORMExecuteState) -> None:
        if state.is_select or state.is_update or state.is_delete:
            state.statement = state.statement.options(
                sa_orm.with_loader_criteria(Note, Note.tenant == "a")
            )

    maker: sa_orm.sessionmaker[Any] = sa_orm.sessionmaker(engine, class_=TenantSession)
    if request.param == "listened before":
        sa.event.listen(TenantSession, "do_orm_execute", only_tenant_a)
    events.install(maker)
    if request.param == "listened after":
        sa.event.listen(TenantSession, "do_orm_execute", only_tenant_a)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Note),
            [
                {"id": 1, "tenant": "a", "text": "a1"},
                {"id": 2, "tenant": "b", "text": "b2"},
                {"id": 3, "tenant": "a", "text": "a3"},
            ],
        )
    yield maker
    events.uninstall(maker)


@pytest.mark.parametrize("path", WRITES)
def test_rows_the_criterion_leaves_out_are_neither_changed_nor_reported(
    path: str,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    engine: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    seen = row_sets(events, Note)
    changed = committed_diff(Session, engine, TABLES, WRITES[path])
    # (SQLAlchemy applies no criteria to an UPDATE by primary key: each row given is written)
    expected = {(1,), (3,)} if path != "bulk update by key" else {(1,), (2,)}
    assert {pk for _, pk in changed} == expected
    assert delivered(changesets[-1]) == changed
    if path != "bulk update by key":  # (per row: before_update runs once for each)
        assert seen == [[(1,), (3,)]]
