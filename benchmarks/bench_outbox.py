"""The transactional outbox: what it adds to a commit, and how fast the relay drains it.

- ``outbox: uow insert`` (10,000 rows in one commit) and ``outbox: commits of
  10 rows`` (the same rows in 1,000 commits): bare SQLAlchemy, dbevents with
  capture and no sink, and dbevents with an :class:`~dbevents.OutboxSink`.
  The note under the table gives the outbox's cost per change row: the
  OutboxSink time minus the capture time, over the rows (target: 10 µs).
  Small commits also run bare with one ``SELECT 1`` more per commit (the
  floor): the outbox's INSERT is one more statement in every transaction.
- ``relay drain`` (20,000 change sets of one row each, batches of 500):
  :func:`dbevents.relay` with ``once=True`` into a sink that drops them, into a
  :class:`~dbevents.MemorySink`, and into a :class:`RedisStreamSink` on a
  throwaway ``redis-server`` (pipelined ``XADD``); rows/s is change sets/s.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from benchmarks import common
from benchmarks.common import BARE, CAPTURE, FLOOR, Database, Result
from dbevents.changes import Change, ChangeSet, Op
from dbevents.ids import new_id

__all__ = ["run"]

OUTBOX = "dbevents + OutboxSink"
NULL = "relay → null sink"
MEMORY_SINK = "relay → MemorySink"
REDIS = "relay → Redis stream"
ONE_COMMIT = "outbox: uow insert"
PER_SMALL_COMMIT = 10
SMALL_COMMITS = f"outbox: commits of {PER_SMALL_COMMIT} rows"
DRAIN = "relay drain"
BATCH = 500


class Base(sa_orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "bench_outbox_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(200))
    total: Mapped[int]
    paid: Mapped[bool]


def run(quick: bool) -> list[Result]:
    """Outbox commit cost and relay throughput on every selected backend."""
    rows = common.rows_for(10_000, 2_000)
    cases = [
        case
        for operation, per_commit, variants in (
            (ONE_COMMIT, 0, (BARE, CAPTURE, OUTBOX)),
            (SMALL_COMMITS, PER_SMALL_COMMIT, (BARE, FLOOR, CAPTURE, OUTBOX)),
        )
        for case in common.cases_for(
            operation,
            rows,
            [
                (v, f"{__name__}:Commits", {"variant": v, "per_commit": per_commit})
                for v in variants
            ],
        )
    ]
    # the floor is bare SQLAlchemy too: no dbevents listeners in its process
    cases = [replace(case, group=BARE) if case.variant == FLOOR else case for case in cases]
    drained = common.rows_for(20_000, 5_000)
    sinks = [(NULL, "null"), (MEMORY_SINK, "memory")]
    redis_server = _start_redis()
    if redis_server is not None:
        sinks.append((REDIS, redis_server.url))
    cases += common.cases_for(
        DRAIN, drained, [(v, f"{__name__}:Drain", {"sink": s}) for v, s in sinks]
    )
    try:
        results = common.measure(cases)
    finally:
        if redis_server is not None:
            redis_server.stop()
    return results + _notes(results)


def _start_redis() -> Any:
    try:
        from tests.servers import RedisServer, ServerError
    except ImportError as error:
        common.log(f"no Redis rows: {error} (run from the repository root)")
        return None
    try:
        return RedisServer()
    except (ServerError, OSError) as error:
        common.log(f"no Redis rows: {error}")
        return None


def _notes(results: list[Result]) -> list[Result]:
    """The outbox's cost per change row, from the capture and OutboxSink rows of this run."""
    notes: list[Result] = []
    timed = {(r["operation"], r["backend"], r["variant"]): r for r in results}
    for (operation, backend, variant), row in timed.items():
        capture = timed.get((operation, backend, CAPTURE))
        if variant != OUTBOX or capture is None:
            continue
        added = (row["seconds"] - capture["seconds"]) / row["rows"] * 1e6
        note = f"{operation} on {backend}: the outbox adds {added:.1f} µs per change row"
        floor, bare = timed.get((operation, backend, FLOOR)), timed.get((operation, backend, BARE))
        if floor is not None and bare is not None:
            statement = (floor["seconds"] - bare["seconds"]) / row["rows"] * 1e6
            note += (
                f" ({added * PER_SMALL_COMMIT:.0f} µs per commit, where one more statement"
                f" in a commit costs {statement * PER_SMALL_COMMIT:.0f} µs)"
            )
        try:
            inside = common.call_in_worker(OUTBOX, f"{__name__}:write_seconds", operation, backend)
        except common.WorkerError as error:
            common.log(f"no time inside OutboxSink.write for {operation}: {error}")
            inside = None
        if inside is not None:
            note += f"; OutboxSink.write itself: {inside / row['rows'] * 1e6:.1f} µs per change row"
        notes.append(
            Result(
                operation=operation,
                variant="outbox cost",
                backend=backend,
                seconds=float("nan"),
                rows=row["rows"],
                peak_mb=None,
                note=note,
            )
        )
    return notes


# -- commits -----------------------------------------------------------------------------------


class Commits:
    """Insert ``rows`` orders through the session: in one commit, or ``per_commit`` at a time."""

    def __init__(self, db: Database, rows: int, variant: str, per_commit: int) -> None:
        self.db, self.rows, self.per_commit = db, rows, per_commit or rows
        self.outbox = dbevents.OutboxSink(Base.metadata)

        class BenchSession(sa_orm.Session):
            pass

        self.maker = sa_orm.sessionmaker(db.engine, class_=BenchSession)
        self.floor = variant == FLOOR
        self.timed = _TimedOutbox(self.outbox)
        self.key = (SMALL_COMMITS if per_commit else ONE_COMMIT, db.backend)
        if variant not in (BARE, FLOOR):
            sinks = [self.timed] if variant == OUTBOX else []
            dbevents.Events(sinks=sinks).install(self.maker)
        self.data: list[tuple[str, str, int, bool]] = []

    def setup(self) -> None:
        self.db.reset(Base.metadata)
        self.data = [
            (f"customer {i}", f"c{i}@example.com", i, i % 2 == 0) for i in range(self.rows)
        ]

    def action(self) -> None:
        self.timed.seconds = 0.0
        step = self.per_commit
        for start in range(0, self.rows, step):
            with self.maker() as session:
                session.add_all(
                    [
                        Order(customer=c, email=e, total=t, paid=p)
                        for c, e, t, p in self.data[start : start + step]
                    ]
                )
                if self.floor:  # what one more statement in the transaction costs
                    session.execute(sa.select(sa.literal(1)))
                session.commit()
        if self.timed.seconds:
            _inside_write.setdefault(self.key, []).append(self.timed.seconds)

    def teardown(self) -> None:
        self.data = []


# -- relay ---------------------------------------------------------------------------------------


#: seconds each run spent inside OutboxSink.write, by (operation, backend); kept in the worker
_inside_write: dict[tuple[str, str], list[float]] = {}


class _TimedOutbox:
    """An OutboxSink that counts the time spent writing the outbox row (encoding included)."""

    def __init__(self, outbox: dbevents.OutboxSink) -> None:
        self.outbox = outbox
        self.seconds = 0.0

    def write(self, session: sa_orm.Session, changeset: ChangeSet) -> None:
        start = time.perf_counter()
        try:
            self.outbox.write(session, changeset)
        finally:
            self.seconds += time.perf_counter() - start

    def publish(self, changeset: ChangeSet) -> None:
        self.outbox.publish(changeset)


def write_seconds(operation: str, backend: str) -> float | None:
    """The median time the runs of ``operation`` spent inside OutboxSink.write (in the worker)."""
    runs = _inside_write.get((operation, backend))
    return statistics.median(runs) if runs else None


class NullSink:
    """Takes every change set and keeps nothing: the relay's own cost."""

    def publish(self, changeset: ChangeSet) -> None:
        pass

    def publish_many(self, changesets: list[ChangeSet]) -> None:
        pass


class Drain:
    """Fill the outbox with ``rows`` one-row change sets (untimed), then relay them all."""

    def __init__(self, db: Database, rows: int, sink: str) -> None:
        self.db, self.rows, self.sink_spec = db, rows, sink
        self.outbox = dbevents.OutboxSink()
        self.outbox.create_table(db.engine)
        self.payloads = [_payload(i) for i in range(self.rows)]
        self.sink: Any = None
        self.stream = ""

    def setup(self) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(self.outbox.table.delete())
            conn.execute(self.outbox.table.insert(), self.payloads)
        if self.sink_spec == "null":
            self.sink = NullSink()
        elif self.sink_spec == "memory":
            self.sink = dbevents.MemorySink(history=self.rows)
        else:
            from dbevents.sinks.redis import RedisStreamSink

            self.stream = f"bench:{uuid.uuid4().hex}"
            self.sink = RedisStreamSink(self.sink_spec, self.stream)

    def action(self) -> None:
        delivered = dbevents.relay(self.db.engine, [self.sink], once=True, batch_size=BATCH)
        if delivered != self.rows:
            raise RuntimeError(f"relayed {delivered} of {self.rows} change sets")

    def teardown(self) -> None:
        if self.stream:
            self.sink.client.delete(self.stream)
            self.sink.close()
        self.sink = None


def _payload(i: int) -> dict[str, Any]:
    """The outbox row of a commit that inserted one order."""
    now = dt.datetime.now(dt.UTC)
    row = {"id": i, "customer": f"customer {i}", "email": f"c{i}@example.com", "total": i}
    change = Change(Op.INSERT, Order.__tablename__, "Order", (i,), None, {**row, "paid": True})
    changeset = ChangeSet(new_id(), now, None, (change,))
    return {"id": changeset.id, "created_at": now, "payload": changeset.to_json().decode()}
