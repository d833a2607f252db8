"""Per-context state: the acting user, and mute scopes.

Both live in :mod:`contextvars`, so threads and asyncio tasks never see each
other's values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["acting_as", "current_actor"]

_actor: ContextVar[Any] = ContextVar("dbevents.actor", default=None)


@contextmanager
def acting_as(actor: Any) -> Iterator[None]:
    """Attribute the writes made inside the block to ``actor``.

    The actor is recorded on change sets (as ``str(actor)``) and stamped by the
    :mod:`dbevents.fields` authorship columns (as given).  It applies to the
    current thread or asyncio task only, and blocks nest.
    """
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor() -> Any:
    """Return the actor set by the innermost :func:`acting_as` block, or ``None``."""
    return _actor.get()
