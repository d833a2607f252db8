"""Rows the database updates itself when a key they refer to changes (``ON UPDATE``).

No statement writes them, so no change tells of them and no callback runs for
them: dbevents says so, as it does of raw SQL.  A relationship with
``passive_updates=False`` makes the flush update them itself, and then they are
captured like any other row.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column, relationship

import dbevents
from dbevents.exceptions import UncapturedWriteError
from tests.fixtures import installed

Maker = sa_orm.sessionmaker[sa_orm.Session]


class KCBase(sa_orm.DeclarativeBase):
    pass


class Team(KCBase):
    """Its players follow a new key through the database (the default ``passive_updates``)."""

    __tablename__ = "teams"
    code: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20), default="")
    players: Mapped[list[Player]] = relationship(back_populates="team")


class Player(KCBase):
    __tablename__ = "players"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    team_code: Mapped[str] = mapped_column(sa.ForeignKey("teams.code", onupdate="CASCADE"))
    team: Mapped[Team] = relationship(back_populates="players")


class League(KCBase):
    """Its clubs are updated by the flush itself (``passive_updates=False``)."""

    __tablename__ = "leagues"
    code: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    clubs: Mapped[list[Club]] = relationship(passive_updates=False)


class Club(KCBase):
    __tablename__ = "kc_clubs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    league_code: Mapped[str] = mapped_column(sa.ForeignKey("leagues.code", onupdate="CASCADE"))


def enforce_foreign_keys(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite":  # (SQLite acts on foreign keys only when asked)
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys=ON"))
        engine.dispose()


@pytest.fixture
def Session(events: dbevents.Events, engine: sa.Engine) -> Iterator[Maker]:  # noqa: N802
    maker = next(gen := installed(events, engine, KCBase.metadata))
    with maker() as session:
        session.add_all([Team(code="a", players=[Player(id=1), Player(id=2)])])
        session.add_all([League(code="x", clubs=[Club(id=1), Club(id=2)])])
        session.commit()
    yield maker
    next(gen, None)


def player_teams(session: sa_orm.Session) -> list[tuple[int, str]]:
    return [tuple(row) for row in session.execute(sa.text("SELECT id, team_code FROM players"))]


def changed_tables(memory: dbevents.MemorySink) -> list[tuple[str, str]]:
    return [(c.op.value, c.table) for c in memory.changesets[-1].changes]


def test_a_new_key_on_the_unit_of_work_is_reported_when_the_database_follows_it(
    Session: Maker, memory: dbevents.MemorySink, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with Session() as session:
        session.get_one(Team, "a").code = "b"
        with pytest.warns(dbevents.DbEventsWarning, match=r"players rows .*\(ON UPDATE CASCADE\)"):
            session.commit()
        # the players moved with their team, and the change set can't say so
        assert sorted(player_teams(session)) == [(1, "b"), (2, "b")]
    assert changed_tables(memory) == [("delete", "teams"), ("insert", "teams")]


def test_a_new_key_under_raw_sql_raise_writes_nothing(
    memory: dbevents.MemorySink, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    events = dbevents.Events(sinks=[memory], raw_sql="raise")
    maker = next(gen := installed(events, engine, KCBase.metadata))
    with maker() as session:
        session.add(Team(code="a", players=[Player(id=1)]))
        session.commit()
        session.get_one(Team, "a").code = "b"
        with pytest.raises(UncapturedWriteError, match="ON UPDATE CASCADE"):
            session.commit()
        session.rollback()
        assert player_teams(session) == [(1, "a")]
    next(gen, None)


def test_a_relationship_without_passive_updates_has_its_rows_captured_and_no_report(
    Session: Maker, memory: dbevents.MemorySink, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with Session() as session:
        session.get_one(League, "x").code = "y"  # (warnings are errors here)
        session.commit()
    changes = memory.changesets[-1].changes
    assert sorted((c.op.value, c.table, c.pk, dict(c.new or {})) for c in changes) == [
        ("delete", "leagues", ("x",), {}),
        ("insert", "leagues", ("y",), {"code": "y"}),
        ("update", "kc_clubs", (1,), {"league_code": "y"}),
        ("update", "kc_clubs", (2,), {"league_code": "y"}),
    ]


def test_an_update_statement_that_sets_a_referred_key_is_reported(
    Session: Maker, memory: dbevents.MemorySink, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with Session() as session:
        # even of a table whose relationship the flush would update itself: no flush here
        statement = sa.update(League).where(League.code == "x").values(code="y")
        with pytest.warns(dbevents.DbEventsWarning, match=r"kc_clubs rows .* new code"):
            session.execute(statement)
        with pytest.warns(dbevents.DbEventsWarning, match=r"players rows .*\(ON UPDATE CASCADE\)"):
            session.execute(sa.update(KCBase.metadata.tables["teams"]).values(code="b"))  # Core
        session.commit()
        assert sorted(player_teams(session)) == [(1, "b"), (2, "b")]
    assert changed_tables(memory) == [("delete", "leagues"), ("insert", "leagues")] + [
        ("delete", "teams"),
        ("insert", "teams"),
    ]


def test_updates_that_leave_the_referred_keys_alone_are_not_reported(
    Session: Maker, events: dbevents.Events, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)

    @events.listens_for(Team, "before_update")
    def veto_renaming_to_c(
        cls: type[Team], rows: dbevents.RowSet[Team], fields: dict[str, object]
    ) -> bool:
        return fields.get("code") == "c"

    with Session() as session:  # (warnings are errors here)
        session.get_one(Team, "a").name = "renamed"
        session.flush()
        session.execute(sa.update(Team).values(name="again"))
        # a veto makes the statement's WHERE false: no row changes key
        vetoed = session.execute(sa.update(Team).values(code="c"))
        assert isinstance(vetoed, sa.CursorResult) and vetoed.rowcount == 0
        session.commit()
        assert sorted(player_teams(session)) == [(1, "a"), (2, "a")]


def test_a_new_key_on_sqlite_without_foreign_keys_is_not_reported(
    Session: Maker, memory: dbevents.MemorySink, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's: the other databases always act on their foreign keys")
    with Session() as session:  # (warnings are errors here)
        session.get_one(Team, "a").code = "b"
        session.commit()
        # SQLite ignored the ON UPDATE: the players still name the old key, as the change
        # set has it
        assert sorted(player_teams(session)) == [(1, "a"), (2, "a")]
    assert changed_tables(memory) == [("delete", "teams"), ("insert", "teams")]


class Vehicle(KCBase):
    __tablename__ = "vehicles"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(10))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Truck(Vehicle):
    """Its own table's key follows the base table's through the database (the mapper's
    default ``passive_updates``), and is recorded under the new key all the same."""

    __tablename__ = "trucks"
    id: Mapped[int] = mapped_column(
        sa.ForeignKey("vehicles.id", onupdate="CASCADE"), primary_key=True
    )
    load: Mapped[int] = mapped_column(default=0)
    __mapper_args__ = {"polymorphic_identity": "truck"}


def test_a_new_key_of_a_joined_subclass_is_captured_in_both_tables_without_a_report(
    Session: Maker, memory: dbevents.MemorySink, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with Session() as session:
        session.add(Truck(id=1, load=5))
        session.commit()
        session.get_one(Truck, 1).id = 2  # (warnings are errors here)
        session.commit()
    changes = memory.changesets[-1].changes
    assert sorted((c.op.value, c.table, c.pk) for c in changes) == [
        ("delete", "trucks", (1,)),
        ("delete", "vehicles", (1,)),
        ("insert", "trucks", (2,)),
        ("insert", "vehicles", (2,)),
    ]
    with Session() as session:
        assert session.get_one(Truck, 2).load == 5
