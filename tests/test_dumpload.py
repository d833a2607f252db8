"""dump → fresh database → load → verify, on SQLite and PostgreSQL, and what load must refuse."""

from __future__ import annotations

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
from tests.datamodels import Thing, fill, metadata, table_rows


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
