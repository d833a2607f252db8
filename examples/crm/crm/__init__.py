"""A small CRM on Flask and Flask-SQLAlchemy, with its database events done by dbevents.

``flask --app crm create-user EMAIL`` adds someone to sign in as, ``flask --app crm run``
serves the JSON API; ``flask --app crm dumpdata DIR``, ``loaddata DIR`` and
``dbevents verify DIR`` move data in and out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flask

from crm.api import api, login_manager
from crm.commands import create_user
from crm.db import db, dbevents_ext, events

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> flask.Flask:
    """Build the app: ``config`` overrides the defaults (a SQLite database and ``DATA_DIR``
    in the instance folder)."""
    app = flask.Flask(__name__, instance_relative_config=True)
    if config is None or "SQLALCHEMY_DATABASE_URI" not in config:
        instance = Path(app.instance_path)
        instance.mkdir(parents=True, exist_ok=True)
        app.config.update(
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance / 'crm.db'}",
            DATA_DIR=str(instance / "data"),
        )
    # flask run serves requests in threads: on SQLite each transaction then waits its turn for
    # the write lock, rather than fail with "database is locked" when another request writes
    app.config.update(
        SECRET_KEY="change me", JSON_SORT_KEYS=False, DBEVENTS_SQLITE_CONFIGURE="IMMEDIATE"
    )
    app.config.update(config or {})
    db.init_app(app)
    dbevents_ext.init_app(app)
    events.autodiscover("crm.events")
    login_manager.init_app(app)
    app.register_blueprint(api)
    app.cli.add_command(create_user)
    with app.app_context():
        db.create_all()
    return app
