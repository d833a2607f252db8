"""The Flask extension: installation, per-app sinks and actor, SQLite setup, the commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import flask
import flask_login
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import werkzeug.local
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents.fields import UID, Authorship, Timestamps
from dbevents.flask import DBEvents
from dbevents.testing import capture
from tests.fixtures import recorded_sql
from tests.servers import PostgresServer


class FlaskBase(sa_orm.DeclarativeBase):
    pass


db = SQLAlchemy(model_class=FlaskBase)

if TYPE_CHECKING:
    Model = FlaskBase
else:
    Model = db.Model


class Memo(UID, Timestamps, Authorship, Model):
    __tablename__ = "memos"

    title: Mapped[str] = mapped_column(sa.String(100))


MakeApp = Callable[..., flask.Flask]


@pytest.fixture
def ext() -> Iterator[DBEvents]:
    """A fresh extension; its Events leaves ``db.session`` at teardown."""
    extension = DBEvents(db=db)
    yield extension
    extension.events.uninstall(db.session)


@pytest.fixture
def make_app(ext: DBEvents) -> Iterator[MakeApp]:
    """Build apps on a database URL, with the tables created; engines disposed at teardown."""
    apps: list[flask.Flask] = []

    def make(url: str, init: bool = True, **config: Any) -> flask.Flask:
        app = flask.Flask(f"app{len(apps)}")
        app.config.update(SQLALCHEMY_DATABASE_URI=url, **config)
        db.init_app(app)
        apps.append(app)
        if init:
            ext.init_app(app)
        with app.app_context():
            db.create_all()
        return app

    yield make
    for app in apps:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


@pytest.fixture
def other_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A second empty database on the same backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    schema = f"t_{uuid4().hex}"
    server.execute(f"CREATE SCHEMA {schema}")
    yield server.schema_url(schema)
    server.drop_schema(schema)


def _add_memo(title: str) -> str:
    memo = Memo(title=title)
    db.session.add(memo)
    db.session.commit()
    return memo.id


# -- installation and sinks ----------------------------------------------------------------------


def test_commits_reach_the_sinks_of_the_app(make_app: MakeApp, db_url: str) -> None:
    sink = dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[sink])
    with app.app_context():
        memo_id = _add_memo("hello")
    (changeset,) = sink.changesets
    (change,) = changeset.changes
    assert (change.op, change.table, change.pk) == (dbevents.Op.INSERT, "memos", (memo_id,))


def test_sinks_follow_the_current_app(make_app: MakeApp, db_url: str) -> None:
    first, second = dbevents.MemorySink(), dbevents.MemorySink()
    app1 = make_app(db_url, DBEVENTS_SINKS=[first])
    app2 = make_app(db_url, DBEVENTS_SINKS=[second])
    with app1.app_context():
        _add_memo("one")
    with app2.app_context():
        _add_memo("two")
        _add_memo("three")
    assert [len(first.changesets), len(second.changesets)] == [1, 2]


def test_many_apps_install_once(ext: DBEvents, make_app: MakeApp, db_url: str) -> None:
    apps = [make_app(db_url) for _ in range(3)]
    received: list[dbevents.ChangeSet] = []
    ext.events.on_commit(received.append)
    with apps[-1].app_context():
        _add_memo("once")
    assert len(received) == 1


def test_sinks_by_import_name(make_app: MakeApp, db_url: str) -> None:
    app = make_app(db_url, DBEVENTS_SINKS=["dbevents:MemorySink"])
    with app.app_context():
        _add_memo("x")
        (sink,) = app.extensions["dbevents"].sinks
        assert isinstance(sink, dbevents.MemorySink) and len(sink.changesets) == 1


@pytest.mark.parametrize(("mode", "begin"), [(None, "BEGIN IMMEDIATE"), ("DEFERRED", "BEGIN")])
def test_sqlite_begins_write_transactions_at_once_by_default(
    make_app: MakeApp, tmp_path: Path, mode: str | None, begin: str
) -> None:
    """Flask serves requests in threads: with SQLite's deferred BEGIN, one that reads then
    writes while another writes fails at once with "database is locked"."""
    config = {} if mode is None else {"DBEVENTS_SQLITE_CONFIGURE": mode}
    app = make_app(f"sqlite:///{tmp_path / 'i.db'}", **config)
    with app.app_context():
        sent = recorded_sql(db.engine)
        _add_memo("x")
    assert begin in sent and ("BEGIN IMMEDIATE" in sent) is (mode is None)


def test_a_bad_sqlite_configure_value_fails_at_init(make_app: MakeApp, tmp_path: Path) -> None:
    with pytest.raises(dbevents.ConfigurationError, match="DBEVENTS_SQLITE_CONFIGURE"):
        make_app(f"sqlite:///{tmp_path / 'x.db'}", DBEVENTS_SQLITE_CONFIGURE="EXCLUSIVE")


@pytest.mark.parametrize("bad", ["dbevents", "dbevents:Op", "dbevents:Nope", "nope:x", 42])
def test_a_bad_sink_fails_at_init(make_app: MakeApp, tmp_path: Path, bad: object) -> None:
    with pytest.raises(dbevents.ConfigurationError):
        make_app(f"sqlite:///{tmp_path / 'x.db'}", DBEVENTS_SINKS=[bad])


@pytest.mark.parametrize("bad", [dbevents.MemorySink(), "dbevents:MemorySink"])
def test_sinks_not_in_a_list_fail_at_init(make_app: MakeApp, tmp_path: Path, bad: object) -> None:
    with pytest.raises(dbevents.ConfigurationError, match="takes a list"):
        make_app(f"sqlite:///{tmp_path / 'x.db'}", DBEVENTS_SINKS=bad)


def test_a_failing_sink_does_not_stop_the_others(make_app: MakeApp, db_url: str) -> None:
    class Broken:
        def publish(self, changeset: dbevents.ChangeSet) -> None:
            raise RuntimeError("down")

    sink = dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[Broken(), sink])
    with app.app_context():
        _add_memo("x")
    assert len(sink.changesets) == 1


class CountingOutbox:
    """An in-transaction sink: counts the memos its transaction sees, or fails the commit."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.published: list[dbevents.ChangeSet] = []
        self.fail = False

    def write(self, session: sa_orm.Session, changeset: dbevents.ChangeSet) -> None:
        if self.fail:
            raise RuntimeError("outbox full")
        self.seen.append(session.scalar(sa.select(sa.func.count()).select_from(Memo)) or 0)

    def publish(self, changeset: dbevents.ChangeSet) -> None:
        self.published.append(changeset)


def test_an_outbox_writes_inside_the_transaction(make_app: MakeApp, db_url: str) -> None:
    outbox, memory = CountingOutbox(), dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[outbox, memory])
    with app.app_context():
        _add_memo("one")
        assert outbox.seen == [1] and len(outbox.published) == 1
        assert memory.changesets == []  # fed by the relay from the outbox, not twice
        outbox.fail = True
        db.session.add(Memo(title="two"))
        with pytest.raises(RuntimeError, match="outbox full"):
            db.session.commit()
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Memo)) == 1


def test_init_app_needs_the_db_set_up_first(ext: DBEvents, tmp_path: Path) -> None:
    app = flask.Flask("late")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(dbevents.ConfigurationError, match="db.init_app"):
        ext.init_app(app)


def test_the_outbox_sink_class_is_made_on_the_apps_metadata(make_app: MakeApp, db_url: str) -> None:
    """As a class (or its "dbevents:OutboxSink" name), its tables join db.metadata, so
    db.create_all() makes them: writes no longer fail for want of them."""
    memory = dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=["dbevents:OutboxSink", memory])
    with app.app_context():
        _add_memo("one")
        assert db.session.scalar(sa.text("SELECT count(*) FROM dbevents_outbox")) == 1
    result = app.test_cli_runner().invoke(args=["dbevents", "relay", "--once"])
    assert result.output == "relayed 1 change sets\n" and len(memory.changesets) == 1


def test_no_mirror_when_dbevents_data_dir_says_none(make_app: MakeApp, tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    app = make_app(f"sqlite:///{tmp_path / 'u.db'}", DATA_DIR=str(uploads), DBEVENTS_DATA_DIR=None)
    with app.app_context():
        _add_memo("one")
    assert app.extensions["dbevents"].sinks == () and not uploads.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"DBEVENTS_SINKS": ["dbevents:MirrorSink"]}, "can't be made without arguments"),
        ({"DBEVENTS_SINKS": ["mirror:data"]}, "is a target of the relay command"),
        ({"DBEVENTS_SINKS": ["redis://127.0.0.1/0?stream=s"]}, "is a target of the relay"),
        ({"DBEVENTS_DATA_DIR": True}, "DBEVENTS_DATA_DIR must be a directory path"),
    ],
)
def test_misconfigured_sinks_say_what_to_write(
    make_app: MakeApp, tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(dbevents.ConfigurationError, match=message):
        make_app(f"sqlite:///{tmp_path / 'x.db'}", **config)


def test_sqlite_engines_get_the_savepoint_recipe(make_app: MakeApp, tmp_path: Path) -> None:
    on = make_app(f"sqlite:///{tmp_path / 'on.db'}")
    off = make_app(f"sqlite:///{tmp_path / 'off.db'}", DBEVENTS_SQLITE_CONFIGURE=False)
    with on.app_context():
        assert dbevents.sqlite.is_configured(db.engine)
    with off.app_context():
        assert not dbevents.sqlite.is_configured(db.engine)


# -- the actor -------------------------------------------------------------------------------


class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _memo_app(make_app: MakeApp, url: str, **config: Any) -> flask.Flask:
    app = make_app(url, SECRET_KEY="test", **config)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        flask_login.login_user(User(user_id))
        return "ok"

    @app.post("/memos/<title>")
    def create(title: str) -> dict[str, Any]:
        return {"id": _add_memo(title)}

    return app


def test_the_actor_is_the_logged_in_user(make_app: MakeApp, db_url: str) -> None:
    sink = dbevents.MemorySink()
    app = _memo_app(make_app, db_url, DBEVENTS_SINKS=[sink])
    login = flask_login.LoginManager(app)
    login.user_loader(User)
    client = app.test_client()
    anonymous = client.post("/memos/a").get_json()
    client.post("/login/u1")
    signed = client.post("/memos/b").get_json()
    assert [cs.actor for cs in sink.changesets] == [None, "u1"]
    with app.app_context():
        assert db.session.get_one(Memo, anonymous["id"]).created_by is None
        memo = db.session.get_one(Memo, signed["id"])
        assert (memo.created_by, memo.updated_by) == ("u1", "u1")


def test_the_actor_from_config_and_acting_as(make_app: MakeApp, db_url: str) -> None:
    sink = dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[sink], DBEVENTS_ACTOR=lambda: "cron")
    with app.app_context():
        _add_memo("a")
        with dbevents.acting_as("ada"):
            _add_memo("b")
    assert [cs.actor for cs in sink.changesets] == ["cron", "ada"]


@pytest.mark.parametrize("bad", ["flask:json", "dbevents:nope", "dbevents", 42])
def test_an_actor_that_is_not_callable_fails_at_init(
    make_app: MakeApp, tmp_path: Path, bad: object
) -> None:
    with pytest.raises(dbevents.ConfigurationError, match="DBEVENTS_ACTOR"):
        make_app(f"sqlite:///{tmp_path / 'x.db'}", DBEVENTS_ACTOR=bad)


def test_an_actor_that_is_a_proxy_fails_at_init(make_app: MakeApp, tmp_path: Path) -> None:
    """flask_login.current_user is a werkzeug proxy: callable to Python, but calling it calls
    the user object."""
    user = werkzeug.local.LocalProxy(lambda: User("ada"))
    with pytest.raises(dbevents.ConfigurationError, match="stands for an object"):
        make_app(f"sqlite:///{tmp_path / 'x.db'}", DBEVENTS_ACTOR=user)


def test_one_dbevents_per_app(ext: DBEvents, make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'x.db'}")
    ext.init_app(app)  # again, the same one: fine
    with pytest.raises(dbevents.ConfigurationError, match="another DBEvents already"):
        DBEvents().init_app(app, db)


def test_capture_takes_the_extension(ext: DBEvents, make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'x.db'}")
    with app.app_context(), capture(ext) as received:
        _add_memo("one")
    assert [len(cs.changes) for cs in received] == [1]


# -- commands --------------------------------------------------------------------------------


def test_dump_load_verify_round_trip(
    make_app: MakeApp, db_url: str, other_url: str, tmp_path: Path
) -> None:
    source = make_app(db_url)
    with source.app_context(), dbevents.acting_as("ada"):
        ids = [_add_memo(title) for title in ("a", "b", "c")]
    data = tmp_path / "data"
    result = source.test_cli_runner().invoke(args=["dumpdata", str(data)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((data / "manifest.json").read_text())
    assert [table["name"] for table in manifest["tables"]] == ["memos"]

    sink = dbevents.MemorySink()
    target = make_app(other_url, DBEVENTS_SINKS=[sink])
    runner = target.test_cli_runner()
    result = runner.invoke(args=["loaddata", str(data)])
    assert result.exit_code == 0, result.output
    assert sink.changesets == []  # loaded with events off: nothing stamped, nothing delivered
    with target.app_context():
        memos = db.session.scalars(sa.select(Memo).order_by(Memo.title)).all()
        assert [memo.id for memo in memos] == ids
        assert {memo.created_by for memo in memos} == {"ada"}
    result = runner.invoke(args=["dbevents", "verify", str(data)])
    assert result.exit_code == 0, result.output

    with target.app_context():
        db.session.get_one(Memo, ids[0]).title = "changed"
        db.session.commit()
    result = runner.invoke(args=["dbevents", "verify", str(data)])
    assert result.exit_code == 1
    assert ids[0] in result.output and "changed" in result.output


def test_loaddata_options(make_app: MakeApp, db_url: str, tmp_path: Path) -> None:
    app = make_app(db_url)
    with app.app_context():
        _add_memo("a")
    runner = app.test_cli_runner()
    data = tmp_path / "data"
    assert runner.invoke(args=["dumpdata", str(data)]).exit_code == 0
    result = runner.invoke(args=["loaddata", "--truncate", str(data)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(args=["loaddata", "--upsert", str(data)]).exit_code == 0
    both = runner.invoke(args=["loaddata", "--truncate", "--upsert", str(data)])
    assert both.exit_code != 0 and "exclude" in both.output
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Memo)) == 1


def test_bad_input_is_reported_without_a_traceback(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'x.db'}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    for command in (["loaddata"], ["dbevents", "verify"]):
        result = app.test_cli_runner().invoke(args=[*command, str(broken)])
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and "manifest.json" in result.output


def test_relay_drains_a_renamed_outbox(make_app: MakeApp, db_url: str) -> None:
    outbox, memory = dbevents.OutboxSink(table_name="app_outbox"), dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[outbox, memory])
    with app.app_context():
        outbox.create_table(db.engine)
        _add_memo("one")

    result = app.test_cli_runner().invoke(args=["dbevents", "relay", "--once"])  # its own outbox

    assert result.output == "relayed 1 change sets\n"
    assert len(memory.changesets) == 1
    with app.app_context():
        _add_memo("two")
    configured, given = dbevents.MemorySink(), dbevents.MemorySink()
    worker = make_app(db_url, DBEVENTS_SINKS=[configured], DBEVENTS_OUTBOX_TABLE="app_outbox")
    result = worker.test_cli_runner().invoke(args=["dbevents", "relay", "--once"])
    assert result.output == "relayed 1 change sets\n"
    with app.app_context():
        _add_memo("three")
    plain = make_app(db_url, DBEVENTS_SINKS=[given])
    args = ["dbevents", "relay", "--once", "--table-name", "app_outbox"]
    result = plain.test_cli_runner().invoke(args=args)
    assert result.output == "relayed 1 change sets\n"
    inserted = [cs.changes[0].new for cs in (*configured.changesets, *given.changesets)]
    assert [row and row["title"] for row in inserted] == ["two", "three"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_relay_drains_the_apps_outbox_in_a_schema(
    make_app: MakeApp, db_url: str, app_schema: str
) -> None:
    outbox, memory = dbevents.OutboxSink(schema=app_schema), dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[outbox, memory])
    with app.app_context():
        outbox.create_table(db.engine)
        _add_memo("one")

    result = app.test_cli_runner().invoke(args=["dbevents", "relay", "--once"])

    assert result.output == "relayed 1 change sets\n"
    assert len(memory.changesets) == 1


@pytest.mark.parametrize("backend", ["postgresql"])
def test_relay_of_a_renamed_outbox_in_a_schema_by_its_name(
    make_app: MakeApp, db_url: str, app_schema: str
) -> None:
    outbox = dbevents.OutboxSink(table_name="app_outbox", schema=app_schema)
    memory = dbevents.MemorySink()
    app = make_app(db_url, DBEVENTS_SINKS=[outbox, memory], DBEVENTS_OUTBOX_TABLE="app_outbox")
    with app.app_context():
        outbox.create_table(db.engine)
        _add_memo("one")

    runner = app.test_cli_runner()
    once = ["dbevents", "relay", "--once"]
    assert runner.invoke(args=once).output == "relayed 1 change sets\n"  # the schema: the app's
    with app.app_context():
        _add_memo("three")
    result = runner.invoke(args=[*once, "--table-name", "app_outbox", "--schema", app_schema])
    assert result.output == "relayed 1 change sets\n"
    assert len(memory.changesets) == 2


def test_relay_errors_are_reported_without_a_traceback(make_app: MakeApp, db_url: str) -> None:
    app = make_app(db_url, DBEVENTS_SINKS=[dbevents.MemorySink()])

    result = app.test_cli_runner().invoke(args=["dbevents", "relay", "--once", "--table-name", ""])

    assert result.exit_code == 1
    assert result.output == "Error: relay: table_name must name the outbox table\n"
    two = [dbevents.OutboxSink(table_name="a"), dbevents.OutboxSink(table_name="b")]
    app = make_app(db_url, DBEVENTS_SINKS=[*two, dbevents.MemorySink()])
    result = app.test_cli_runner().invoke(args=["dbevents", "relay", "--once"])
    assert result.exit_code == 2
    assert "several outboxes (a, b): choose with --table-name" in result.output


def test_handlers_lists_the_callbacks(ext: DBEvents, make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'x.db'}")

    @ext.events.listens_for(Memo, "after_insert")
    def announce(cls: type[Memo], fields: dict[str, Any], pk: Any) -> None:
        pass

    result = app.test_cli_runner().invoke(args=["dbevents", "handlers"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Memo.")]
    assert any("after_insert" in line and "announce" in line for line in lines)
    assert any("before_insert" in line and "_dbevents_stamp_insert" in line for line in lines)
