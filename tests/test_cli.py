"""The `dbevents` command: dump, load, verify, handlers, tail, sinks, and the missing extra."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
import pytest
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents.changes import Change, ChangeSet, Op
from dbevents.cli import make_sink, opened_sinks
from dbevents.fileformat import Source
from dbevents.ids import new_id
from tests.datamodels import Thing, fill, metadata, table_rows
from tests.fixtures import run_cli as run
from tests.models import Company

ROOT = Path(__file__).resolve().parent.parent
METADATA = "tests.datamodels:metadata"

#: an Events object for ``dbevents handlers --events tests.test_cli:EVENTS``
EVENTS = dbevents.Events()


@EVENTS.listens_for(Thing, "before_insert")
def stamp_name(model: type[Thing], fields: dict[str, Any]) -> None:
    fields.setdefault("name", "stamped")


def test_dump_load_verify_round_trip(
    filled: sa.Engine, db_url: str, tmp_path: Path, backend: str
) -> None:
    directory = tmp_path / "dump"
    result = run("dump", str(directory), "--db", db_url, "--metadata", METADATA)
    assert result.exit_code == 0, result.output
    assert "dumped 19 rows of 7 tables" in result.output
    before = table_rows(filled)
    with filled.begin() as conn:
        conn.execute(sa.update(metadata.tables["tags"]).values(label="changed"))

    result = run("verify", str(directory), "--db", db_url, "--metadata", "tests.datamodels:Base")
    assert result.exit_code == 1
    assert "tags (1,): label: 'red' in the directory, 'changed' in the database" in result.output

    result = run("load", str(directory), "--db", db_url, "--metadata", METADATA, "--truncate")
    assert result.exit_code == 0, result.output
    assert "loaded 19 rows into 7 tables" in result.output
    result = run("verify", str(directory), "--db", db_url, "--metadata", METADATA)
    assert result.exit_code == 0, result.output
    assert "no differences" in result.output
    assert table_rows(filled) == before


def test_load_error_exits_non_zero_naming_the_record(
    filled: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "dump"
    run("dump", str(directory), "--db", db_url, "--metadata", METADATA)

    result = run("load", str(directory), "--db", db_url, "--metadata", METADATA)

    assert result.exit_code == 1
    assert "already in the database (things.jsonl, record 1)" in result.output
    assert "--upsert or --truncate" in result.output  # the command's options, not mode=


def test_load_takes_tables_and_refuses_two_modes(
    filled: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "dump"
    run("dump", str(directory), "--db", db_url, "--metadata", METADATA, "--tables", "tags")
    assert json.loads((directory / "manifest.json").read_text())["tables"][0]["name"] == "tags"

    both = run(
        "load", str(directory), "--db", db_url, "--metadata", METADATA, "--truncate", "--upsert"
    )
    assert both.exit_code == 2
    assert "exclude each other" in both.output
    upsert = run("load", str(directory), "--db", db_url, "--metadata", METADATA, "--upsert")
    assert upsert.exit_code == 0, upsert.output
    assert "loaded 2 rows into 1 tables" in upsert.output


@pytest.fixture
def empty(engine: sa.Engine) -> sa.Engine:
    """The test's database, there but without tables."""
    with engine.connect():
        pass  # connecting creates the SQLite file
    return engine


def test_dump_names_the_missing_tables_and_leaves_no_directory(
    empty: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "dump"

    result = run("dump", str(directory), "--db", db_url, "--metadata", METADATA, "--tables", "tags")

    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "has no table 'tags'; create the tables first" in result.output
    assert "Traceback" not in result.output
    assert not directory.exists()


def test_verify_names_the_missing_tables(empty: sa.Engine, db_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "dump"
    source = f"sqlite:///{tmp_path / 'source.db'}"
    filled_source = dbevents.sqlite.configure(sa.create_engine(source))
    fill(filled_source)
    filled_source.dispose()
    run("dump", str(directory), "--db", source, "--metadata", METADATA, "--tables", "tags,things")

    result = run("verify", str(directory), "--db", db_url, "--metadata", METADATA)

    assert result.exit_code == 1
    assert "has no tables 'tags', 'things'; create the tables first" in result.output
    assert len(result.output.splitlines()) == 1


@pytest.mark.parametrize("command", ["dump", "verify"])
def test_reading_refuses_a_sqlite_file_that_does_not_exist(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexist.db"
    directory = tmp_path / "dump"
    if command == "verify":
        dbevents.dump("sqlite://", sa.MetaData(), directory)

    result = run(command, str(directory), "--db", f"sqlite:///{missing}", "--metadata", METADATA)

    assert result.exit_code == 1
    assert f"Error: there is no SQLite database {missing}; check the database URL" in result.output
    assert not missing.exists()  # a read-only command creates no database


def test_a_table_the_database_cannot_read_is_named(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:  # tags without its label column
        conn.execute(sa.text("CREATE TABLE tags (id INTEGER PRIMARY KEY)"))

    result = run(
        "dump", str(tmp_path / "dump"), "--db", db_url, "--metadata", METADATA, "--tables", "tags"
    )

    assert result.exit_code == 1
    assert "Error: tags: the database refused to read it (" in result.output
    assert "label" in result.output
    assert "migrate the database to match the metadata" in result.output
    assert len(result.output.splitlines()) == 1


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    read_only = f"sqlite:///file:{tmp_path / 'nowhere.db'}?mode=ro&uri=true"

    result = run("dump", str(tmp_path / "dump"), "--db", read_only, "--metadata", METADATA)

    assert result.exit_code == 1
    assert result.output == "Error: database error: unable to open database file\n"


def test_database_options_are_required(tmp_path: Path) -> None:
    result = run("dump", str(tmp_path))

    assert result.exit_code == 2
    assert "--db URL and --metadata" in result.output


def test_bad_metadata_spec(tmp_path: Path, db_url: str) -> None:
    result = run("dump", str(tmp_path), "--db", db_url, "--metadata", "tests.datamodels:nothing")

    assert result.exit_code == 2
    assert "has no attribute 'nothing'" in result.output


def test_handlers_lists_callbacks_and_where_they_are() -> None:
    result = run("handlers", "--events", "tests.test_cli:EVENTS")

    assert result.exit_code == 0, result.output
    assert "Thing.before_insert -> " in result.output
    assert "stamp_name" in result.output


def test_handlers_refuses_what_is_not_events() -> None:
    result = run("handlers", "--events", "tests.datamodels:metadata")

    assert result.exit_code == 2


def test_tail_prints_the_changes_of_a_mirror(tmp_path: Path) -> None:
    sink = dbevents.MirrorSink(tmp_path / "mirror", metadata=metadata)
    sink.publish(changeset(7))

    result = run("tail", str(tmp_path / "mirror"), "--all", "--no-follow")

    assert result.exit_code == 0, result.output
    assert result.output.endswith("- insert tags 7\n")
    as_json = run("tail", str(tmp_path / "mirror"), "--all", "--no-follow", "--json")
    assert ChangeSet.from_json(as_json.output.strip()).changes[0].pk == (7,)
    assert run("tail", str(tmp_path / "mirror"), "--no-follow").output == ""


def test_tail_refuses_a_directory_that_is_not_there(tmp_path: Path) -> None:
    result = run("tail", str(tmp_path / "mirorr"), "--no-follow")

    assert result.exit_code == 2
    assert "is no directory" in result.output


def test_a_database_url_that_does_not_parse_is_one_error_line(tmp_path: Path) -> None:
    result = run("dump", str(tmp_path / "d"), "--db", "notaurl", "--metadata", METADATA)

    assert result.exit_code == 1
    assert result.output.startswith("Error: database URL 'notaurl': Could not parse")
    assert "Traceback" not in result.output


def test_tail_reads_a_redis_stream(redis_url: str) -> None:
    stream = f"dbevents-cli-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream, {"id": "x", "changeset": changeset(8).to_json()})
    client.close()

    result = run("tail", f"{redis_url}?stream={stream}", "--all", "--no-follow")

    assert result.exit_code == 0, result.output
    assert result.output.endswith("- insert tags 8\n")


def test_make_sink_from_a_target(tmp_path: Path) -> None:
    sink = make_sink(f"mirror:{tmp_path / 'm'}")

    assert isinstance(sink, dbevents.MirrorSink)
    assert sink.directory == tmp_path / "m"
    with pytest.raises(click.BadParameter, match="stream=NAME"):
        make_sink("redis://127.0.0.1:1/0")
    with pytest.raises(click.BadParameter, match="unknown sink"):
        make_sink("kafka://x")


def outbox_of(tables: sa.Engine, table_name: str, ids: range) -> None:
    """Commit one company per id through an OutboxSink writing into ``table_name``."""
    outbox = dbevents.OutboxSink(table_name=table_name)
    outbox.create_table(tables)
    events = dbevents.Events(sinks=[outbox])
    maker = events.install(sa_orm.sessionmaker(tables))
    try:
        for i in ids:
            with maker() as session:
                session.add(Company(id=i, name=f"c{i}"))
                session.commit()
    finally:
        events.uninstall(maker)


def test_relay_drains_a_renamed_outbox_into_a_mirror_and_a_stream(
    tables: sa.Engine, db_url: str, redis_url: str, tmp_path: Path
) -> None:
    outbox_of(tables, "app_outbox", range(1, 3))
    stream = f"dbevents-cli-{uuid.uuid4().hex}"
    mirror = tmp_path / "mirror"

    result = run(
        "relay",
        *("--db", db_url, "--table-name", "app_outbox", "--once"),
        *("--to", f"mirror:{mirror}", "--to", f"{redis_url}?stream={stream}"),
    )

    assert result.exit_code == 0, result.output
    assert result.output == "delivered 2 change sets\n"
    source = Source(mirror)
    entry = source.manifest.entry("companies")
    assert entry is not None
    assert sorted(row["id"] for _, _, row in source.records(entry)) == [1, 2]
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(stream) == 2
    client.close()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_relay_drains_an_outbox_in_a_schema(
    tables: sa.Engine, db_url: str, app_schema: str, tmp_path: Path
) -> None:
    outbox = dbevents.OutboxSink(schema=app_schema)
    outbox.create_table(tables)
    events = dbevents.Events(sinks=[outbox])
    maker = events.install(sa_orm.sessionmaker(tables))
    with maker() as session:
        session.add(Company(id=1, name="c1"))
        session.commit()
    events.uninstall(maker)
    relay = ("relay", "--db", db_url, "--once", "--to", f"mirror:{tmp_path / 'mirror'}")

    assert run(*relay).exit_code == 1  # not on the search path: named by its schema
    result = run(*relay, "--schema", app_schema)

    assert result.exit_code == 0, result.output
    assert result.output == "delivered 1 change sets\n"


def test_relay_refuses_an_empty_table_name(db_url: str, tmp_path: Path) -> None:
    result = run(
        "relay", "--db", db_url, "--table-name", "", "--once", "--to", f"mirror:{tmp_path}"
    )

    assert result.exit_code == 1
    assert "Error: relay: table_name must name the outbox table" in result.output


def test_relay_names_a_missing_outbox_table(tables: sa.Engine, db_url: str, tmp_path: Path) -> None:
    result = run(
        "relay", "--db", db_url, "--table-name", "nowhere", "--once", "--to", f"mirror:{tmp_path}"
    )

    assert result.exit_code == 1
    assert "Error: relay: there is no outbox table 'nowhere'" in result.output
    assert "Traceback" not in result.output


def test_relay_closes_the_sinks_it_made(redis_url: str, tmp_path: Path) -> None:
    name = f"dbevents-cli-{uuid.uuid4().hex}"
    observer = redis.Redis.from_url(redis_url)

    def connected() -> bool:
        return any(client["name"] == name for client in observer.client_list())

    with opened_sinks([f"mirror:{tmp_path}", f"{redis_url}?stream={name}"]) as sinks:
        sinks[1].client.client_setname(name)  # type: ignore[attr-defined]
        assert connected()
    for _ in range(100):  # the server notices the closed socket a moment later
        if not connected():
            break
        time.sleep(0.01)
    assert not connected()
    with pytest.raises(click.BadParameter), opened_sinks([f"{redis_url}?stream=x", "kafka://x"]):
        pass
    observer.close()


def test_relay_takes_the_stream_options_and_refuses_unknown_ones(
    tables: sa.Engine, db_url: str, redis_url: str
) -> None:
    outbox_of(tables, "dbevents_outbox", range(1, 4))
    stream = f"dbevents-cli-{uuid.uuid4().hex}"

    target = f"{redis_url}?stream={stream}&per_change=1&maxlen=100"
    result = run("relay", "--db", db_url, "--once", "--batch-size", "2", "--to", target)

    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_url)
    entries = client.xrange(stream)
    client.close()
    assert [fields[b"index"] for _, fields in entries] == [b"0", b"0", b"0"]  # one per change
    # what redis-py would only refuse on connecting (retried for ever by a relay) is refused now
    for bad, reason in (
        (f"{redis_url}?stream=s&max_len=100", "unexpected keyword argument 'max_len'"),
        ("redis://127.0.0.1:99999/0?stream=s", "Port out of range"),
        (f"{redis_url}?stream=s&maxlen=many", "invalid literal for int()"),
    ):
        result = run("relay", "--db", db_url, "--once", "--to", bad)
        assert result.exit_code == 2, bad
        assert reason in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://app@127.0.0.1/app", "the driver of mysql is not installed"),
        ("postgresql+asyncpg://app@127.0.0.1/app", "asyncpg is an asyncio driver"),
        ("nosuchdb://x", "Can't load plugin: sqlalchemy.dialects:nosuchdb"),
    ],
)
def test_relay_refuses_a_url_it_cannot_use_in_one_line(
    url: str, reason: str, tmp_path: Path
) -> None:
    result = run("relay", "--db", url, "--once", "--to", f"mirror:{tmp_path}")

    assert result.exit_code == 1
    assert reason in result.output and "Traceback" not in result.output
    assert len(result.output.splitlines()) == 1


def test_relay_refuses_a_sqlite_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"

    result = run("relay", "--db", f"sqlite:///{missing}", "--once", "--to", f"mirror:{tmp_path}")

    assert result.exit_code == 1
    assert f"Error: there is no SQLite database {missing}" in result.output
    assert not missing.exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_relay_logs_its_progress_on_stderr(tables: sa.Engine, db_url: str, tmp_path: Path) -> None:
    outbox_of(tables, "dbevents_outbox", range(1, 3))
    command = [sys.executable, "-m", "dbevents", "relay", "--db", db_url, "--once"]

    result = subprocess.run(
        [*command, "--to", f"mirror:{tmp_path / 'm'}"], capture_output=True, text=True, cwd=ROOT
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "delivered 2 change sets\n"
    assert "INFO relay: delivering dbevents_outbox on sqlite to 1 sink(s)" in result.stderr
    assert "INFO relay: stopped; 2 delivered, 0 parked" in result.stderr
    quiet = subprocess.run(
        [*command, "--quiet", "--to", f"mirror:{tmp_path / 'm'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbevents", "--help"], capture_output=True, text=True, cwd=ROOT
    )

    assert result.returncode == 0
    for command in ("dump", "load", "verify", "relay", "handlers", "tail"):
        assert command in result.stdout


def test_missing_click_names_the_extra() -> None:
    code = "import sys; sys.modules['click'] = None; import dbevents.cli"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.returncode == 1
    assert "pip install 'dbevents[cli]'" in result.stderr


def changeset(number: int) -> ChangeSet:
    row = {"id": number, "label": f"tag {number}"}
    change = Change(Op.INSERT, "tags", "Tag", (number,), None, row)
    return ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, (change,))
