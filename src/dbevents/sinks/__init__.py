"""Where committed change sets go.

``RedisStreamSink`` is imported on first use, since it needs the ``redis`` extra.
"""

from typing import Any

from ..delivery import Sink, TransactionalSink
from .memory import MemorySink
from .mirror import MirrorSink
from .outbox import OutboxSink

__all__ = [
    "MemorySink",
    "MirrorSink",
    "OutboxSink",
    "RedisStreamSink",
    "Sink",
    "TransactionalSink",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStreamSink":
        from .redis import RedisStreamSink

        return RedisStreamSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
