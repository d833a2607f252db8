"""What a new user meets running the sinks and the command end to end: bad paths, servers
that are away, a database without the tables, and a large table's progress and memory."""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result

import dbevents
from dbevents.changes import Change, ChangeSet, Op
from dbevents.ids import new_id
from dbevents.sinks.redis import RedisStreamSink
from dbevents.urls import engine_from_url
from tests.datamodels import fresh_database, fresh_engine, metadata, table_rows
from tests.fixtures import run_cli as run
from tests.servers import HOST, PostgresServer, free_port

METADATA = "tests.datamodels:metadata"


def db_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def assert_one_error_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = result.output.splitlines()
    assert line.startswith("Error: ")
    for fragment in fragments:
        assert fragment in line


# --- paths that can't be a data directory ---------------------------------------------------


def test_dump_under_a_file_is_one_error_line(filled: sa.Engine, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file")

    result = run(
        "dump",
        str(tmp_path / "notes.txt" / "backup"),
        "--db",
        db_of(filled),
        "--metadata",
        METADATA,
    )

    assert_one_error_line(result, "notes.txt", "a file is in the way of a directory")


def test_relay_to_a_mirror_that_is_a_file_is_one_error_line(tmp_path: Path) -> None:
    database = tmp_path / "shop.db"
    outbox = dbevents.OutboxSink()
    engine = sa.create_engine(f"sqlite:///{database}")
    outbox.create_table(engine)
    engine.dispose()

    result = run("relay", "--db", f"sqlite:///{database}", "--once", "--to", f"mirror:{database}")

    assert_one_error_line(result, "shop.db", "a file is in the way of a directory")


@pytest.mark.parametrize("command", ["dump", "load", "verify", "relay"])
def test_every_db_option_names_its_environment_variable(command: str) -> None:
    assert "[env DBEVENTS_DB]" in run(command, "--help").output


# --- servers that are away ------------------------------------------------------------------


def test_tail_of_a_redis_server_that_is_away_is_one_error_line() -> None:
    source = f"redis://{HOST}:{free_port()}/0?stream=changes"

    result = run("tail", source, "--all", "--no-follow")

    assert_one_error_line(result, source, "check the Redis URL and that the server is running")


def test_consumers_of_a_group_share_the_change_sets_of_one_row(redis_url: str) -> None:
    """The documented limit: commit order holds in the stream, not across a group's consumers."""
    stream = f"dbevents-usage-{uuid.uuid4().hex}"
    sink = RedisStreamSink(redis_url, stream)
    for version in range(4):
        change = Change(Op.UPDATE, "notes", "Note", (1,), {"v": version - 1}, {"v": version})
        sink.publish(ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, (change,)))
    client = sink.client
    client.xgroup_create(stream, "readers", id="0")
    try:
        ordered = [fields[b"id"] for _, fields in client.xrange(stream)]
        first = client.xreadgroup("readers", "a", {stream: ">"}, count=2)
        second = client.xreadgroup("readers", "b", {stream: ">"}, count=2)
    finally:
        client.delete(stream)
        sink.close()

    got_a = [fields[b"id"] for _, fields in first[0][1]]
    got_b = [fields[b"id"] for _, fields in second[0][1]]
    assert ordered == got_a + got_b  # one row's updates, split between two consumers


@pytest.fixture
def missing_database(postgres: PostgresServer) -> str:
    """A URL of the test server naming a database that does not exist."""
    return postgres.url(database="no_such_database")


def test_relay_once_opens_no_listen_connection(
    missing_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="dbevents"), pytest.raises(sa.exc.OperationalError):
        dbevents.relay(
            missing_database, [dbevents.MemorySink()], once=True, max_attempts=2, backoff=0.01
        )

    assert not [record for record in caplog.records if "LISTEN" in record.getMessage()]
    [retry] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert retry.startswith("relay: database error, retrying in ")
    assert "no_such_database" in retry and "\n" not in retry


def test_a_relay_waiting_for_its_database_warns_once_a_retry(
    missing_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    with caplog.at_level(logging.WARNING, logger="dbevents"):
        dbevents.relay(
            missing_database,
            [dbevents.MemorySink()],
            stop=stop,
            backoff=0.02,
            max_backoff=0.05,
        )
    timer.join()

    messages = [record.getMessage() for record in caplog.records]
    retries = [message for message in messages if "database error" in message]
    assert len(retries) >= 3
    assert len([message for message in messages if "LISTEN" in message]) == 1  # at the start
    assert all("\n" not in message for message in messages)


@pytest.mark.skipif(
    importlib.util.find_spec("psycopg2") is not None, reason="psycopg2 is installed"
)
def test_a_missing_postgresql_driver_names_the_one_the_extra_installs() -> None:
    with pytest.raises(dbevents.ConfigurationError) as caught:
        engine_from_url("postgresql+psycopg2://app@127.0.0.1/app")

    assert "name psycopg in the URL (postgresql+psycopg://...)" in str(caught.value)


# --- a database without the tables ----------------------------------------------------------


def test_load_refuses_a_database_without_the_tables_before_writing(
    filled: sa.Engine, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    dbevents.dump(filled, metadata, tmp_path / "backup")
    with fresh_database(request, backend, tmp_path) as url:
        target = dbevents.sqlite.configure(sa.create_engine(url))
        first = next(iter(metadata.sorted_tables))
        first.create(target)  # one table there, the others not
        try:
            with pytest.raises(dbevents.ConfigurationError) as caught:
                dbevents.load(target, metadata, tmp_path / "backup")
            with target.connect() as conn:
                rows = conn.scalar(sa.select(sa.func.count()).select_from(first))
        finally:
            target.dispose()

    message = str(caught.value)
    assert "create the tables first" in message
    assert all(
        repr(table.fullname) in message for table in metadata.sorted_tables if table is not first
    )
    assert repr(first.fullname) not in message
    assert rows == 0


def test_load_into_a_sqlite_file_that_is_not_there_creates_no_file(
    filled: sa.Engine, tmp_path: Path
) -> None:
    dbevents.dump(filled, metadata, tmp_path / "backup")
    target = tmp_path / "copy.db"

    result = run(
        "load", str(tmp_path / "backup"), "--db", f"sqlite:///{target}", "--metadata", METADATA
    )

    assert_one_error_line(
        result, f"there is no SQLite database {target}", "create it and its tables first"
    )
    assert not target.exists()


def test_part_of_a_directory_loads_into_a_schema_without_the_rest(
    filled: sa.Engine, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """A service that owns only some of the tables loads its part of a full dump."""
    dbevents.dump(filled, metadata, tmp_path / "backup")
    only_tags = sa.MetaData()
    metadata.tables["tags"].to_metadata(only_tags)

    with fresh_database(request, backend, tmp_path) as url:
        target = sa.create_engine(url)
        only_tags.create_all(target)
        try:
            with pytest.raises(dbevents.LoadError) as whole:
                dbevents.load(target, only_tags, tmp_path / "backup")
            with pytest.raises(dbevents.LoadError) as checked:
                dbevents.load(target, only_tags, tmp_path / "backup", tables=["tags"])
            loaded = dbevents.load(
                target, only_tags, tmp_path / "backup", tables=["tags"], check_schema=False
            )
            found = dbevents.verify(
                target, only_tags, tmp_path / "backup", tables=["tags"], check_schema=False
            )
        finally:
            target.dispose()

    assert "name them with tables=[...] (--tables)" in str(whole.value)
    assert "with tables the metadata lacks" in str(checked.value)
    assert "check_schema=False (--no-check-schema)" in str(checked.value)
    assert loaded == {"tags": len(table_rows(filled)["tags"])}
    assert found == []


def test_a_file_cut_inside_a_record_says_it_is_truncated(
    filled: sa.Engine, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    dbevents.dump(filled, metadata, tmp_path / "backup")
    things = tmp_path / "backup" / "things.jsonl"
    text = things.read_bytes()
    things.write_bytes(text[: len(text) - 10])  # a copy that stopped inside the last record
    records = text.count(b"\n")

    with fresh_engine(request, backend, tmp_path) as target:
        with pytest.raises(dbevents.LoadError) as caught:
            dbevents.load(target, metadata, tmp_path / "backup")
        rows = table_rows(target)

    assert (caught.value.path, caught.value.record) == (things, records)
    assert str(caught.value).endswith("the file ends inside it, cut short: copy or dump it again")
    assert not any(rows.values())


# --- a large table: progress, and memory that does not grow with the rows -------------------


def test_verify_shows_progress_per_table(
    filled: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = dbevents.dump(filled, metadata, tmp_path / "backup", progress=False)
    capsys.readouterr()

    assert dbevents.verify(filled, metadata, tmp_path / "backup", progress=True) == []

    shown = capsys.readouterr().err
    for entry in manifest.tables:
        assert f"verify {entry.name}: {entry.rows:,}/{entry.rows:,} rows 100%" in shown


def test_verify_streams_the_tables_it_reads_whole(filled: sa.Engine, tmp_path: Path) -> None:
    """The look for rows only the database has reads every row: the driver must not buffer
    the whole table (a PostgreSQL client cursor would), only the keys are kept."""
    dbevents.dump(filled, metadata, tmp_path / "backup")
    whole_reads: list[dict[str, Any]] = []

    @sa.event.listens_for(filled, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        if words[0].upper() == "SELECT" and "WHERE" not in words:
            whole_reads.append(dict(args[-2].execution_options))  # the execution context

    try:
        assert dbevents.verify(filled, metadata, tmp_path / "backup") == []
    finally:
        sa.event.remove(filled, "before_cursor_execute", record)

    assert whole_reads
    assert all(options.get("stream_results") for options in whole_reads), whole_reads
