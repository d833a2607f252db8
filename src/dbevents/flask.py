"""Flask integration: :class:`DBEvents` installs dbevents on Flask-SQLAlchemy's ``db.session``.

::

    db = SQLAlchemy(model_class=Base)
    dbevents_ext = DBEvents()

    def create_app():
        app = Flask(__name__)
        app.config["DBEVENTS_DATA_DIR"] = "data"      # keep a JSON mirror there
        db.init_app(app)
        dbevents_ext.init_app(app, db)
        return app

Configuration, read per app:

- ``DBEVENTS_DATA_DIR`` (else ``DATA_DIR``): a :class:`~dbevents.sinks.mirror.MirrorSink` keeps
  a mirror of the database in that directory (``DBEVENTS_DATA_DIR = None``: none).
- ``DBEVENTS_SINKS``: more sinks, as objects or ``"module:attr"`` strings (an attribute that is
  not a sink is called to make one).
- ``DBEVENTS_ACTOR``: a callable (or ``"module:attr"``) returning the actor; by default the
  logged-in user's ``get_id()`` when Flask-Login is installed and a request is active.
- ``DBEVENTS_SQLITE_CONFIGURE`` (default ``"IMMEDIATE"``): apply :func:`dbevents.sqlite.configure`
  with ``begin="IMMEDIATE"``, so that a request that reads, then writes, waits for another's
  write to end rather than fail with "database is locked"; ``"DEFERRED"`` keeps SQLite's
  deferred ``BEGIN`` (one writer at a time only); ``False`` leaves the engines alone.
- ``DBEVENTS_OUTBOX_TABLE``: the outbox table ``flask dbevents relay`` drains; by default that of
  the app's :class:`~dbevents.sinks.outbox.OutboxSink`, else ``dbevents_outbox``.

The sinks of an app receive the change sets committed while that app is current.
With an outbox among them, the others are fed by ``flask dbevents relay`` only.
Commands: ``flask dumpdata DIR``, ``flask loaddata DIR`` (muted) and
``flask dbevents verify DIR | relay | handlers``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, final

import sqlalchemy.orm as sa_orm

try:
    import click  # noqa: F401 - (the commands need it: told here, with the rest)
    import flask
    from flask_sqlalchemy import SQLAlchemy
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dbevents.flask needs Flask and Flask-SQLAlchemy: pip install 'dbevents[flask]'"
    ) from error

from . import sqlite
from .changes import ChangeSet
from .delivery import Sink, TransactionalSink, _call, raise_failures
from .events import Events
from .exceptions import ConfigurationError

__all__ = ["DBEvents"]

#: ``app.extensions`` key of the per-app state
EXTENSION: Final = "dbevents"

logger = logging.getLogger("dbevents")


@dataclass(frozen=True, slots=True)
class _AppState:
    ext: DBEvents
    db: SQLAlchemy
    sinks: tuple[Sink, ...]
    #: the in-transaction sinks among them (an outbox)
    transactional: tuple[TransactionalSink, ...]
    data_dir: Path | None
    actor: Callable[[], Any] | None
    #: ``DBEVENTS_OUTBOX_TABLE``: the outbox the relay drains, when it is not the app's own
    outbox_table: str | None


@final
class DBEvents:
    """dbevents for Flask apps: one :class:`Events`, installed once on ``db.session``.

    :param app: the app, or ``None`` with an app factory (then call :meth:`init_app`).
    :param db: the Flask-SQLAlchemy extension.
    :param events: the :class:`Events` to use; a new one by default, as ``ext.events``.
        The actor comes from the app's config or Flask-Login unless it has an ``actor``.
    """

    __slots__ = ("db", "events")

    def __init__(
        self,
        app: flask.Flask | None = None,
        db: SQLAlchemy | None = None,
        *,
        events: Events | None = None,
    ) -> None:
        self.events = events if events is not None else Events()
        self.db = db
        self.events.add_sink(_AppSinks(self))
        if self.events.actor is None:
            self.events.actor = _app_actor
        if app is not None:
            self.init_app(app, db)

    def __repr__(self) -> str:
        return f"<DBEvents {self.events!r}>"

    def init_app(self, app: flask.Flask, db: SQLAlchemy | None = None) -> None:
        """Set up ``app``: install on ``db.session`` (once), read its config, add the commands.

        Call it after ``db.init_app(app)``.
        """
        db = db if db is not None else self.db
        if db is None:
            raise ConfigurationError("DBEvents.init_app needs the Flask-SQLAlchemy db")
        other = app.extensions.get(EXTENSION)
        if isinstance(other, _AppState) and other.ext is not self:
            raise ConfigurationError(
                f"{app!r} is set up by another DBEvents already: one per app (its sinks "
                "would get nothing more)"
            )
        if self.db is None:
            self.db = db
        config = app.config
        # DBEVENTS_DATA_DIR set to None, False or "" keeps no mirror, whatever DATA_DIR says
        key = "DBEVENTS_DATA_DIR" if "DBEVENTS_DATA_DIR" in config else "DATA_DIR"
        data_dir = config.get(key)
        if data_dir and not isinstance(data_dir, str | os.PathLike):
            raise ConfigurationError(
                f"{key} must be a directory path, or None for no mirror, not {data_dir!r}"
            )
        configured = config.get("DBEVENTS_SINKS", ())
        if isinstance(configured, str | Sink) or not isinstance(configured, Iterable):
            raise ConfigurationError(
                f"DBEVENTS_SINKS takes a list of sinks, not {configured!r}: write "
                "DBEVENTS_SINKS = [sink]"
            )
        sinks = [_sink(item, db) for item in configured]
        if data_dir:  # imported here: only apps that keep a mirror need it
            mirror = importlib.import_module("dbevents.sinks.mirror")
            sinks.insert(0, mirror.MirrorSink(data_dir, metadata=db.metadata))
        actor = _actor(config.get("DBEVENTS_ACTOR"))
        app.extensions[EXTENSION] = _AppState(
            ext=self,
            db=db,
            sinks=tuple(sinks),
            transactional=tuple(s for s in sinks if isinstance(s, TransactionalSink)),
            data_dir=Path(data_dir) if data_dir else None,
            actor=actor,
            outbox_table=config.get("DBEVENTS_OUTBOX_TABLE") or None,
        )
        # IMMEDIATE by default: Flask serves requests in threads, and with SQLite's deferred
        # BEGIN a request that reads, then writes, while another writes fails at once
        sqlite_mode = config.get("DBEVENTS_SQLITE_CONFIGURE", "IMMEDIATE")
        if sqlite_mode not in (True, False, "IMMEDIATE", "DEFERRED"):
            raise ConfigurationError(
                "DBEVENTS_SQLITE_CONFIGURE must be 'IMMEDIATE' (or True), 'DEFERRED' or False, "
                f"not {sqlite_mode!r}"
            )
        if sqlite_mode:
            _configure_sqlite(app, db, "DEFERRED" if sqlite_mode == "DEFERRED" else "IMMEDIATE")
        self.events.install(db.session)
        from .flaskcommands import COMMANDS  # (they import this module's app state)

        for command in COMMANDS:
            app.cli.add_command(command)

    def sinks(self, app: flask.Flask | None = None) -> tuple[Sink, ...]:
        """The sinks configured for ``app`` (default: the current app)."""
        return _state(app).sinks

    def data_dir(self, app: flask.Flask | None = None) -> Path | None:
        """The data directory mirrored for ``app`` (default: the current app), if any."""
        return _state(app).data_dir

    def _current(self) -> _AppState | None:
        """The state of the current app, when it was set up by this extension."""
        if not flask.has_app_context():
            return None
        state = flask.current_app.extensions.get(EXTENSION)
        return state if isinstance(state, _AppState) and state.ext is self else None


@final
class _AppSinks:
    """The one sink the shared Events has: it hands change sets to the current app's sinks.

    With an in-transaction sink (an outbox) configured, the app's other sinks are
    fed by ``flask dbevents relay`` only, so they never get a change set twice.
    """

    __slots__ = ("ext",)

    def __init__(self, ext: DBEvents) -> None:
        self.ext = ext

    def write(self, session: sa_orm.Session, changeset: ChangeSet) -> None:
        state = self.ext._current()
        for sink in state.transactional if state is not None else ():
            sink.write(session, changeset)

    def publish(self, changeset: ChangeSet) -> None:
        state = self.ext._current()
        if state is None:
            return
        failures: list[BaseException] = []
        for sink in state.transactional or state.sinks:
            _call(self.ext.events, sink.publish, changeset, failures, changeset)
        raise_failures(failures, self.ext.events.robust, "sink(s) of the app")


def _state(app: flask.Flask | None) -> _AppState:
    target = app if app is not None else flask.current_app
    state = target.extensions.get(EXTENSION)
    if not isinstance(state, _AppState):
        raise ConfigurationError(f"{target!r} is not set up: call DBEvents.init_app(app, db)")
    return state


def _resolve(name: str) -> Any:
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ConfigurationError(f"expected 'module:attribute', got {name!r}")
    try:
        value: Any = importlib.import_module(module)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(f"cannot import {name!r}: {error}") from error
    return value


def _sink(item: Any, db: SQLAlchemy) -> Sink:
    if isinstance(item, str) and ("://" in item or item.startswith("mirror:")):
        raise ConfigurationError(
            f"DBEVENTS_SINKS: {item!r} is a target of the relay command; the app's sinks are "
            "objects or 'module:attr' names: set DBEVENTS_DATA_DIR for a mirror, or give "
            "RedisStreamSink(url, stream)"
        )
    value = _resolve(item) if isinstance(item, str) else item
    outbox = importlib.import_module("dbevents.sinks.outbox")
    sink_class = isinstance(value, type) and isinstance(value, Sink)
    factory = callable(value) and not isinstance(value, type | Sink)
    if value is outbox.OutboxSink:  # on the app's metadata, so db.create_all() makes its tables
        value = outbox.OutboxSink(db.metadata)
    elif sink_class or factory:
        try:
            value = value()  # a sink class, or a factory
        except TypeError as error:
            raise ConfigurationError(
                f"DBEVENTS_SINKS: {item!r} can't be made without arguments ({error}); give "
                "the sink itself, made with its arguments"
            ) from error
    if isinstance(value, type) or not isinstance(value, Sink):
        raise ConfigurationError(f"DBEVENTS_SINKS: {item!r} is not a sink (no publish method)")
    return value


def _actor(configured: Any) -> Callable[[], Any] | None:
    """``DBEVENTS_ACTOR`` resolved: checked here, as every commit would call it."""
    try:
        actor = _resolve(configured) if isinstance(configured, str) else configured
    except ConfigurationError as error:
        raise ConfigurationError(f"DBEVENTS_ACTOR: {error}") from error
    if _is_proxy(actor):  # callable to Python, but calling it calls the object it stands for
        raise ConfigurationError(
            f"DBEVENTS_ACTOR: {configured!r} stands for an object (a Flask or werkzeug proxy), "
            "not a function returning the actor: give one, such as "
            "lambda: current_user.get_id()"
        )
    if actor is not None and not callable(actor):
        raise ConfigurationError(
            f"DBEVENTS_ACTOR: {configured!r} is not callable (a {type(actor).__name__}); "
            "give a function that returns the actor, or its 'module:function' name"
        )
    return actor  # type: ignore[no-any-return]


def _is_proxy(value: Any) -> bool:
    """Whether ``value`` is a werkzeug ``LocalProxy`` (``flask_login.current_user``)."""
    local = sys.modules.get("werkzeug.local")
    return local is not None and isinstance(value, local.LocalProxy)


def _app_actor() -> Any:
    """The app's ``DBEVENTS_ACTOR``, else the Flask-Login user during a request."""
    if not flask.has_app_context():
        return None
    state = flask.current_app.extensions.get(EXTENSION)
    if isinstance(state, _AppState) and state.actor is not None:
        return state.actor()
    if not flask.has_request_context():
        return None
    if getattr(flask.current_app, "login_manager", None) is None:
        return None
    user = _flask_login_user()
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.get_id()


def _flask_login_user() -> Any:
    try:
        from flask_login import current_user
    except ImportError:  # Flask-Login is optional
        return None
    return current_user._get_current_object()


def _configure_sqlite(
    app: flask.Flask, db: SQLAlchemy, begin: Literal["DEFERRED", "IMMEDIATE"]
) -> None:
    with app.app_context():
        try:
            engines = dict(db.engines)
        except RuntimeError as error:
            raise ConfigurationError(
                f"Flask-SQLAlchemy is not set up for {app!r}: call db.init_app(app) "
                "before DBEvents.init_app(app)"
            ) from error
    for engine in engines.values():
        try:
            sqlite.configure(engine, begin=begin)
        except Exception:  # a test double or a proxy: leave it as it is
            logger.debug("dbevents: could not configure %r for SQLite savepoints", engine)
