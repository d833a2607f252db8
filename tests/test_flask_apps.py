"""Flask-SQLAlchemy 3 applications as they are written: factories, binds, requests, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flask
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.record_queries import get_recorded_queries
from flask_sqlalchemy.track_modifications import models_committed
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents.flask import DBEvents


class AppBase(sa_orm.DeclarativeBase):
    pass


db = SQLAlchemy(model_class=AppBase)

if TYPE_CHECKING:
    Model = AppBase
else:
    Model = db.Model


class Post(Model):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))


class Hit(Model):
    __tablename__ = "hits"
    __bind_key__ = "stats"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.String(50))


bp = flask.Blueprint("posts", __name__)


@bp.post("/posts/<title>")
def add_post(title: str) -> dict[str, Any]:
    post = Post(title=title)
    db.session.add(post)
    db.session.add(Hit(path=flask.request.path))
    db.session.commit()
    return {"id": post.id}


@bp.post("/fails/<title>")
def add_then_fail(title: str) -> str:
    """Raise after adding (and flushing) a post; ``?commit=1`` commits it first."""
    db.session.add(Post(title=title))
    db.session.flush()
    if flask.request.args.get("commit"):
        db.session.commit()
    raise RuntimeError("boom")


MakeApp = Callable[..., flask.Flask]


@pytest.fixture
def ext() -> Iterator[DBEvents]:
    """A fresh extension made before any app; its Events leaves ``db.session`` at teardown."""
    extension = DBEvents()
    yield extension
    extension.events.uninstall(db.session)


@pytest.fixture
def make_app(ext: DBEvents, tmp_path: Path) -> Iterator[MakeApp]:
    apps: list[flask.Flask] = []

    def make(**config: Any) -> flask.Flask:
        """An app on two SQLite files of its own: posts, and hits in the "stats" bind."""
        name = f"app{len(apps)}"
        app = flask.Flask(name)
        app.config.update(
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / name}.db",
            SQLALCHEMY_BINDS={"stats": f"sqlite:///{tmp_path / name}-stats.db"},
            **config,
        )
        db.init_app(app)
        ext.init_app(app, db)
        app.register_blueprint(bp)
        with app.app_context():
            db.create_all()
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


def _posts(sink: dbevents.MemorySink) -> list[list[tuple[str, Any]]]:
    """Per change set: the tables it wrote, with the path or title of each row."""
    return [
        [(c.table, c.new and (c.new.get("title") or c.new.get("path"))) for c in cs.changes]
        for cs in sink.changesets
    ]


def test_apps_of_one_factory_keep_their_change_sets(make_app: MakeApp) -> None:
    first, second = dbevents.MemorySink(), dbevents.MemorySink()
    app1, app2 = make_app(DBEVENTS_SINKS=[first]), make_app(DBEVENTS_SINKS=[second])

    assert app1.test_client().post("/posts/one").status_code == 200
    assert app2.test_client().post("/posts/two").status_code == 200

    assert _posts(first) == [[("hits", "/posts/one"), ("posts", "one")]]
    assert _posts(second) == [[("hits", "/posts/two"), ("posts", "two")]]


def test_a_request_writing_to_two_binds_is_mirrored_dumped_and_loaded(
    make_app: MakeApp, tmp_path: Path
) -> None:
    """The commands went to the default database only: verify refused the app's own mirror
    ("table 'hits' is not in the metadata") and dumpdata left the other bind's tables out."""
    data, backup = tmp_path / "data", tmp_path / "backup"
    app = make_app(DBEVENTS_DATA_DIR=str(data))
    app.test_client().post("/posts/one")
    runner = app.test_cli_runner()

    result = runner.invoke(args=["dbevents", "verify", str(data)])
    assert (result.exit_code, result.output) == (0, f"{data} matches the database\n")
    result = runner.invoke(args=["dumpdata", str(backup)])
    assert result.output == f"dumped 2 rows of 2 tables to {backup}\n"
    with app.app_context():
        db.session.execute(sa.delete(Hit))
        db.session.commit()
    result = runner.invoke(args=["dbevents", "verify", str(backup)])
    assert result.exit_code == 1 and "hits" in result.output
    result = runner.invoke(args=["loaddata", str(backup), "--truncate"])
    assert result.output == f"loaded 2 rows into 2 tables from {backup}\n"
    assert runner.invoke(args=["dbevents", "verify", str(backup)]).exit_code == 0
    result = runner.invoke(args=["dbevents", "verify", str(backup), "--tables", "hits"])
    assert result.exit_code == 0, result.output


def test_a_failed_request_delivers_only_what_it_committed(make_app: MakeApp) -> None:
    sink = dbevents.MemorySink()
    app = make_app(DBEVENTS_SINKS=[sink])
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500 page, as in production
    client = app.test_client()

    assert client.post("/fails/lost").status_code == 500  # the session is removed at teardown
    assert client.post("/fails/kept?commit=1").status_code == 500

    assert _posts(sink) == [[("posts", "kept")]]
    with app.app_context():
        assert db.session.scalars(sa.select(Post.title)).all() == ["kept"]


def test_concurrent_requests_deliver_their_own_rows(make_app: MakeApp) -> None:
    sink = dbevents.MemorySink()
    app = make_app(DBEVENTS_SINKS=[sink])
    start = threading.Barrier(4)

    def requests(worker: int) -> list[int]:
        client = app.test_client()
        start.wait()
        return [client.post(f"/posts/w{worker}-{n}").status_code for n in range(5)]

    with ThreadPoolExecutor(4) as pool:
        statuses = [status for done in pool.map(requests, range(4)) for status in done]

    assert statuses == [200] * 20
    seen = sorted(_posts(sink))
    assert seen == sorted(
        [("hits", f"/posts/w{w}-{n}"), ("posts", f"w{w}-{n}")] for w in range(4) for n in range(5)
    )


def test_flask_sqlalchemys_own_options_and_signal(make_app: MakeApp) -> None:
    sink = dbevents.MemorySink()
    app = make_app(
        DBEVENTS_SINKS=[sink],
        SQLALCHEMY_RECORD_QUERIES=True,
        SQLALCHEMY_TRACK_MODIFICATIONS=True,
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 5}, "pool_pre_ping": True},
    )
    signalled: list[list[tuple[str, str]]] = []

    def committed(sender: flask.Flask, changes: list[tuple[Any, str]]) -> None:
        signalled.append([(type(model).__name__, op) for model, op in changes])

    with models_committed.connected_to(committed, app), app.test_request_context():
        db.session.add_all([Post(title="a"), Hit(path="/a")])
        db.session.commit()
        db.session.get_one(Post, 1).title = "b"
        db.session.commit()
        recorded = " ".join(str(query.statement) for query in get_recorded_queries())

    assert sorted(signalled[0]) == [("Hit", "insert"), ("Post", "insert")]
    assert signalled[1:] == [[("Post", "update")]]
    assert [[c.op.value for c in cs.changes] for cs in sink.changesets] == [
        ["insert", "insert"],
        ["update"],
    ]
    assert "INSERT INTO posts" in recorded and "UPDATE posts" in recorded
