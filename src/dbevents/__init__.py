"""Database events you can trust for SQLAlchemy.

Model callbacks on every write path, and one net, savepoint-correct change set
per committed transaction, delivered to sinks.
"""

from . import sqlite
from .callbacks import (
    after_commit,
    after_delete,
    after_destroy,
    after_insert,
    after_save,
    after_update,
    before_commit,
    before_delete,
    before_destroy,
    before_insert,
    before_save,
    before_update,
)
from .changes import Change, ChangeSet, Op
from .context import acting_as, current_actor
from .delivery import Sink, TransactionalSink
from .dump import dump
from .events import Events
from .exceptions import (
    AbortError,
    ConfigurationError,
    DbEventsError,
    DbEventsWarning,
    LoadError,
    SinkError,
    UncapturedWriteError,
)
from .load import load
from .registry import Handler
from .relay import relay
from .rowset import RowSet
from .sinks.memory import MemorySink
from .sinks.mirror import MirrorSink
from .sinks.outbox import OutboxSink
from .verify import Difference, verify

__all__ = [
    "AbortError",
    "Change",
    "ChangeSet",
    "ConfigurationError",
    "DbEventsError",
    "DbEventsWarning",
    "Difference",
    "Events",
    "Handler",
    "LoadError",
    "MemorySink",
    "MirrorSink",
    "Op",
    "OutboxSink",
    "RowSet",
    "Sink",
    "SinkError",
    "TransactionalSink",
    "UncapturedWriteError",
    "acting_as",
    "after_commit",
    "after_delete",
    "after_destroy",
    "after_insert",
    "after_save",
    "after_update",
    "before_commit",
    "before_delete",
    "before_destroy",
    "before_insert",
    "before_save",
    "before_update",
    "current_actor",
    "dump",
    "load",
    "relay",
    "sqlite",
    "verify",
]
