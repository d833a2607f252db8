"""One relay batch: take the oldest outbox rows, hand them to the sinks, acknowledge or park them.

On PostgreSQL the whole batch is one transaction, which locks the rows it takes
(``FOR UPDATE SKIP LOCKED``): relays side by side take disjoint batches, a relay
that dies releases them, and the application's writers never wait.  SQLite has
one write lock for the whole database, which no sink may keep while it works (a
Redis that hangs would fail the application's commits with "database is
locked"): the rows are read, delivered, then acknowledged under a short ``BEGIN
IMMEDIATE``, and relays take turns through a lock file beside the database.
Sinks get the rows in order, and each stops at its first failure: only the rows
every sink accepted are deleted.  A batch ends at ``batch_size`` rows or once
its payloads pass ``max_bytes``, so a few huge change sets never load at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: relays on SQLite don't take turns there
    fcntl = None  # type: ignore[assignment]

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .changes import ChangeSet, passed_on
from .delivery import Sink
from .sinks.outbox import dead_table, outbox_table

__all__ = ["Batcher", "Outcome", "Row", "describe"]

logger = logging.getLogger("dbevents")


@dataclass(slots=True)
class Row:
    """An outbox row taken by a batch."""

    seq: int
    id: str
    created_at: Any
    payload: str
    attempts: int
    changeset: ChangeSet | None = None
    #: why the payload does not decode
    broken: str | None = None


@dataclass(slots=True)
class Outcome:
    """What one batch did."""

    delivered: int = 0
    parked: int = 0
    #: the row that failed, the sink and the error, when a sink failed
    failed: tuple[Row, Sink, BaseException] | None = None
    #: the failed row could not be parked: the sink fails on the next row too, or there is none
    stuck: bool = False
    #: (seq, id) of the rows taken that stay in the outbox
    pending: list[tuple[int, str]] = field(default_factory=list)
    #: another relay has its turn (SQLite): nothing was taken
    busy: bool = False
    #: the batch ended at a limit, not with the outbox: more rows may be waiting
    full: bool = False


class Batcher:
    """Runs batches for one relay, and remembers which sink took which row still pending."""

    def __init__(
        self,
        engine: sa.Engine,
        sinks: list[Sink],
        table_name: str,
        batch_size: int,
        max_attempts: int,
        schema: str | None = None,
        max_bytes: int = 16 * 2**20,
    ) -> None:
        metadata = sa.MetaData()
        self.engine = engine
        self.sinks = sinks
        self.outbox = outbox_table(metadata, table_name, schema)
        self.dead = dead_table(metadata, table_name, schema)
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.max_attempts = max_attempts
        self.sqlite = engine.dialect.name == "sqlite"
        self.turns = _turns_file(engine) if self.sqlite else None
        #: (seq, id) -> indexes of the sinks that accepted a row not yet acknowledged
        self.accepted: dict[tuple[int, str], set[int]] = {}
        self.dead_ready = False
        # acknowledging a batch: one array parameter on PostgreSQL, else an executemany
        # (never an IN list of hundreds of parameters, rendered and parsed each time)
        self._by_array = engine.dialect.name == "postgresql"
        seqs = sa.bindparam("seqs", type_=postgresql.ARRAY(sa.BigInteger))
        self._delete_any = self.outbox.delete().where(self.outbox.c.seq == sa.any_(seqs))
        self._delete_each = self.outbox.delete().where(self.outbox.c.seq == sa.bindparam("acked"))

    def run(self) -> Outcome:
        """Take, deliver and acknowledge one batch."""
        outcome = Outcome()
        with self._turn() as ours:
            if not ours:
                outcome.busy = True
                return outcome
            with self.engine.connect() as connection:
                if self.sqlite:
                    with connection.begin():  # a read: no write lock while the sinks work
                        rows = self._take(connection, outcome)
                    if rows:
                        self._deliver(rows, outcome)
                        self._begin_immediate(connection)
                        self._settle(connection, rows, outcome)
                        connection.commit()
                else:
                    with connection.begin():
                        rows = self._take(connection, outcome)
                        if rows:
                            self._deliver(rows, outcome)
                            self._settle(connection, rows, outcome)
        # forget what sinks accepted of rows no longer pending
        pending = set(outcome.pending)
        self.accepted = {key: v for key, v in self.accepted.items() if key in pending}
        return outcome

    @contextmanager
    def _turn(self) -> Iterator[bool]:
        """This relay's turn on a SQLite database, if no other one has it now (else False)."""
        if self.turns is None:
            yield True
            return
        fd = os.open(self.turns, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _begin_immediate(self, connection: sa.Connection) -> None:
        # the write lock before the first write, so the DELETE can't fail to upgrade a read
        # lock; dbevents.sqlite.configure's BEGIN is deferred, so end it
        connection.begin()
        driver = connection.connection.driver_connection
        if getattr(driver, "in_transaction", False):
            connection.exec_driver_sql("COMMIT")
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    def _take(self, connection: sa.Connection, outcome: Outcome) -> list[Row]:
        """The oldest rows, up to ``batch_size`` of them or just past ``max_bytes`` of payload
        (at least one row); fetched a few at a time, so no more are ever loaded."""
        table = self.outbox
        query = (
            sa.select(
                table.c.seq, table.c.id, table.c.created_at, table.c.payload, table.c.attempts
            )
            .order_by(table.c.seq)
            .limit(self.batch_size)
            .execution_options(yield_per=_FETCH)
        )
        if not self.sqlite:
            query = query.with_for_update(skip_locked=True)
        rows: list[Row] = []
        size = 0
        with connection.execute(query) as result:
            for fetched in result:
                rows.append(Row(*fetched))
                size += len(fetched.payload)
                if size >= self.max_bytes:
                    break  # (on PostgreSQL, rows not fetched are not locked either)
        outcome.full = len(rows) >= self.batch_size or size >= self.max_bytes
        for row in rows:
            # what an OutboxSink wrote is decoded only if a sink looks into it
            row.changeset = passed_on(row.id, row.payload)
            if row.changeset is not None:
                continue
            try:
                row.changeset = ChangeSet.from_json(row.payload)
            except (ValueError, KeyError, TypeError) as error:
                row.broken = f"undecodable payload: {describe(error)}"
        return rows

    def _deliver(self, rows: list[Row], outcome: Outcome) -> None:
        """Hand the rows to every sink in order; stop each sink at its first failure."""
        good = [row for row in rows if row.changeset is not None]
        limit = len(good)
        taken: list[list[Row]] = []
        for index, sink in enumerate(self.sinks):
            pending = good[:limit]
            if self.accepted:  # only after a failure: skip what this sink already took
                pending = [row for row in pending if index not in self._accepted(row)]
            done, error = _publish(sink, pending)
            taken.append(pending[:done])
            if error is not None:
                failed = pending[done]
                limit = good.index(failed)
                outcome.failed = (failed, sink, error)
        outcome.delivered = limit
        if outcome.failed is None:
            return
        # rows that stay in the outbox: remember which sinks have them already
        keep = {row.seq for row in good[limit:]}
        for index, rows_taken in enumerate(taken):
            for row in rows_taken:
                if row.seq in keep:
                    self._accepted(row).add(index)
        self._probe(good[limit + 1 :], outcome)

    def _probe(self, after: list[Row], outcome: Outcome) -> None:
        """Decide whether a row that used up its attempts is to blame, or its sink."""
        assert outcome.failed is not None
        row, sink, _ = outcome.failed
        if row.attempts + 1 < self.max_attempts:
            return
        outcome.stuck = True
        if not after:
            return
        index = self.sinks.index(sink)
        candidate = after[0]
        if index in self._accepted(candidate):
            outcome.stuck = False
            return
        done, _ = _publish(sink, [candidate])
        if done:
            self._accepted(candidate).add(index)
            outcome.stuck = False

    def _settle(self, connection: sa.Connection, rows: list[Row], outcome: Outcome) -> None:
        """Delete what every sink accepted, park broken rows, count the failure."""
        good = [row for row in rows if row.changeset is not None]
        acked = good[: outcome.delivered]
        table = self.outbox
        if acked:
            self._acknowledge(connection, [row.seq for row in acked])
        to_park = [(row, row.broken) for row in rows if row.broken is not None]
        if outcome.failed is not None:
            row, sink, error = outcome.failed
            if row.attempts + 1 >= self.max_attempts and not outcome.stuck:
                reason = f"{sink!r} failed {row.attempts + 1} times: {describe(error)}"
                to_park.append((row, reason))
            else:
                connection.execute(
                    table.update()
                    .where(table.c.seq == row.seq)
                    .values(attempts=table.c.attempts + 1, last_error=describe(error)[:2000])
                )
        for row, reason in to_park:
            assert reason is not None
            self._park(connection, row, reason)
        outcome.parked = len(to_park)
        gone = {row.seq for row in acked} | {row.seq for row, _ in to_park}
        outcome.pending = [(row.seq, row.id) for row in rows if row.seq not in gone]

    def _acknowledge(self, connection: sa.Connection, seqs: list[int]) -> None:
        """Delete the outbox rows every sink accepted."""
        if self._by_array:
            connection.execute(self._delete_any, {"seqs": seqs})
        else:  # (through SQLAlchemy, which applies a schema_translate_map)
            connection.execute(self._delete_each, [{"acked": seq} for seq in seqs])

    def _park(self, connection: sa.Connection, row: Row, reason: str) -> None:
        if not self.dead_ready:
            self.dead.create(connection, checkfirst=True)
            self.dead_ready = True
        deleted = connection.execute(self.outbox.delete().where(self.outbox.c.seq == row.seq))
        if not deleted.rowcount:
            return  # (SQLite, a relay on a database it can't lock: another one delivered it)
        logger.error("relay: parked change set %s (outbox seq %d): %s", row.id, row.seq, reason)
        connection.execute(
            self.dead.insert(),
            {
                "seq": row.seq,
                "id": row.id,
                "created_at": row.created_at,
                "payload": row.payload,
                "attempts": row.attempts + 1,
                "error": reason,
                "parked_at": dt.datetime.now(dt.UTC),
            },
        )

    def _accepted(self, row: Row) -> set[int]:
        return self.accepted.setdefault((row.seq, row.id), set())


#: rows fetched at a time while taking a batch
_FETCH = 50


def _turns_file(engine: sa.Engine) -> str | None:
    """The lock file relays of a SQLite database take turns by: beside the database file.

    None for a database in memory, or where no lock can be taken: relays then
    don't exclude each other, and may deliver a row twice (which consumers drop).
    """
    database = engine.url.database
    if fcntl is None or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}-relay.lock"


def describe(error: BaseException) -> str:
    """An error as its type and message: ``repr()`` leaves the message out for some
    (redis-py 8's errors repr as ``network:ConnectionError``, without the reason)."""
    message = str(error)
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def _publish(sink: Sink, rows: list[Row]) -> tuple[int, BaseException | None]:
    """Give ``rows`` to ``sink``; how many leading rows it accepted, and its error if any."""
    if not rows:
        return 0, None
    changesets = [row.changeset for row in rows if row.changeset is not None]
    many = getattr(sink, "publish_many", None)
    if many is not None and len(changesets) > 1:
        try:
            many(changesets)
            return len(rows), None
        except Exception:
            logger.debug("relay: %r failed on a batch; retrying one by one", sink, exc_info=True)
    for done, changeset in enumerate(changesets):
        try:
            sink.publish(changeset)
        except Exception as error:
            return done, error
    return len(rows), None
