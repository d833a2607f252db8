"""The relay: outbox rows handed to other sinks at least once, in insertion order, then deleted.

Each batch takes the oldest rows (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so
relays side by side take disjoint batches; SQLite: relays take turns), gives them
to every sink, and deletes the rows every sink accepted (see :mod:`.relaybatch`).
A relay killed before it deleted them leaves its rows in place, and the next one
delivers them again: consumers drop duplicates by change set id.

A sink that fails stops the batch at that row (the rows before it are
acknowledged), and the relay backs off exponentially before it tries again.
Once a row has failed ``max_attempts`` times the relay offers the next row to
the same sink: if that one goes through, the row is the problem and is moved to
the dead-letter table with its error; if not, the sink is down and the row
waits, however long it takes.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from .callbacks import is_async
from .delivery import Sink
from .dump import driver_reason
from .exceptions import ConfigurationError, SinkError
from .relaybatch import Batcher, Outcome, describe
from .sinks.outbox import DEFAULT_TABLE, notify_channel
from .urls import engine_from_url
from .wakeup import Listener

__all__ = ["relay"]

logger = logging.getLogger("dbevents")

_REPORT_EVERY: Final = 10.0
#: seconds between looks for a turn while another relay of a SQLite database has it
_TURN_WAIT: Final = 0.05


def relay(
    bind: sa.Engine | str,
    sinks: Sequence[Sink],
    *,
    once: bool = False,
    batch_size: int = 500,
    max_batch_bytes: int = 16 * 2**20,
    poll_interval: float = 1.0,
    table_name: str = DEFAULT_TABLE,
    schema: str | None = None,
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
    :param batch_size: rows per batch at the most.
    :param max_batch_bytes: a batch ends with the row whose payload takes it past this
        size (16 MiB), so that huge change sets are handed on a few at a time.
    :param poll_interval: seconds between looks at an idle outbox (PostgreSQL
        wakes up at once on ``NOTIFY``; this is its safety net).
    :param table_name: the outbox table's name, as given to ``OutboxSink(table_name=...)``.
    :param schema: the outbox table's schema: the ``OutboxSink``'s ``schema`` or its
        metadata's (``MetaData(schema="app")``); by default the database's default one
        (on PostgreSQL, the first of the ``search_path``).
    :param max_attempts: failures of one row before it may be parked.
    :param backoff: seconds before the first retry; doubled per failure, up to ``max_backoff``.
    :returns: how many change sets were delivered.
    :raises SinkError: with ``once``, when a sink still fails after ``max_attempts``.
    """
    if not sinks or not all(isinstance(sink, Sink) for sink in sinks):
        raise ConfigurationError(
            f"relay needs sinks with a publish(changeset) method, got {sinks!r}"
        )
    _refuse_async_sinks(sinks)
    if not table_name:
        raise ConfigurationError("relay: table_name must name the outbox table")
    if schema == "":
        raise ConfigurationError("relay: schema must name a schema, or be None")
    if batch_size < 1 or max_attempts < 1 or max_batch_bytes < 1:
        raise ConfigurationError(
            "relay: batch_size, max_batch_bytes and max_attempts must be at least 1"
        )
    if poll_interval <= 0 or backoff <= 0 or max_backoff < backoff:
        raise ConfigurationError(
            "relay: poll_interval and backoff must be > 0, max_backoff >= backoff"
        )
    engine = engine_from_url(bind) if isinstance(bind, str) else bind
    if engine.dialect.is_async:
        raise ConfigurationError(
            f"relay runs synchronously: give it an engine of a synchronous driver, not "
            f"{engine.dialect.driver}"
        )
    stop = stop if stop is not None else threading.Event()
    options = _Options(
        batch_size, max_batch_bytes, max_attempts, poll_interval, backoff, max_backoff
    )
    worker = _Relay(engine, list(sinks), table_name, schema, options, stop)
    try:
        with _stop_on_signals(stop):
            return worker.run(once)
    finally:
        if isinstance(bind, str):
            engine.dispose()


def _refuse_async_sinks(sinks: Sequence[Sink]) -> None:
    """Raise :class:`ConfigurationError` for a sink whose publish is an ``async def``: the
    relay calls it synchronously, so the change set would be acknowledged, deleted from the
    outbox, and never published."""
    for sink in sinks:
        for name in ("publish", "publish_many"):
            method = getattr(sink, name, None)
            if method is not None and is_async(method):
                raise ConfigurationError(
                    f"relay: {sink!r} has an async {name}, which the relay, running "
                    "synchronously, would never await; give the relay a sink whose "
                    f"{name} is a plain def"
                )


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


@dataclass(frozen=True, slots=True)
class _Options:
    batch_size: int
    max_batch_bytes: int
    max_attempts: int
    poll_interval: float
    backoff: float
    max_backoff: float


class _Relay:
    """One relay's loop: batches, backoff after failures, waits when idle, progress."""

    def __init__(
        self,
        engine: sa.Engine,
        sinks: list[Sink],
        table_name: str,
        schema: str | None,
        options: _Options,
        stop: threading.Event,
    ) -> None:
        self.engine = engine
        self.sinks = sinks
        self.batcher = Batcher(
            engine,
            sinks,
            table_name,
            options.batch_size,
            options.max_attempts,
            schema,
            options.max_batch_bytes,
        )
        self.channel = notify_channel(self.batcher.outbox)
        self.options = options
        self.max_attempts = options.max_attempts
        self.stop = stop
        self.delivered = self.parked = 0
        #: failed batches in a row: the exponent of the backoff
        self.failures = 0

    def run(self, once: bool) -> int:
        """Deliver batches until stopped (or, with ``once``, until nothing is left)."""
        listener = self._listener(once, warn=True)
        logger.info(
            "relay: delivering %s on %s to %d sink(s)",
            self.channel,
            self.engine.dialect.name,
            len(self.sinks),
        )
        reported = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    outcome = self.batcher.run()
                except sa.exc.DBAPIError as error:
                    self._database_failed(error, once)
                    listener.close()  # it may be broken too
                    listener = self._listener(once, warn=False)  # the error is logged already
                    continue
                if outcome.busy:  # another relay's turn (SQLite): it ends with its batch
                    self.stop.wait(_TURN_WAIT)
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
                if outcome.full:
                    continue  # more may be waiting
                if once:
                    break
                listener.wait(self.options.poll_interval, self.stop)
        finally:
            listener.close()
        logger.info("relay: stopped; %d delivered, %d parked", self.delivered, self.parked)
        return self.delivered

    def _listener(self, once: bool, *, warn: bool) -> Listener:
        """What waits for new rows; ``once`` never waits, so it needs no connection of its own."""
        return Listener() if once else Listener.open(self.engine, self.channel, warn=warn)

    def _database_failed(self, error: sa.exc.DBAPIError, once: bool) -> None:
        """Back off after a database error (a restart, a lock timeout); ``once`` gives up.

        A missing outbox table is no passing failure: waiting would not bring it.
        """
        if self._outbox_missing():
            name = self.batcher.outbox.fullname
            raise ConfigurationError(
                f"relay: there is no outbox table {name!r} in "
                f"{self.engine.url.render_as_string(hide_password=True)}; create it with "
                f"OutboxSink(...).create_table(bind) or your migrations, or pass the "
                f"table_name and schema your OutboxSink uses"
            ) from error
        self.failures += 1
        if once and self.failures >= self.max_attempts:
            raise error
        delay = self._delay()
        logger.warning("relay: database error, retrying in %.1fs: %s", delay, driver_reason(error))
        self.stop.wait(delay)

    def _sink_failed(self, outcome: Outcome, once: bool) -> None:
        """Back off after a sink failed; ``once`` gives up when the sink, not the row, is stuck."""
        assert outcome.failed is not None
        row, sink, cause = outcome.failed
        self.failures += 1
        if once and outcome.stuck:
            raise SinkError(
                f"{sink!r} failed {row.attempts + 1} times on change set {row.id} "
                f"(outbox seq {row.seq}): {describe(cause)}; it stays in the outbox",
                sink=sink,
            ) from cause
        delay = self._delay()
        logger.warning(
            "relay: %r failed on change set %s (attempt %d), retrying in %.1fs: %s",
            sink,
            row.id,
            row.attempts + 1,
            delay,
            describe(cause),
        )
        self.stop.wait(delay)

    def _outbox_missing(self) -> bool:
        """Whether the database answers, without the outbox table."""
        try:
            outbox = self.batcher.outbox
            return not sa.inspect(self.engine).has_table(outbox.name, schema=outbox.schema)
        except sa.exc.DBAPIError:
            return False  # the database itself is away: a passing failure

    def _delay(self) -> float:
        """Exponential backoff with jitter, so relays side by side don't retry in step."""
        options = self.options
        base = min(options.max_backoff, options.backoff * 2.0 ** min(self.failures - 1, 30))
        return base * random.uniform(0.8, 1.0)
