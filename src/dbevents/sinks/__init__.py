"""Where committed change sets go."""

from ..delivery import Sink, TransactionalSink
from .memory import MemorySink

__all__ = ["MemorySink", "Sink", "TransactionalSink"]
