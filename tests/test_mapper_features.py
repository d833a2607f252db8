"""Mapper features and value types ordinary applications use.

Version counters (the mapper's and one the database keeps), eager defaults,
Python defaults that read the statement's context, deferred and computed
attributes, moved keys, merge and transient objects, and the values of
common column types: each change set is compared with the table read back
with plain SQL, and survives its JSON, a mirror and ``verify``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet
from tests.fixtures import Diff, delivered, installed, snapshot, table_diff


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


class MBase(sa_orm.DeclarativeBase):
    pass


class Counted(MBase):
    """A version the database counts (``version_id_generator=False``), fetched by SQLAlchemy."""

    __tablename__ = "counted"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(40))
    version: Mapped[int] = mapped_column(
        server_default=sa.text("1"), onupdate=sa.text("version + 1")
    )
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}


class Stamped(MBase):
    """Eager defaults: server values fetched as the row is written."""

    __tablename__ = "stamped"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40))
    created: Mapped[str] = mapped_column(sa.String(40), server_default=sa.text("'made'"))
    touched: Mapped[int] = mapped_column(default=0, onupdate=sa.text("touched + 1"))
    slug: Mapped[str | None] = mapped_column(
        sa.String(60),
        default=lambda ctx: ctx.get_current_parameters()["title"].lower(),
        onupdate=lambda ctx: ctx.get_current_parameters().get("title", "?").upper(),
    )
    secret: Mapped[str | None] = sa_orm.deferred(mapped_column(sa.String(40)))
    title_len: Mapped[int] = sa_orm.column_property(sa.func.length(title))
    __mapper_args__ = {"eager_defaults": True}


class Coded(MBase):
    """A natural string key, part of a composite key."""

    __tablename__ = "coded"

    code: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    part: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(20))


TABLES = ("counted", "stamped", "coded")

Maker = sa_orm.sessionmaker[sa_orm.Session]


@pytest.fixture
def Session(events: dbevents.Events, engine: sa.Engine) -> Iterator[Maker]:  # noqa: N802
    yield from installed(events, engine, MBase.metadata)


def committed(
    maker: Maker,
    engine: sa.Engine,
    changesets: list[ChangeSet],
    write: Callable[[sa_orm.Session], object],
) -> tuple[Diff, Diff]:
    """Run ``write`` and commit: (what was delivered, what the tables show changed)."""
    changesets.clear()
    before = snapshot(engine, TABLES)
    with maker() as session:
        write(session)
        session.commit()
    expected = table_diff(before, snapshot(engine, TABLES))
    if not changesets:
        return {}, expected
    [changeset] = changesets
    assert ChangeSet.from_json(changeset.to_json()) == changeset
    return delivered(changeset), expected


# -- version counters -------------------------------------------------------------------------


def test_a_version_the_database_counts_is_delivered_old_and_new(
    Session: Maker, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    got, expected = committed(
        Session, engine, changesets, lambda s: s.add(Counted(id=1, title="a"))
    )
    assert got == expected
    for old, new, version in (("a", "b", 1), ("b", "c", 2)):

        def retitle(session: sa_orm.Session, new: str = new) -> None:
            session.get_one(Counted, 1).title = new

        got, expected = committed(Session, engine, changesets, retitle)
        assert got == expected
        assert got[("counted", (1,))][1:] == (
            {"title": old, "version": version},
            {"title": new, "version": version + 1},
        )


def test_a_stale_version_the_database_counts_delivers_nothing_and_the_session_goes_on(
    Session: Maker, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    committed(Session, engine, changesets, lambda s: s.add(Counted(id=1, title="a")))
    changesets.clear()
    with Session(expire_on_commit=False) as session:
        row = session.get_one(Counted, 1)
        session.commit()
        with engine.begin() as conn:
            conn.execute(sa.update(Counted).where(Counted.id == 1).values(title="other"))
        row.title = "mine"
        with pytest.raises(sa_orm.exc.StaleDataError):
            session.flush()
        session.rollback()
        assert changesets == []
        row.title = "again"
        session.commit()
    [changeset] = changesets
    assert delivered(changeset) == {
        ("counted", (1,)): (
            "update",
            {"title": "other", "version": 2},
            {"title": "again", "version": 3},
        )
    }


# -- eager defaults, context defaults, deferred and computed attributes -----------------------


def test_eager_defaults_and_context_defaults_are_delivered_as_stored(
    Session: Maker, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    def insert(session: sa_orm.Session) -> None:
        session.add(Stamped(id=1, title="Hello", secret="s"))
        session.flush()

    def update(session: sa_orm.Session) -> None:
        session.get_one(Stamped, 1).title = "World"

    def update_other(session: sa_orm.Session) -> None:
        session.get_one(Stamped, 1).secret = "t"  # deferred, never loaded

    def bulk(session: sa_orm.Session) -> None:
        session.execute(sa.update(Stamped), [{"id": 1, "title": "Bulk"}])

    def delete(session: sa_orm.Session) -> None:
        session.delete(session.get_one(Stamped, 1))

    for write in (insert, update, update_other, bulk, delete):
        got, expected = committed(Session, engine, changesets, write)
        assert got == expected, write.__name__
        for _, old, new in got.values():
            assert "title_len" not in (old or {}) and "title_len" not in (new or {})


# -- keys: moved, natural, composite ----------------------------------------------------------


def _seed_coded(maker: Maker) -> None:
    with maker() as session:
        session.add_all(
            [Coded(code="abc", part=1, label="x"), Coded(code="abd", part=1, label="y")]
        )
        session.commit()


def test_keys_changed_in_case_or_in_one_part_are_a_delete_and_an_insert(
    Session: Maker, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    _seed_coded(Session)

    def case(session: sa_orm.Session) -> None:
        session.get_one(Coded, ("abc", 1)).code = "ABC"

    def part(session: sa_orm.Session) -> None:
        row = session.get_one(Coded, ("ABC", 1))
        row.part, row.label = 2, "z"

    def statement(session: sa_orm.Session) -> None:
        session.execute(sa.update(Coded).where(Coded.code == "abd").values(code="ABD"))

    def back(session: sa_orm.Session) -> None:
        row = session.get_one(Coded, ("ABD", 1))
        row.code = "abd"
        session.flush()
        row.code = "ABD"  # and back again: nothing

    for write in (case, part, statement, back):
        got, expected = committed(Session, engine, changesets, write)
        assert got == expected, write.__name__
    assert got == {}


def test_merge_of_detached_and_transient_objects_inserts_or_updates_as_merge_decides(
    Session: Maker, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    _seed_coded(Session)
    with Session() as session:
        detached = session.get_one(Coded, ("abc", 1))
    detached.label = "merged"

    def merges(session: sa_orm.Session) -> None:
        session.merge(detached)  # an update
        session.merge(Coded(code="new", part=1, label="n"))  # not there: an insert
        session.merge(Coded(code="abd", part=1, label="y"))  # there, the same: nothing

    got, expected = committed(Session, engine, changesets, merges)
    assert got == expected
    assert {op for op, _, _ in got.values()} == {"update", "insert"}


def test_transient_again_expunged_and_readded_objects(
    Session: Maker, engine: sa.Engine, changesets: list[ChangeSet]
) -> None:
    _seed_coded(Session)
    with Session() as session:
        row = session.get_one(Coded, ("abc", 1))
        session.delete(row)
        session.commit()
    changesets.clear()

    def readd(session: sa_orm.Session) -> None:
        sa_orm.make_transient(row)  # what was loaded before the delete: insert it again
        session.add(row)
        other = session.get_one(Coded, ("abd", 1))
        sa_orm.make_transient(other)
        other.part = 9  # a copy under a new key
        session.add(other)

    def expunged(session: sa_orm.Session) -> None:
        session.add(Coded(code="gone", part=1, label="g"))
        session.expunge_all()
        row = session.get_one(Coded, ("abd", 1))
        row.label = "changed"
        session.expunge(row)

    got, expected = committed(Session, engine, changesets, readd)
    assert got == expected and len(got) == 2
    assert committed(Session, engine, changesets, expunged) == ({}, {})


# -- values -------------------------------------------------------------------------------------


class VBase(sa_orm.DeclarativeBase):
    pass


class Value(VBase):
    __tablename__ = "vals"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    aware: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    naive: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    clock: Mapped[dt.time | None] = mapped_column(sa.Time)
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    span: Mapped[dt.timedelta | None] = mapped_column(sa.Interval)
    exact: Mapped[decimal.Decimal | None] = mapped_column(sa.Numeric(20, 6))
    loose: Mapped[float | None] = mapped_column(sa.Numeric(10, 2, asdecimal=False))
    real: Mapped[float | None] = mapped_column(sa.Float)
    big: Mapped[int | None] = mapped_column(sa.BigInteger)
    by_name: Mapped[Color | None] = mapped_column(sa.Enum(Color, name="color_name"))
    by_value: Mapped[Color | None] = mapped_column(
        sa.Enum(Color, name="color_value", values_callable=lambda e: [m.value for m in e])
    )
    uid: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    uid_text: Mapped[str | None] = mapped_column(sa.Uuid(as_uuid=False))
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)


class Ticket(VBase):
    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(sa.Uuid(as_uuid=False), primary_key=True)
    n: Mapped[int]


_PARIS = dt.timezone(dt.timedelta(hours=2))
ROWS: list[dict[str, Any]] = [
    {
        "aware": dt.datetime(2024, 5, 1, 12, 30, 1, 5, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 5, 1, 12, 30, 1, 999999),
        "clock": dt.time(23, 59, 59, 123456),
        "day": dt.date(1999, 12, 31),
        "span": dt.timedelta(days=-1, seconds=5, microseconds=7),
        "exact": decimal.Decimal("123456789.123456"),
        "loose": 3.25,
        "real": math.inf,
        "big": 2**62 + 1,
        "by_name": Color.RED,
        "by_value": Color.GREEN,
        "uid": uuid.UUID(int=2**128 - 1),
        "uid_text": str(uuid.UUID(int=7)),
        "blob": bytes(range(256)),
        "doc": {"nested": [{"a": None, "$date": "x"}], "n": 2**60},
    },
    {
        "aware": dt.datetime(2024, 5, 1, 12, tzinfo=_PARIS),
        "naive": dt.datetime(1970, 1, 1),
        "clock": dt.time(0, 0),
        "day": dt.date(2024, 2, 29),
        "span": dt.timedelta(0),
        "exact": decimal.Decimal("-0.000001"),
        "loose": -1.5,
        "real": -math.inf,
        "big": -(2**63),
        "by_name": Color.GREEN,
        "by_value": Color.RED,
        "uid": uuid.UUID(int=1),
        "uid_text": str(uuid.UUID(int=2**100)),
        "blob": b"",
        "doc": [1, "two", {"three": [3.5]}],
    },
]


@pytest.fixture
def VSession(events: dbevents.Events, engine: sa.Engine) -> Iterator[Maker]:  # noqa: N802
    yield from installed(events, engine, VBase.metadata)


def _stored(engine: sa.Engine) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows read back through their column types (a reflected table would not decode
    enums, UUIDs or JSON)."""
    with engine.connect() as conn:
        return {(r.id,): dict(r._mapping) for r in conn.execute(sa.select(Value.__table__))}


@pytest.mark.parametrize("path", ["unit of work", "statement"])
def test_values_of_every_common_type_are_delivered_and_mirrored_as_stored(
    events: dbevents.Events,
    VSession: Maker,  # noqa: N803
    engine: sa.Engine,
    memory: dbevents.MemorySink,
    tmp_path: Path,
    backend: str,
    path: str,
) -> None:
    mirror = dbevents.MirrorSink(tmp_path / "mirror", metadata=VBase.metadata)
    events.add_sink(mirror)
    with VSession() as session:
        if path == "unit of work":
            session.add_all([Value(id=i, **row) for i, row in enumerate(ROWS, 1)])
        else:
            session.execute(sa.insert(Value), [{"id": i, **row} for i, row in enumerate(ROWS, 1)])
        session.commit()
    with VSession() as session:
        if path == "unit of work":
            one, two = session.get_one(Value, 1), session.get_one(Value, 2)
            for key in ROWS[0]:
                setattr(one, key, ROWS[1][key])
                setattr(two, key, ROWS[0][key])
        else:
            session.execute(sa.update(Value), [{"id": 1, **ROWS[1]}, {"id": 2, **ROWS[0]}])
        session.commit()

    as_committed = _stored(engine)
    stored, held = _stored(engine), memory.rows("vals")
    if backend == "sqlite" and path == "unit of work":  # the value set: see the limits
        for row in (*stored.values(), *held.values()):
            del row["aware"]
    assert held == stored
    for changeset in memory.changesets:
        assert ChangeSet.from_json(changeset.to_json()) == changeset
    assert dbevents.verify(engine, VBase.metadata, tmp_path / "mirror") == []
    mirror.compact()
    assert dbevents.verify(engine, VBase.metadata, tmp_path / "mirror") == []
    dbevents.dump(engine, VBase.metadata, tmp_path / "dump")  # and back: the same rows
    dbevents.load(engine, VBase.metadata, tmp_path / "dump", mode="truncate")
    assert _stored(engine) == as_committed


def test_nan_written_over_nan_is_no_change(
    VSession: Maker,  # noqa: N803
    engine: sa.Engine,
    changesets: list[ChangeSet],
    backend: str,
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite stores NaN as NULL: see the limits")
    nan = decimal.Decimal("NaN")
    with VSession() as session:
        session.add_all([Value(id=1, real=math.nan, exact=nan), Value(id=2, real=1.0)])
        session.commit()
    changesets.clear()

    def unit_of_work(session: sa_orm.Session) -> None:
        row = session.get_one(Value, 1)
        row.real, row.exact = float("nan"), decimal.Decimal("NaN")

    def statement(session: sa_orm.Session) -> None:
        session.execute(sa.update(Value).values(real=float("nan"), exact=nan))

    def back(session: sa_orm.Session) -> None:
        row = session.get_one(Value, 1)
        row.real = 2.0
        session.flush()
        row.real = float("nan")

    for write in (unit_of_work, statement, back):
        changesets.clear()
        with VSession() as session:
            write(session)
            session.commit()
        got = [
            (c.pk, dict(c.old or {}), dict(c.new or {})) for cs in changesets for c in cs.changes
        ]
        if write is statement:
            assert [pk for pk, _, _ in got] == [(2,)], write.__name__  # 1.0 became NaN
        else:
            assert got == [], write.__name__


# -- limits: values delivered as set ------------------------------------------------------------


def test_the_unit_of_work_delivers_values_as_set_where_the_database_stores_another_form(
    events: dbevents.Events,
    VSession: Maker,  # noqa: N803
    engine: sa.Engine,
    memory: dbevents.MemorySink,
    tmp_path: Path,
    backend: str,
) -> None:
    events.add_sink(dbevents.MirrorSink(tmp_path / "mirror", metadata=VBase.metadata))
    much = decimal.Decimal("12345678901234.123456")
    with VSession() as session:
        session.add(Value(id=1, doc={1: "a"}, by_name="RED", real=math.nan, exact=much))
        session.commit()

    [change] = memory.changesets[0].changes
    stored = _stored(engine)[(1,)]
    assert change.new is not None
    assert (change.new["doc"], stored["doc"]) == ({1: "a"}, {"1": "a"})
    assert ChangeSet.from_json(memory.changesets[0].to_json()).changes[0].new["doc"] == {"1": "a"}  # type: ignore[index]
    assert (change.new["by_name"], stored["by_name"]) == ("RED", Color.RED)
    assert math.isnan(change.new["real"]) and change.new["exact"] == much
    differences = dbevents.verify(engine, VBase.metadata, tmp_path / "mirror")
    if backend == "sqlite":
        assert stored["real"] is None and stored["exact"] != much
        assert [d.columns for d in differences] == [("exact", "real")]
    else:
        assert math.isnan(stored["real"]) and stored["exact"] == much
        assert differences == []


def test_a_key_set_in_another_form_than_stored_is_two_rows_to_a_consumer(
    events: dbevents.Events,
    VSession: Maker,  # noqa: N803
    engine: sa.Engine,
    memory: dbevents.MemorySink,
    tmp_path: Path,
) -> None:
    events.add_sink(dbevents.MirrorSink(tmp_path / "mirror", metadata=VBase.metadata))
    given = "0000000A-0000-0000-0000-00000000000B"
    with VSession() as session:
        session.add(Ticket(id=given, n=1))
        session.flush()
        session.execute(sa.update(Ticket).values(n=2))
        session.commit()

    assert [(c.op.value, c.pk) for c in memory.changesets[0].changes] == [
        ("insert", (given,)),
        ("update", (given.lower(),)),
    ]
    assert sorted(d.kind for d in dbevents.verify(engine, VBase.metadata, tmp_path / "mirror")) == [
        "extra",
        "missing",
    ]
    with VSession() as session:  # in the form stored: one row
        session.add(Ticket(id=str(uuid.UUID(given.replace("B", "C"))), n=1))
        session.flush()
        session.execute(sa.update(Ticket).where(Ticket.n == 1).values(n=3))
        session.commit()
    [change] = memory.changesets[1].changes
    assert change.op is dbevents.Op.INSERT and change.new == {
        "id": given.lower()[:-1] + "c",
        "n": 3,
    }
