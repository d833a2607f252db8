"""dump → fresh database → load → verify, on SQLite and PostgreSQL, and what load must refuse."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents.fileformat import MANIFEST, Manifest
from tests import datamodels
from tests.datamodels import Author, Node, Thing, fill, metadata, table_rows


@pytest.fixture
def source(engine: sa.Engine) -> sa.Engine:
    """The test database, filled with the sample rows."""
    fill(engine)
    return engine


@pytest.fixture
def target(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    """Another empty database on the same backend, schema created."""
    with datamodels.fresh_engine(request, backend, tmp_path) as engine:
        yield engine


@pytest.fixture
def dumped(source: sa.Engine, tmp_path: Path) -> Path:
    """The sample rows dumped to a directory."""
    directory = tmp_path / "dump"
    dbevents.dump(source, metadata, directory)
    return directory


def test_round_trip_keeps_every_row_exactly(
    source: sa.Engine, target: sa.Engine, dumped: Path
) -> None:
    counts = dbevents.load(target, datamodels.Base, dumped)

    assert counts == {name: len(rows) for name, rows in datamodels.sample_rows().items()}
    assert dbevents.verify(target, metadata, dumped) == []
    assert table_rows(target) == table_rows(source)


def test_round_trip_values_read_back_with_plain_sql(
    source: sa.Engine, target: sa.Engine, dumped: Path
) -> None:
    dbevents.load(target, metadata, dumped)

    with sa_orm.Session(target) as session:
        things = {thing.id: thing for thing in session.scalars(sa.select(Thing))}
    expected = {row["id"]: row for row in datamodels.sample_rows()["things"]}
    for key, row in expected.items():
        for name, value in row.items():
            got = getattr(things[key], name)
            if name == "at_tz" and value is not None and source.dialect.name == "sqlite":
                value = value.replace(tzinfo=None)  # SQLite keeps the wall time only
            assert got == value, (key, name)


def test_manifest_lists_tables_parents_first_with_counts(dumped: Path) -> None:
    manifest = Manifest.read(dumped)

    names = [entry.name for entry in manifest.tables]
    assert names.index("things") < names.index("thing_tags")
    assert names.index("tags") < names.index("thing_tags")
    assert {entry.name: entry.rows for entry in manifest.tables} == {
        name: len(rows) for name, rows in datamodels.sample_rows().items()
    }
    assert manifest.source == "dump"
    assert manifest.fingerprint is not None and manifest.fingerprint.startswith("sha256:")
    assert (dumped / "things.jsonl").exists()


def test_verify_reports_missing_extra_and_changed(target: sa.Engine, dumped: Path) -> None:
    dbevents.load(target, metadata, dumped)
    tags = metadata.tables["tags"]
    with target.begin() as conn:
        conn.execute(tags.update().where(tags.c.id == 1).values(label="green"))
        conn.execute(tags.insert().values(id=9, label="extra"))
        conn.execute(sa.delete(metadata.tables["thing_tags"]).where(sa.column("tag_id") == 2))
        conn.execute(tags.delete().where(tags.c.id == 2))

    found = {(d.table, d.kind, d.key, d.columns) for d in dbevents.verify(target, metadata, dumped)}

    assert ("tags", "changed", (1,), ("label",)) in found
    assert ("tags", "extra", (9,), ()) in found
    assert ("tags", "missing", (2,), ()) in found
    assert ("thing_tags", "missing", (1, 2), ()) in found
    assert len(found) == 5


@pytest.mark.parametrize("mode", ["truncate", "upsert"])
def test_reload_over_existing_rows(
    source: sa.Engine, target: sa.Engine, dumped: Path, mode: Any
) -> None:
    dbevents.load(target, metadata, dumped)
    tags = metadata.tables["tags"]
    with target.begin() as conn:
        conn.execute(tags.update().values(label="changed"))

    dbevents.load(target, metadata, dumped, mode=mode)

    assert dbevents.verify(target, metadata, dumped) == []
    assert table_rows(target) == table_rows(source)


def test_upsert_sets_the_deferred_foreign_keys_the_file_holds(
    source: sa.Engine, target: sa.Engine, dumped: Path
) -> None:
    dbevents.load(target, metadata, dumped)
    with target.begin() as conn:  # references the file holds as NULL, and one it holds as 4
        conn.execute(sa.update(Node).where(Node.id == 2).values(parent_id=1))
        conn.execute(sa.update(Node).where(Node.id == 4).values(parent_id=2))
        conn.execute(sa.update(Author).where(Author.id == 2).values(favorite_book_id=1))

    dbevents.load(target, metadata, dumped, mode="upsert")

    assert dbevents.verify(target, metadata, dumped) == []
    assert table_rows(target) == table_rows(source)


def test_load_only_the_tables_named(target: sa.Engine, dumped: Path) -> None:
    counts = dbevents.load(target, metadata, dumped, tables=["tags", "nodes"])

    assert counts == {"tags": 2, "nodes": 4}
    assert table_rows(target)["things"] == []


def test_sequences_continue_after_the_loaded_keys(target: sa.Engine, dumped: Path) -> None:
    dbevents.load(target, metadata, dumped)

    with sa_orm.Session(target) as session:
        session.add(Thing(name="new"))
        session.commit()
        assert session.scalar(sa.select(sa.func.max(Thing.id))) == 4


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_upsert_never_moves_a_sequence_back(target: sa.Engine, dumped: Path) -> None:
    dbevents.load(target, metadata, dumped)
    with sa_orm.Session(target) as session:
        session.add_all([Thing(name=f"since {i}") for i in range(7)])  # ids 4 to 10
        session.commit()
        session.execute(sa.delete(Thing).where(Thing.id > 3))
        session.commit()

    dbevents.load(target, metadata, dumped, mode="upsert")

    with sa_orm.Session(target) as session:
        session.add(Thing(name="new"))
        session.commit()
        assert session.scalar(sa.select(sa.func.max(Thing.id))) == 11  # 4 to 10 were handed out


class SharedBase(sa_orm.DeclarativeBase):
    pass


shared_ids = sa.Sequence("shared_ids", metadata=SharedBase.metadata)


class Invoice(SharedBase):
    __tablename__ = "invoices"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(shared_ids, primary_key=True)


class CreditNote(SharedBase):
    __tablename__ = "credit_notes"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(shared_ids, primary_key=True)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_sequence_of_two_tables_goes_past_the_keys_of_both(
    engine: sa.Engine, tmp_path: Path
) -> None:
    SharedBase.metadata.create_all(engine)
    with engine.begin() as conn:
        for _ in range(4):  # credit notes 1, 3, 5, 7 and invoices 2, 4, 6, 8
            conn.execute(sa.insert(CreditNote).values())
            conn.execute(sa.insert(Invoice).values())
    dbevents.dump(engine, SharedBase, tmp_path / "shared")

    dbevents.load(engine, SharedBase, tmp_path / "shared", mode="truncate")

    with engine.begin() as conn:
        assert conn.scalar(sa.insert(Invoice).values().returning(Invoice.id)) == 9
        assert conn.scalar(sa.insert(CreditNote).values().returning(CreditNote.id)) == 10


@pytest.mark.parametrize("backend", ["postgresql"])
def test_nan_matches_itself(source: sa.Engine, target: sa.Engine, tmp_path: Path) -> None:
    with source.begin() as conn:  # SQLite stores NaN as NULL: PostgreSQL keeps it
        conn.execute(
            sa.update(Thing)
            .where(Thing.id == 2)
            .values(ratio=float("nan"), price=decimal.Decimal("NaN"))
        )
    dbevents.dump(source, metadata, tmp_path / "nan")

    assert dbevents.verify(source, metadata, tmp_path / "nan") == []
    dbevents.load(target, metadata, tmp_path / "nan")
    assert dbevents.verify(target, metadata, tmp_path / "nan") == []


@pytest.mark.parametrize("backend", ["postgresql"])
def test_nan_matches_itself_in_a_table_without_a_key(source: sa.Engine, tmp_path: Path) -> None:
    readings = sa.MetaData()
    table = sa.Table("readings", readings, sa.Column("value", sa.Float), sa.Column("n", sa.Integer))
    readings.create_all(source)
    with source.begin() as conn:
        conn.execute(table.insert(), [{"value": float("nan"), "n": 1}, {"value": 1.5, "n": 2}])
    dbevents.dump(source, readings, tmp_path / "readings")
    assert dbevents.verify(source, readings, tmp_path / "readings") == []


class JSONDocument(sa.TypeDecorator[Any]):
    """A custom JSON type, as applications write them."""

    impl = sa.JSON
    cache_ok = True


def test_a_document_of_a_custom_json_type_never_passes_for_a_tagged_value(tmp_path: Path) -> None:
    documents = sa.MetaData()
    table = sa.Table(
        "documents",
        documents,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", JSONDocument),
    )
    tagged_lookalike = {"$uuid": "12345678-1234-5678-1234-567812345678"}
    source = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    target = sa.create_engine(f"sqlite:///{tmp_path / 'target.db'}")
    for engine in (source, target):
        documents.create_all(engine)
    with source.begin() as conn:
        conn.execute(table.insert().values(id=1, body=tagged_lookalike))

    dbevents.dump(source, documents, tmp_path / "dump")
    dbevents.load(target, documents, tmp_path / "dump")

    with target.connect() as conn:
        assert conn.scalar(sa.select(table.c.body)) == tagged_lookalike
    assert dbevents.verify(source, documents, tmp_path / "dump") == []
    source.dispose()
    target.dispose()


class Status(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class OrderBase(sa_orm.DeclarativeBase):
    pass


class Order(OrderBase):
    """An Enum column that stores its members' values, not their names."""

    __tablename__ = "orders"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    status: sa_orm.Mapped[Status] = sa_orm.mapped_column(
        sa.Enum(Status, name="order_status", values_callable=lambda e: [m.value for m in e])
    )


def test_enum_members_by_name_when_their_class_is_not_found(
    engine: sa.Engine, tmp_path: Path
) -> None:
    OrderBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Order), [{"id": 1, "status": Status.OPEN}, {"id": 2, "status": Status.CLOSED}]
        )
    directory = tmp_path / "orders"
    dbevents.dump(engine, OrderBase, directory)
    # as a script run as __main__ tags them, and as a mirror compacted elsewhere keeps them
    (directory / "orders.jsonl").write_text(
        '{"id":1,"status":{"$enum":["__main__:Status","OPEN"]}}\n{"id":2,"status":"CLOSED"}\n'
    )

    dbevents.load(engine, OrderBase, directory, mode="truncate")

    assert dbevents.verify(engine, OrderBase, directory) == []
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT CAST(status AS VARCHAR) FROM orders ORDER BY id")
        assert stored.scalars().all() == ["open", "closed"]


def test_manifest_is_valid_json_with_format_version(dumped: Path) -> None:
    data = json.loads((dumped / MANIFEST).read_text())

    assert data["format"] == "dbevents"
    assert data["version"] == 1


def test_progress_on_request_and_quiet_off_a_terminal(
    target: sa.Engine, dumped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dbevents.load(target, metadata, dumped, tables=["tags"], progress=True)
    shown = capsys.readouterr().err
    dbevents.load(target, metadata, dumped, tables=["nodes"])  # stderr is not a terminal here

    assert "load tags: 2/2 rows 100%" in shown
    assert capsys.readouterr().err == ""


def test_the_outbox_is_left_out_unless_named(engine: sa.Engine, tmp_path: Path) -> None:
    """A restore that brought pending outbox rows back would have the relay deliver their
    change sets a second time."""
    app = sa.MetaData()
    notes = sa.Table("notes", app, sa.Column("id", sa.Integer, primary_key=True))
    outbox = dbevents.OutboxSink(app)  # its tables on the application's metadata
    app.create_all(engine)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [{"id": 1}])
        row = {"id": "0" * 26, "created_at": dt.datetime.now(dt.UTC), "payload": "{}"}
        conn.execute(outbox.table.insert(), row)

    manifest = dbevents.dump(engine, app, tmp_path / "all")
    assert [entry.name for entry in manifest.tables] == ["notes"]
    named = dbevents.dump(engine, app, tmp_path / "named", tables=["dbevents_outbox"])
    assert [(entry.name, entry.rows) for entry in named.tables] == [("dbevents_outbox", 1)]
    # a directory that holds the outbox anyway: loaded only when it is named
    with engine.begin() as conn:
        conn.execute(outbox.table.delete())
    assert dbevents.load(engine, app, tmp_path / "named", mode="upsert") == {}
    assert dbevents.load(engine, app, tmp_path / "named", tables=["dbevents_outbox"]) == {
        "dbevents_outbox": 1
    }
