"""Fixtures for the CRM's tests: apps on fresh SQLite databases."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the crm package

from crm import create_app  # noqa: E402
from crm.db import db  # noqa: E402
from crm.events.cache_db_updates import cache  # noqa: E402
from crm.models import Organization, Subgroup, User  # noqa: E402

MakeApp = Callable[..., flask.Flask]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """Build CRM apps named ``name`` on the database ``<name>.db``; ``config`` adds to theirs."""
    apps: list[flask.Flask] = []

    def make(name: str = "crm", **config: Any) -> flask.Flask:
        app = create_app(
            {
                "TESTING": True,
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / name}.db",
                **config,
            }
        )
        apps.append(app)
        return app

    cache.clear()
    yield make
    cache.clear()
    for app in apps:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


@pytest.fixture
def app(make_app: MakeApp) -> flask.Flask:
    return make_app()


@pytest.fixture
def seed(app: flask.Flask) -> dict[str, str]:
    """An organization, a user and two subgroups; their ids by name."""
    with app.app_context():
        org = Organization(name="Acme")
        user = User(email="ada@example.com", name="Ada", organization_id=None)
        groups = [Subgroup(name="vip"), Subgroup(name="press")]
        db.session.add_all([org, user, *groups])
        db.session.commit()
        ids = {"org": org.id, "user": user.id, "vip": groups[0].id, "press": groups[1].id}
    cache.clear()
    return ids
