"""The relay: outbox rows handed to other sinks at least once, in insertion order, then deleted.

Each batch is one short transaction: take the oldest rows (PostgreSQL: ``FOR
UPDATE SKIP LOCKED``, so relays side by side take disjoint batches; SQLite:
``BEGIN IMMEDIATE``, so they take turns), give them to every sink, delete the
rows every sink accepted, commit.  A relay killed before the commit leaves its
rows in place, and the next one delivers them again: consumers drop duplicates
by change set id.

A sink that fails stops the batch at that row (the rows before it are
acknowledged), and the relay backs off exponentially before it tries again.
Once a row has failed ``max_attempts`` times the relay offers the next row to
the same sink: if that one goes through, the row is the problem and is moved to
the dead-letter table with its error; if not, the sink is down and the row
waits, however long it takes.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from .changes import ChangeSet
from .delivery import Sink
from .exceptions import ConfigurationError, SinkError
from .sinks.outbox import DEFAULT_TABLE, dead_table, outbox_table
from .wakeup import Listener

__all__ = ["relay"]

logger = logging.getLogger("dbevents")

_REPORT_EVERY: Final = 10.0


def relay(
    bind: sa.Engine | str,
    sinks: Sequence[Sink],
    *,
    once: bool = False,
    batch_size: int = 500,
    poll_interval: float = 1.0,
    table_name: str = DEFAULT_TABLE,
    max_attempts: int = 5,
    stop: threading.Event | None = None,
    backoff: float = 0.5,
    max_backoff: float = 60.0,
) -> int:
    """Deliver the outbox's change sets to ``sinks``, at least once, and delete them.

    Runs until ``stop`` is set or SIGTERM arrives (the batch in hand is
    finished and acknowledged first); with ``once``, returns when the outbox
    has nothing left to take.  The SIGTERM handler is installed only when
    called from the main thread.

    :param bind: the database holding the outbox: an engine, or a URL.
    :param sinks: where change sets go; a sink with ``publish_many(changesets)``
        gets a whole batch at once.
    :param batch_size: rows per transaction.
    :param poll_interval: seconds between looks at an idle outbox (PostgreSQL
        wakes up at once on ``NOTIFY``; this is its safety net).
    :param max_attempts: failures of one row before it may be parked.
    :param backoff: seconds before the first retry; doubled per failure, up to ``max_backoff``.
    :returns: how many change sets were delivered.
    :raises SinkError: with ``once``, when a sink still fails after ``max_attempts``.
    """
    if not sinks or not all(isinstance(sink, Sink) for sink in sinks):
        raise ConfigurationError(
            f"relay needs sinks with a publish(changeset) method, got {sinks!r}"
        )
    if batch_size < 1 or max_attempts < 1:
        raise ConfigurationError("relay: batch_size and max_attempts must be at least 1")
    if poll_interval <= 0 or backoff <= 0 or max_backoff < backoff:
        raise ConfigurationError(
            "relay: poll_interval and backoff must be > 0, max_backoff >= backoff"
        )
    engine = sa.create_engine(bind) if isinstance(bind, str) else bind
    stop = stop if stop is not None else threading.Event()
    options = _Options(batch_size, max_attempts, poll_interval, backoff, max_backoff)
    worker = _Relay(engine, list(sinks), table_name, options, stop)
    try:
        with _stop_on_signals(stop):
            return worker.run(once)
    finally:
        if isinstance(bind, str):
            engine.dispose()


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGTERM (and a first Ctrl-C) into ``stop.set()`` while the relay runs (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        stop.set()

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for the batch
            raise KeyboardInterrupt
        stop.set()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
        signal.SIGINT: signal.signal(signal.SIGINT, on_interrupt),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(slots=True)
class _Row:
    seq: int
    id: str
    created_at: Any
    payload: str
    attempts: int
    changeset: ChangeSet | None = None
    #: why the payload does not decode
    broken: str | None = None


@dataclass(slots=True)
class _Outcome:
    """What one batch did."""

    taken: int = 0
    delivered: int = 0
    parked: int = 0
    #: the row that failed, the sink and the error, when a sink failed
    failed: tuple[_Row, Sink, BaseException] | None = None
    #: the failed row could not be parked: the sink fails on the next row too, or there is none
    stuck: bool = False
    #: (seq, id) of the rows taken that stay in the outbox
    pending: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Options:
    batch_size: int
    max_attempts: int
    poll_interval: float
    backoff: float
    max_backoff: float


class _Relay:
    """One relay's state: its engine, sinks, tables, and which sink took which pending row."""

    def __init__(
        self,
        engine: sa.Engine,
        sinks: list[Sink],
        table_name: str,
        options: _Options,
        stop: threading.Event,
    ) -> None:
        metadata = sa.MetaData()
        self.engine = engine
        self.sinks = sinks
        self.outbox = outbox_table(metadata, table_name)
        self.dead = dead_table(metadata, table_name)
        self.options = options
        self.batch_size = options.batch_size
        self.max_attempts = options.max_attempts
        self.stop = stop
        self.sqlite = engine.dialect.name == "sqlite"
        #: (seq, id) -> indexes of the sinks that accepted a row not yet acknowledged
        self.accepted: dict[tuple[int, str], set[int]] = {}
        self.dead_ready = False
        self.delivered = self.parked = 0
        #: failed batches in a row: the exponent of the backoff
        self.failures = 0

    def run(self, once: bool) -> int:
        """Deliver batches until stopped (or, with ``once``, until nothing is left)."""
        listener = Listener.open(self.engine, self.outbox.name)
        logger.info(
            "relay: delivering %s on %s to %d sink(s)",
            self.outbox.name,
            self.engine.dialect.name,
            len(self.sinks),
        )
        reported = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    outcome = self.batch()
                except sa.exc.DBAPIError as error:
                    self._database_failed(error, once)
                    listener.close()  # it may be broken too
                    listener = Listener.open(self.engine, self.outbox.name)
                    continue
                self.delivered += outcome.delivered
                self.parked += outcome.parked
                if outcome.failed is not None:
                    self._sink_failed(outcome, once)
                    continue
                self.failures = 0
                if time.monotonic() - reported >= _REPORT_EVERY:
                    reported = time.monotonic()
                    logger.info("relay: %d delivered, %d parked", self.delivered, self.parked)
                if outcome.taken >= self.batch_size:
                    continue  # more may be waiting
                if once:
                    break
                listener.wait(self.options.poll_interval, self.stop)
        finally:
            listener.close()
        logger.info("relay: stopped; %d delivered, %d parked", self.delivered, self.parked)
        return self.delivered

    def _database_failed(self, error: sa.exc.DBAPIError, once: bool) -> None:
        """Back off after a database error (a restart, a lock timeout); ``once`` gives up."""
        self.failures += 1
        if once and self.failures >= self.max_attempts:
            raise error
        delay = self._delay()
        logger.warning("relay: database error, retrying in %.1fs: %s", delay, error)
        self.stop.wait(delay)

    def _sink_failed(self, outcome: _Outcome, once: bool) -> None:
        """Back off after a sink failed; ``once`` gives up when the sink, not the row, is stuck."""
        assert outcome.failed is not None
        row, sink, cause = outcome.failed
        self.failures += 1
        if once and outcome.stuck:
            raise SinkError(
                f"{sink!r} failed {row.attempts + 1} times on change set {row.id} "
                f"(outbox seq {row.seq}): {cause!r}; it stays in the outbox",
                sink=sink,
            ) from cause
        delay = self._delay()
        logger.warning(
            "relay: %r failed on change set %s (attempt %d), retrying in %.1fs: %r",
            sink,
            row.id,
            row.attempts + 1,
            delay,
            cause,
        )
        self.stop.wait(delay)

    def _delay(self) -> float:
        """Exponential backoff with jitter, so relays side by side don't retry in step."""
        options = self.options
        base = min(options.max_backoff, options.backoff * 2.0 ** min(self.failures - 1, 30))
        return base * random.uniform(0.8, 1.0)

    # -- one batch -----------------------------------------------------------------------------

    def batch(self) -> _Outcome:
        """Take, deliver and acknowledge one batch, in one transaction."""
        outcome = _Outcome()
        with self.engine.connect() as connection:
            self._begin(connection)
            rows = self._take(connection)
            outcome.taken = len(rows)
            if rows:
                self._deliver(rows, outcome)
                self._settle(connection, rows, outcome)
            connection.commit()
        # forget what sinks accepted of rows no longer pending
        pending = set(outcome.pending)
        self.accepted = {key: v for key, v in self.accepted.items() if key in pending}
        return outcome

    def _begin(self, connection: sa.Connection) -> None:
        connection.begin()
        if not self.sqlite:
            return
        # the write lock before the first read: relays take turns, and the DELETE can't
        # fail to upgrade a read lock; dbevents.sqlite.configure's BEGIN is deferred, so end it
        driver = connection.connection.driver_connection
        if getattr(driver, "in_transaction", False):
            connection.exec_driver_sql("COMMIT")
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    def _take(self, connection: sa.Connection) -> list[_Row]:
        table = self.outbox
        query = (
            sa.select(
                table.c.seq, table.c.id, table.c.created_at, table.c.payload, table.c.attempts
            )
            .order_by(table.c.seq)
            .limit(self.batch_size)
        )
        if not self.sqlite:
            query = query.with_for_update(skip_locked=True)
        rows = [_Row(*row) for row in connection.execute(query)]
        for row in rows:
            try:
                row.changeset = ChangeSet.from_json(row.payload)
            except (ValueError, KeyError, TypeError) as error:
                row.broken = f"undecodable payload: {error!r}"
        return rows

    def _deliver(self, rows: list[_Row], outcome: _Outcome) -> None:
        """Hand the rows to every sink in order; stop each sink at its first failure."""
        good = [row for row in rows if row.changeset is not None]
        limit = len(good)
        taken: list[list[_Row]] = []
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

    def _probe(self, after: list[_Row], outcome: _Outcome) -> None:
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

    def _settle(self, connection: sa.Connection, rows: list[_Row], outcome: _Outcome) -> None:
        """Delete what every sink accepted, park broken rows, count the failure."""
        good = [row for row in rows if row.changeset is not None]
        acked = good[: outcome.delivered]
        table = self.outbox
        if acked:
            connection.execute(table.delete().where(table.c.seq.in_([row.seq for row in acked])))
        to_park = [(row, row.broken) for row in rows if row.broken is not None]
        if outcome.failed is not None:
            row, sink, error = outcome.failed
            if row.attempts + 1 >= self.max_attempts and not outcome.stuck:
                to_park.append((row, f"{sink!r} failed {row.attempts + 1} times: {error!r}"))
            else:
                connection.execute(
                    table.update()
                    .where(table.c.seq == row.seq)
                    .values(attempts=table.c.attempts + 1, last_error=repr(error)[:2000])
                )
        for row, reason in to_park:
            assert reason is not None
            self._park(connection, row, reason)
        outcome.parked = len(to_park)
        gone = {row.seq for row in acked} | {row.seq for row, _ in to_park}
        outcome.pending = [(row.seq, row.id) for row in rows if row.seq not in gone]

    def _park(self, connection: sa.Connection, row: _Row, reason: str) -> None:
        if not self.dead_ready:
            self.dead.create(connection, checkfirst=True)
            self.dead_ready = True
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
        connection.execute(self.outbox.delete().where(self.outbox.c.seq == row.seq))

    def _accepted(self, row: _Row) -> set[int]:
        return self.accepted.setdefault((row.seq, row.id), set())


def _publish(sink: Sink, rows: list[_Row]) -> tuple[int, BaseException | None]:
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
