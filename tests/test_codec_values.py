"""codec: column values of a subclass of a plain type encode as that plain value."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from markupsafe import Markup

import dbevents
from dbevents import codec
from dbevents.fileformat import Source


class UserId(int):
    """An id type of an application's own."""


class Html(str):
    def __str__(self) -> str:  # an override that must not change the value written
        return "<overridden>"


class Ratio(float):
    pass


class Level(enum.IntEnum):
    HIGH = 3


class Mood(enum.StrEnum):
    GLAD = "glad"


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (Markup("<b>hi</b>"), "<b>hi</b>"),
        (Html("<i>x</i>"), "<i>x</i>"),
        (UserId(7), 7),
        (Ratio(0.5), 0.5),
    ],
    ids=["Markup", "str overriding __str__", "int", "float"],
)
def test_a_subclass_of_a_plain_type_encodes_as_its_plain_value(value: Any, plain: Any) -> None:
    for encoded in (
        codec.encode(value),
        codec.encode_row({"a": value})["a"],
        codec.encode_values([value])[0],
        codec.encode({"nested": [value]})["nested"][0],
    ):
        assert encoded == plain and type(encoded) is type(plain)
    assert codec.decode(json.loads(codec.dumps(codec.encode(value)))) == plain


def test_enums_and_bools_keep_their_own_encoding() -> None:
    # an IntEnum is an int and a StrEnum a str: they stay tagged, to load back as members
    assert codec.encode(Level.HIGH) == {"$enum": [f"{__name__}:Level", "HIGH"]}
    assert codec.encode(Mood.GLAD) == {"$enum": [f"{__name__}:Mood", "GLAD"]}
    assert codec.decode(codec.encode(Level.HIGH)) is Level.HIGH
    assert codec.encode(True) is True


class Base(sa_orm.DeclarativeBase): ...


class Page(Base):
    __tablename__ = "codec_pages"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    html: sa_orm.Mapped[str]


def test_a_commit_of_subclass_values_reaches_the_outbox_and_a_mirror(tmp_path: Path) -> None:
    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}"))
    outbox = dbevents.OutboxSink(Base.metadata)
    Base.metadata.create_all(engine)
    mirror = dbevents.MirrorSink(tmp_path / "data", metadata=Base)
    failures: list[BaseException] = []
    events = dbevents.Events(sinks=[outbox, mirror])
    events.on_error(lambda error, receiver, changeset: failures.append(error))
    maker = events.install(sa_orm.sessionmaker(engine))
    with maker() as session:
        session.add(Page(id=UserId(1), html=Markup("<b>hi</b>")))
        session.commit()  # the outbox encodes it inside the transaction: that failed
    events.uninstall(maker)

    assert failures == []
    with engine.connect() as connection:
        [payload] = connection.scalars(sa.select(outbox.table.c.payload))
    [change] = dbevents.ChangeSet.from_json(payload).changes
    assert dict(change.new or {}) == {"id": 1, "html": "<b>hi</b>"}
    source = Source(tmp_path / "data")
    entry = source.manifest.entry("codec_pages")
    assert entry is not None
    assert [row for _, _, row in source.records(entry)] == [{"id": 1, "html": "<b>hi</b>"}]
    assert dbevents.verify(engine, Base, tmp_path / "data") == []
    engine.dispose()
