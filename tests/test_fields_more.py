"""Auto fields where statements and sessions meet: joined inheritance, callbacks that write
through another session, concurrent writers, multi-row VALUES, upserts, executemany UPDATEs,
column factories given a name."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
import dbevents.sqlite
from dbevents import fields
from dbevents.fields import UID, Authorship, Timestamps
from tests.fixtures import another_writer, installed

PAST = dt.datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)

Maker = sa_orm.sessionmaker[sa_orm.Session]


class MoreBase(sa_orm.DeclarativeBase):
    pass


class Party(Timestamps, Authorship, MoreBase):
    """Joined inheritance: the stamped columns are the base table's."""

    __tablename__ = "parties"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(20))

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "party"}


class Person(Party):
    """A subclass with a stamped column of its own table."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(sa.ForeignKey("parties.id"), primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(40))
    checked_at: Mapped[dt.datetime | None] = fields.updated_at()

    __mapper_args__ = {"polymorphic_identity": "person"}


class Ticket(UID, Authorship, MoreBase):
    """Short ids: each is checked against the table, through the session."""

    __tablename__ = "tickets"
    __uid_length__ = 5

    title: Mapped[str] = mapped_column(sa.String(20))


class Pebble(UID, MoreBase):
    """1024 possible ids."""

    __tablename__ = "pebbles"
    __uid_length__ = 10
    __uid_alphabet__ = "ab"


class Score(Timestamps, Authorship, MoreBase):
    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    points: Mapped[int] = mapped_column(default=0)


class AuditBase(sa_orm.DeclarativeBase):
    pass


class Audit(AuditBase):
    """Written by a callback through a session of its own."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str] = mapped_column(sa.String(40), unique=True)


@pytest.fixture
def Session(  # noqa: N802 - a session factory reads best as a class name
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[Maker]:
    yield from installed(events, engine, MoreBase.metadata)


def _row(engine: sa.Engine, table: str, pk: Any) -> dict[str, Any]:
    t = MoreBase.metadata.tables[table]
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c.id == pk)).mappings().one())


def _aware(value: Any) -> dt.datetime:
    """A stored timestamp as the model reads it (SQLite keeps naive UTC)."""
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- joined inheritance ------------------------------------------------------------------------


def _old_person(session: sa_orm.Session) -> None:
    person = Person(id=1, name="p", email="a", created_at=PAST, updated_at=PAST, checked_at=PAST)
    person.updated_by = "bob"
    session.add(person)
    session.commit()


@pytest.mark.parametrize("where", [True, False], ids=["where", "every-row"])
def test_an_update_statement_of_a_joined_subclass_stamps_the_table_it_writes(
    engine: sa.Engine, Session: Maker, where: bool
) -> None:
    """SQLAlchemy writes the subclass's table only: the base's stamps stay (see limits)."""
    with Session() as session:
        _old_person(session)
        statement = sa.update(Person).values(email="b")
        with dbevents.acting_as("ada"):
            session.execute(statement.where(Person.email == "a") if where else statement)
            session.commit()
    person = _row(engine, "people", 1)
    assert person["email"] == "b" and _aware(person["checked_at"]) > PAST
    party = _row(engine, "parties", 1)
    assert (_aware(party["updated_at"]), party["updated_by"]) == (PAST, "bob")


def test_a_core_update_of_a_joined_subclass_table_stamps_that_table(
    engine: sa.Engine, Session: Maker
) -> None:
    people = MoreBase.metadata.tables["people"]
    with Session() as session:
        _old_person(session)
        with dbevents.acting_as("ada"):
            session.execute(sa.update(people).where(people.c.id == 1).values(email="b"))
            session.commit()
    assert _aware(_row(engine, "people", 1)["checked_at"]) > PAST
    assert _row(engine, "parties", 1)["updated_by"] == "bob"


def test_by_key_and_on_the_unit_of_work_a_joined_subclass_stamps_the_base_row(
    engine: sa.Engine, Session: Maker
) -> None:
    with Session() as session:
        _old_person(session)
        with dbevents.acting_as("ada"):
            session.execute(sa.update(Person), [{"id": 1, "email": "b"}])
            session.commit()
        party = _row(engine, "parties", 1)
        assert (_aware(party["updated_at"]) > PAST, party["updated_by"]) == (True, "ada")
        with dbevents.acting_as("carol"):
            session.get_one(Person, 1).email = "c"
            session.commit()
    assert _row(engine, "parties", 1)["updated_by"] == "carol"


# -- callbacks that write through another session ----------------------------------------------


@pytest.fixture
def audit_maker(engine: sa.Engine, tmp_path: Path) -> Iterator[Maker]:
    """Sessions of another Events, acting as "auditor", on the test's PostgreSQL database or
    on a SQLite file of their own (SQLite has one writer at a time)."""
    own = engine if engine.dialect.name == "postgresql" else None
    audit_engine = own or dbevents.sqlite.configure(
        sa.create_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    )
    other = dbevents.Events(actor=lambda: "auditor")
    other.listens_for(Audit, "before_insert")(lambda cls, fields: fields["what"] == "vetoed")
    yield from installed(other, audit_engine, AuditBase.metadata)
    if own is None:
        audit_engine.dispose()


@pytest.mark.parametrize("what", ["written", "taken", "vetoed"])
@pytest.mark.parametrize("bulk", [False, True], ids=["unit-of-work", "bulk"])
def test_a_callback_writing_through_another_session_leaves_the_flush_its_own(
    events: dbevents.Events,
    engine: sa.Engine,
    Session: Maker,
    audit_maker: Maker,
    bulk: bool,
    what: str,
) -> None:
    """Short ids are still checked through this session, and the actor is still its own,
    whether the other session's flush wrote, failed (a unique key) or had nothing left to
    write (its callbacks vetoed the row)."""
    with audit_maker() as session:
        session.add(Audit(what="taken"))
        session.commit()

    def audit(cls: type[Any], fields: dict[str, Any]) -> None:
        with audit_maker() as other:
            other.add(Audit(what=f"{fields['title']} written" if what == "written" else what))
            try:
                other.commit()
            except sa.exc.IntegrityError:
                other.rollback()

    events.listens_for(Ticket, "before_insert")(audit)
    events.actor = lambda: "clerk"
    with Session() as session:
        titles = ["a", "b", "c"]
        if bulk:
            session.execute(sa.insert(Ticket), [{"title": title} for title in titles])
        else:
            session.add_all(Ticket(title=title) for title in titles)
        session.commit()
        tickets = session.execute(sa.select(Ticket.id, Ticket.created_by)).all()
    assert len({ticket_id for ticket_id, _ in tickets}) == 3
    assert all(len(ticket_id) == 5 for ticket_id, _ in tickets)
    assert {author for _, author in tickets} == {"clerk"}


# -- concurrent writers ------------------------------------------------------------------------


@pytest.mark.parametrize("bulk", [False, True], ids=["unit-of-work", "bulk"])
def test_short_ids_wait_for_another_writer(engine: sa.Engine, Session: Maker, bulk: bool) -> None:
    """On SQLite the check of a short id takes the write lock first, so it waits for the
    other writer (as a long id's INSERT does) instead of failing with "database is locked"."""
    tickets = MoreBase.metadata.tables["tickets"]

    def write(conn: sa.Connection) -> None:
        conn.execute(sa.insert(tickets).values(id="other", title="theirs"))

    with another_writer(engine, write), Session() as session:
        if bulk:
            session.execute(sa.insert(Ticket), [{"title": "mine"}])
        else:
            session.add(Ticket(title="mine"))
        session.commit()
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(tickets.c.title)).scalars()) == {"theirs", "mine"}


# -- multi-row VALUES --------------------------------------------------------------------------


@pytest.mark.parametrize("core", [False, True], ids=["orm", "core"])
def test_generated_ids_avoid_the_ids_a_multi_row_insert_gives(
    engine: sa.Engine, Session: Maker, core: bool
) -> None:
    """Half of the 1024 ids are given (those starting with "a"): the other rows get the rest."""
    given = ["a" + "".join(chars) for chars in itertools.product("ab", repeat=9)]
    rows: list[dict[str, Any]] = [
        *({} for _ in range(32)),
        *({"id": value} for value in given),
        *({} for _ in range(32)),
    ]
    target = MoreBase.metadata.tables["pebbles"] if core else Pebble
    with Session() as session:
        session.execute(sa.insert(target).values(rows))
        session.commit()
        ids = set(session.scalars(sa.select(Pebble.id)))
    generated = ids - set(given)
    assert len(ids) == 576 and len(generated) == 64
    assert all(value.startswith("b") for value in generated)


# -- upserts -----------------------------------------------------------------------------------


def _upsert(engine: sa.Engine, **set_: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Score).values(id=1, name="new", points=5)
    given = {"points": statement.excluded.points, **set_}
    return statement.on_conflict_do_update(index_elements=["id"], set_=given)


def _old_score(session: sa_orm.Session) -> None:
    score = Score(id=1, name="old", created_at=PAST, updated_at=PAST, created_by="alice")
    score.updated_by = "alice"
    session.add(score)
    session.commit()


def test_an_upsert_that_updates_bumps_the_updated_fields(
    engine: sa.Engine, Session: Maker, changesets: list[dbevents.ChangeSet]
) -> None:
    with Session() as session:
        _old_score(session)
    with Session() as session, dbevents.acting_as("bob"):  # the session's first statement
        session.execute(_upsert(engine))
        session.commit()
    row = _row(engine, "scores", 1)
    assert (row["points"], row["name"], row["created_by"], row["updated_by"]) == (
        5,
        "old",
        "alice",
        "bob",
    )
    assert _aware(row["created_at"]) == PAST and _aware(row["updated_at"]) > PAST
    (change,) = changesets[-1].changes
    assert change.new is not None and change.new["updated_by"] == "bob"


def test_an_upsert_keeps_the_updated_fields_it_sets_and_inserts_stamped(
    engine: sa.Engine, Session: Maker
) -> None:
    with Session() as session:
        _old_score(session)
        with dbevents.acting_as("bob"):
            session.execute(_upsert(engine, updated_by="carol"))
            session.commit()
    row = _row(engine, "scores", 1)
    assert (row["updated_by"], _aware(row["updated_at"]) > PAST) == ("carol", True)
    with Session() as session, dbevents.acting_as("bob"):
        session.execute(_upsert(engine).values(id=2, name="fresh"))
        session.commit()
    inserted = _row(engine, "scores", 2)
    assert (inserted["created_by"], inserted["updated_by"]) == ("bob", "bob")
    assert inserted["created_at"] is not None


def test_a_muted_upsert_bumps_nothing(
    events: dbevents.Events, engine: sa.Engine, Session: Maker
) -> None:
    with Session() as session:
        _old_score(session)
        with dbevents.acting_as("bob"), events.muted():
            session.execute(_upsert(engine))
            session.commit()
    row = _row(engine, "scores", 1)
    assert (row["points"], row["updated_by"], _aware(row["updated_at"])) == (5, "alice", PAST)


# -- executemany UPDATE ------------------------------------------------------------------------


def test_an_executemany_update_of_parameter_values_bumps_the_updated_fields(
    engine: sa.Engine, Session: Maker
) -> None:
    scores = MoreBase.metadata.tables["scores"]
    with Session() as session:
        session.execute(
            sa.insert(Score),
            [
                {"id": i, "name": f"s{i}", "created_at": PAST, "updated_at": PAST}
                | {"created_by": "alice", "updated_by": "alice"}
                for i in (1, 2, 3)
            ],
        )
        session.commit()
        with dbevents.acting_as("bob"):
            session.execute(
                sa.update(scores).where(scores.c.id == sa.bindparam("b_id")),
                [{"b_id": 1, "name": "x"}, {"b_id": 2, "name": "y"}],
            )
            session.execute(
                sa.update(scores).where(scores.c.id == sa.bindparam("b_id")),
                [{"b_id": 3, "name": "z", "updated_by": "carol"}],
            )
            session.commit()
    for pk, name, author in [(1, "x", "bob"), (2, "y", "bob"), (3, "z", "carol")]:
        row = _row(engine, "scores", pk)
        assert (row["name"], row["created_by"], row["updated_by"]) == (name, "alice", author)
        assert _aware(row["created_at"]) == PAST and _aware(row["updated_at"]) > PAST


# -- column factories --------------------------------------------------------------------------


def test_column_factories_take_the_column_name_first(
    events: dbevents.Events, engine: sa.Engine
) -> None:
    class Base(sa_orm.DeclarativeBase):
        pass

    @fields.auto_fields
    class Case(Base):
        __tablename__ = "cases"

        id: Mapped[int] = mapped_column(primary_key=True)
        opened: Mapped[dt.datetime | None] = fields.created_at("opened_on")
        opener: Mapped[str | None] = fields.created_by("opened_by", sa.String(40))
        touched: Mapped[dt.datetime | None] = fields.updated_at("touched_on", nullable=True)
        toucher: Mapped[str | None] = fields.updated_by("touched_by")

    columns = {column.name: column for column in Base.metadata.tables["cases"].columns}
    assert {"opened_on", "opened_by", "touched_on", "touched_by"} <= set(columns)
    opened_by = columns["opened_by"].type
    assert isinstance(opened_by, sa.String) and opened_by.length == 40
    assert isinstance(columns["opened_on"].type, fields.UTCDateTime)
    Base.metadata.create_all(engine)
    maker = events.install(sa_orm.sessionmaker(engine))
    try:
        with maker() as session, dbevents.acting_as("ada"):
            case = Case()
            session.add(case)
            session.commit()
            assert case.opened is not None and case.opened == case.touched
            assert (case.opener, case.toucher) == ("ada", "ada")
    finally:
        events.uninstall(maker)
