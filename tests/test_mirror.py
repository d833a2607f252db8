"""MirrorSink: a journal per commit, compacted into table files; load and verify accept both."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents.changes import Change, ChangeSet, Op
from dbevents.fileformat import JOURNAL, Manifest, Source, fk_order
from dbevents.ids import new_id
from dbevents.sinks.mirror import MirrorSink
from tests import datamodels
from tests.datamodels import Author, Book, Color, Node, Tag, Thing, metadata, table_rows

ROOT = Path(__file__).resolve().parent.parent

# a table no mapped class knows, so that the mirror cannot look its key up: a first row
# of all ones does not tell which column is the key, and the first column is not
memberships_metadata = sa.MetaData()
memberships = sa.Table(
    "mirror_memberships",
    memberships_metadata,
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("group_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Integer, primary_key=True),
)


@pytest.fixture
def writer(engine: sa.Engine) -> sa.Engine:
    metadata.create_all(engine)
    return engine


@pytest.fixture
def target(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    with datamodels.fresh_engine(request, backend, tmp_path) as engine:
        yield engine


def session_maker(
    engine: sa.Engine, sink: MirrorSink
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    events = dbevents.Events(sinks=[sink])
    maker = sa_orm.sessionmaker(engine)
    events.install(maker)
    yield maker
    events.uninstall(maker)


def write_some(maker: sa_orm.sessionmaker[sa_orm.Session], start: int = 0) -> None:
    """Commits of every kind: inserts, updates, deletes, a self-reference, a cycle, links."""
    with maker() as session:
        session.add_all(
            [
                Thing(
                    id=start + 1,
                    name="one",
                    price=decimal.Decimal("9.99"),
                    at_tz=dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
                    blob=b"\x00\xff",
                    doc={"$uuid": "a tag lookalike"},
                    color=Color.RED,
                    flag=True,
                ),
                Thing(id=start + 2, name="two"),
                Tag(id=start + 1, label="t"),
                Node(id=start + 1, name="root"),
                Author(id=start + 1, name="Ann"),
            ]
        )
        session.flush()
        session.add_all(
            [
                Node(id=start + 2, parent_id=start + 1, name="leaf"),
                Book(id=start + 1, title="B", author_id=start + 1),
            ]
        )
        session.execute(
            metadata.tables["thing_tags"].insert().values(thing_id=start + 1, tag_id=start + 1)
        )
        session.commit()
    with maker() as session:
        author = session.get_one(Author, start + 1)
        author.favorite_book_id = start + 1
        session.get_one(Thing, start + 1).name = "renamed"
        session.delete(session.get_one(Thing, start + 2))
        session.commit()


def test_an_uncompacted_mirror_loads_and_verifies(
    writer: sa.Engine, target: sa.Engine, tmp_path: Path
) -> None:
    sink = MirrorSink(tmp_path / "mirror")
    for maker in session_maker(writer, sink):
        write_some(maker)

    assert (tmp_path / "mirror" / JOURNAL).stat().st_size > 0
    assert dbevents.verify(writer, metadata, tmp_path / "mirror") == []
    dbevents.load(target, metadata, tmp_path / "mirror")
    assert table_rows(target) == table_rows(writer)


def test_compaction_folds_the_journal_into_table_files(
    writer: sa.Engine, target: sa.Engine, tmp_path: Path
) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory, metadata=metadata)
    for maker in session_maker(writer, sink):
        write_some(maker)
        sink.compact()
        assert (directory / JOURNAL).stat().st_size == 0
        assert (directory / "things.jsonl").read_text().count("\n") == 1
        write_some(maker, start=10)  # changes after a compaction land over the table files

    manifest = Manifest.read(directory)
    assert manifest.source == "mirror"
    assert manifest.fingerprint is not None
    assert dbevents.verify(writer, metadata, directory) == []
    dbevents.load(target, metadata, directory)
    assert table_rows(target) == table_rows(writer)


@pytest.mark.parametrize("threshold", [{"compact_bytes": 1}, {"compact_age": 0.0}])
def test_compaction_on_a_threshold(
    writer: sa.Engine, tmp_path: Path, threshold: dict[str, float]
) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory, **threshold)  # type: ignore[arg-type]
    for maker in session_maker(writer, sink):
        write_some(maker)

    assert (directory / JOURNAL).stat().st_size == 0
    assert dbevents.verify(writer, metadata, directory) == []


def test_no_compaction_below_the_thresholds(writer: sa.Engine, tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory)
    for maker in session_maker(writer, sink):
        write_some(maker)

    assert not (directory / "things.jsonl").exists()
    assert len((directory / JOURNAL).read_text().splitlines()) == 2


def test_a_torn_last_line_is_ignored_then_cut(tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory, metadata=metadata)
    sink.publish(tag_changeset(1))
    with (directory / JOURNAL).open("ab") as journal:
        journal.write(tag_changeset(2).to_json()[:25])  # killed in the middle of an append

    assert rows_of(directory, "tags") == {1: "tag 1"}
    sink.publish(tag_changeset(3))
    assert rows_of(directory, "tags") == {1: "tag 1", 3: "tag 3"}
    assert all(line.endswith("}") for line in (directory / JOURNAL).read_text().splitlines())


def test_an_update_and_delete_after_compaction(tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory, metadata=metadata)
    for number in (1, 2, 3):
        sink.publish(tag_changeset(number))
    sink.compact()
    sink.publish(
        changeset(
            Change(Op.UPDATE, "tags", "Tag", (2,), {"label": "tag 2"}, {"label": "second"}),
            Change(Op.DELETE, "tags", "Tag", (3,), {"id": 3, "label": "tag 3"}, None),
        )
    )

    assert rows_of(directory, "tags") == {1: "tag 1", 2: "second"}
    sink.compact()
    assert rows_of(directory, "tags") == {1: "tag 1", 2: "second"}
    assert Manifest.read(directory).tables[0].rows == 2


def test_a_core_table_keys_by_the_columns_holding_the_key(tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory)
    sink.publish(changeset(Change(Op.INSERT, "audit", None, (7,), None, {"at": 1, "ref": 7})))

    assert Manifest.read(directory).tables[0].key == ("ref",)


@pytest.mark.parametrize("known", ["metadata", "mapped classes"])
def test_the_manifest_lists_tables_parents_first_as_dump_does(tmp_path: Path, known: str) -> None:
    sink = MirrorSink(tmp_path, metadata=metadata if known == "metadata" else None)
    book = {"id": 1, "title": "B", "author_id": 1}
    author = {"id": 1, "name": "Ann", "favorite_book_id": None}
    link = {"thing_id": 1, "tag_id": 1}
    sink.publish(changeset(Change(Op.LINK, "thing_tags", None, (1, 1), None, link)))
    sink.publish(changeset(Change(Op.INSERT, "books", "Book", (1,), None, book)))
    sink.publish(tag_changeset(1))  # children seen before their parents
    sink.publish(changeset(Change(Op.INSERT, "authors", "Author", (1,), None, author)))
    sink.publish(changeset(Change(Op.INSERT, "audit", None, (7,), None, {"at": 1, "ref": 7})))

    listed = [entry.name for entry in Manifest.read(tmp_path).tables]
    dumped = [table.fullname for table in fk_order(metadata)[0] if table.fullname in listed]
    assert listed == [*dumped, "audit"]  # a table no registry knows comes last
    assert listed.index("authors") < listed.index("books")
    assert listed.index("tags") < listed.index("thing_tags")
    sink.compact()
    assert [entry.name for entry in Manifest.read(tmp_path).tables] == listed


def test_several_processes_share_one_directory(tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    script = textwrap.dedent(
        f"""
        import sys
        from dbevents.sinks.mirror import MirrorSink
        from tests.datamodels import metadata
        from tests.test_mirror import tag_changeset
        base = int(sys.argv[1])
        sink = MirrorSink({str(directory)!r}, metadata=metadata, compact_bytes=2000)
        for number in range(base, base + 60):
            sink.publish(tag_changeset(number))
        """
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(base)], cwd=ROOT)
        for base in (1000, 2000, 3000)
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0]

    expected = {n: f"tag {n}" for base in (1000, 2000, 3000) for n in range(base, base + 60)}
    assert rows_of(directory, "tags") == expected


def sqlite_engine(tmp_path: Path) -> sa.Engine:
    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}"))
    memberships_metadata.create_all(engine)
    return engine


def write_memberships(maker: sa_orm.sessionmaker[sa_orm.Session], deliver: Any) -> None:
    """Two rows, the first all ones; then, after a compaction, an update of the second."""
    with maker() as session:
        session.execute(sa.insert(memberships).values(user_id=1, group_id=1, id=1))
        session.commit()
        session.execute(sa.insert(memberships).values(user_id=1, group_id=2, id=2))
        session.commit()
        deliver(compact=True)
        session.execute(sa.update(memberships).where(memberships.c.id == 2).values(group_id=3))
        session.commit()
        deliver(compact=False)


def test_a_core_table_is_keyed_as_the_change_set_tells(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path)
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory)

    def deliver(compact: bool) -> None:
        if compact:
            sink.compact()

    for maker in session_maker(engine, sink):
        write_memberships(maker, deliver)

    entry = Manifest.read(directory).entry("mirror_memberships")
    assert entry is not None and entry.key == ("id",)
    assert dbevents.verify(engine, memberships_metadata, directory) == []
    engine.dispose()


def test_a_relay_tells_the_mirror_the_key_columns_the_writer_knew(tmp_path: Path) -> None:
    # what a relay process without the models reads: only the outbox rows
    engine = sqlite_engine(tmp_path)
    outbox = dbevents.OutboxSink()
    outbox.create_table(engine)
    directory = tmp_path / "mirror"
    mirror = MirrorSink(directory)

    def deliver(compact: bool) -> None:
        assert dbevents.relay(engine, [mirror], once=True) >= 1
        if compact:
            mirror.compact()

    events = dbevents.Events(sinks=[outbox])
    maker = events.install(sa_orm.sessionmaker(engine))
    write_memberships(maker, deliver)
    events.uninstall(maker)

    entry = Manifest.read(directory).entry("mirror_memberships")
    assert entry is not None and entry.key == ("id",)
    assert dbevents.verify(engine, memberships_metadata, directory) == []
    engine.dispose()


def test_a_table_whose_key_nothing_tells_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    row = {"user_id": 1, "group_id": 1, "id": 1}
    written = changeset(Change(Op.INSERT, "mirror_memberships", None, (1,), None, row))
    # as a writer that told no key columns (an older one) wrote it
    data = {key: value for key, value in written.to_dict().items() if key != "key_columns"}
    read = ChangeSet.from_json(json.dumps(data))
    assert read.key_columns("mirror_memberships") is None

    with pytest.raises(dbevents.SinkError, match="pass metadata="):
        MirrorSink(directory).publish(read)
    assert Manifest.read(directory).tables == ()
    assert not (directory / JOURNAL).exists()
    MirrorSink(directory, metadata=memberships_metadata).publish(read)  # what the error asks
    entry = Manifest.read(directory).entry("mirror_memberships")
    assert entry is not None and entry.key == ("id",)


class IndentedChangeSet(ChangeSet):
    """A change set of another make, whose JSON spans several lines."""

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2).encode()


def test_a_change_set_in_several_lines_is_journaled_as_one(tmp_path: Path) -> None:
    directory = tmp_path / "mirror"
    sink = MirrorSink(directory, metadata=metadata)
    # received as indented JSON, from a queue or a web hook, say
    first = ChangeSet.from_json(json.dumps(tag_changeset(1).to_dict(), indent=2))
    sink.publish(first)
    second = tag_changeset(2)
    sink.publish(IndentedChangeSet(second.id, second.committed_at, None, second.changes))

    lines = (directory / JOURNAL).read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b""  # one record a line, each whole
    assert [ChangeSet.from_json(line).id for line in lines[:2]] == [first.id, second.id]
    assert rows_of(directory, "tags") == {1: "tag 1", 2: "tag 2"}


def changeset(*changes: Change) -> ChangeSet:
    return ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, changes)


def tag_changeset(number: int) -> ChangeSet:
    """A change set inserting tag ``number``."""
    row = {"id": number, "label": f"tag {number}"}
    return changeset(Change(Op.INSERT, "tags", "Tag", (number,), None, row))


def rows_of(directory: Path, table: str) -> dict[object, object]:
    source = Source(directory)
    entry = source.manifest.entry(table)
    assert entry is not None
    return {row["id"]: row["label"] for _, _, row in source.records(entry)}
