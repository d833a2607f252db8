"""RedisStreamSink: XADD per change set (or per change) with its id, direct or behind the relay."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
import dbevents.sinks
from dbevents.changes import Change, ChangeSet, Op, passed_on
from dbevents.ids import new_id
from dbevents.sinks.outbox import OutboxSink
from dbevents.sinks.redis import RedisStreamSink
from tests.fixtures import installed_on
from tests.models import Company, Contact
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis[Any]]:
    connection: redis.Redis[Any] = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def stream() -> str:
    """A stream key of this test's own: the server is shared by the whole run."""
    return f"test:{uuid4().hex}"


def entries(client: redis.Redis[Any], stream: str) -> list[dict[str, bytes]]:
    return [
        {key.decode(): value for key, value in fields.items()}
        for _, fields in client.xrange(stream)
    ]


def installed(
    engine: sa.Engine, *sinks: dbevents.Sink
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    events = dbevents.Events(sinks=list(sinks))
    factory = sa_orm.sessionmaker(engine)
    events.install(factory)
    yield factory
    events.uninstall(factory)


def test_each_commit_is_one_entry_with_its_id(
    tables: sa.Engine, redis_url: str, client: redis.Redis[Any], stream: str
) -> None:
    sink = RedisStreamSink(redis_url, stream)
    memory = dbevents.MemorySink()
    for maker in installed(tables, memory, sink):
        with maker() as session:
            session.add(Company(id=1, name="Acme"))
            session.add(Contact(id=1, email="a@x", company_id=1))
            session.commit()
        with maker() as session:
            session.get_one(Company, 1).name = "Acme Inc"
            session.commit()
    sink.close()
    got = entries(client, stream)
    assert [e["id"].decode() for e in got] == [cs.id for cs in memory.changesets]
    assert [ChangeSet.from_json(e["changeset"]) for e in got] == memory.changesets


def test_per_change_entries_carry_their_place(
    redis_url: str, client: redis.Redis[Any], stream: str
) -> None:
    sink = RedisStreamSink(client, stream, per_change=True)
    changeset = ChangeSet(
        id=new_id(),
        committed_at=dt.datetime.now(dt.UTC),
        actor="ada",
        changes=(
            dbevents.Change(Op.INSERT, "companies", "Company", (1,), None, {"id": 1}),
            dbevents.Change(Op.DELETE, "contacts", "Contact", (2,), {"id": 2}, None),
        ),
    )
    sink.publish(changeset)
    sink.close()
    assert client.ping()  # a client it was given stays open
    got = entries(client, stream)
    assert [(e["index"], e["count"], e["table"], e["op"]) for e in got] == [
        (b"0", b"2", b"companies", b"insert"),
        (b"1", b"2", b"contacts", b"delete"),
    ]
    parts = [ChangeSet.from_json(e["changeset"]) for e in got]
    assert {p.id for p in parts} == {changeset.id} and {p.actor for p in parts} == {"ada"}
    assert tuple(p.changes[0] for p in parts) == changeset.changes


def test_maxlen_trims_the_stream(client: redis.Redis[Any], stream: str) -> None:
    sink = RedisStreamSink(client, stream, maxlen=10)
    changeset = ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, ())
    sink.publish_many([changeset] * 1000)
    # approximate trimming keeps whole nodes: at least maxlen, far fewer than were added
    assert 10 <= client.xlen(stream) < 1000


@pytest.mark.parametrize("scripts", [True, False], ids=["scripted", "no scripts allowed"])
def test_a_batch_arrives_in_order_with_or_without_scripts(
    scripts: bool, client: redis.Redis[Any], redis_url: str, stream: str
) -> None:
    url = redis_url
    if not scripts:  # a user whose ACL refuses scripts: the sink pipelines instead
        user = f"noscript{uuid4().hex[:8]}"
        client.acl_setuser(
            user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"]
        )
        url = redis_url.replace("redis://", f"redis://{user}:pw@", 1)
        with (
            redis.Redis.from_url(url) as limited,
            pytest.raises(redis.exceptions.NoPermissionError),
        ):
            limited.execute_command("EVAL", "return 1", 0)
    sink = RedisStreamSink(url, stream, per_change=True)
    changesets = [
        ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, (change(i), change(i + 100)))
        for i in range(3)
    ]
    for _ in range(2):  # the second batch after the refusal went straight to the pipeline
        sink.publish_many(changesets)
    sink.close()
    got = entries(client, stream)
    assert [(e["id"].decode(), e["index"]) for e in got] == 2 * [
        (cs.id, index) for cs in changesets for index in (b"0", b"1")
    ]
    assert [ChangeSet.from_json(e["changeset"]).changes[0].pk for e in got] == 2 * [
        (i + offset,) for i in range(3) for offset in (0, 100)
    ]


def change(i: int) -> Change:
    return Change(Op.INSERT, "contacts", "Contact", (i,), None, {"id": i})


def test_behind_the_relay_every_change_set_arrives_in_order(
    tables: sa.Engine, redis_url: str, client: redis.Redis[Any], stream: str
) -> None:
    outbox = OutboxSink()
    outbox.create_table(tables)
    memory = dbevents.MemorySink()
    for maker in installed(tables, outbox, memory):
        for i in range(1, 31):
            with maker() as session:
                session.add(Company(id=i, name=f"c{i}"))
                session.commit()
    sink = RedisStreamSink(redis_url, stream)
    try:
        assert dbevents.relay(tables, [sink], once=True, batch_size=8) == 30
    finally:
        sink.close()
    got = entries(client, stream)
    assert [e["id"].decode() for e in got] == [cs.id for cs in memory.changesets]


def told_keys_payload() -> ChangeSet:
    """A change set as a writer that knows its tables wrote it: with ``key_columns`` of two
    tables that no model of this process maps (a relay imports none)."""
    changes = (
        Change(Op.INSERT, "shop_orders", None, ("a1",), None, {"code": "a1", "total": 5}),
        Change(Op.INSERT, "shop_lines", None, ("a1", 1), None, {"order": "a1", "n": 1}),
        Change(Op.DELETE, "shop_orders", None, ("a0",), {"code": "a0", "total": 1}, None),
    )
    written = ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, changes).to_dict()
    keys = {"shop_orders": ["code"], "shop_lines": ["order", "n"]}
    return ChangeSet.from_dict({**written, "key_columns": keys})


def test_per_change_entries_behind_the_relay_keep_their_tables_key_columns(
    tables: sa.Engine, redis_url: str, client: redis.Redis[Any], stream: str
) -> None:
    outbox = OutboxSink()
    outbox.create_table(tables)
    told = told_keys_payload()
    with tables.begin() as conn:  # the row a writer's OutboxSink would have inserted
        row = {"id": told.id, "created_at": told.committed_at, "payload": told.to_json().decode()}
        conn.execute(outbox.table.insert().values(attempts=0, **row))
    sink = RedisStreamSink(redis_url, stream, per_change=True)
    try:
        assert dbevents.relay(tables, [sink], once=True) == 1
    finally:
        sink.close()
    got = [ChangeSet.from_json(e["changeset"]) for e in entries(client, stream)]
    assert [(part.changes[0].table, part.key_columns(part.changes[0].table)) for part in got] == [
        ("shop_orders", ("code",)),
        ("shop_lines", ("order", "n")),
        ("shop_orders", ("code",)),
    ]
    assert [json.loads(e["changeset"])["key_columns"] for e in entries(client, stream)] == [
        {"shop_orders": ["code"]},
        {"shop_lines": ["order", "n"]},
        {"shop_orders": ["code"]},
    ]


def test_per_change_entries_of_a_change_set_read_from_json_keep_its_key_columns(
    client: redis.Redis[Any], stream: str
) -> None:
    text = told_keys_payload().to_json()
    # parsed, and passed on undecoded as a relay does (decoded as the sink reads its changes)
    passed = passed_on(ChangeSet.from_json(text).id, text.decode())
    assert passed is not None
    for changeset in (ChangeSet.from_json(text), passed):
        RedisStreamSink(client, stream, per_change=True).publish(changeset)
    got = [json.loads(e["changeset"]).get("key_columns") for e in entries(client, stream)]
    assert got == 2 * [
        {"shop_orders": ["code"]},
        {"shop_lines": ["order", "n"]},
        {"shop_orders": ["code"]},
    ]


def test_an_unreachable_server_fails_the_relay_and_keeps_the_rows(tables: sa.Engine) -> None:
    outbox = OutboxSink()
    outbox.create_table(tables)
    for maker in installed(tables, outbox):
        with maker() as session:
            session.add(Company(id=1, name="Acme"))
            session.commit()
    sink = RedisStreamSink(f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=1", "s")
    with pytest.raises(dbevents.SinkError, match="stays in the outbox"):
        dbevents.relay(tables, [sink], once=True, max_attempts=2, backoff=0.001)
    with tables.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(outbox.table)) == 1


def test_a_failing_direct_sink_does_not_fail_the_commit(tables: sa.Engine) -> None:
    sink = RedisStreamSink(f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=1", "s")
    errors: list[BaseException] = []
    events = dbevents.Events(sinks=[sink])
    events.on_error(lambda error, receiver, changeset: errors.append(error))
    with installed_on(events, tables) as factory, factory() as session:
        session.add(Company(id=1, name="Acme"))
        session.commit()
    assert [type(e) for e in errors] == [redis.ConnectionError]
    with tables.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Company.__table__)) == 1


def test_bad_arguments_are_refused(client: redis.Redis[Any]) -> None:
    with pytest.raises(ValueError, match="stream"):
        RedisStreamSink(client, "")
    with pytest.raises(ValueError, match="maxlen"):
        RedisStreamSink(client, "s", maxlen=0)


def test_reachable_from_the_sinks_package() -> None:
    assert dbevents.sinks.RedisStreamSink is RedisStreamSink
    with pytest.raises(AttributeError):
        _ = dbevents.sinks.NoSuchSink


def test_without_redis_installed_dbevents_imports_and_the_sink_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"  # as if the package were not installed
        "import dbevents, dbevents.sinks\n"
        "assert dbevents.relay and dbevents.OutboxSink\n"
        "try:\n"
        "    dbevents.sinks.RedisStreamSink\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "pip install 'dbevents[redis]'" in result.stdout
