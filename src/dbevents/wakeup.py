"""Waiting for new outbox rows: PostgreSQL ``LISTEN``, or a plain timed wait elsewhere.

The listening connection is opened before the relay's first look at the
outbox, so a row committed between a look and the wait still wakes it.  The
wait is cut into short slices that check ``stop``, because a signal handler
can't interrupt a ``select`` that Python retries after it.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any, Final

import sqlalchemy as sa

from .dump import driver_reason

__all__ = ["Listener"]

logger = logging.getLogger("dbevents")

#: longest stretch a wait goes without looking at ``stop``
_SLICE: Final = 0.2


class Listener:
    """Waits up to a timeout, or until ``stop`` is set; :meth:`open` picks the best kind."""

    @staticmethod
    def open(engine: sa.Engine, channel: str, *, warn: bool = True) -> Listener:
        """A listener on ``channel`` for PostgreSQL through psycopg or psycopg2, else a timer.

        :param warn: log a failure to LISTEN as a warning (else at debug level).
        """
        if engine.dialect.name != "postgresql" or engine.dialect.driver not in (
            "psycopg",
            "psycopg2",
        ):
            return Listener()
        try:
            return _PgListener(engine, channel)
        except sa.exc.DBAPIError as error:
            logger.log(
                logging.WARNING if warn else logging.DEBUG,
                "relay: LISTEN %s failed, polling instead: %s",
                channel,
                driver_reason(error),
            )
            return Listener()

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Return after ``timeout`` seconds, or sooner when woken or stopped."""
        stop.wait(timeout)

    def close(self) -> None:
        """Release the listening connection, if any."""


class _PgListener(Listener):
    """A connection of its own, in autocommit, LISTENing on the outbox's channel."""

    def __init__(self, engine: sa.Engine, channel: str) -> None:
        self.connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            quoted = engine.dialect.identifier_preparer.quote_identifier(channel)
            self.connection.exec_driver_sql(f"LISTEN {quoted}")
            self.driver: Any = self.connection.connection.driver_connection
            self.psycopg3 = engine.dialect.driver == "psycopg"
        except BaseException:
            self.connection.close()
            raise

    def wait(self, timeout: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + timeout
        try:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._woken(min(remaining, _SLICE)):
                    return
        except Exception as error:  # a lost connection: poll until the relay reopens one
            logger.warning("relay: LISTEN connection lost, polling: %s", error)
            stop.wait(max(0.0, deadline - time.monotonic()))

    def _woken(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for notifications; consume every one that arrived."""
        if self.psycopg3:
            if not list(self.driver.notifies(timeout=timeout, stop_after=1)):
                return False
            list(self.driver.notifies(timeout=0))
            return True
        ready, _, _ = select.select([self.driver], [], [], timeout)
        if ready:
            self.driver.poll()
        woken = bool(self.driver.notifies)
        self.driver.notifies.clear()
        return woken

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # already broken: nothing left to release
            logger.debug("relay: closing the LISTEN connection failed", exc_info=True)
