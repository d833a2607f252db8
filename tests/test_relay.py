"""relay(): outbox rows delivered at least once, in order, retried with backoff, never lost."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents.changes import ChangeSet
from dbevents.relay import relay
from dbevents.sinks.outbox import OutboxSink
from tests.fixtures import installed_on
from tests.models import Company

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def outbox(tables: sa.Engine) -> OutboxSink:
    sink = OutboxSink()
    sink.create_table(tables)
    return sink


@pytest.fixture
def maker(tables: sa.Engine, outbox: OutboxSink) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    events = dbevents.Events(sinks=[outbox])
    factory = sa_orm.sessionmaker(tables)
    events.install(factory)
    yield factory
    events.uninstall(factory)


def commit_companies(maker: sa_orm.sessionmaker[sa_orm.Session], ids: range) -> None:
    for i in ids:
        with maker() as session:
            session.add(Company(id=i, name=f"c{i}"))
            session.commit()


def pks(changesets: list[ChangeSet]) -> list[int]:
    return [cs.changes[0].pk[0] for cs in changesets]


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


class Refused(ConnectionError):
    """An error whose repr leaves its reason out, as redis-py 8's do."""

    def __repr__(self) -> str:
        return "network:ConnectionError"


class Recorder:
    """A sink that keeps what it got, and fails while ``fail(changeset)`` says so."""

    def __init__(self, fail: object = None) -> None:
        self.got: list[ChangeSet] = []
        self.calls = 0
        self.fail = fail

    def publish(self, changeset: ChangeSet) -> None:
        self.calls += 1
        if callable(self.fail) and self.fail(changeset):
            raise Refused(f"refused {changeset.id}")
        self.got.append(changeset)


class Waits(threading.Event):
    """A stop event that records every timeout the relay waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_once_delivers_everything_in_order_then_deletes(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    commit_companies(maker, range(1, 26))
    first, second = dbevents.MemorySink(), Recorder()
    assert relay(tables, [first, second], once=True, batch_size=7) == 25
    assert pks(first.changesets) == list(range(1, 26))
    assert [cs.id for cs in second.got] == [cs.id for cs in first.changesets]
    assert first.get("companies", 25) == {"id": 25, "name": "c25", "rating": 3}
    assert count(tables, outbox.table) == 0
    assert relay(tables, [first], once=True) == 0


def test_a_url_and_a_custom_table(tables: sa.Engine, db_url: str) -> None:
    outbox = OutboxSink(table_name="app_outbox")
    outbox.create_table(tables)
    events = dbevents.Events(sinks=[outbox])
    with installed_on(events, tables) as factory:
        commit_companies(factory, range(1, 4))
    sink = dbevents.MemorySink()
    assert relay(db_url, [sink], once=True, table_name="app_outbox") == 3
    assert pks(sink.changesets) == [1, 2, 3]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_outbox_in_another_schema(tables: sa.Engine, app_schema: str) -> None:
    outbox = OutboxSink(sa.MetaData(schema=app_schema))
    outbox.create_table(tables)
    events = dbevents.Events(sinks=[outbox])
    with installed_on(events, tables) as factory:
        commit_companies(factory, range(1, 4))
    with tables.begin() as conn:
        conn.execute(outbox.table.insert(), {"id": "A" * 26, "created_at": NOW, "payload": "["})
    with pytest.raises(dbevents.ConfigurationError, match="no outbox table 'dbevents_outbox'"):
        relay(tables, [Recorder()], once=True)  # not on the search_path

    sink = Recorder()
    assert relay(tables, [sink], once=True, schema=app_schema) == 3

    assert pks(sink.got) == [1, 2, 3]
    assert count(tables, outbox.table) == 0
    assert count(tables, outbox.dead) == 1  # parked in the same schema


def test_a_failing_sink_is_retried_with_growing_backoff(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    commit_companies(maker, range(1, 4))
    failures = iter([True, True, True])
    good = Recorder()
    flaky = Recorder(lambda cs: cs.changes[0].pk == (2,) and next(failures, False))
    stop = Waits()
    assert (
        relay(
            tables,
            [good, flaky],
            once=True,
            stop=stop,
            max_attempts=10,
            backoff=0.001,
            max_backoff=0.002,
        )
        == 3
    )
    # in order, and the healthy sink got no duplicates while the other was retried
    assert pks(flaky.got) == [1, 2, 3]
    assert pks(good.got) == [1, 2, 3]
    assert flaky.calls == 6
    # a wait before every retry, each one longer (jitter aside): never a busy loop
    backoffs = [t for t in stop.timeouts if t is not None]
    assert len(backoffs) == 3
    assert 0.0008 <= backoffs[0] <= 0.001 and backoffs[1] >= 0.0016 and backoffs[2] >= 0.0016
    assert count(tables, outbox.table) == 0


def test_failures_are_recorded_on_the_row(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    commit_companies(maker, range(1, 3))
    down = Recorder(lambda cs: True)
    with pytest.raises(dbevents.SinkError, match="failed 3 times") as raised:
        relay(tables, [down], once=True, max_attempts=3, backoff=0.001, max_backoff=0.002)
    assert raised.value.sink is down
    # the sink, not the row, is at fault: both rows wait in the outbox, none is parked
    with tables.connect() as conn:
        rows = conn.execute(
            sa.select(
                outbox.table.c.id, outbox.table.c.attempts, outbox.table.c.last_error
            ).order_by("seq")
        ).all()
    assert [r.attempts for r in rows] == [3, 0]
    # the error's type and reason, whatever its repr() leaves out
    assert rows[0].last_error == f"Refused: refused {rows[0].id}"
    assert f"Refused: refused {rows[0].id}; it stays in the outbox" in str(raised.value)
    assert count(tables, outbox.dead) == 0
    # the sink is back: everything goes through
    sink = dbevents.MemorySink()
    assert relay(tables, [sink], once=True) == 2
    assert pks(sink.changesets) == [1, 2]


def test_a_row_that_keeps_failing_is_parked_with_its_error(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    commit_companies(maker, range(1, 5))
    picky = Recorder(lambda cs: cs.changes[0].pk == (2,))
    caught = Recorder()
    assert (
        relay(tables, [caught, picky], once=True, max_attempts=3, backoff=0.001, max_backoff=0.002)
        == 3
    )
    assert pks(picky.got) == [1, 3, 4]
    assert count(tables, outbox.table) == 0
    with tables.connect() as conn:
        (dead,) = conn.execute(sa.select(outbox.dead)).mappings().all()
    parked = ChangeSet.from_json(dead["payload"])
    assert parked.changes[0].pk == (2,)
    assert dead["id"] == parked.id and dead["attempts"] == 3
    assert "refused" in dead["error"] and "Recorder" in dead["error"]


def test_an_undecodable_row_is_parked_at_once(tables: sa.Engine, outbox: OutboxSink) -> None:
    with tables.begin() as conn:
        conn.execute(
            outbox.table.insert(),
            [
                {"id": "A" * 26, "created_at": NOW, "payload": "{not json"},
                {"id": "B" * 26, "created_at": NOW, "payload": "[]"},
            ],
        )
    assert relay(tables, [Recorder()], once=True) == 0
    with tables.connect() as conn:
        dead = conn.execute(sa.select(outbox.dead.c.id, outbox.dead.c.error)).all()
    assert sorted(d.id for d in dead) == ["A" * 26, "B" * 26]
    assert all("undecodable" in d.error for d in dead)
    assert count(tables, outbox.table) == 0


def test_a_payload_broken_inside_is_parked_once_a_sink_fails_on_it(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    """What looks like an OutboxSink's payload is decoded when a sink first looks into it."""
    commit_companies(maker, range(1, 3))
    with tables.begin() as conn:
        first = conn.execute(sa.select(outbox.table).order_by(outbox.table.c.seq)).first()
        assert first is not None
        broken = first.payload.replace('"op":"insert"', '"op":"nonsense"')
        assert broken != first.payload
        conn.execute(
            outbox.table.update().where(outbox.table.c.seq == first.seq), {"payload": broken}
        )
    sink = dbevents.MemorySink()
    passes_json_on = Recorder()
    delivered = relay(
        tables, [passes_json_on, sink], once=True, max_attempts=2, backoff=0.001, max_backoff=0.002
    )
    assert delivered == 1 and pks(sink.changesets) == [2]
    with tables.connect() as conn:
        (dead,) = conn.execute(sa.select(outbox.dead)).mappings().all()
    assert dead["id"] == first.id and dead["payload"] == broken and dead["attempts"] == 2
    assert "MemorySink" in dead["error"] and "nonsense" in dead["error"]
    assert count(tables, outbox.table) == 0


class Batched(Recorder):
    """A sink that takes whole batches, and keeps their sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def publish_many(self, changesets: list[ChangeSet]) -> None:
        self.batches.append(len(changesets))
        self.got.extend(changesets)


def test_publish_many_gets_whole_batches(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine
) -> None:
    commit_companies(maker, range(1, 11))
    sink = Batched()
    assert relay(tables, [sink], once=True, batch_size=4) == 10
    assert sink.batches == [4, 4, 2] and sink.calls == 0
    assert pks(sink.got) == list(range(1, 11))


def test_a_batch_ends_once_its_payloads_pass_max_batch_bytes(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine, outbox: OutboxSink
) -> None:
    commit_companies(maker, range(1, 8))
    with tables.connect() as conn:
        sizes = conn.scalars(sa.select(outbox.table.c.payload).order_by("seq")).all()
    two_and_a_bit = len(sizes[0]) + len(sizes[1]) + 1
    sink = Batched()
    assert relay(tables, [sink], once=True, max_batch_bytes=two_and_a_bit) == 7
    # each batch ends with the row that takes it past the size: three rows, not all seven
    assert sink.batches == [3, 3] and sink.calls == 1
    assert pks(sink.got) == list(range(1, 8))
    # a row larger than the size is a batch of its own: every row still goes
    commit_companies(maker, range(8, 10))
    assert relay(tables, [sink], once=True, max_batch_bytes=1) == 2
    assert sink.batches == [3, 3] and sink.calls == 3
    assert pks(sink.got) == list(range(1, 10))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sink_at_work_never_keeps_sqlite_writers_waiting(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine
) -> None:
    """A sink that hangs (a Redis that does not answer) while the relay holds SQLite's one
    write lock would fail every commit of the application with "database is locked"."""
    commit_companies(maker, range(1, 3))
    inside, release = threading.Event(), threading.Event()

    class Hanging(Recorder):
        def publish(self, changeset: ChangeSet) -> None:
            inside.set()
            release.wait(30)
            super().publish(changeset)

    sink = Hanging()
    worker = threading.Thread(target=relay, args=(tables, [sink]), kwargs={"once": True})
    worker.start()
    try:
        assert inside.wait(30)
        with maker() as session:  # would wait for the lock, then fail
            session.execute(sa.text("PRAGMA busy_timeout = 500"))
            session.add(Company(id=3, name="c3"))
            session.commit()
    finally:
        release.set()
        worker.join(60)
    assert pks(sink.got) == [1, 2]
    assert relay(tables, [sink], once=True) == 1  # the row committed meanwhile


def test_stop_ends_a_running_relay(
    maker: sa_orm.sessionmaker[sa_orm.Session],
    tables: sa.Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = threading.Event()
    got = threading.Event()

    class Signalling(Recorder):
        def publish(self, changeset: ChangeSet) -> None:
            super().publish(changeset)
            if len(self.got) == 3:
                got.set()

    sink = Signalling()
    result: list[int] = []
    # not the main thread: no signal handler is installed, and none is needed
    worker = threading.Thread(
        target=lambda: result.append(relay(tables, [sink], stop=stop, poll_interval=0.05))
    )
    with caplog.at_level(logging.INFO, logger="dbevents"):
        worker.start()
        commit_companies(maker, range(1, 4))
        assert got.wait(60)
        stop.set()
        worker.join(60)
    assert not worker.is_alive()
    assert result == [3]
    assert "relay: stopped; 3 delivered, 0 parked" in caplog.text


def test_bad_arguments_are_refused(tables: sa.Engine) -> None:
    with pytest.raises(dbevents.ConfigurationError, match="sinks"):
        relay(tables, [], once=True)
    with pytest.raises(dbevents.ConfigurationError, match="sinks"):
        relay(tables, [object()], once=True)  # type: ignore[list-item]
    with pytest.raises(dbevents.ConfigurationError, match="batch_size"):
        relay(tables, [Recorder()], once=True, batch_size=0)


@pytest.mark.parametrize("once", [True, False])
def test_a_missing_outbox_table_is_refused_at_once(tables: sa.Engine, once: bool) -> None:
    # no waiting and retrying with backoff, as for a database that is restarting:
    # waiting would not bring the table
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)  # a relay that kept retrying would end here
    timer.start()
    try:
        with pytest.raises(dbevents.ConfigurationError, match="no outbox table 'no_such_outbox'"):
            relay(tables, [Recorder()], once=once, table_name="no_such_outbox", stop=stop)
    finally:
        timer.cancel()
    assert not stop.is_set()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_relays_on_sqlite_take_turns(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine
) -> None:
    commit_companies(maker, range(1, 61))
    sinks = [Recorder(), Recorder()]
    threads = [
        threading.Thread(
            target=relay, args=(tables, [sink]), kwargs={"once": True, "batch_size": 3}
        )
        for sink in sinks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    delivered = [cs.id for sink in sinks for cs in sink.got]
    assert len(delivered) == len(set(delivered)) == 60


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_relays_on_postgresql_take_disjoint_batches(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine
) -> None:
    commit_companies(maker, range(1, 41))
    second_delivered = threading.Event()
    holding = threading.Event()

    class Holding(Recorder):
        """Holds its first batch open until the other relay delivered one of its own."""

        def publish(self, changeset: ChangeSet) -> None:
            if not holding.is_set():
                holding.set()
                assert second_delivered.wait(30), "the other relay was blocked by our locks"
            super().publish(changeset)

    class Second(Recorder):
        def publish(self, changeset: ChangeSet) -> None:
            super().publish(changeset)
            second_delivered.set()

    first, second = Holding(), Second()
    errors: list[BaseException] = []

    def run(sink: Recorder) -> None:
        try:
            relay(tables, [sink], once=True, batch_size=5, max_attempts=1)
        except BaseException as error:
            errors.append(error)

    one = threading.Thread(target=run, args=(first,))
    one.start()
    assert holding.wait(30)  # the second starts once the first holds a batch
    two = threading.Thread(target=run, args=(second,))
    two.start()
    one.join(60)
    two.join(60)
    assert errors == []
    a, b = {cs.id for cs in first.got}, {cs.id for cs in second.got}
    assert a and b and not a & b
    assert sorted(pks(first.got) + pks(second.got)) == list(range(1, 41))
    assert len(first.got) + len(second.got) == 40


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_relay_wakes_on_notify(
    maker: sa_orm.sessionmaker[sa_orm.Session], tables: sa.Engine
) -> None:
    stop = threading.Event()
    got = threading.Event()

    class Signalling(Recorder):
        def publish(self, changeset: ChangeSet) -> None:
            super().publish(changeset)
            got.set()

    sink = Signalling()
    # an hour between polls: only NOTIFY can wake it within the test
    worker = threading.Thread(
        target=relay, args=(tables, [sink]), kwargs={"stop": stop, "poll_interval": 3600}
    )
    worker.start()
    try:
        threading.Event().wait(0.3)  # let it find the outbox empty and start waiting
        commit_companies(maker, range(1, 2))
        assert got.wait(60)
    finally:
        stop.set()
        worker.join(60)
    assert pks(sink.got) == [1]


SIGTERM_RELAY = textwrap.dedent(
    """
    import os, sys, time
    import dbevents
    from dbevents.relay import relay

    class Slow:
        def __init__(self):
            self.fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self.started = False

        def publish(self, changeset):
            os.write(self.fd, changeset.id.encode() + b"\\n")
            if not self.started:
                self.started = True
                print("delivering", flush=True)
            time.sleep(0.01)

    count = relay(sys.argv[1], [Slow()], batch_size=20, poll_interval=0.05)
    print("delivered", count, flush=True)
    """
)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sigterm_finishes_and_acknowledges_the_batch(
    maker: sa_orm.sessionmaker[sa_orm.Session],
    tables: sa.Engine,
    outbox: OutboxSink,
    db_url: str,
    tmp_path: Path,
) -> None:
    commit_companies(maker, range(1, 101))
    with tables.connect() as conn:
        committed = set(conn.execute(sa.select(outbox.table.c.id)).scalars())
    seen = tmp_path / "seen.txt"
    process = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_RELAY, db_url, str(seen)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "delivering"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    delivered = seen.read_text().split()
    assert out.split() == ["delivered", str(len(delivered))]
    assert 0 < len(delivered) < 100 and len(delivered) % 20 == 0  # whole batches only
    with tables.connect() as conn:
        remaining = set(conn.execute(sa.select(outbox.table.c.id)).scalars())
    # what was delivered was acknowledged; nothing else was
    assert set(delivered) | remaining == committed
    assert not set(delivered) & remaining
