"""The test servers and database fixtures do what the tests rely on."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import dbevents.sqlite
from tests.servers import HOST, PostgresServer, RedisServer, search_path_of

# schemas of earlier test_db_url_is_isolated runs, to check they are gone
_seen_schemas: list[str] = []


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def test_postgres_answers_on_loopback_only(postgres: PostgresServer) -> None:
    eng = sa.create_engine(postgres.url())
    try:
        with eng.connect() as conn:
            assert conn.scalar(sa.text("select 1")) == 1
            assert str(conn.scalar(sa.text("select inet_server_addr()"))) == "127.0.0.1"
            assert conn.scalar(sa.text("show listen_addresses")) == "127.0.0.1"
            assert int(conn.scalar(sa.text("show max_connections"))) >= 100
            assert conn.scalar(sa.text("select current_user")) == "postgres"
    finally:
        eng.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_db_url_is_isolated(run: int, backend: str, db_url: str, engine: sa.Engine) -> None:
    # both runs create the same table: the second fails if it sees the first's
    assert not sa.inspect(engine).has_table("isolation_marker")
    table = sa.Table(
        "isolation_marker", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    table.create(engine)
    assert sa.inspect(engine).has_table("isolation_marker")
    if backend != "postgresql":
        assert db_url.startswith("sqlite:///") and db_url.endswith("/test.db")
        assert dbevents.sqlite.is_configured(engine)
        return
    assert db_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    with engine.connect() as conn:
        schema = conn.scalar(sa.text("select current_schema()"))
        assert schema == search_path_of(db_url)
        assert isinstance(schema, str) and schema.startswith("t_")
        gone = conn.scalars(
            sa.text("select nspname from pg_namespace where nspname = any(:names)"),
            {"names": _seen_schemas},
        ).all()
    assert gone == [], "schemas of earlier tests were not dropped"
    _seen_schemas.append(schema)


def test_async_engine_sees_the_same_database(engine: sa.Engine, async_engine: AsyncEngine) -> None:
    table = sa.Table("shared", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=7))

    async def read() -> list[int]:
        async with async_engine.connect() as conn:
            return list((await conn.scalars(sa.select(table.c.id))).all())

    assert asyncio.run(read()) == [7]
    assert asyncio.run(read()) == [7]  # a second event loop works too (no pool)
    assert dbevents.sqlite.is_configured(async_engine.sync_engine) == (
        engine.dialect.name == "sqlite"
    )


def test_leaked_transaction_is_terminated_at_schema_drop(postgres: PostgresServer) -> None:
    schema = "t_leak"
    postgres.execute(f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.x (id int)")
    eng = sa.create_engine(postgres.schema_url(schema))
    try:
        conn = eng.connect()
        conn.execute(sa.text("insert into x values (1)"))  # holds a lock, never committed
        assert postgres.drop_schema(schema, lock_timeout=0.2) != []
        assert postgres.fetch("select 1 from pg_namespace where nspname = %s", schema) == []
        conn.invalidate()
        conn.close()
    finally:
        eng.dispose()


def test_postgres_server_lifecycle() -> None:
    server = PostgresServer()
    try:
        server.execute("create table t (id int)", "insert into t values (1)")
        server.restart()
        assert server.fetch("select id from t") == [(1,)]
        server.restart(crash=True)
        assert server.fetch("select count(*) from pg_stat_activity") != []
        url = server.create_database("other")
        assert url.endswith("/other")
        assert server.fetch("select current_database()", database="other") == [("other",)]
        server.drop_database("other")
    finally:
        server.stop()
    assert not server.dir.exists()
    assert not _port_open(server.port)
    server.stop()  # twice is fine


def test_redis_answers_on_loopback_only(redis_url: str) -> None:
    assert redis_url.startswith(f"redis://{HOST}:")
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True
        assert client.config_get("bind") == {"bind": HOST}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_redis_server_stops() -> None:
    server = RedisServer()
    assert _port_open(server.port)
    server.stop()
    assert not server.dir.exists()
    assert not _port_open(server.port)
