"""Writers and relays killed with SIGKILL at random points: no committed change set is lost.

- A writer whose in-process sink is slow is killed, often between COMMIT and
  that sink: every committed transaction's change set is in the outbox all the
  same, and a relay then delivers each of them.
- A relay is killed mid-batch: a second relay delivers again what the first
  had not acknowledged, so the consumer (a file on SQLite, a Redis stream on
  PostgreSQL) saw every committed change set, some twice, told apart by id.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
import dbevents.sqlite
from dbevents.changes import ChangeSet, Op
from dbevents.sinks.outbox import OutboxSink
from dbevents.sinks.redis import RedisStreamSink
from tests.datamodels import Thing, metadata

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 24
PG_ITERATIONS = 20
CHANGESETS = 300

WRITER = textwrap.dedent(
    """
    import os, sys, time
    import sqlalchemy as sa
    import sqlalchemy.orm as sa_orm
    import dbevents, dbevents.sqlite
    from tests.datamodels import Thing, metadata

    class SlowFile:
        "The in-process delivery the outbox backs up: slow, so kills land before it."
        def __init__(self, path):
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        def publish(self, changeset):
            time.sleep(0.02)
            os.write(self.fd, changeset.id.encode() + b"\\n")

    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{sys.argv[1]}"))
    metadata.create_all(engine)
    outbox = dbevents.OutboxSink()
    outbox.create_table(engine)
    events = dbevents.Events(sinks=[outbox, SlowFile(sys.argv[2])])
    maker = sa_orm.sessionmaker(engine)
    events.install(maker)
    k = 0
    while True:
        k += 1
        with maker() as session:
            session.add(Thing(id=k, name=str(k)))
            if k > 1:
                session.get_one(Thing, k - 1).note = "next one committed"
            session.commit()
        if k == 1:
            print("ready", flush=True)
    """
)

RELAY = textwrap.dedent(
    """
    import os, sys, time
    import dbevents
    from dbevents.sinks.redis import RedisStreamSink

    class File:
        def __init__(self, path):
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        def publish(self, changeset):
            os.write(self.fd, changeset.id.encode() + b"\\n")

    class Paced:
        "Slows each batch down after the sink took it, where a kill re-delivers."
        def __init__(self, inner):
            self.inner, self.started = inner, False
        def publish(self, changeset):
            self.publish_many([changeset])
        def publish_many(self, changesets):
            if hasattr(self.inner, "publish_many"):
                self.inner.publish_many(changesets)
            else:
                for changeset in changesets:
                    self.inner.publish(changeset)
            if not self.started:
                self.started = True
                print("ready", flush=True)
            time.sleep(0.01)

    url, kind, target, stream = sys.argv[1:5]
    sink = File(target) if kind == "file" else RedisStreamSink(target, stream)
    dbevents.relay(url, [Paced(sink)], batch_size=20, poll_interval=0.05)
    """
)


def run_and_kill(script: str, args: Sequence[str], rng: random.Random, longest: float) -> None:
    """Start ``script``, wait for its ``ready``, then SIGKILL it at a random moment."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, longest))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()


def outbox_changesets(engine: sa.Engine, outbox: OutboxSink) -> list[ChangeSet]:
    with engine.connect() as conn:
        query = sa.select(outbox.table.c.payload).order_by(outbox.table.c.seq)
        return [ChangeSet.from_json(p) for p in conn.execute(query).scalars()]


def test_a_writer_killed_after_commit_loses_nothing_with_the_outbox(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    caught = 0
    for iteration in range(ITERATIONS):
        work = tmp_path / f"run{iteration}"
        work.mkdir()
        database, delivered = work / "writer.db", work / "delivered.txt"
        run_and_kill(WRITER, [str(database), str(delivered)], rng, 0.3)

        engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{database}"))
        try:
            with engine.connect() as conn:
                committed = set(conn.execute(sa.select(Thing.__table__.c.id)).scalars())
            outbox = OutboxSink()
            stored = outbox_changesets(engine, outbox)
            memory = dbevents.MemorySink(history=100_000)
            relayed = dbevents.relay(engine, [memory], once=True)
        finally:
            engine.dispose()
        # exactly the committed transactions are in the outbox, in commit order
        inserted = [c.pk[0] for cs in stored for c in cs.changes if c.table == "things"]
        assert sorted(set(inserted)) == sorted(committed), iteration
        first_inserts = [next(c.pk[0] for c in cs.changes if c.op is Op.INSERT) for cs in stored]
        assert first_inserts == sorted(committed), iteration
        # ... and the relay delivered every one of them
        assert relayed == len(committed) and memory.changesets == stored, iteration
        assert set(memory.rows("things")) == {(k,) for k in committed}, iteration
        seen = set(delivered.read_text().split()) if delivered.exists() else set()
        caught += stored[-1].id not in seen
    print(f"\nkills: {ITERATIONS}, between COMMIT and the in-process sink: {caught}")
    # the kill landed in that window at least once, or the test proved nothing
    assert caught > 0


class FileSink:
    """The test's consumer on SQLite: one id per line, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def publish(self, changeset: ChangeSet) -> None:
        with self.path.open("a") as handle:
            handle.write(changeset.id + "\n")


def fill(engine: sa.Engine, outbox: OutboxSink, rows: list[dict[str, Any]]) -> set[str]:
    """Put the same committed change sets in the outbox again, as a fresh start."""
    with engine.begin() as conn:
        conn.execute(outbox.table.delete())
        conn.execute(outbox.table.insert(), rows)
    return {row["id"] for row in rows}


def template(engine: sa.Engine, outbox: OutboxSink) -> list[dict[str, Any]]:
    """Outbox rows of real commits through a session, read back as insertable values."""
    metadata.create_all(engine)
    outbox.create_table(engine)
    events = dbevents.Events(sinks=[outbox])
    maker = sa_orm.sessionmaker(engine)
    events.install(maker)
    try:
        with maker() as session:
            for k in range(1, CHANGESETS + 1):
                session.add(Thing(id=k, name=str(k)))
                session.commit()
    finally:
        events.uninstall(maker)
    columns = [outbox.table.c.id, outbox.table.c.created_at, outbox.table.c.payload]
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(sa.select(*columns)).mappings()]


def test_a_relay_killed_mid_batch_delivers_again(
    backend: str, engine: sa.Engine, db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(20240612)
    outbox = OutboxSink()
    rows = template(engine, outbox)
    client: redis.Redis[Any] | None = None
    if backend == "postgresql":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    iterations = ITERATIONS if backend == "sqlite" else PG_ITERATIONS
    twice = 0
    try:
        for iteration in range(iterations):
            committed = fill(engine, outbox, rows)
            consumer = tmp_path / f"seen{iteration}.txt"
            stream = f"crash:{uuid4().hex}"
            if client is None:
                args = [db_url, "file", str(consumer), ""]
                second: dbevents.Sink = FileSink(consumer)
            else:
                args = [db_url, "redis", request.getfixturevalue("redis_url"), stream]
                second = RedisStreamSink(client, stream)
            run_and_kill(RELAY, args, rng, 0.2)
            assert dbevents.relay(engine, [second], once=True) <= len(committed)

            if client is None:
                seen = consumer.read_text().split() if consumer.exists() else []
            else:
                seen = [fields[b"id"].decode() for _, fields in client.xrange(stream)]
            assert set(seen) == committed, iteration
            assert outbox_changesets(engine, outbox) == [], iteration
            twice += len(seen) > len(set(seen))
    finally:
        if client is not None:
            client.close()
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(outbox.dead)) == 0
    print(f"\n{backend}: kills: {iterations}, mid-batch (some delivered twice): {twice}")
    assert twice > 0
