"""The CRM's own ``flask`` command: ``flask --app crm create-user EMAIL``, someone to sign in as."""

from __future__ import annotations

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from crm.db import db
from crm.models import User

__all__ = ["create_user"]


@click.command("create-user")
@click.argument("email")
@click.option("--name", help="The user's name (default: the part of EMAIL before the @).")
@with_appcontext
def create_user(email: str, name: str | None) -> None:
    """Add a user who can sign in with POST /api/login {"email": EMAIL}."""
    if db.session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        raise click.ClickException(f"there is a user with email {email!r} already")
    user = User(email=email, name=name or email.partition("@")[0])
    db.session.add(user)
    db.session.commit()  # through the session, so the user gets an id and reaches the mirror
    click.echo(f"created user {email} (id {user.id})")
