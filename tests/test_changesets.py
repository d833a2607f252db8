"""Change sets from the unit of work: what is captured, savepoints, delivery."""

from __future__ import annotations

import datetime as dt
import decimal
import gc
import json
import logging
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents import Change, ChangeSet, Op
from dbevents.changes import passed_on, stored_fields
from dbevents.ids import new_id
from tests.fixtures import installed, table_rows
from tests.models import Address, Company, Contact, Dog, Subgroup, Tag

Changes = list[tuple[str, str, tuple[Any, ...], dict[str, Any] | None, dict[str, Any] | None]]


def summary(changeset: ChangeSet) -> Changes:
    return [
        (
            c.op.value,
            c.table,
            c.pk,
            None if c.old is None else dict(c.old),
            None if c.new is None else dict(c.new),
        )
        for c in changeset.changes
    ]


def test_insert_has_the_full_row_with_generated_key_and_server_default(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        company = Company(name="Acme")
        session.add(company)
        session.commit()
        pk = company.id
    (changeset,) = changesets
    assert summary(changeset) == [
        ("insert", "companies", (pk,), None, {"id": pk, "name": "Acme", "rating": 3})
    ]
    assert changeset.created[0].model == "Company"


def test_update_has_only_the_changed_columns(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session() as session:
        contact = Contact(email="a@x", name="A")
        session.add(contact)
        session.commit()
        contact.name = "B"
        contact.email = "a@x"  # unchanged
        session.commit()
        pk = contact.id
    assert summary(changesets[1]) == [("update", "contacts", (pk,), {"name": "A"}, {"name": "B"})]


def test_old_values_of_expired_attributes_take_one_select_per_mapper(
    Session: Any, changesets: list[ChangeSet], engine: sa.Engine
) -> None:
    with Session() as session:
        contacts = [Contact(email=f"{i}@x", name=f"n{i}") for i in range(20)]
        session.add_all(contacts)
        session.commit()  # expires everything
        selects: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                selects.append(statement)

        for c in contacts:
            session.refresh(c)
            session.expire(c, ["name"])  # the old name is not known any more
        sa_event.listen(engine, "before_cursor_execute", count)
        try:
            for i, c in enumerate(contacts):
                c.name = f"renamed{i}"  # sets without loading
            assert selects == []
            session.commit()
        finally:
            sa_event.remove(engine, "before_cursor_execute", count)
    assert len(selects) == 1  # one SELECT for all 20 contacts
    updates = changesets[-1].for_model(Contact)
    assert len(updates) == 20
    assert {c.old["name"] for c in updates if c.old} == {f"n{i}" for i in range(20)}


def test_an_expired_attribute_a_later_before_flush_listener_sets_has_its_old_value(
    events: dbevents.Events, tables: sa.Engine, changesets: list[ChangeSet]
) -> None:
    """The application's own before_flush runs after dbevents' (installed first)."""
    maker = events.install(sa_orm.sessionmaker(tables))

    @sa_event.listens_for(maker, "before_flush")
    def stamp(session: sa_orm.Session, context: Any, instances: Any) -> None:
        for obj in session.dirty:
            if isinstance(obj, Contact):
                obj.email = "same@x"  # its stored value: nothing to report
                obj.company_id = None  # stored None too

    try:
        with maker() as session:
            session.add(Contact(id=1, email="same@x", name="A"))
            session.commit()
            contact = session.get_one(Contact, 1)
            session.expire(contact)
            contact.name = "B"
            session.commit()
    finally:
        events.uninstall(maker)
    assert summary(changesets[-1]) == [("update", "contacts", (1,), {"name": "A"}, {"name": "B"})]


def test_delete_has_the_row_even_when_it_was_expired(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        contact = Contact(email="gone@x", name="Gone")
        session.add(contact)
        session.commit()
        pk = contact.id
        session.delete(contact)
        session.commit()
    assert summary(changesets[1]) == [
        (
            "delete",
            "contacts",
            (pk,),
            {"id": pk, "email": "gone@x", "name": "Gone", "company_id": None},
            None,
        )
    ]


def test_net_result_within_a_transaction(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session() as session:
        kept = Contact(email="k@x")
        dropped = Contact(email="d@x")
        session.add_all([kept, dropped])
        session.flush()
        kept.name = "Kept"
        session.flush()
        session.delete(dropped)
        session.commit()
        pk = kept.id
    assert summary(changesets[0]) == [
        (
            "insert",
            "contacts",
            (pk,),
            None,
            {"id": pk, "email": "k@x", "name": "Kept", "company_id": None},
        )
    ]


def test_a_transaction_with_no_net_change_delivers_nothing(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        contact = Contact(email="t@x")
        session.add(contact)
        session.flush()
        session.delete(contact)
        session.commit()
    assert changesets == []


def test_released_savepoint_merges_and_rolled_back_one_is_discarded(
    Session: Any, changesets: list[ChangeSet], engine: sa.Engine
) -> None:
    with Session() as session:
        session.add(Contact(email="outer@x"))
        with session.begin_nested():
            session.add(Contact(email="released@x"))
        savepoint = session.begin_nested()
        session.add(Contact(email="rolled@x"))
        session.flush()
        savepoint.rollback()
        try:
            with session.begin_nested():
                session.add(Contact(email="raised@x"))
                session.flush()
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        session.commit()
    emails = sorted(c.new["email"] for c in changesets[0].created if c.new)
    assert emails == ["outer@x", "released@x"]
    with engine.connect() as conn:
        assert sorted(conn.scalars(sa.text("select email from contacts"))) == emails


def test_flush_error_inside_a_savepoint_discards_only_its_part(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        session.add(Tag(namespace="a", name="1", label="first"))
        session.commit()
        session.add(Contact(email="kept@x"))
        session.flush()
        with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
            session.add(Contact(email="lost@x"))
            session.add(Tag(namespace="a", name="1", label="duplicate"))
            session.flush()
        session.commit()
    assert [c.new["email"] for c in changesets[1].created if c.new] == ["kept@x"]


def test_rollback_and_close_deliver_nothing(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session() as session:
        session.add(Contact(email="r@x"))
        session.flush()
        session.rollback()
        session.add(Contact(email="c@x"))
        session.flush()
    assert changesets == []


def test_released_savepoint_does_not_deliver(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session() as session:
        with session.begin_nested():
            session.add(Contact(email="s@x"))
        assert changesets == []
        session.rollback()
    assert changesets == []


def test_many_to_many_from_both_sides_and_parent_delete(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        contact = Contact(email="m@x")
        group, other = Subgroup(name="g"), Subgroup(name="o")
        contact.subgroups.append(group)  # the backref adds it to group.contacts too
        other.contacts.append(contact)  # from the other side
        session.add_all([contact, group, other])
        session.commit()
        cid, gid, oid = contact.id, group.id, other.id
        contact.subgroups.remove(group)
        session.commit()
        session.delete(contact)
        session.commit()
    links = [c for c in changesets[0].changes if c.table == "contact_subgroup"]
    assert sorted((c.op.value, c.pk) for c in links) == [("link", (cid, gid)), ("link", (cid, oid))]
    assert links[0].model is None and links[0].new == {
        "contact_id": cid,
        "subgroup_id": links[0].pk[1],
    }
    assert summary(changesets[1]) == [
        ("unlink", "contact_subgroup", (cid, gid), {"contact_id": cid, "subgroup_id": gid}, None)
    ]
    assert sorted((c.op.value, c.table) for c in changesets[2].changes) == [
        ("delete", "contacts"),
        ("unlink", "contact_subgroup"),
    ]


def test_link_then_unlink_in_one_transaction_is_nothing(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        contact, group = Contact(email="x@x"), Subgroup(name="g")
        session.add_all([contact, group])
        session.commit()
        contact.subgroups.append(group)
        session.flush()
        contact.subgroups.remove(group)
        session.commit()
    assert len(changesets) == 1  # only the first commit


def test_association_table_without_primary_key(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session() as session:
        a, b = Company(name="a"), Company(name="b")
        a.partners.append(b)
        session.add_all([a, b])
        session.commit()
        a.partners.remove(b)
        session.commit()
        ids = (a.id, b.id)
    (link,) = changesets[0].linked
    assert link.table == "company_partner" and link.pk == ids
    (unlink,) = changesets[1].unlinked
    assert unlink.pk == ids and unlink.old == {"company_id": ids[0], "partner_id": ids[1]}


def test_delete_orphan_and_cascade_are_captured(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session() as session:
        contact = Contact(email="o@x", addresses=[Address(city="A"), Address(city="B")])
        session.add(contact)
        session.commit()
        orphan = contact.addresses[0]
        orphan_id = orphan.id
        contact.addresses.remove(orphan)  # delete-orphan: never in session.deleted
        session.commit()
        contact_id = contact.id
        session.delete(contact)  # cascades to the other address
        session.commit()
    assert summary(changesets[1]) == [
        (
            "delete",
            "addresses",
            (orphan_id,),
            {"id": orphan_id, "contact_id": contact_id, "city": "A"},
            None,
        )
    ]
    assert sorted(c.table for c in changesets[2].deleted) == ["addresses", "contacts"]


def test_a_row_changed_then_deleted_is_delivered_as_it_was_stored(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    """The change not flushed before the delete never reached the database: the deleted
    row's old values are what it held."""
    with Session() as session:
        session.add(Contact(id=1, email="a@x", name="orig"))
        session.commit()
        contact = session.get_one(Contact, 1)
        session.refresh(contact, ["addresses", "subgroups", "company"])
        # (loaded now: delete() cascades without loading them, so without an autoflush)
        contact.name = "edited"
        with session.no_autoflush:
            session.delete(contact)
        session.commit()
    [deleted] = changesets[1].changes
    assert deleted.op is Op.DELETE
    assert deleted.old == {"id": 1, "email": "a@x", "name": "orig", "company_id": None}


def test_joined_inheritance_yields_a_change_per_table(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        dog = Dog(name="Rex", bark="woof")
        session.add(dog)
        session.commit()
        dog.bark = "WOOF"
        session.commit()
        pk = dog.id
    assert summary(changesets[0]) == [
        ("insert", "animals", (pk,), None, {"id": pk, "kind": "dog", "name": "Rex"}),
        ("insert", "dogs", (pk,), None, {"id": pk, "bark": "woof"}),
    ]
    assert {c.model for c in changesets[0].changes} == {"Dog"}
    assert summary(changesets[1]) == [("update", "dogs", (pk,), {"bark": "woof"}, {"bark": "WOOF"})]


def test_primary_key_change_is_delete_plus_insert(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    with Session() as session:
        tag = Tag(namespace="n", name="old", label="L")
        session.add(tag)
        session.commit()
        tag.name = "new"
        session.commit()
    assert summary(changesets[1]) == [
        ("delete", "tags", ("n", "old"), {"namespace": "n", "name": "old", "label": "L"}, None),
        ("insert", "tags", ("n", "new"), None, {"namespace": "n", "name": "new", "label": "L"}),
    ]


def test_values_survive_expire_on_commit(Session: Any, changesets: list[ChangeSet]) -> None:
    with Session(expire_on_commit=True) as session:
        contact = Contact(email="e@x")
        session.add(contact)
        session.commit()
        assert "email" not in sa.inspect(contact).dict  # expired
    assert changesets[0].created[0].new is not None
    assert changesets[0].created[0].new["email"] == "e@x"


def test_mutable_values_are_copied_at_flush_time(Session: Any, engine: sa.Engine) -> None:
    received: list[ChangeSet] = []

    class Box(sa_orm.DeclarativeBase):
        pass

    class Doc(Box):
        __tablename__ = "docs"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        body: sa_orm.Mapped[dict[str, Any]] = sa_orm.mapped_column(sa.JSON)

    Box.metadata.create_all(engine)
    events = dbevents.Events()
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(engine))
    with maker() as session:
        body = {"a": [1]}
        session.add(Doc(body=body))
        session.commit()
        body["a"].append(2)  # after the commit: must not change what was delivered
    assert received[0].created[0].new is not None
    assert received[0].created[0].new["body"] == {"a": [1]}


@pytest.mark.parametrize(
    ("level", "old", "new"),
    [("keys", None, None), ("new", None, {"name": "B"}), ("old+new", {"name": "A"}, {"name": "B"})],
)
def test_capture_levels(
    tables: sa.Engine, level: Any, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    received: list[ChangeSet] = []
    events = dbevents.Events(capture={Contact: level, "Company": "off"})
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        contact = Contact(email="l@x", name="A")
        session.add_all([contact, Company(name="ignored")])
        session.commit()
        contact.name = "B"
        session.commit()
        pk = (contact.id,)
    assert [c.table for c in received[0].changes] == ["contacts"]
    (update,) = received[1].changes
    assert update.op is Op.UPDATE and update.pk == pk
    assert (update.old, update.new) == (old, new)


@pytest.mark.parametrize("key", ["dogs", "animals"])
def test_capture_level_by_table_name(tables: sa.Engine, key: str) -> None:
    """A table name sets the level of the model stored in it, and of its subclasses."""
    received: list[ChangeSet] = []
    events = dbevents.Events(capture={key: "keys"})
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        session.add_all([Dog(name="Rex", bark="woof"), Contact(email="t@x", name="T")])
        session.commit()
    news = {c.table: c.new for c in received[0].changes}
    assert news["dogs"] is None and news["animals"] is None  # keys only
    assert news["contacts"] is not None and news["contacts"]["name"] == "T"


def test_capture_level_for_an_unknown_name_warns(tables: sa.Engine) -> None:
    events = dbevents.Events(capture={"Contacts": "off"})  # the class is Contact
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session, pytest.warns(dbevents.DbEventsWarning, match="'Contacts'"):
        session.add(Contact(email="u@x", name="U"))
        session.commit()


def test_capture_level_off_by_class_attribute(tables: sa.Engine) -> None:
    class Quiet(sa_orm.DeclarativeBase):
        pass

    class Log(Quiet):
        __tablename__ = "logs"
        __dbevents_capture__ = "off"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)

    Quiet.metadata.create_all(tables)
    received: list[ChangeSet] = []
    events = dbevents.Events()
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        session.add_all([Log(), Contact(email="x@x")])
        session.commit()
    assert [c.table for c in received[0].changes] == ["contacts"]


def test_failing_receivers_are_isolated(
    tables: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    events = dbevents.Events()
    order: list[str] = []
    errors: list[tuple[Exception, Any]] = []

    @events.on_commit
    def first(changeset: ChangeSet) -> None:
        order.append("first")
        raise ValueError("first failed")

    memory = events.add_sink(dbevents.MemorySink())

    @events.on_commit
    def last(changeset: ChangeSet) -> None:
        order.append("last")

    events.on_error(lambda error, receiver, changeset: errors.append((error, receiver)))
    maker = events.install(sa_orm.sessionmaker(tables))
    with caplog.at_level(logging.ERROR, logger="dbevents"), maker() as session:
        session.add(Contact(email="f@x"))
        session.commit()  # does not raise: the commit happened
    assert order == ["first", "last"]
    assert isinstance(memory, dbevents.MemorySink) and len(memory.changesets) == 1
    assert [(str(e), r) for e, r in errors] == [("first failed", first)]
    assert "first failed" in caplog.text


def test_not_robust_raises_an_exception_group_after_all_ran(tables: sa.Engine) -> None:
    events = dbevents.Events(robust=False)
    ran: list[str] = []

    @events.on_commit
    def fails(cs: dbevents.ChangeSet) -> None:
        ran.append("a")
        raise ZeroDivisionError

    events.on_commit(lambda cs: ran.append("b"))
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        session.add(Contact(email="g@x"))
        with pytest.raises(ExceptionGroup) as info:
            session.commit()
    assert ran == ["a", "b"]
    assert info.group_contains(ZeroDivisionError)
    with tables.connect() as conn:  # committed all the same
        assert conn.scalar(sa.text("select count(*) from contacts")) == 1


def test_a_commit_made_while_delivering_is_delivered_after_in_commit_order(
    tables: sa.Engine,
) -> None:
    # an after_commit callback that writes the row it was told of, and commits
    events = dbevents.Events()
    memory = events.add_sink(dbevents.MemorySink())
    received: list[list[tuple[str, dict[str, Any]]]] = []
    events.on_commit(
        lambda cs: received.append([(c.op.value, dict(c.new or {})) for c in cs.changes])
    )
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:

        @events.listens_for(Contact, "after_commit", op=Op.INSERT)
        def name_it(cls: type[Contact], change: Change) -> None:
            contact = session.get_one(Contact, change.pk)
            contact.name = contact.email.upper()
            session.commit()
            assert received[-1][0][0] == "insert"  # (this commit is not delivered yet)

        session.add(Contact(id=1, email="h@x"))
        session.commit()
    assert received == [
        [("insert", {"id": 1, "email": "h@x", "name": None, "company_id": None})],
        [("update", {"name": "H@X"})],
    ]
    assert isinstance(memory, dbevents.MemorySink)
    assert memory.get("contacts", 1) == table_rows(tables, "contacts")[(1,)]


def test_commits_made_while_delivering_come_in_the_order_they_were_made(
    tables: sa.Engine,
) -> None:
    events = dbevents.Events()
    received: list[list[int]] = []
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:

        @events.on_commit
        def two_more(changeset: ChangeSet) -> None:
            received.append([int(c.pk[0]) for c in changeset.changes])
            if len(received) == 1:
                for key in (2, 3):
                    session.add(Contact(id=key, email=f"{key}@x"))
                    session.commit()

        session.add(Contact(id=1, email="1@x"))
        session.commit()
    assert received == [[1], [2], [3]]


def test_commit_order_holds_for_every_events_on_the_session(tables: sa.Engine) -> None:
    """The first Events' after_commit callback commits again before the second Events
    had the first change set: the second still gets them in commit order."""
    first, second = dbevents.Events(), dbevents.Events()
    memory = second.add_sink(dbevents.MemorySink())
    maker = sa_orm.sessionmaker(tables)
    first.install(maker)
    second.install(maker)

    @first.listens_for(Contact, "after_commit", op=Op.INSERT)
    def name_it(cls: type[Contact], change: Change) -> None:
        with maker() as other:
            other.get_one(Contact, change.pk).name = "named"
            other.commit()

    with maker() as session:
        session.add(Contact(id=1, email="o@x"))
        session.commit()
    assert isinstance(memory, dbevents.MemorySink)
    assert [[c.op for c in cs.changes] for cs in memory.changesets] == [[Op.INSERT], [Op.UPDATE]]
    assert memory.get("contacts", 1) == table_rows(tables, "contacts")[(1,)]


def test_not_robust_raises_the_failures_of_a_commit_made_while_delivering(
    tables: sa.Engine,
) -> None:
    events = dbevents.Events(robust=False)
    delivered: list[int] = []
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:

        @events.on_commit
        def commits_once_then_fails(cs: ChangeSet) -> None:
            delivered.append(len(delivered))
            if len(delivered) == 1:
                session.add(Contact(email="second@x"))
                session.commit()
            else:
                raise ZeroDivisionError

        session.add(Contact(email="first@x"))
        with pytest.raises(ExceptionGroup) as info:
            session.commit()
    assert delivered == [0, 1]  # both delivered, the failing one after the first
    assert info.group_contains(ZeroDivisionError)


def test_concurrent_sessions_in_threads_do_not_leak(
    Session: Any, changesets: list[ChangeSet]
) -> None:
    # both sessions hold pending work at once; SQLite then serialises their flushes
    barrier = threading.Barrier(2, timeout=30)

    def work(name: str, rollback: bool) -> None:
        with Session() as session:
            session.add(Company(name=name))
            barrier.wait()
            session.flush()
            if rollback:
                session.rollback()
            else:
                session.commit()

    threads = [
        threading.Thread(target=work, args=("kept", False)),
        threading.Thread(target=work, args=("rolled back", True)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [[c.new["name"] for c in cs.changes if c.new] for cs in changesets] == [["kept"]]


def test_actor_from_acting_as_and_from_a_callable(tables: sa.Engine) -> None:
    received: list[ChangeSet] = []
    events = dbevents.Events(actor=lambda: "system")
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        with dbevents.acting_as(42):
            session.add(Contact(email="a@x"))
            session.commit()
        session.add(Contact(email="b@x"))
        session.commit()
    assert [cs.actor for cs in received] == ["42", "system"]


def test_memory_sink_keeps_latest_rows(Session: Any, memory: dbevents.MemorySink) -> None:
    with Session() as session:
        contact = Contact(email="m@x", name="A")
        session.add(contact)
        session.commit()
        contact.name = "B"
        session.commit()
        pk = contact.id
        assert memory.get("contacts", pk) == {
            "id": pk,
            "email": "m@x",
            "name": "B",
            "company_id": None,
        }
        session.delete(contact)
        session.commit()
    assert memory.rows("contacts") == {}
    assert len(memory.changesets) == 3


@pytest.mark.parametrize("level", ["keys", "new", "old+new"])
def test_statement_capture_levels(tables: sa.Engine, level: Any) -> None:
    received: list[ChangeSet] = []
    events = dbevents.Events(capture={Contact: level})
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        session.add_all([Contact(email="a@x", name="A"), Contact(email="b@x", name="B")])
        session.commit()
        # one row really changes; the other is set to the name it already has
        session.execute(sa.update(Contact).values(name="B"))
        session.execute(sa.delete(Contact).where(Contact.email == "a@x"))
        session.commit()
    changes = {(c.op, c.pk): c for c in received[1].changes}
    deleted = changes.pop((Op.DELETE, (1,)))
    assert deleted.new is None
    row = {"id": 1, "email": "a@x", "name": "A", "company_id": None}  # as the transaction found it
    assert deleted.old == (row if level == "old+new" else None)
    if level == "keys":
        # only keys are read: the unchanged row is reported too (docs/limits.md)
        assert set(changes) == {(Op.UPDATE, (2,))}
        assert (changes[(Op.UPDATE, (2,))].old, changes[(Op.UPDATE, (2,))].new) == (None, None)
    else:
        assert changes == {}  # row 1's update folded into its delete; row 2 did not change


def test_a_statement_nobody_listens_to_is_not_read(tables: sa.Engine) -> None:
    selects: list[str] = []
    sa.event.listen(
        tables,
        "before_cursor_execute",
        lambda conn, cursor, sql, *args: selects.append(sql) if "SELECT" in sql else None,
    )
    received: list[ChangeSet] = []
    events = dbevents.Events(capture={Contact: "off"})
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        session.add(Contact(email="a@x", name="A"))
        session.commit()
        selects.clear()
        result: sa.CursorResult[Any] = session.execute(  # type: ignore[assignment]
            sa.update(Contact).values(name="B")
        )
        assert result.rowcount == 1
        session.commit()
    assert selects == []
    assert received == []


def test_a_change_set_reads_the_same_whichever_way_it_is_first_read(
    Session: Any, memory: dbevents.MemorySink
) -> None:
    with Session() as session:
        acme, gone = Company(name="Acme"), Company(name="Gone")
        session.add_all([acme, gone])
        session.commit()
        acme.name = "Acme 2"
        session.delete(gone)
        session.add(Company(name="New"))
        session.commit()
        ids = acme.id, gone.id
    delivered = memory.changesets[-1]  # the sink read its rows, and nothing else of it
    by_json, by_changes, by_len = (pickle.loads(pickle.dumps(delivered)) for _ in range(3))
    text = by_json.to_json()  # its JSON first, its changes after
    changes = by_changes.changes  # the other way round
    assert len(by_len) == len(changes) == 3
    assert text == by_changes.to_json() == delivered.to_json()
    assert by_json.changes == changes == delivered.changes
    assert ChangeSet.from_json(text) == delivered
    assert sorted((c.op.value, c.pk[0] in ids) for c in changes) == [
        ("delete", True),
        ("insert", False),
        ("update", True),
    ]
    assert memory.get("companies", ids[0]) == {"id": ids[0], "name": "Acme 2", "rating": 3}
    assert memory.get("companies", ids[1]) is None


def test_a_change_set_holds_plain_names_the_garbage_collector_does_not_track(
    Session: Any, memory: dbevents.MemorySink
) -> None:
    # SQLAlchemy's names are a str subclass that the collector tracks, with every row
    # and key holding one: many thousands of those in a big commit bring on its full
    # collections
    with Session() as session:
        acme = Company(name="Acme")
        session.add(acme)
        session.commit()
        acme.name = "Acme 2"  # on the unit of work
        session.flush()
        session.execute(sa.update(Company).values(rating=5))  # by a statement
        session.commit()
    changeset = memory.changesets[-1]
    assert [(c.op, dict(c.old or {}), dict(c.new or {})) for c in changeset] == [
        (Op.UPDATE, {"name": "Acme", "rating": 3}, {"name": "Acme 2", "rating": 5})
    ]
    ((_, table, _, pk, old, new),) = stored_fields(changeset)  # the rows, not their views
    assert old is not None and new is not None
    assert all(type(name) is str for name in (table, *old, *new))
    gc.collect()
    assert not any(map(gc.is_tracked, (pk, old, new)))
    assert not any(map(gc.is_tracked, memory.rows("companies")))


def test_commit_callbacks_get_changes_that_nobody_keeps(
    Session: Any, events: dbevents.Events, memory: dbevents.MemorySink
) -> None:
    # a Change is an object the collector tracks: one per row kept from before_commit to
    # the end of delivery makes a big commit bring on a full collection
    rating = uuid.uuid4().int % 10**9  # this test's changes, told from any other test's
    alive: list[int] = []

    def live_changes() -> int:
        gc.collect()  # (what earlier tests left in reference cycles)
        return sum(type(obj) is Change and obj[5] == {"rating": rating} for obj in gc.get_objects())

    @events.listens_for(Company, "before_commit")
    def before(cls: type[Company], op: Op, change: Change) -> None:
        if op is Op.UPDATE and change.pk == (ids[-1],):
            alive.append(live_changes())

    @events.listens_for(Company, "after_commit")
    def after(cls: type[Company], op: Op, change: Change) -> None:
        if op is Op.UPDATE:
            assert dict(change.new or {}) == {"rating": rating}
            if change.pk == (ids[-1],):
                alive.append(live_changes())

    with Session() as session:
        companies = [Company(name=f"c{i}") for i in range(200)]
        session.add_all(companies)
        session.commit()
        ids = [company.id for company in companies]
        for company in companies:
            company.rating = rating
        session.commit()
    assert alive == [1, 1]  # the one the callback holds
    assert len(memory.changesets[-1].changes) == 200  # and the change set still makes them


class KeyedBase(sa_orm.DeclarativeBase): ...


class Membership(KeyedBase):
    __tablename__ = "keyed_memberships"
    user_id: sa_orm.Mapped[int]
    group_id: sa_orm.Mapped[int]
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)


keyed_notes = sa.Table(  # no primary key: keyed by all of its columns
    "keyed_notes",
    KeyedBase.metadata,
    sa.Column("membership_id", sa.ForeignKey("keyed_memberships.id")),
    sa.Column("text", sa.String(20)),
)


def test_a_change_set_tells_the_key_columns_of_its_tables(engine: sa.Engine) -> None:
    # so that a reader without the models (a relay feeding a mirror) need not guess them
    events = dbevents.Events()
    received: list[ChangeSet] = []
    events.on_commit(received.append)
    for maker in installed(events, engine, KeyedBase.metadata):
        with maker() as session:
            session.add(Membership(user_id=1, group_id=1))  # every value 1: which is the key?
            session.flush()
            session.execute(sa.insert(keyed_notes).values(membership_id=1, text="x"))
            session.commit()
    [changeset] = received
    told = {"keyed_memberships": ("id",), "keyed_notes": ("membership_id", "text")}
    text = changeset.to_json()
    assert json.loads(text)["key_columns"] == {t: list(key) for t, key in told.items()}
    for copy in (changeset, ChangeSet.from_json(text), passed_on(changeset.id, text.decode())):
        assert copy is not None
        assert {table: copy.key_columns(table) for table in told} == told
    assert changeset.key_columns("elsewhere") is None
    assert ChangeSet.from_dict(changeset.to_dict()).key_columns("keyed_memberships") == ("id",)


def test_tables_of_one_name_with_other_keys_tell_no_key(tmp_path: Path) -> None:
    received: list[ChangeSet] = []
    for number, key in enumerate(["a", "b"]):
        metadata = sa.MetaData()
        table = sa.Table(
            "keyed_twice",
            metadata,
            sa.Column("a", sa.Integer, primary_key=key == "a"),
            sa.Column("b", sa.Integer, primary_key=key == "b"),
        )
        engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{tmp_path}/{number}.db"))
        events = dbevents.Events()
        events.on_commit(received.append)
        for maker in installed(events, engine, metadata):
            with maker() as session:
                session.execute(sa.insert(table).values(a=1, b=2))
                session.commit()
        engine.dispose()
    assert [changeset.key_columns("keyed_twice") for changeset in received] == [None, None]
    assert all(b"key_columns" not in changeset.to_json() for changeset in received)


def json_changeset() -> ChangeSet:
    row = {"id": 1, "amount": decimal.Decimal("1.10"), "note": "two\nlines"}
    change = Change(Op.INSERT, "json_deals", "Deal", (1,), None, row)
    return ChangeSet(new_id(), dt.datetime.now(dt.UTC), "ada", (change,))


@pytest.mark.parametrize(
    "layout", [{"indent": 2}, {}, {"separators": (",", ":")}], ids=["indented", "spaced", "compact"]
)
def test_json_written_some_other_way_reads_back_as_one_compact_line(layout: Any) -> None:
    # one change set a line is what a journal or a stream holds
    changeset = json_changeset()
    read = ChangeSet.from_json(json.dumps(changeset.to_dict(), **layout))
    assert read.to_json() == changeset.to_json()
    assert b"\n" not in read.to_json() and read == changeset


def test_json_written_anew_keeps_the_tags_of_classes_not_imported() -> None:
    data = json_changeset().to_dict()
    data["changes"][0]["new"]["mood"] = {"$enum": ["nowhere.models:Mood", "GLAD"]}
    read = ChangeSet.from_json(json.dumps(data, indent=2))
    assert b'"mood":{"$enum":["nowhere.models:Mood","GLAD"]}' in read.to_json()


def test_text_broken_over_lines_is_not_passed_on_as_it_is() -> None:
    changeset = json_changeset()
    text = changeset.to_json().decode()
    assert passed_on(changeset.id, text) is not None
    assert passed_on(changeset.id, text.replace(',"changes"', ',\n"changes"')) is None


def test_columns_the_mapper_leaves_out_are_left_out_of_changes(
    events: dbevents.Events, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    """The unit of work never knows them: no value is better than a wrong one."""

    class XBase(sa_orm.DeclarativeBase):
        pass

    table = sa.Table(
        "excluding",
        XBase.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20)),
        sa.Column("extra", sa.Integer, server_default=sa.text("9")),
    )

    class Excluding(XBase):
        __table__ = table
        __mapper_args__ = {"exclude_properties": ["extra"]}

    XBase.metadata.create_all(engine)
    maker = events.install(sa_orm.sessionmaker(engine))
    try:
        with maker() as session:
            row = Excluding(id=1, name="n")
            session.add(row)
            session.commit()
            session.delete(row)
            session.commit()
    finally:
        events.uninstall(maker)
    [inserted], [deleted] = (cs.changes for cs in changesets)
    assert inserted.new == {"id": 1, "name": "n"}
    assert deleted.old == {"id": 1, "name": "n"}
