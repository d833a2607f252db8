"""``flask --app crm create-user``: someone to sign in as, made through the session."""

from __future__ import annotations

import flask
import sqlalchemy as sa

from crm.db import db
from crm.events.cache_db_updates import cache
from crm.models import User


def test_create_user_adds_someone_who_can_sign_in(app: flask.Flask) -> None:
    result = app.test_cli_runner().invoke(args=["create-user", "ada@example.com"])

    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalars(sa.select(User)).one()
        assert (user.email, user.name, len(user.id)) == ("ada@example.com", "ada", 5)
    assert result.output == f"created user ada@example.com (id {user.id})\n"
    assert cache.get("users", user.id) is not None  # a committed change set, like any write
    login = app.test_client().post("/api/login", json={"email": "ada@example.com"})
    assert login.get_json() == {"id": user.id}


def test_create_user_takes_a_name_and_refuses_a_taken_email(app: flask.Flask) -> None:
    runner = app.test_cli_runner()
    runner.invoke(args=["create-user", "ada@example.com", "--name", "Ada Lovelace"])

    again = runner.invoke(args=["create-user", "ada@example.com"])

    assert again.exit_code == 1
    assert "there is a user with email 'ada@example.com' already" in again.output
    with app.app_context():
        assert db.session.scalars(sa.select(User.name)).all() == ["Ada Lovelace"]
