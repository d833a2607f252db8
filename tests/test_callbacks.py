"""Model callbacks on the unit of work: arguments, order, vetoes, mute, installation."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import (
    Op,
    RowSet,
    after_commit,
    after_delete,
    after_destroy,
    after_insert,
    after_save,
    after_update,
    before_commit,
    before_delete,
    before_destroy,
    before_insert,
    before_save,
    before_update,
)
from dbevents.callbacks import EVENTS

calls: list[tuple[Any, ...]] = []


class CBase(sa_orm.DeclarativeBase):
    pass


class Stamped:
    """A mixin: its callbacks apply to every model that inherits it, and run first."""

    @before_insert
    @classmethod  # typed code may say so; the decorators accept classmethods too
    def mixin_first(cls, fields: dict[str, Any]) -> None:
        calls.append(("mixin.before_insert", cls.__name__))


class Thing(Stamped, CBase):
    __tablename__ = "things"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    size: Mapped[int] = mapped_column(default=1)

    @before_save
    def b_save(cls, row: Thing) -> None:
        calls.append(("before_save", row.name))

    @before_insert
    def b_insert(cls, fields: dict[str, Any]) -> bool | None:
        calls.append(("before_insert", dict(fields)))
        fields["name"] = fields["name"].strip()
        return bool(fields["name"] == "veto")

    @before_insert
    def b_insert_later(cls, fields: dict[str, Any]) -> None:
        calls.append(("before_insert.later", fields["name"]))

    @after_insert
    def a_insert(cls, fields: dict[str, Any], pk: Any) -> None:
        calls.append(("after_insert", dict(fields), pk))

    @after_save
    def a_save(cls, row: Thing) -> None:
        calls.append(("after_save", row.name))

    @before_update
    def b_update(cls, rows: RowSet[Thing], fields: dict[str, Any]) -> bool:
        calls.append(("before_update", rows.pks, dict(fields)))
        return fields.get("name") == "veto"

    @after_update
    def a_update(cls, rows: RowSet[Thing], fields: dict[str, Any]) -> None:
        calls.append(("after_update", rows.pks, dict(fields)))

    @before_destroy
    def b_destroy(cls, row: Thing) -> None:
        calls.append(("before_destroy", row.name))

    @before_delete
    def b_delete(cls, rows: RowSet[Thing]) -> bool:
        calls.append(("before_delete", rows.pks))
        return any(t.name == "keep" for t in rows)

    @after_delete
    def a_delete(cls, rows: RowSet[Thing]) -> None:
        calls.append(("after_delete", rows.pks, rows.count()))

    @after_destroy
    def a_destroy(cls, row: Thing) -> None:
        calls.append(("after_destroy", row.name))

    @before_commit
    def b_commit(cls, op: Op, change: dbevents.Change) -> None:
        calls.append(("before_commit", op, change.pk))

    @after_commit
    def a_commit(cls, op: Op, change: dbevents.Change) -> None:
        calls.append(("after_commit", op, change.pk))

    @after_commit.operation(Op.DELETE)
    def a_commit_delete(cls, change: dbevents.Change) -> None:
        calls.append(("after_commit.delete", change.pk))


class Part(CBase):
    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(primary_key=True)
    thing_id: Mapped[int] = mapped_column(sa.ForeignKey("things.id"))
    thing: Mapped[Thing] = sa_orm.relationship(backref="parts")


class Tally(CBase):
    __tablename__ = "tallies"

    id: Mapped[int] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(default=0)

    @before_update
    def b_update(cls, rows: RowSet[Tally], fields: dict[str, Any]) -> None:
        calls.append(("tally.before_update", rows.pks, dict(fields)))


class Note(CBase):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(50))

    @before_insert
    def b_insert(cls, fields: dict[str, Any]) -> bool:
        calls.append(("note.before_insert", fields["text"]))
        fields["text"] = fields["text"].upper()
        return "veto" in fields["text"].lower()


class Ledger(CBase):
    """Its before_update changes a clean object and adds a new one to the same flush."""

    __tablename__ = "ledgers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))

    @before_update
    def b_update(cls, rows: RowSet[Ledger], fields: dict[str, Any]) -> None:
        tally = rows.session.get(Tally, 1)
        assert tally is not None
        tally.count += 1
        rows.session.add(Note(text=f"renamed to {fields['name']}"))


@pytest.fixture
def Session(  # noqa: N802
    engine: sa.Engine, events: dbevents.Events
) -> sa_orm.sessionmaker[sa_orm.Session]:
    CBase.metadata.create_all(engine)
    calls.clear()
    maker = sa_orm.sessionmaker(engine)
    events.install(maker)
    return maker


def names(kind: str) -> list[Any]:
    return [c for c in calls if c[0] == kind]


def test_insert_callbacks_fire_in_order_with_their_arguments(Session: Any) -> None:
    with Session() as session:
        session.add(Thing(name="  cube "))
        session.commit()
        pk = session.scalars(sa.select(Thing.id)).one()
    assert [c[0] for c in calls] == [
        "before_save",
        "mixin.before_insert",
        "before_insert",
        "before_insert.later",
        "after_insert",
        "after_save",
        "before_commit",
        "after_commit",
    ]
    assert calls[2] == ("before_insert", {"name": "  cube ", "size": 1})
    assert calls[3] == ("before_insert.later", "cube")  # the earlier callback's change is seen
    assert calls[4] == ("after_insert", {"id": pk, "name": "cube", "size": 1}, pk)
    assert calls[5] == ("after_save", "cube")
    assert calls[6] == ("before_commit", Op.INSERT, (pk,))


def test_before_insert_changes_are_written(Session: Any, engine: sa.Engine) -> None:
    with Session() as session:
        session.add(Thing(name="  padded  "))
        session.commit()
    with engine.connect() as conn:
        assert conn.scalar(sa.text("select name from things")) == "padded"


def test_update_callbacks_get_the_rows_and_changed_fields(Session: Any) -> None:
    with Session() as session:
        thing = Thing(name="a", size=2)
        session.add(thing)
        session.commit()
        calls.clear()
        pk = (thing.id,)
        thing.name = "b"
        thing.size = 2  # not a change
        session.commit()
    assert calls[:4] == [
        ("before_save", "b"),
        ("before_update", (pk,), {"name": "b"}),
        ("after_update", (pk,), {"name": "b"}),
        ("after_save", "b"),
    ]
    assert ("after_commit", Op.UPDATE, pk) in calls


def test_a_no_op_update_runs_no_callbacks(Session: Any) -> None:
    with Session() as session:
        thing = Thing(name="a")
        session.add(thing)
        session.commit()
        calls.clear()
        thing.name = "a"  # expired by the commit, set to the same value
        session.commit()
    assert calls == []


def test_delete_callbacks(Session: Any) -> None:
    with Session() as session:
        thing = Thing(name="gone")
        session.add(thing)
        session.commit()
        pk = (thing.id,)
        calls.clear()
        session.delete(thing)
        session.commit()
    assert calls == [
        ("before_destroy", "gone"),
        ("before_delete", (pk,)),
        ("after_delete", (pk,), 0),  # the rows can't be selected any more
        ("after_destroy", "gone"),
        ("before_commit", Op.DELETE, pk),
        ("after_commit", Op.DELETE, pk),
        ("after_commit.delete", pk),
    ]


def test_veto_insert_skips_only_that_row(Session: Any, engine: sa.Engine) -> None:
    with Session() as session:
        session.add_all([Thing(name="veto"), Thing(name="kept")])
        session.commit()
    with engine.connect() as conn:
        assert conn.scalars(sa.text("select name from things")).all() == ["kept"]
    # the veto stops the later before_insert callback, and no after_* runs for the row
    assert ("before_insert.later", "veto") not in calls
    assert [c[1]["name"] for c in names("after_insert")] == ["kept"]


def test_veto_update_reverts_it(Session: Any, engine: sa.Engine) -> None:
    with Session() as session:
        thing = Thing(name="orig", size=1)
        other = Thing(name="other", size=1)
        session.add_all([thing, other])
        session.commit()
        calls.clear()
        other_pk = (other.id,)
        thing.name = "veto"
        other.size = 5
        session.commit()
        assert thing.name == "orig"
    with engine.connect() as conn:
        assert dict(conn.execute(sa.text("select name, size from things")).all()) == {
            "orig": 1,
            "other": 5,
        }
    assert [c[1] for c in names("after_update")] == [(other_pk,)]


def test_veto_delete_restores_it(Session: Any, engine: sa.Engine) -> None:
    with Session() as session:
        keep = Thing(name="keep")
        drop = Thing(name="drop")
        session.add_all([keep, drop])
        session.commit()
        calls.clear()
        session.delete(keep)
        session.delete(drop)
        session.commit()
        assert keep in session and keep not in session.deleted
    with engine.connect() as conn:
        assert conn.scalars(sa.text("select name from things")).all() == ["keep"]
    assert [c[0] for c in names("after_destroy")] == ["after_destroy"]
    assert names("after_destroy")[0][1] == "drop"


def test_veto_that_would_strand_a_pending_child_raises(Session: Any, engine: sa.Engine) -> None:
    with Session() as session:
        thing = Thing(name="veto")
        session.add(Part(thing=thing))
        with pytest.raises(dbevents.AbortError) as info:
            session.flush()
        assert info.value.instance is thing
        assert info.value.model is Thing
        # nothing was written, and the transaction is still usable
        thing.name = "fine"
        session.commit()
    with engine.connect() as conn:
        assert conn.scalar(sa.text("select count(*) from parts")) == 1
        assert conn.scalar(sa.text("select name from things")) == "fine"


def test_abort_raise_always_raises(engine: sa.Engine) -> None:
    CBase.metadata.create_all(engine)
    events = dbevents.Events(abort="raise")
    maker = events.install(sa_orm.sessionmaker(engine))
    with maker() as session:
        session.add(Thing(name="veto"))
        with pytest.raises(dbevents.AbortError, match="abort"):
            session.flush()
        session.rollback()


def test_after_commit_never_fires_on_savepoint_release_or_rollback(Session: Any) -> None:
    with Session() as session:
        with session.begin_nested():
            session.add(Thing(name="in savepoint"))
        session.flush()
        assert names("after_commit") == []  # released, not committed
        session.rollback()
        assert names("after_commit") == []
        session.add(Thing(name="real"))
        session.commit()
    assert len(names("after_commit")) == 1


def test_muted_runs_no_callbacks(Session: Any, events: dbevents.Events) -> None:
    with Session() as session, events.muted():
        session.add(Thing(name="quiet"))
        session.commit()
    assert calls == []


def test_muted_is_per_context(Session: Any, events: dbevents.Events) -> None:
    import threading

    seen: list[bool] = []
    with events.muted():
        thread = threading.Thread(target=lambda: seen.append(events.is_muted))
        thread.start()
        thread.join()
        assert events.is_muted
    assert seen == [False]


def test_a_session_class_not_installed_on_is_never_touched(Session: Any, engine: sa.Engine) -> None:
    other = sa_orm.sessionmaker(engine)
    with other() as session:
        thing = Thing(name="elsewhere")
        session.add(thing)
        session.commit()
        thing.name = "changed"
        session.commit()
        session.delete(thing)
        session.commit()
        assert "dbevents.state" not in session.info
    assert calls == []


def test_install_twice_is_a_no_op(Session: Any, events: dbevents.Events) -> None:
    events.install(Session)
    with Session() as session:
        session.add(Thing(name="once"))
        session.commit()
    assert len(names("after_insert")) == 1


def test_function_style_listens_for_propagates_to_subclasses(engine: sa.Engine) -> None:
    from tests.models import Animal, Base, Dog

    Base.metadata.create_all(engine)
    events = dbevents.Events()
    seen: list[tuple[str, str]] = []

    @events.listens_for(Animal, "before_insert")
    def on_animal(model: type[Any], fields: dict[str, Any]) -> None:
        seen.append(("animal", model.__name__))

    @events.listens_for(Animal, "after_insert", propagate=False)
    def only_animal(model: type[Any], fields: dict[str, Any], pk: Any) -> None:
        seen.append(("only", model.__name__))

    maker = events.install(sa_orm.sessionmaker(engine))
    with maker() as session:
        session.add_all([Animal(name="a"), Dog(name="d", bark="woof")])
        session.commit()
    assert sorted(seen) == [("animal", "Animal"), ("animal", "Dog"), ("only", "Animal")]


def test_handlers_lists_what_is_registered_and_where() -> None:
    events = dbevents.Events()
    handlers = events.handlers(Thing)
    listed = {(h.event, h.callback.__name__) for h in handlers}
    assert ("before_insert", "mixin_first") in listed
    assert ("after_commit", "a_commit_delete") in listed
    first = handlers[0]
    assert first.callback.__name__ == "mixin_first"  # base class first
    assert "test_callbacks.py:" in first.where
    assert "Thing.before_insert" in str(first)


@pytest.mark.parametrize(
    ("model", "event", "fn", "message"),
    [
        (Thing, "before_create", lambda cls, f: None, "unknown event 'before_create'"),
        (Stamped, "before_insert", lambda cls, f: None, "not a mapped class"),
        (Thing, "after_insert", lambda cls, f: None, "cannot take that"),
        (Thing, "before_update", lambda cls, rows, fields, extra: None, "cannot take that"),
    ],
)
def test_bad_registrations_fail_at_once(model: Any, event: str, fn: Any, message: str) -> None:
    events = dbevents.Events()
    with pytest.raises(dbevents.ConfigurationError, match=message):
        events.listens_for(model, event)(fn)


def test_decorator_checks_the_signature_when_the_class_is_defined() -> None:
    with pytest.raises(dbevents.ConfigurationError, match=r"before_update.*\(cls, rows, fields\)"):

        class Broken:
            @before_update
            def only_fields(cls, fields: dict[str, Any]) -> None: ...


def test_install_rejects_what_is_not_a_session() -> None:
    with pytest.raises(dbevents.ConfigurationError, match="cannot install"):
        dbevents.Events().install(object())


@pytest.mark.parametrize(
    "target",
    [sa_orm.Session, AsyncSession],
    ids=["Session", "AsyncSession"],
)
def test_install_refuses_what_would_touch_every_session(target: Any) -> None:
    """SQLAlchemy's own Session class is every session's: an AsyncSession made without a
    sync_session_class of its own uses it too."""
    with pytest.raises(dbevents.ConfigurationError, match="Session itself"):
        dbevents.Events().install(target)


def test_an_engine_made_from_a_configured_one_counts_as_configured(tmp_path: Any) -> None:
    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{tmp_path}/x.db"))
    derived = engine.execution_options(logging_token="t")  # shares its pool and its BEGIN
    assert dbevents.sqlite.is_configured(derived)
    dbevents.Events().install(sa_orm.sessionmaker(derived))  # no warning (they are errors here)
    engine.dispose()


def test_unconfigured_sqlite_bind_warns(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/x.db")
    with pytest.warns(dbevents.DbEventsWarning, match="sqlite.configure"):
        dbevents.Events().install(sa_orm.sessionmaker(engine))
    engine.dispose()


@pytest.mark.parametrize("event", [name for name in EVENTS if name != "after_commit"])
def test_async_callbacks_are_refused_except_after_commit(event: str) -> None:
    async def callback(*args: Any) -> None: ...

    with pytest.raises(dbevents.ConfigurationError, match=f"{event}.*never be awaited"):
        dbevents.Events().listens_for(Thing, event)(callback)
    with pytest.raises(dbevents.ConfigurationError, match="only after_commit"):
        getattr(dbevents, event)(callback)


def test_async_callbacks_are_refused_in_a_class_body_and_as_callable_objects() -> None:
    class Veto:
        async def __call__(self, cls: Any, rows: Any) -> bool:
            return True

    with pytest.raises(dbevents.ConfigurationError, match="never be awaited"):
        dbevents.Events().listens_for(Thing, "before_delete")(Veto())
    with pytest.raises(dbevents.ConfigurationError, match="before_save"):

        class Broken:
            @before_save
            @classmethod
            async def stamp(cls, row: Any) -> None: ...


def test_async_callbacks_behind_a_decorator_are_refused_too() -> None:
    """A decorator that says what it wraps (functools.wraps) hides no ``async def``: its
    coroutine would be dropped unawaited, and the row written as if no callback ran."""

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    @logged
    async def normalize(cls: Any, fields: dict[str, Any]) -> None: ...

    with pytest.raises(dbevents.ConfigurationError, match="never be awaited"):
        dbevents.Events().listens_for(Thing, "before_insert")(normalize)


def test_async_after_commit_callbacks_are_accepted() -> None:
    async def published(cls: Any, op: Op, change: Any) -> None: ...

    async def inserted(cls: Any, change: Any) -> None: ...

    events = dbevents.Events()
    events.listens_for(Thing, "after_commit")(published)
    events.listens_for(Thing, "after_commit", op=Op.INSERT)(inserted)
    after_commit(published)
    after_commit.operation(Op.DELETE)(inserted)


def test_objects_a_callback_changes_or_adds_get_their_callbacks_in_the_same_flush(
    Session: Any,
) -> None:
    with Session() as session:
        session.add_all([Tally(id=1), Ledger(id=1, name="old")])
        session.commit()
        calls.clear()
        session.get(Ledger, 1).name = "new"
        session.commit()
    assert sorted(calls) == [  # (the pass after the callbacks runs inserts first)
        ("note.before_insert", "renamed to new"),
        ("tally.before_update", ((1,),), {"count": 1}),
    ]
    with Session() as session:
        assert session.scalar(sa.select(Tally.count)) == 1
        assert session.scalars(sa.select(Note.text)).all() == ["RENAMED TO NEW"]
    # a veto of an object a callback added skips it, as for any other object
    with Session() as session:
        session.get(Ledger, 1).name = "veto"
        session.commit()
    with Session() as session:
        assert session.scalar(sa.select(Ledger.name)) == "veto"
        assert session.scalar(sa.select(Tally.count)) == 2
        assert session.scalars(sa.select(Note.text)).all() == ["RENAMED TO NEW"]
