"""What a user who gets something wrong is told: where warnings point, and what errors say."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine

import dbevents
from dbevents import ChangeSet, Op, after_commit
from dbevents.callbacks import EVENTS
from tests.fixtures import installed_async
from tests.models import Base, Company

WRITE = "UPDATE companies SET rating = 1"


# -- warnings point at the line that caused them ---------------------------------------------


def test_raw_sql_warnings_point_at_the_line_that_ran_the_statement(Session: Any) -> None:
    copy = sa.insert(Company).from_select(["name"], sa.select(sa.literal("copy")))
    with Session() as session:
        with pytest.warns(dbevents.DbEventsWarning) as text_write:
            session.execute(sa.text(WRITE))
        with pytest.warns(dbevents.DbEventsWarning) as driver_write:
            session.connection().exec_driver_sql(WRITE)
        with pytest.warns(dbevents.DbEventsWarning) as from_select:
            session.execute(copy)
        session.rollback()
    for record in (text_write, driver_write, from_select):
        assert [w.filename for w in record] == [__file__]


def test_a_raw_sql_warning_under_async_session_points_at_the_await(
    async_engine: AsyncEngine,
) -> None:
    maker = installed_async(dbevents.Events(), async_engine)

    async def write() -> list[warnings.WarningMessage]:
        async with async_engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with maker() as session:
            with pytest.warns(dbevents.DbEventsWarning) as record:
                await session.execute(sa.text(WRITE))
            await session.rollback()
        return list(record)

    assert [w.filename for w in asyncio.run(write())] == [__file__]


class Unconfigured(sa_orm.Session):
    """A session class of these tests' own, so installing on it touches no other session."""


def test_the_unconfigured_sqlite_warning_points_at_the_line_that_began(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    events = dbevents.Events()
    maker = events.install(sa_orm.sessionmaker(class_=Unconfigured))  # no engine known yet
    try:
        with maker(bind=engine) as session, pytest.warns(dbevents.DbEventsWarning) as record:
            session.connection()  # the first begin
    finally:
        events.uninstall(maker)
        engine.dispose()
    assert [(w.filename, "sqlite.configure" in str(w.message)) for w in record] == [
        (__file__, True)
    ]


def test_the_unconfigured_sqlite_warning_at_install_points_at_install(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    events = dbevents.Events()
    with pytest.warns(dbevents.DbEventsWarning, match="sqlite.configure") as record:
        maker = events.install(sa_orm.sessionmaker(engine, class_=Unconfigured))
    events.uninstall(maker)
    engine.dispose()
    assert [w.filename for w in record] == [__file__]


def test_an_unknown_capture_name_warning_points_at_the_write(tables: sa.Engine) -> None:
    events = dbevents.Events(capture={"companys": "keys"})
    maker = events.install(sa_orm.sessionmaker(tables))
    try:
        with maker() as session:
            session.add(Company(name="acme"))
            with pytest.warns(dbevents.DbEventsWarning, match="'companys'") as record:
                session.flush()
            session.rollback()
    finally:
        events.uninstall(maker)
    assert [w.filename for w in record] == [__file__]


# -- decorators used with parentheses ------------------------------------------------------------


@pytest.mark.parametrize("event", list(EVENTS))
def test_a_decorator_used_with_parentheses_says_to_drop_them(event: str) -> None:
    decorator = getattr(dbevents, event)
    with pytest.raises(dbevents.ConfigurationError, match=rf"write @{event} without parentheses"):
        decorator()  # as in @before_insert() over a method
    with pytest.raises(dbevents.ConfigurationError, match=rf"not @{event}\(\.\.\.\)"):
        decorator("Company")


def test_after_commit_operation_takes_one_pair_of_parentheses() -> None:
    inserted = after_commit.operation(Op.INSERT)
    with pytest.raises(
        dbevents.ConfigurationError,
        match=re.escape("write @after_commit.operation(Op.INSERT) without more parentheses"),
    ):
        inserted()
    with pytest.raises(dbevents.ConfigurationError, match="takes a dbevents.Op, got nothing"):
        after_commit.operation()


@pytest.mark.parametrize("method", ["on_commit", "on_error"])
def test_a_listener_decorator_used_with_parentheses_says_to_drop_them(method: str) -> None:
    with pytest.raises(
        dbevents.ConfigurationError, match=rf"write @events.{method} without parentheses"
    ):
        getattr(dbevents.Events(), method)()


# -- sinks, listeners and handlers are checked when registered ------------------------------


def test_a_single_sink_not_in_a_list_is_refused() -> None:
    with pytest.raises(dbevents.ConfigurationError, match=r"sinks takes a list.*MemorySink"):
        dbevents.Events(sinks=dbevents.MemorySink())  # type: ignore[arg-type]


def test_a_sink_class_is_refused() -> None:
    with pytest.raises(dbevents.ConfigurationError, match=r"pass an instance.*MemorySink\(\)"):
        dbevents.Events(sinks=[dbevents.MemorySink])  # type: ignore[list-item]
    with pytest.raises(dbevents.ConfigurationError, match="is a class, not a sink"):
        dbevents.Events().add_sink(dbevents.MemorySink)  # type: ignore[arg-type]


class NoArgument:
    def publish(self) -> None: ...


class NotCallable:
    publish = "index"


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        (NoArgument(), r"NoArgument.publish: a sink's publish is called as \(changeset\)"),
        (NotCallable(), "a sink's publish must be callable"),
    ],
    ids=["no argument", "not callable"],
)
def test_a_sink_whose_publish_cannot_take_a_change_set_is_refused(sink: Any, message: str) -> None:
    with pytest.raises(dbevents.ConfigurationError, match=message):
        dbevents.Events(sinks=[sink])


def test_an_on_commit_listener_is_checked_when_registered() -> None:
    events = dbevents.Events()
    with pytest.raises(
        dbevents.ConfigurationError, match=r"an on_commit listener is called as \(changeset\)"
    ):
        events.on_commit(lambda: None)
    with pytest.raises(dbevents.ConfigurationError, match="must be callable"):
        events.on_commit("publish")  # type: ignore[arg-type]
    assert events.receivers == []


def test_an_on_error_handler_is_checked_when_registered() -> None:
    events = dbevents.Events()
    with pytest.raises(
        dbevents.ConfigurationError,
        match=r"an on_error handler is called as \(error, receiver, changeset\)",
    ):
        events.on_error(lambda error: None)

    async def report(error: Exception, receiver: Any, changeset: ChangeSet) -> None: ...

    with pytest.raises(dbevents.ConfigurationError, match="make it a plain def"):
        events.on_error(report)
    assert events.error_handlers == []


# -- a callback that cannot veto returning True ----------------------------------------------


def test_an_after_commit_callback_returning_true_is_warned_about_once(
    Session: Any, events: dbevents.Events
) -> None:
    @events.listens_for(Company, "after_commit")
    def refuse(cls: type[Company], op: Op, change: Any) -> bool:
        return True

    with Session() as session:
        session.add(Company(name="acme"))
        with pytest.warns(dbevents.DbEventsWarning, match="cannot veto") as record:
            session.commit()
        session.add(Company(name="again"))
        session.commit()  # once per callback: filterwarnings = error would fail here
    assert [w.filename for w in record] == [__file__]
    message = str(record[0].message)
    assert message.startswith(f"{refuse.__qualname__} returned True, but an after_commit callback")
    assert "committed already" in message


@pytest.mark.parametrize("event", ["after_insert", "after_save", "before_commit"])
def test_a_write_callback_that_cannot_veto_returning_true_is_warned_about(
    Session: Any, events: dbevents.Events, event: str
) -> None:
    events.listens_for(Company, event)(lambda cls, *args: True)
    with Session() as session:
        session.add(Company(name="acme"))
        with pytest.warns(dbevents.DbEventsWarning, match=f" {event} callback cannot veto"):
            session.commit()


def test_on_a_statement_an_after_callback_returning_true_stops_no_other(
    Session: Any, events: dbevents.Events
) -> None:
    saved: list[str] = []
    events.listens_for(Company, "after_save")(lambda cls, company: True)
    events.listens_for(Company, "after_save")(lambda cls, company: saved.append(company.name))
    with Session() as session:
        with pytest.warns(dbevents.DbEventsWarning, match="an after_save callback cannot veto"):
            session.execute(sa.insert(Company), [{"name": "a"}, {"name": "b"}])
        session.commit()
    assert sorted(saved) == ["a", "b"]


# -- an async after_commit callback a sync commit can't await --------------------------------


def test_an_async_after_commit_callback_that_cannot_be_awaited_is_named(
    Session: Any, events: dbevents.Events
) -> None:
    @events.listens_for(Company, "after_commit")
    async def published(cls: type[Company], op: Op, change: Any) -> None: ...

    @events.on_commit
    async def listened(changeset: ChangeSet) -> None: ...

    failures: list[str] = []
    events.on_error(lambda error, receiver, changeset: failures.append(str(error)))

    async def commit_inside_a_loop() -> None:
        with Session() as session:  # a plain Session, inside a running event loop
            session.add(Company(name="acme"))
            session.commit()

    asyncio.run(commit_inside_a_loop())
    tail = (
        "can't be awaited from a synchronous Session commit running inside an event loop; "
        "commit with an AsyncSession, or make it a plain def"
    )
    assert failures == [
        f"{published.__qualname__}: an async after_commit callback of Company {tail}",
        f"{listened.__qualname__}: an async on_commit listener {tail}",
    ]


# -- grammar ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", list(EVENTS))
def test_event_names_take_the_right_article(event: str) -> None:
    article = "an" if event.startswith("after") else "a"

    async def asynchronous(*args: Any) -> None: ...

    checks: list[Callable[[], object]] = [
        lambda: dbevents.Events().listens_for(Company, event)(lambda: None)
    ]
    if event != "after_commit":
        checks.append(lambda: dbevents.Events().listens_for(Company, event)(asynchronous))
    for check in checks:
        with pytest.raises(dbevents.ConfigurationError) as raised:
            check()
        assert f": {article} {event} callback " in str(raised.value)
