"""Auto fields on the unit of work: ids, timestamps, authorship, mute, actors, short ids."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import fields
from dbevents.fields import UID, Authorship, Timestamps

PAST = dt.datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


class FBase(sa_orm.DeclarativeBase):
    pass


class Note(UID, Timestamps, Authorship, FBase):
    __tablename__ = "notes"

    title: Mapped[str] = mapped_column(sa.String(100))


class Code(UID, FBase):
    """The CRM's short ids."""

    __tablename__ = "codes"
    __uid_length__ = 5

    label: Mapped[str | None] = mapped_column(sa.String(20))


class Tiny(UID, FBase):
    """Only 2**10 possible ids: collisions are certain, so the checks must work."""

    __tablename__ = "tiny"
    __uid_length__ = 10
    __uid_alphabet__ = "ab"


class Octet(UID, FBase):
    """Eight possible ids."""

    __tablename__ = "octet"
    __uid_length__ = 3
    __uid_alphabet__ = "xy"


@fields.auto_fields
class Plain(FBase):
    """No mixins: column factories under names of its own."""

    __tablename__ = "plain"

    key: Mapped[str] = fields.uid(8)
    body: Mapped[str] = mapped_column(sa.String(20))
    made: Mapped[dt.datetime | None] = fields.created_at()
    touched: Mapped[dt.datetime | None] = fields.updated_at()
    author: Mapped[str | None] = fields.created_by(sa.String(40))
    editor: Mapped[str | None] = fields.updated_by(sa.String(40))


class Loose(FBase):
    """Factory columns, stamped by callbacks registered function-style."""

    __tablename__ = "loose"

    id: Mapped[str] = fields.uid(6, "abcdef")
    made: Mapped[dt.datetime | None] = fields.created_at()
    touched: Mapped[dt.datetime | None] = fields.updated_at()
    name: Mapped[str] = mapped_column(sa.String(20))


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    FBase.metadata.create_all(engine)
    maker = sa_orm.sessionmaker(engine)
    events.install(maker)
    yield maker
    events.uninstall(maker)


def _row(engine: sa.Engine, table: str, pk: str, column: str = "id") -> dict[str, Any]:
    t = FBase.metadata.tables[table]
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c[column] == pk)).mappings().one())


# -- insert ----------------------------------------------------------------------------------


def test_insert_stamps_every_field(
    Session: sa_orm.sessionmaker[sa_orm.Session], changesets: list[dbevents.ChangeSet]
) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        note = Note(title="hello")
        session.add(note)
        session.commit()
        note_id = note.id
    assert len(note_id) == 22 and set(note_id) <= set(fields.BASE62)
    with Session() as session:
        loaded = session.get_one(Note, note_id)
        # read back timezone-aware in UTC, on SQLite too
        assert loaded.created_at is not None and loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == dt.timedelta(0)
        assert loaded.updated_at == loaded.created_at
        assert (loaded.created_by, loaded.updated_by) == ("ada", "ada")
    (change,) = changesets[0].changes
    assert change.new is not None
    assert change.new["id"] == note_id
    assert change.new["created_by"] == "ada"
    assert change.new["created_at"] == loaded.created_at
    assert changesets[0].actor == "ada"


def test_explicit_values_are_kept(Session: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        session.add(Note(id="mine", title="t", created_at=PAST, updated_at=PAST, created_by="bob"))
        session.commit()
        note = session.get_one(Note, "mine")
        assert (note.created_at, note.updated_at) == (PAST, PAST)
        assert (note.created_by, note.updated_by) == ("bob", "ada")


def test_without_actor_authors_stay_empty(Session: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    with Session() as session:
        note = Note(title="t")
        session.add(note)
        session.commit()
        assert (note.created_by, note.updated_by) == (None, None)


def test_actor_callable_of_events_and_acting_as_first(
    events: dbevents.Events, Session: sa_orm.sessionmaker[sa_orm.Session]
) -> None:
    events.actor = lambda: 42
    with Session() as session:
        by_callable = Note(title="a")
        session.add(by_callable)
        session.commit()
        with dbevents.acting_as("ada"):
            by_block = Note(title="b")
            session.add(by_block)
            session.commit()
        assert by_callable.created_by == "42"  # coerced to the column's str type
        assert by_block.created_by == "ada"


def test_factories_and_decorator_without_mixins(
    Session: sa_orm.sessionmaker[sa_orm.Session],
) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        plain = Plain(body="x")
        session.add(plain)
        session.commit()
        assert len(plain.key) == 8
        assert plain.made is not None and plain.made == plain.touched
        assert (plain.author, plain.editor) == ("ada", "ada")
        with dbevents.acting_as("bob"):
            plain.body = "y"
            session.commit()
        assert (plain.author, plain.editor) == ("ada", "bob")
        assert plain.touched is not None and plain.touched > plain.made


def test_stamp_functions_register_function_style(
    events: dbevents.Events, Session: sa_orm.sessionmaker[sa_orm.Session]
) -> None:
    with Session() as session:
        session.add(Loose(id="plain1", name="before"))
        session.commit()
        assert session.get_one(Loose, "plain1").made is None  # no callbacks yet
    events.listens_for(Loose, "before_insert")(fields.stamp_insert)
    events.listens_for(Loose, "before_update")(fields.stamp_update)
    with Session() as session:
        loose = Loose(name="x")
        session.add(loose)
        session.get_one(Loose, "plain1").name = "after"
        session.commit()
        assert len(loose.id) == 6 and set(loose.id) <= set("abcdef")
        assert loose.made is not None
        old = session.get_one(Loose, "plain1")
        assert (old.made, old.touched is not None) == (None, True)


# -- update ----------------------------------------------------------------------------------


def _old_note(session: sa_orm.Session) -> Note:
    note = Note(id="n1", title="t", created_at=PAST, updated_at=PAST, created_by="bob")
    note.updated_by = "bob"
    session.add(note)
    session.commit()
    return note


def test_update_bumps_updated_fields_only(
    engine: sa.Engine, Session: sa_orm.sessionmaker[sa_orm.Session]
) -> None:
    with Session() as session:
        note = _old_note(session)
        with dbevents.acting_as("ada"):
            note.title = "new"
            session.commit()
    row = _row(engine, "notes", "n1")
    assert (row["created_by"], row["updated_by"]) == ("bob", "ada")
    with Session() as session:
        note = session.get_one(Note, "n1")
        assert note.created_at == PAST
        assert note.updated_at is not None and note.updated_at > PAST


def test_noop_update_bumps_nothing(
    Session: sa_orm.sessionmaker[sa_orm.Session], changesets: list[dbevents.ChangeSet]
) -> None:
    with Session() as session:
        note = _old_note(session)
        with dbevents.acting_as("ada"):
            note.title = "t"  # the value it has
            session.commit()
        session.expire_all()
        assert (note.updated_at, note.updated_by) == (PAST, "bob")
    assert len(changesets) == 1  # the insert only


def test_explicit_updated_values_are_kept(Session: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    later = PAST + dt.timedelta(days=1)
    with Session() as session:
        note = _old_note(session)
        with dbevents.acting_as("ada"):
            note.title = "new"
            note.updated_at = later
            note.updated_by = "carol"
            session.commit()
        session.expire_all()
        assert (note.updated_at, note.updated_by) == (later, "carol")


# -- mute ------------------------------------------------------------------------------------


def test_nothing_is_stamped_while_muted(
    events: dbevents.Events, engine: sa.Engine, Session: sa_orm.sessionmaker[sa_orm.Session]
) -> None:
    with Session() as session, dbevents.acting_as("ada"):
        with events.muted():
            session.add(Note(id="m1", title="loaded", created_at=PAST, created_by="bob"))
            session.add(Note(id="m2", title="bare"))
            session.commit()
        assert _row(engine, "notes", "m1")["updated_at"] is None
        bare = _row(engine, "notes", "m2")
        assert (bare["created_at"], bare["created_by"], bare["updated_by"]) == (None, None, None)
        with events.muted():
            note = session.get_one(Note, "m1")
            note.title = "changed"
            session.commit()
        row = _row(engine, "notes", "m1")
        assert (row["title"], row["updated_at"], row["updated_by"]) == ("changed", None, None)
        with events.muted():  # a muted insert gets no id either: the caller must give one
            session.add(Note(title="no id"))
            with pytest.warns(sa.exc.SAWarning), pytest.raises(sa.exc.DBAPIError):
                session.commit()


def test_a_load_keeps_the_mirrors_ids_times_and_authors(
    events: dbevents.Events,
    engine: sa.Engine,
    Session: sa_orm.sessionmaker[sa_orm.Session],
    tmp_path: Any,
) -> None:
    events.add_sink(dbevents.MirrorSink(tmp_path / "data", metadata=FBase.metadata))
    notes = FBase.metadata.tables["notes"]
    with Session() as session, dbevents.acting_as("ada"):
        session.add_all(
            [Note(title="stamped"), Note(title="given", created_at=PAST, created_by="bob")]
        )
        session.commit()
    with engine.connect() as conn:
        mirrored = [
            dict(row) for row in conn.execute(sa.select(notes).order_by(notes.c.id)).mappings()
        ]
    assert {row["created_by"] for row in mirrored} == {"ada", "bob"}
    stamped: list[dbevents.ChangeSet] = []
    events.on_commit(stamped.append)
    # the load runs on an installed session's connection, as another actor: nothing is stamped
    with Session() as session, dbevents.acting_as("carol"):
        dbevents.load(session.connection(), FBase.metadata, tmp_path / "data", mode="truncate")
        session.commit()
    with engine.connect() as conn:
        loaded = [
            dict(row) for row in conn.execute(sa.select(notes).order_by(notes.c.id)).mappings()
        ]
    assert loaded == mirrored
    assert stamped == []


# -- actor isolation ---------------------------------------------------------------------------


def test_actors_are_isolated_across_threads(
    engine: sa.Engine, Session: sa_orm.sessionmaker[sa_orm.Session]
) -> None:
    """Both threads are inside their acting_as block when each one writes."""
    a_set, b_set, a_done = threading.Event(), threading.Event(), threading.Event()
    ids: dict[str, str] = {}
    errors: list[BaseException] = []

    def write(actor: str, mine: threading.Event, other: threading.Event) -> None:
        try:
            with dbevents.acting_as(actor):
                mine.set()
                assert other.wait(10)
                if actor == "bob":
                    assert a_done.wait(10)  # SQLite has one writer: take turns
                with Session() as session:
                    note = Note(title=actor)
                    session.add(note)
                    session.commit()
                    ids[actor] = note.id
                if actor == "ada":
                    a_done.set()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
            a_done.set()

    threads = [
        threading.Thread(target=write, args=("ada", a_set, b_set)),
        threading.Thread(target=write, args=("bob", b_set, a_set)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    for actor in ("ada", "bob"):
        row = _row(engine, "notes", ids[actor])
        assert (row["title"], row["created_by"], row["updated_by"]) == (actor, actor, actor)


def test_actors_are_isolated_across_asyncio_tasks(
    events: dbevents.Events, async_engine: AsyncEngine
) -> None:
    class TaskSession(sa_orm.Session):
        pass

    events.install(TaskSession)
    maker = async_sessionmaker(async_engine, sync_session_class=TaskSession, expire_on_commit=False)

    async def main() -> dict[str, tuple[str | None, str | None]]:
        async with async_engine.begin() as conn:
            await conn.run_sync(FBase.metadata.create_all)
        a_set, b_set, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def write(actor: str, mine: asyncio.Event, other: asyncio.Event) -> str:
            with dbevents.acting_as(actor):
                mine.set()
                await other.wait()
                if actor == "bob":
                    await a_done.wait()
                async with maker() as session:
                    note = Note(title=actor)
                    session.add(note)
                    await session.commit()
                a_done.set()
                return note.id

        ada, bob = await asyncio.gather(write("ada", a_set, b_set), write("bob", b_set, a_set))
        async with maker() as session:
            notes = {
                note.title: (note.created_by, note.updated_by)
                for note in await session.scalars(sa.select(Note))
            }
            assert {ada, bob} == set((await session.scalars(sa.select(Note.id))).all())
        return notes

    try:
        assert asyncio.run(main()) == {"ada": ("ada", "ada"), "bob": ("bob", "bob")}
    finally:
        events.uninstall(TaskSession)


# -- short ids -------------------------------------------------------------------------------


def test_short_ids_have_the_configured_shape(Session: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    with Session() as session:
        codes = [Code(label=str(i)) for i in range(50)]
        session.add_all(codes)
        session.commit()
        ids = {code.id for code in codes}
    assert len(ids) == 50
    assert all(len(i) == 5 and set(i) <= set(fields.BASE62) for i in ids)


def test_short_ids_are_checked_against_the_table_and_the_batch(
    engine: sa.Engine, Session: sa_orm.sessionmaker[sa_orm.Session]
) -> None:
    """Eight possible ids: four stored, three set on objects of this flush, one left."""
    everything = {a + b + c for a in "xy" for b in "xy" for c in "xy"}
    stored, explicit = sorted(everything)[:4], sorted(everything)[4:7]
    with Session() as session:
        session.add_all(Octet(id=i) for i in stored)
        session.commit()
        session.add_all(Octet(id=i) for i in explicit)
        generated = Octet()
        session.add(generated)
        session.commit()
        assert generated.id == sorted(everything)[7]
        session.add(Octet())
        with pytest.raises(dbevents.DbEventsError, match="no free id"):
            session.flush()


def test_colliding_short_ids_are_retried_on_the_unit_of_work(
    Session: sa_orm.sessionmaker[sa_orm.Session],
) -> None:
    """900 of 1024 possible ids, in flushes of 100: most candidates are taken."""
    with Session() as session:
        for _ in range(9):
            session.add_all(Tiny() for _ in range(100))
            session.commit()
        assert session.scalar(sa.select(sa.func.count(sa.distinct(Tiny.id)))) == 900


@pytest.mark.soak
def test_hundred_thousand_short_ids_on_the_unit_of_work(
    Session: sa_orm.sessionmaker[sa_orm.Session],
) -> None:
    with Session() as session:
        for _ in range(20):
            session.add_all(Code() for _ in range(5000))
            session.commit()
            session.expunge_all()
        assert session.scalar(sa.select(sa.func.count(sa.distinct(Code.id)))) == 100_000


# -- configuration and types -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "alphabet"), [(0, "ab"), (5, "a"), (5, "abca"), (5, ""), (-1, fields.BASE62)]
)
def test_bad_uid_options_fail_at_once(length: int, alphabet: str) -> None:
    with pytest.raises(dbevents.ConfigurationError):
        fields.uid(length, alphabet)


def test_new_uid_uses_the_whole_alphabet() -> None:
    seen = set("".join(fields.new_uid(40, "abc") for _ in range(20)))
    assert seen == set("abc")
    assert len(fields.new_uid(7)) == 7


def test_naive_datetimes_are_refused(Session: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    with Session() as session:
        session.add(Note(id="n", title="t", created_at=dt.datetime(2020, 1, 1)))
        with pytest.raises(sa.exc.StatementError, match="timezone-aware"):
            session.commit()


def test_other_zones_are_stored_as_utc(Session: sa_orm.sessionmaker[sa_orm.Session]) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    with Session() as session:
        session.add(Note(id="z", title="t", created_at=PAST.astimezone(plus_two)))
        session.commit()
    with Session() as session:
        created = session.get_one(Note, "z").created_at
        assert created == PAST and created is not None and created.tzinfo == dt.UTC
