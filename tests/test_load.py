"""Bad input to load: a LoadError naming the file, record and column, and the database unchanged."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents.fileformat import MANIFEST
from tests import datamodels
from tests.datamodels import Tag, Thing, fill, metadata, table_rows


@pytest.fixture
def target(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty database with the schema, holding one tag that a failed load must keep."""
    with datamodels.fresh_engine(request, backend, tmp_path) as engine:
        with engine.begin() as conn:
            conn.execute(metadata.tables["tags"].insert().values(id=100, label="keep"))
        yield engine


@pytest.fixture
def dumped(engine: sa.Engine, tmp_path: Path) -> Path:
    fill(engine)
    directory = tmp_path / "dump"
    dbevents.dump(engine, metadata, directory)
    return directory


def edit_record(directory: Path, table: str, number: int, change: Callable[[Any], Any]) -> None:
    """Replace record ``number`` (1-based) of a table file by ``change(record)``."""
    path = directory / f"{table}.jsonl"
    lines = path.read_text().splitlines()
    lines[number - 1] = json.dumps(change(json.loads(lines[number - 1])))
    path.write_text("\n".join(lines) + "\n")


def edit_manifest(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((directory / MANIFEST).read_text())
    change(data)
    (directory / MANIFEST).write_text(json.dumps(data))


def refused(target: sa.Engine, directory: Path, **options: Any) -> dbevents.LoadError:
    """Load (truncating first, so a partial load would show): LoadError, and nothing changed."""
    before = table_rows(target)
    with pytest.raises(dbevents.LoadError) as info:
        dbevents.load(target, metadata, directory, mode=options.pop("mode", "truncate"), **options)
    assert table_rows(target) == before
    return info.value


def test_broken_json_names_file_and_record(target: sa.Engine, dumped: Path) -> None:
    path = dumped / "things.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")

    error = refused(target, dumped)

    assert error.path == path and error.record == 2
    assert "things.jsonl, record 2" in str(error)


def test_file_cut_mid_record(target: sa.Engine, dumped: Path) -> None:
    path = dumped / "things.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])

    error = refused(target, dumped)

    assert error.path == path and error.record == 3


def test_file_cut_at_a_line_end_fails_the_row_count(target: sa.Engine, dumped: Path) -> None:
    path = dumped / "things.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))

    error = refused(target, dumped)

    assert error.path == path
    assert "manifest says 3" in str(error)


def test_unknown_table(target: sa.Engine, dumped: Path) -> None:
    (dumped / "ghosts.jsonl").write_text('{"id": 1}\n')
    edit_manifest(
        dumped,
        lambda m: m["tables"].append(
            {"name": "ghosts", "file": "ghosts.jsonl", "key": ["id"], "columns": ["id"], "rows": 1}
        ),
    )

    error = refused(target, dumped)

    assert error.path == dumped / MANIFEST
    assert "'ghosts' is not in the metadata" in str(error)


def test_unknown_column(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "tags", 2, lambda r: {**r, "colour": "blue"})

    error = refused(target, dumped)

    assert (error.path, error.record, error.column) == (dumped / "tags.jsonl", 2, "colour")
    assert "unknown column 'colour'" in str(error)


def test_missing_column(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "tags", 1, lambda r: {"id": r["id"]})

    error = refused(target, dumped)

    assert (error.record, error.column) == (1, "label")


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("tags", "label", 5),  # SQLite would store it
        ("tags", "id", "1"),
        ("things", "flag", "yes"),
        ("things", "price", 1.5),  # a float would lose cents: Decimal is required
        ("things", "day", {"$datetime": "2024-01-01T00:00:00"}),
        ("things", "name", "x" * 51),  # longer than String(50): SQLite keeps it
        ("things", "name", None),  # NOT NULL
        ("things", "level", "medium"),  # not a label of the Enum
        ("things", "color", "red"),  # a member's value, where the column stores names
        ("things", "color", {"$enum": ["__main__:Color", "BLUE"]}),  # no member of that name
        ("things", "id", True),
    ],
)
def test_wrong_type_checked_in_python(
    target: sa.Engine, dumped: Path, table: str, column: str, value: Any
) -> None:
    edit_record(dumped, table, 1, lambda r: {**r, column: value})

    error = refused(target, dumped)

    assert (error.path, error.record, error.column) == (dumped / f"{table}.jsonl", 1, column)
    assert f"{table}.{column}:" in str(error)


def test_missing_foreign_key_target(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "thing_tags", 2, lambda r: {**r, "tag_id": 99})

    error = refused(target, dumped)

    assert (error.path, error.record, error.column) == (dumped / "thing_tags.jsonl", 2, "tag_id")
    assert "tag_id=99 has no row in tags" in str(error)


def test_missing_self_reference_target(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "nodes", 3, lambda r: {**r, "parent_id": 42})

    error = refused(target, dumped)

    assert (error.record, error.column) == (3, "parent_id")


def test_missing_target_in_a_cycle(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "authors", 1, lambda r: {**r, "favorite_book_id": 7})

    error = refused(target, dumped)

    assert (error.path, error.record, error.column) == (
        dumped / "authors.jsonl",
        1,
        "favorite_book_id",
    )


def test_duplicate_key_in_the_file(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "tags", 2, lambda r: {**r, "id": 1})

    error = refused(target, dumped)

    assert (error.path, error.record, error.column) == (dumped / "tags.jsonl", 2, "id")
    assert "duplicate key id=1" in str(error)


def test_key_already_in_the_database(target: sa.Engine, dumped: Path) -> None:
    edit_record(dumped, "tags", 2, lambda r: {**r, "id": 100})

    error = refused(target, dumped, mode="insert")

    assert (error.record, error.column) == (2, "id")
    assert "already in the database" in str(error)
    assert "mode='upsert' or mode='truncate' (--upsert or --truncate" in str(error)


def test_manifest_from_another_schema(target: sa.Engine, dumped: Path) -> None:
    edit_manifest(dumped, lambda m: m.update(fingerprint="sha256:0000"))

    error = refused(target, dumped)

    assert error.path == dumped / MANIFEST
    assert "another schema" in str(error)
    dbevents.load(target, metadata, dumped, mode="truncate", check_schema=False)
    assert dbevents.verify(target, metadata, dumped, check_schema=False) == []


def test_manifest_column_not_in_the_schema(target: sa.Engine, dumped: Path) -> None:
    def rename(manifest: dict[str, Any]) -> None:
        manifest["tables"][-1]["columns"].append("ghost")

    edit_manifest(dumped, rename)

    error = refused(target, dumped)

    assert error.column == "ghost" and error.path == dumped / MANIFEST


@pytest.mark.parametrize("name", ["../outside.jsonl", "/etc/hostname", "sub/tags.jsonl", "link"])
def test_manifest_naming_a_file_outside_the_directory(
    target: sa.Engine, dumped: Path, name: str
) -> None:
    (dumped.parent / "outside.jsonl").write_text((dumped / "tags.jsonl").read_text())
    os.symlink(dumped.parent / "outside.jsonl", dumped / "link")

    def point(manifest: dict[str, Any]) -> None:
        for entry in manifest["tables"]:
            if entry["name"] == "tags":
                entry["file"] = name

    edit_manifest(dumped, point)

    error = refused(target, dumped)

    assert error.path == dumped / MANIFEST
    assert "outside the data directory" in str(error)


def test_not_a_data_directory(target: sa.Engine, tmp_path: Path) -> None:
    error = refused(target, tmp_path)

    assert error.path == tmp_path / MANIFEST


def test_load_runs_no_callbacks_and_captures_nothing(target: sa.Engine, dumped: Path) -> None:
    events = dbevents.Events(sinks=[dbevents.MemorySink()])
    ran: list[str] = []
    received: list[dbevents.ChangeSet] = []

    @events.listens_for(Thing, "before_insert")
    def rename(model: type[Thing], fields: dict[str, Any]) -> None:
        ran.append("before_insert")
        fields["name"] = "changed by a callback"

    @events.listens_for(Tag, "before_save")
    def relabel(model: type[Tag], row: Any) -> None:
        ran.append("before_save")

    events.on_commit(received.append)
    maker = sa_orm.sessionmaker(target)
    events.install(maker)
    try:
        dbevents.load(target, metadata, dumped, tables=["things", "tags"])
        with maker() as session:  # through a session's own connection, too
            dbevents.load(session.connection(), metadata, dumped, mode="upsert")
            session.commit()
    finally:
        events.uninstall(maker)

    assert ran == []
    assert received == []
    differences = dbevents.verify(target, metadata, dumped)
    assert [(d.table, d.kind, d.key) for d in differences] == [("tags", "extra", (100,))]
    with target.connect() as conn:
        names = set(conn.scalars(sa.select(Thing.name)))
    assert "changed by a callback" not in names


@pytest.mark.parametrize("mode", ["insert", "truncate", "upsert"])
def test_load_on_a_session_connection_is_no_raw_sql(
    target: sa.Engine, dumped: Path, tmp_path: Path, mode: str
) -> None:
    # load's own driver SQL (executemany, TRUNCATE) must not look like an uncaptured write
    events = dbevents.Events(sinks=[dbevents.MemorySink()], raw_sql="raise")
    ran: list[str] = []
    received: list[dbevents.ChangeSet] = []

    @events.listens_for(Tag, "before_insert")
    def inserting(model: type[Tag], fields: dict[str, Any]) -> None:
        ran.append("before_insert")

    events.on_commit(received.append)
    maker = sa_orm.sessionmaker(target)
    events.install(maker)
    try:
        with maker() as session:
            connection = session.connection()
            dbevents.load(connection, metadata, dumped, mode=mode)  # type: ignore[arg-type]
            differences = dbevents.verify(connection, metadata, dumped)
            kept = [] if mode == "truncate" else [("tags", (100,))]
            assert [(d.table, d.key) for d in differences] == kept
            dbevents.dump(connection, metadata, tmp_path / "again")
            session.commit()
            with pytest.raises(dbevents.UncapturedWriteError):  # still on afterwards
                session.connection().exec_driver_sql("DELETE FROM tags")
            session.rollback()
    finally:
        events.uninstall(maker)

    assert ran == []
    assert received == []
    assert dbevents.verify(target, metadata, tmp_path / "again") == []
