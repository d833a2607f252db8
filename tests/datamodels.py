"""A schema with every common column type, a self-reference, a cycle and a many-to-many table.

Shared by the dump, load, verify, mirror and CLI tests, with sample rows and a
helper that makes a second empty database next to the test's own.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents.sqlite
from tests.servers import PostgresServer


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Base(sa_orm.DeclarativeBase):
    pass


metadata = Base.metadata


class Thing(Base):
    """Every column type dump and load must keep exactly."""

    __tablename__ = "things"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    note: Mapped[str | None] = mapped_column(sa.Text)
    at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    at_tz: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    clock: Mapped[dt.time | None] = mapped_column(sa.Time)
    price: Mapped[decimal.Decimal | None] = mapped_column(sa.Numeric(12, 2))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    uid: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    color: Mapped[Color | None] = mapped_column(sa.Enum(Color, name="color"))
    level: Mapped[str | None] = mapped_column(sa.Enum("low", "high", name="level"))
    flag: Mapped[bool | None] = mapped_column(sa.Boolean)


class Node(Base):
    """A self-referencing tree."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("nodes.id"))
    name: Mapped[str] = mapped_column(sa.String(50))


class Author(Base):
    """One side of a foreign-key cycle: an author's favourite book."""

    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    favorite_book_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("books.id", use_alter=True, name="fk_author_favorite_book")
    )


class Book(Base):
    """The other side of the cycle."""

    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("authors.id"))


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(30))


thing_tags = sa.Table(
    "thing_tags",
    metadata,
    sa.Column("thing_id", sa.ForeignKey("things.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id"), primary_key=True),
)

#: a many-to-many table without a primary key
thing_links = sa.Table(
    "thing_links",
    metadata,
    sa.Column("a_id", sa.ForeignKey("things.id"), nullable=False),
    sa.Column("b_id", sa.ForeignKey("things.id"), nullable=False),
)

AT_TZ = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def sample_rows() -> dict[str, list[dict[str, Any]]]:
    """Rows for every table, parents first, covering each type, NULLs and awkward values."""
    return {
        "things": [
            {
                "id": 1,
                "name": "full",
                "note": "naïve ünïcode \u2603 and a\nnewline",
                "at": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
                "at_tz": AT_TZ,
                "day": dt.date(1999, 12, 31),
                "clock": dt.time(23, 59, 58, 1000),
                "price": decimal.Decimal("1234567890.12"),
                "ratio": 0.1,
                "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
                "blob": bytes(range(256)),
                "doc": {"$date": "not a date", "list": [1, 2.5, None, True], "nested": {"a": "b"}},
                "color": Color.GREEN,
                "level": "high",
                "flag": True,
            },
            {
                "id": 2,
                "name": "nulls",
                "note": None,
                "at": None,
                "at_tz": None,
                "day": None,
                "clock": None,
                "price": None,
                "ratio": None,
                "uid": None,
                "blob": None,
                "doc": None,
                "color": None,
                "level": None,
                "flag": None,
            },
            {
                "id": 3,
                "name": "zeros",
                "note": "",
                "at": dt.datetime(1970, 1, 1),
                "at_tz": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                "day": dt.date(2000, 2, 29),
                "clock": dt.time(0, 0),
                "price": decimal.Decimal("-0.01"),
                "ratio": -1.5e-10,
                "uid": uuid.UUID(int=0),
                "blob": b"",
                "doc": [],
                "color": Color.RED,
                "level": "low",
                "flag": False,
            },
        ],
        "nodes": [
            {"id": 1, "parent_id": 3, "name": "child of a later row"},
            {"id": 2, "parent_id": None, "name": "root"},
            {"id": 3, "parent_id": 2, "name": "middle"},
            {"id": 4, "parent_id": 4, "name": "its own parent"},
        ],
        "authors": [
            {"id": 1, "name": "Ann", "favorite_book_id": 2},
            {"id": 2, "name": "Bob", "favorite_book_id": None},
        ],
        "books": [
            {"id": 1, "title": "First", "author_id": 1},
            {"id": 2, "title": "Second", "author_id": 2},
        ],
        "tags": [{"id": 1, "label": "red"}, {"id": 2, "label": "blue"}],
        "thing_tags": [
            {"thing_id": 1, "tag_id": 1},
            {"thing_id": 1, "tag_id": 2},
            {"thing_id": 3, "tag_id": 2},
        ],
        "thing_links": [{"a_id": 1, "b_id": 3}, {"a_id": 1, "b_id": 3}, {"a_id": 3, "b_id": 1}],
    }


def fill(engine: sa.Engine) -> None:
    """Create the schema and insert :func:`sample_rows`, cycles closed by a later UPDATE."""
    metadata.create_all(engine)
    rows = sample_rows()
    authors = metadata.tables["authors"]
    nodes = metadata.tables["nodes"]
    with engine.begin() as conn:
        conn.execute(authors.insert(), [{**r, "favorite_book_id": None} for r in rows["authors"]])
        conn.execute(nodes.insert(), [{**r, "parent_id": None} for r in rows["nodes"]])
        for name, table in metadata.tables.items():
            if name not in ("authors", "nodes"):
                conn.execute(table.insert(), rows[name])
        for table in (authors, nodes):
            column = "favorite_book_id" if table is authors else "parent_id"
            for row in rows[table.name]:
                conn.execute(
                    table.update().where(table.c.id == row["id"]).values({column: row[column]})
                )


def table_rows(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows read back with plain SQL, sorted, for row-for-row comparison."""
    result = {}
    with engine.connect() as conn:
        for name in metadata.tables:
            rows = conn.exec_driver_sql(f'SELECT * FROM "{name}"').fetchall()
            result[name] = sorted((tuple(row) for row in rows), key=repr)
    return result


@contextmanager
def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of another empty database on the test's backend, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'fresh-{uuid.uuid4().hex}.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    schema = f"f_{uuid.uuid4().hex}"
    server.execute(f"CREATE SCHEMA {schema}")
    try:
        yield server.schema_url(schema)
    finally:
        server.drop_schema(schema)


@contextmanager
def fresh_engine(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> Iterator[sa.Engine]:
    """An engine on :func:`fresh_database`, with the schema created and disposed afterwards."""
    with fresh_database(request, backend, tmp_path) as url:
        engine = dbevents.sqlite.configure(sa.create_engine(url))
        try:
            metadata.create_all(engine)
            yield engine
        finally:
            engine.dispose()
