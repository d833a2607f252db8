"""A new object that takes the key of one deleted in the same flush (a "row switch").

SQLAlchemy writes it as one UPDATE of the row, and fires ``after_update`` for the
new object alone: neither ``after_delete`` for the old one nor ``after_insert``
for the new one.  dbevents delivers the UPDATE the table saw, and gives each
object the ``after_*`` callbacks that go with the ``before_*`` ones it had.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents import ChangeSet, Op
from tests.fixtures import delivered, snapshot, table_diff
from tests.models import Contact

TABLES = ("contacts",)


@pytest.mark.parametrize(
    ("old_state", "new_values", "delivered_new"),
    [
        ("loaded", {"email": "b@x", "name": "B"}, {"email": "b@x", "name": "B"}),
        # name is not set: the UPDATE leaves it as it was
        ("loaded", {"email": "b@x"}, {"email": "b@x"}),
        ("expired", {"email": "b@x"}, {"email": "b@x"}),
        ("modified", {"email": "b@x", "name": "A"}, {"email": "b@x"}),
        ("loaded", {"email": "a@x", "name": "A"}, None),  # the same row again: no change
    ],
)
def test_the_update_the_table_saw_is_delivered(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    tables: sa.Engine,
    changesets: list[ChangeSet],
    old_state: str,
    new_values: dict[str, Any],
    delivered_new: dict[str, Any] | None,
) -> None:
    with Session() as session:
        session.add(Contact(id=1, email="a@x", name="A"))
        session.commit()
        before = snapshot(tables, TABLES)
        old = session.get_one(Contact, 1)
        if old_state == "expired":
            session.expire(old)
        elif old_state == "modified":  # the change set tells the row as it was stored
            old.name = "changed, then deleted"
        session.delete(old)
        session.add(Contact(id=1, **new_values))
        session.commit()
    changes = delivered(changesets[1]) if len(changesets) == 2 else {}
    assert changes == table_diff(before, snapshot(tables, TABLES))
    if delivered_new is None:
        assert len(changesets) == 1
    else:
        (_, changeset) = changesets
        assert [(c.op, c.pk, dict(c.new or {})) for c in changeset.changes] == [
            (Op.UPDATE, (1,), delivered_new)
        ]


def test_each_object_gets_the_after_callbacks_of_its_before_ones(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    changesets: list[ChangeSet],
) -> None:
    calls: list[tuple[str, Any]] = []

    def record(event: str) -> None:
        def callback(cls: type[Any], *args: Any) -> None:
            calls.append((event, _described(args)))

        events.listens_for(Contact, event)(callback)

    for event in (
        "before_insert",
        "after_insert",
        "before_update",
        "after_update",
        "before_delete",
        "after_delete",
        "before_save",
        "after_save",
        "before_destroy",
        "after_destroy",
    ):
        record(event)
    with Session() as session:
        session.add(Contact(id=1, email="a@x"))
        session.commit()
        calls.clear()
        session.delete(session.get(Contact, 1))
        session.add(Contact(id=1, email="b@x"))
        session.commit()
    assert sorted(calls) == sorted(
        [
            ("before_save", "b@x"),
            ("before_insert", {"email": "b@x", "id": 1}),
            ("before_destroy", "a@x"),
            ("before_delete", ["a@x"]),
            ("after_insert", ({"email": "b@x", "id": 1}, 1)),
            ("after_save", "b@x"),
            ("after_delete", ["a@x"]),
            ("after_destroy", "a@x"),
        ]
    )
    assert [c.op for c in changesets[-1].changes] == [Op.UPDATE]


def _described(args: tuple[Any, ...]) -> Any:
    """The callback arguments, with contacts and row sets told by email (comparable)."""
    described = [
        arg.email
        if isinstance(arg, Contact)
        else [c.email for c in arg]
        if isinstance(arg, dbevents.RowSet)
        else arg
        for arg in args
    ]
    return described[0] if len(described) == 1 else tuple(described)


def test_a_vetoed_delete_of_the_old_object_aborts(
    Session: sa_orm.sessionmaker[sa_orm.Session],
    events: dbevents.Events,
    tables: sa.Engine,
    changesets: list[ChangeSet],
) -> None:
    @events.listens_for(Contact, "before_delete")
    def keep(cls: type[Contact], rows: dbevents.RowSet[Contact]) -> bool:
        return True

    with Session() as session:
        session.add(Contact(id=1, email="a@x"))
        session.commit()
        before = snapshot(tables, TABLES)
        session.delete(session.get_one(Contact, 1))
        session.add(Contact(id=1, email="b@x"))
        # undone, the delete would leave the new object's INSERT failing on the key
        with pytest.raises(dbevents.AbortError, match="a new object, takes the key"):
            session.commit()
        session.rollback()
    assert snapshot(tables, TABLES) == before
    assert len(changesets) == 1
