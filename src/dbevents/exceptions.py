"""The exceptions dbevents raises.

::

    DbEventsError
     ├── ConfigurationError (also ValueError)   bad registration or options, raised at once
     ├── AbortError                            a veto that cannot be honoured by skipping
     ├── LoadError (also ValueError)           bad input to load(), nothing was written
     ├── SinkError                             a sink could not publish (raised by sinks)
     └── UncapturedWriteError                  raw SQL wrote rows dbevents cannot see
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "AbortError",
    "ConfigurationError",
    "DbEventsError",
    "DbEventsWarning",
    "LoadError",
    "SinkError",
    "UncapturedWriteError",
]


class DbEventsError(Exception):
    """The root of every exception dbevents raises."""


class ConfigurationError(DbEventsError, ValueError):
    """A callback, listener or option is wrong; raised when it is registered.

    :ivar model: the model class concerned, when there is one.
    """

    def __init__(self, message: str, *, model: type[Any] | None = None) -> None:
        super().__init__(message)
        self.model = model


class AbortError(DbEventsError):
    """A ``before_*`` callback vetoed an operation that cannot be skipped on its own.

    Raised from the flush (or the statement) before anything was written, so the
    transaction stays usable.

    :ivar model: the model class whose callback vetoed.
    :ivar callback: the callback that returned ``True``.
    :ivar instance: the object concerned, on the unit of work.
    """

    def __init__(
        self,
        message: str,
        *,
        model: type[Any] | None = None,
        callback: Any = None,
        instance: Any = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.callback = callback
        self.instance = instance


class LoadError(DbEventsError, ValueError):
    """Input to :func:`dbevents.load` is invalid; the database was left unchanged.

    :ivar path: the file concerned.
    :ivar record: the 1-based record number in that file, when known.
    :ivar column: the column concerned, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        record: int | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.record = record
        self.column = column


class SinkError(DbEventsError):
    """A sink failed to publish a change set.

    :ivar sink: the sink that failed.
    """

    def __init__(self, message: str, *, sink: Any = None) -> None:
        super().__init__(message)
        self.sink = sink


class UncapturedWriteError(DbEventsError):
    """A write dbevents cannot capture (``text()`` or driver SQL) ran under ``raw_sql="raise"``."""


class DbEventsWarning(UserWarning):
    """Something works, but probably not the way you want (e.g. SQLite savepoints)."""
