"""Keep what the current request committed: its change sets, complete with many-to-many links.

The committed :class:`~dbevents.ChangeSet` holds every created, updated and
deleted row, so nothing has to be stashed in ``session.info`` at flush time.
"""

import flask

from crm.db import events
from dbevents import ChangeSet


@events.on_commit
def catch_db_updates(changeset: ChangeSet) -> None:
    if flask.has_request_context():
        flask.g.setdefault("changesets", []).append(changeset)


def request_changesets() -> list[ChangeSet]:
    """The change sets committed during the current request, oldest first."""
    changesets: list[ChangeSet] = flask.g.get("changesets", [])
    return changesets
