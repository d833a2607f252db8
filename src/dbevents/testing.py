"""Helpers to assert what your code committed.

::

    from dbevents.testing import capture

    def test_signup(events, session):
        with capture(events) as changesets:
            signup(session, "ada@example.com")
        assert changesets[0].created[0].new["email"] == "ada@example.com"

With pytest, ``pytest_plugins = ["dbevents.testing"]`` in a ``conftest.py`` adds
the ``changesets`` fixture: every change set your ``events`` fixture delivers
during the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .changes import ChangeSet
from .events import Events

__all__ = ["capture", "changesets"]


@contextmanager
def capture(events: Events | Any) -> Iterator[list[ChangeSet]]:
    """Collect every change set ``events`` delivers while the block runs.

    The list fills as transactions commit, so it can be inspected inside the
    block too.  The listener is removed on exit.

    :param events: an :class:`~dbevents.Events`, or the Flask extension (its ``events``).
    """
    if not isinstance(events, Events) and isinstance(getattr(events, "events", None), Events):
        events = events.events  # the Flask extension's
    received: list[ChangeSet] = []
    events.on_commit(received.append)
    try:
        yield received
    finally:
        events.receivers.remove(received.append)


def _changesets(events: Events) -> Iterator[list[ChangeSet]]:
    """Every change set ``events`` (your fixture) delivers during the test."""
    with capture(events) as received:
        yield received


changesets: Any
try:
    import pytest
except ImportError:  # pragma: no cover - the fixture is for pytest users only
    changesets = None
else:
    changesets = pytest.fixture(_changesets, name="changesets")
