"""Relationship and collection shapes of ordinary applications, checked against the database.

Each test writes through a relationship shape (self-referential many-to-many, set and
keyed-dict collections, association objects and proxies, write-only and dynamic
collections, cascades, ``post_update``, ``lazy="raise"``...), commits, and compares the
change set delivered with what the tables hold then, read back with plain SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.ext.orderinglist import ordering_list
from sqlalchemy.orm import (
    DynamicMapped,
    Mapped,
    WriteOnlyMapped,
    attribute_keyed_dict,
    mapped_column,
    relationship,
)

import dbevents
from dbevents import ChangeSet, RowSet
from tests.fixtures import Diff, Snapshot, installed, table_diff


class CBase(sa_orm.DeclarativeBase):
    pass


follows = sa.Table(
    "follows",
    CBase.metadata,
    sa.Column("follower_id", sa.ForeignKey("people.id"), primary_key=True),
    sa.Column("followed_id", sa.ForeignKey("people.id"), primary_key=True),
)

#: no primary key: a change names its row by all its columns
person_tags = sa.Table(
    "person_tags",
    CBase.metadata,
    sa.Column("person_id", sa.ForeignKey("people.id")),
    sa.Column("tag_id", sa.ForeignKey("tags.id")),
)

badges = sa.Table(
    "badges",
    CBase.metadata,
    sa.Column("person_id", sa.ForeignKey("people.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id"), primary_key=True),
)

#: columns of its own that the database fills in
team_members = sa.Table(
    "team_members",
    CBase.metadata,
    sa.Column("owner_id", sa.ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("team_id", sa.ForeignKey("teams.id"), primary_key=True),
    sa.Column("role", sa.String(20), server_default="member"),
    sa.Column("rank", sa.Integer, server_default=sa.text("5")),
)

#: the database deletes these rows with their person or club
club_members = sa.Table(
    "club_members",
    CBase.metadata,
    sa.Column("person_id", sa.ForeignKey("people.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("club_id", sa.ForeignKey("clubs.id", ondelete="CASCADE"), primary_key=True),
)

#: a surrogate key of its own, and a column the database fills in
enrollments = sa.Table(
    "enrollments",
    CBase.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("student_id", sa.ForeignKey("students.id")),
    sa.Column("course_id", sa.ForeignKey("courses.id")),
    sa.Column("grade", sa.String(2), server_default="B"),
)


class Tag(CBase):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(20))


class Team(CBase):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(20))


class Club(CBase):
    __tablename__ = "clubs"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: the rows of members not loaded are left to the ON DELETE CASCADE
    members: Mapped[list[Person]] = relationship(
        secondary=club_members, back_populates="clubs", passive_deletes=True
    )


class Person(CBase):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(20))
    following: Mapped[list[Person]] = relationship(
        secondary=follows,
        primaryjoin=lambda: Person.id == follows.c.follower_id,
        secondaryjoin=lambda: Person.id == follows.c.followed_id,
        back_populates="followers",
    )
    followers: Mapped[list[Person]] = relationship(
        secondary=follows,
        primaryjoin=lambda: Person.id == follows.c.followed_id,
        secondaryjoin=lambda: Person.id == follows.c.follower_id,
        back_populates="following",
    )
    tags: Mapped[set[Tag]] = relationship(secondary=person_tags, collection_class=set)
    tag_codes: AssociationProxy[set[str]] = association_proxy(
        "tags", "code", creator=lambda code: Tag(code=code)
    )
    #: the same rows, read only: writing to it must change nothing
    tags_seen: Mapped[list[Tag]] = relationship(secondary=person_tags, viewonly=True)
    badges: Mapped[dict[str, Tag]] = relationship(
        secondary=badges, collection_class=attribute_keyed_dict("code")
    )
    clubs: DynamicMapped[Club] = relationship(secondary=club_members, back_populates="members")


class Owner(CBase):
    """Write-only collections: never loaded, so a delete leaves their rows to the database."""

    __tablename__ = "owners"

    id: Mapped[int] = mapped_column(primary_key=True)
    teams: WriteOnlyMapped[Team] = relationship(secondary=team_members, passive_deletes=True)
    notes: WriteOnlyMapped[Note] = relationship(
        back_populates="owner", cascade="all, delete-orphan", passive_deletes=True
    )


class Note(CBase):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("owners.id", ondelete="CASCADE"))
    text: Mapped[str | None] = mapped_column(sa.String(20))
    owner: Mapped[Owner | None] = relationship(back_populates="notes")


class Song(CBase):
    __tablename__ = "songs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(20))


class Entry(CBase):
    """An association object with a composite key, kept in order by ordering_list."""

    __tablename__ = "entries"

    playlist_id: Mapped[int] = mapped_column(sa.ForeignKey("playlists.id"), primary_key=True)
    song_id: Mapped[int] = mapped_column(sa.ForeignKey("songs.id"), primary_key=True)
    position: Mapped[int | None] = mapped_column()
    song: Mapped[Song] = relationship()


class Playlist(CBase):
    __tablename__ = "playlists"

    id: Mapped[int] = mapped_column(primary_key=True)
    entries: Mapped[list[Entry]] = relationship(
        cascade="all, delete-orphan",
        order_by=Entry.position,
        collection_class=ordering_list("position"),
    )
    songs: AssociationProxy[list[Song]] = association_proxy(
        "entries", "song", creator=lambda song: Entry(song=song)
    )


class Mix(CBase):
    __tablename__ = "mixes"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: a plain many-to-many over the table of a mapped class
    songs: Mapped[list[Song]] = relationship(secondary="tracks")


class Track(CBase):
    """A class mapped to a ``secondary`` table: its rows are written both ways."""

    __tablename__ = "tracks"

    mix_id: Mapped[int] = mapped_column(sa.ForeignKey("mixes.id"), primary_key=True)
    song_id: Mapped[int] = mapped_column(sa.ForeignKey("songs.id"), primary_key=True)
    plays: Mapped[int] = mapped_column(server_default=sa.text("0"))


class Course(CBase):
    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(primary_key=True)


class Pref(CBase):
    __tablename__ = "prefs"

    student_id: Mapped[int] = mapped_column(sa.ForeignKey("students.id"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    value: Mapped[str | None] = mapped_column(sa.String(10))


class Student(CBase):
    __tablename__ = "students"

    id: Mapped[int] = mapped_column(primary_key=True)
    courses: Mapped[list[Course]] = relationship(secondary=enrollments)
    prefs: Mapped[dict[str, Pref]] = relationship(
        collection_class=attribute_keyed_dict("key"), cascade="all, delete-orphan"
    )
    pref_values: AssociationProxy[dict[str, str]] = association_proxy(
        "prefs", "value", creator=lambda key, value: Pref(key=key, value=value)
    )


shelf_tags = sa.Table(
    "shelf_tags",
    CBase.metadata,
    sa.Column("shelf_id", sa.ForeignKey("shelves.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id"), primary_key=True),
)


class Shelf(CBase):
    __tablename__ = "shelves"

    id: Mapped[int] = mapped_column(primary_key=True)
    books: Mapped[list[Book]] = relationship(
        lazy="raise", cascade="all, delete-orphan", back_populates="shelf"
    )
    tags: Mapped[list[Tag]] = relationship(secondary=shelf_tags, lazy="raise")


class Book(CBase):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(sa.ForeignKey("shelves.id"))
    title: Mapped[str | None] = mapped_column(sa.String(20))
    shelf: Mapped[Shelf | None] = relationship(back_populates="books", lazy="raise")


class Profile(CBase):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    bio: Mapped[str | None] = mapped_column(sa.String(20))


class Account(CBase):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[int | None] = mapped_column(sa.ForeignKey("profiles.id"))
    profile: Mapped[Profile | None] = relationship(cascade="all, delete-orphan", single_parent=True)


#: deferred: SQLAlchemy moves these rows after the key they refer to changed
DEFERRED: dict[str, Any] = {"deferrable": True, "initially": "DEFERRED"}
labels = sa.Table(
    "labels",
    CBase.metadata,
    sa.Column("code", sa.ForeignKey("codes.code", **DEFERRED), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id"), primary_key=True),
)


class Code(CBase):
    """A natural key that changes: SQLAlchemy itself moves the rows that refer to it."""

    __tablename__ = "codes"

    code: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    tags: Mapped[list[Tag]] = relationship(secondary=labels, passive_updates=False)


class Node(CBase):
    """Rows that point at each other (``post_update``), and a dynamic tree of them."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    peer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("nodes.id", name="fk_peer"))
    peer: Mapped[Node | None] = relationship(
        remote_side=[id], foreign_keys=[peer_id], post_update=True
    )
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("nodes.id"))
    children: DynamicMapped[Node] = relationship(
        foreign_keys=[parent_id],
        cascade="all, delete-orphan",
        backref=sa_orm.backref("parent", remote_side=[id]),
    )


@pytest.fixture
def CSession(  # noqa: N802
    events: dbevents.Events, engine: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    yield from installed(events, engine, CBase.metadata)


def stored(engine: sa.Engine) -> Snapshot:
    """Every table's rows, read back with plain SQL, by primary key (all columns if none)."""
    out: Snapshot = {}
    with engine.connect() as conn:
        for table in CBase.metadata.sorted_tables:
            key = [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]
            rows = [dict(r) for r in conn.execute(sa.select(table)).mappings()]
            out[table.name] = {tuple(r[k] for k in key): r for r in rows}
    return out


def as_rows(changesets: list[ChangeSet]) -> Diff:
    """Change sets in the shape of :func:`table_diff`: a link inserts its row, an unlink
    deletes it."""
    ops = {"link": "insert", "unlink": "delete"}
    out: Diff = {}
    for changeset in changesets:
        for c in changeset.changes:
            out[(c.table, c.pk)] = (
                ops.get(c.op.value, c.op.value),
                None if c.old is None else dict(c.old),
                None if c.new is None else dict(c.new),
            )
    return out


class Checked:
    """Commits a session and checks that what it delivered is what the tables hold."""

    def __init__(self, engine: sa.Engine, changesets: list[ChangeSet]) -> None:
        self.engine = engine
        self.changesets = changesets

    def commit(self, session: sa_orm.Session) -> list[tuple[str, str, tuple[Any, ...]]]:
        """Commit; return the changes delivered, as sorted (op, table, pk)."""
        before = stored(self.engine)
        count = len(self.changesets)
        session.commit()
        new = self.changesets[count:]
        assert len(new) <= 1
        assert as_rows(new) == table_diff(before, stored(self.engine))
        return sorted((c.op.value, c.table, c.pk) for cs in new for c in cs.changes)

    @property
    def last(self) -> ChangeSet:
        return self.changesets[-1]


@pytest.fixture
def checked(engine: sa.Engine, changesets: list[ChangeSet]) -> Checked:
    return Checked(engine, changesets)


def calls_of(events: dbevents.Events, model: type[Any], *names: str) -> list[tuple[Any, ...]]:
    """The row callbacks ``names`` of ``model``, with the keys of their rows, as they run."""
    calls: list[tuple[Any, ...]] = []
    for name in names:

        def record(cls: type[Any], *args: Any, _name: str = name) -> None:
            rows = args[0] if isinstance(args[0], RowSet) else None
            keys = sorted(rows.pks or ()) if rows is not None else [args[-1]]  # after_insert: pk
            calls.append((_name, *keys))

        events.listens_for(model, name)(record)
    return calls


# -- many-to-many through a secondary table -------------------------------------------------


def test_self_referential_followers_from_both_sides(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        a, b, c = Person(id=1, name="a"), Person(id=2, name="b"), Person(id=3, name="c")
        a.following.append(b)
        b.following.append(a)  # mutual
        c.followers.append(a)  # from the other side of the same table
        session.add_all([a, b, c])
        assert checked.commit(session) == [
            ("insert", "people", (1,)),
            ("insert", "people", (2,)),
            ("insert", "people", (3,)),
            ("link", "follows", (1, 2)),
            ("link", "follows", (1, 3)),
            ("link", "follows", (2, 1)),
        ]
        a.following.remove(b)  # (the backref takes a out of b.followers)
        c.following.append(c)  # follows itself: both sides of one row
        assert checked.commit(session) == [
            ("link", "follows", (3, 3)),
            ("unlink", "follows", (1, 2)),
        ]
        session.delete(a)  # never loaded since the commit: its rows are unlinked all the same
        assert checked.commit(session) == [
            ("delete", "people", (1,)),
            ("unlink", "follows", (1, 3)),
            ("unlink", "follows", (2, 1)),
        ]
        assert c.followers == [c]  # one side loaded, the other not
        session.delete(b)
        session.delete(c)  # (3, 3) is on both sides of c, and unlinked once
        assert checked.commit(session) == [
            ("delete", "people", (2,)),
            ("delete", "people", (3,)),
            ("unlink", "follows", (3, 3)),
        ]


def test_both_sides_edited_in_one_flush(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        a, b, c = Person(id=1), Person(id=2), Person(id=3)
        session.add_all([a, b, c])
        checked.commit(session)
        a.following.append(b)
        c.followers.append(a)
        b.following.append(c)
        c.followers.remove(b)  # takes back the row just added from the other side
        assert checked.commit(session) == [("link", "follows", (1, 2)), ("link", "follows", (1, 3))]


def test_a_set_collection_and_its_association_proxy(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        person = Person(id=1)
        person.tag_codes.add("x")
        person.tag_codes.add("y")
        session.add(person)
        checked.commit(session)
        assert len(checked.last.linked) == 2
        (x,) = (tag for tag in person.tags if tag.code == "x")
        person.tag_codes.discard("x")
        assert checked.commit(session) == [("unlink", "person_tags", (1, x.id))]
        (y,) = person.tags
        person.tags = {y, Tag(id=9, code="z")}  # a new set: only z is new
        assert checked.commit(session) == [
            ("insert", "tags", (9,)),
            ("link", "person_tags", (1, 9)),
        ]
        assert checked.last.linked[0].new == {"person_id": 1, "tag_id": 9}


def test_clearing_a_collection_and_adding_the_same_items_back_nets_to_nothing(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        a, b, c = Person(id=1), Person(id=2), Person(id=3)
        a.following.extend([b, c])
        a.tags = {Tag(id=1, code="x"), Tag(id=2, code="y")}
        a.badges = {"gold": Tag(id=3, code="gold")}
        session.add(a)
        checked.commit(session)
        people, tags, badges = list(a.following), set(a.tags), dict(a.badges)
        a.following.clear()
        a.tags.clear()
        a.badges.clear()
        a.following.extend(people)
        a.tags.update(tags)
        a.badges.update(badges)
        assert checked.commit(session) == []
        a.following = list(reversed(people))  # a new list of the same items
        assert checked.commit(session) == []
        a.following.clear()  # this time across two flushes: unlinked, then linked again
        a.badges.clear()
        session.flush()
        a.following.extend(people)
        a.badges.update(badges)
        assert checked.commit(session) == []


def test_a_keyed_dict_collection(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        person = Person(id=1)
        person.badges["gold"] = Tag(id=1, code="gold")
        person.badges["silver"] = Tag(id=2, code="silver")
        session.add(person)
        assert [op for op in checked.commit(session) if op[0] == "link"] == [
            ("link", "badges", (1, 1)),
            ("link", "badges", (1, 2)),
        ]
        del person.badges["gold"]
        person.badges["bronze"] = Tag(id=3, code="bronze")
        assert checked.commit(session) == [
            ("insert", "tags", (3,)),
            ("link", "badges", (1, 3)),
            ("unlink", "badges", (1, 1)),
        ]


def test_a_viewonly_relationship_changes_nothing(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        person, tag = Person(id=1), Tag(id=1, code="x")
        session.add_all([person, tag])
        checked.commit(session)
        person.tags_seen.append(tag)  # SQLAlchemy writes nothing for a viewonly relationship
        assert checked.commit(session) == []
        person.tags.add(tag)
        checked.commit(session)
        person.tags_seen.clear()
        assert checked.commit(session) == []


def test_a_secondary_with_a_surrogate_key_and_server_defaults(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        student = Student(id=1, courses=[Course(id=1), Course(id=2)])
        session.add(student)
        assert [op for op in checked.commit(session) if op[0] == "link"] == [
            ("link", "enrollments", (1,)),
            ("link", "enrollments", (2,)),
        ]
        assert {c.new["grade"] for c in checked.last.linked if c.new} == {"B"}
        student.courses.remove(student.courses[0])  # a DELETE by the pair: the key is read
        assert checked.commit(session) == [("unlink", "enrollments", (1,))]
        session.delete(student)
        assert checked.commit(session) == [
            ("delete", "students", (1,)),
            ("unlink", "enrollments", (2,)),
        ]


def test_core_statements_on_a_secondary_table(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        session.add_all([Owner(id=1), Team(id=1), Team(id=2)])
        checked.commit(session)
        session.execute(sa.insert(team_members), [{"owner_id": 1, "team_id": t} for t in (1, 2)])
        assert checked.commit(session) == [
            ("link", "team_members", (1, 1)),
            ("link", "team_members", (1, 2)),
        ]
        session.execute(team_members.delete().where(team_members.c.team_id == 1))
        assert checked.commit(session) == [("unlink", "team_members", (1, 1))]
        session.execute(team_members.update().values(rank=9))
        assert checked.commit(session) == [("update", "team_members", (1, 2))]


# -- write-only and dynamic collections -------------------------------------------------------


def test_write_only_many_to_many(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        owner = Owner(id=1)
        teams = [Team(id=i, name=f"t{i}") for i in (1, 2, 3)]
        session.add_all([owner, *teams])
        checked.commit(session)
        owner.teams.add_all(teams)
        checked.commit(session)
        # the columns the database filled in are in the link, as it returned them
        assert {dict(c.new or {})["team_id"]: c.new for c in checked.last.linked}[1] == {
            "owner_id": 1,
            "team_id": 1,
            "role": "member",
            "rank": 5,
        }
        owner.teams.remove(teams[0])
        assert checked.commit(session) == [("unlink", "team_members", (1, 1))]
        assert checked.last.unlinked[0].old == {
            "owner_id": 1,
            "team_id": 1,
            "role": "member",
            "rank": 5,
        }
        session.execute(owner.teams.update().values(name="mine"))
        assert checked.commit(session) == [("update", "teams", (2,)), ("update", "teams", (3,))]


def test_write_only_one_to_many_statements(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, events: dbevents.Events
) -> None:
    calls = calls_of(events, Note, "after_insert", "after_update", "after_delete")
    with CSession() as session:
        owner = Owner(id=1)
        session.add(owner)
        owner.notes.add(Note(id=1, text="a"))
        checked.commit(session)
        session.execute(owner.notes.insert(), [{"id": 2, "text": "b"}, {"id": 3, "text": "c"}])
        assert checked.commit(session) == [("insert", "notes", (2,)), ("insert", "notes", (3,))]
        session.execute(owner.notes.update().values(text="x"))
        assert [op for op, _, _ in checked.commit(session)] == ["update"] * 3
        session.execute(owner.notes.delete().where(Note.id == 3))
        assert checked.commit(session) == [("delete", "notes", (3,))]
        note = session.get(Note, 2)
        assert note is not None
        owner.notes.remove(note)  # delete-orphan
        assert checked.commit(session) == [("delete", "notes", (2,))]
    assert calls == [
        ("after_insert", 1),
        ("after_insert", 2),
        ("after_insert", 3),
        ("after_update", (1,), (2,), (3,)),
        ("after_delete", (3,)),
        ("after_delete", (2,)),
    ]


def test_deleting_the_owner_of_write_only_collections_is_reported(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with CSession() as session:
        owner = Owner(id=1)
        owner.notes.add(Note(id=1))
        owner.teams.add(Team(id=1))
        session.add(owner)
        checked.commit(session)
        session.delete(owner)
        # write-only collections need passive_deletes: their rows are left to ON DELETE
        with pytest.warns(dbevents.DbEventsWarning) as warned:
            session.flush()
    assert sorted(str(w.message).split(" rows of ")[1][:11] for w in warned) == [
        "Owner.notes",
        "Owner.teams",
    ]


def test_dynamic_collections(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        person, club = Person(id=1), Club(id=1)
        session.add_all([person, club])
        checked.commit(session)
        person.clubs.append(club)
        assert checked.commit(session) == [("link", "club_members", (1, 1))]
        club.members.remove(person)
        assert checked.commit(session) == [("unlink", "club_members", (1, 1))]
        person.clubs.append(club)
        person.clubs.append(Club(id=2))
        checked.commit(session)
        session.delete(person)  # SQLAlchemy reads the dynamic collection to unlink it
        assert checked.commit(session) == [
            ("delete", "people", (1,)),
            ("unlink", "club_members", (1, 1)),
            ("unlink", "club_members", (1, 2)),
        ]
        root = Node(id=1)
        root.children.append(Node(id=2))
        root.children.append(Node(id=3))
        session.add(root)
        checked.commit(session)
        child = session.get(Node, 2)
        assert child is not None
        root.children.remove(child)  # delete-orphan
        assert checked.commit(session) == [("delete", "nodes", (2,))]


# -- association objects ------------------------------------------------------------------------


def test_an_ordering_list_of_association_objects(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, events: dbevents.Events
) -> None:
    calls = calls_of(events, Entry, "after_insert", "after_update", "after_delete")
    with CSession() as session:
        songs = [Song(id=i, title=f"s{i}") for i in (1, 2, 3)]
        playlist = Playlist(id=1)
        playlist.songs.extend(songs[:2])  # through the association proxy
        session.add_all([playlist, songs[2]])
        checked.commit(session)
        assert sorted(
            (c.pk, dict(c.new or {})["position"]) for c in checked.last.for_model(Entry)
        ) == [
            ((1, 1), 0),
            ((1, 2), 1),
        ]
        playlist.entries.insert(0, Entry(song=songs[2]))  # moves the others down
        assert checked.commit(session) == [
            ("insert", "entries", (1, 3)),
            ("update", "entries", (1, 1)),
            ("update", "entries", (1, 2)),
        ]
        playlist.songs.remove(songs[0])  # delete-orphan, and the last one moves up
        assert checked.commit(session) == [
            ("delete", "entries", (1, 1)),
            ("update", "entries", (1, 2)),
        ]
        playlist.entries[0].song = songs[0]  # a new key: delete of the old, insert of the new
        assert checked.commit(session) == [
            ("delete", "entries", (1, 3)),
            ("insert", "entries", (1, 1)),
        ]
        session.delete(playlist)  # its entries go with it, through the cascade
        assert checked.commit(session) == [
            ("delete", "entries", (1, 1)),
            ("delete", "entries", (1, 2)),
            ("delete", "playlists", (1,)),
        ]
    assert calls == [
        ("after_insert", (1, 1)),
        ("after_insert", (1, 2)),
        ("after_insert", (1, 3)),
        ("after_update", (1, 1)),
        ("after_update", (1, 2)),
        ("after_update", (1, 2)),
        ("after_delete", (1, 1)),
        # a new key is an UPDATE to SQLAlchemy, and to the callbacks: only the change set
        # tells it as a delete and an insert
        ("after_update", (1, 1)),
        ("after_delete", (1, 1)),
        ("after_delete", (1, 2)),
    ]


def test_a_keyed_dict_of_association_objects_through_a_proxy(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        student = Student(id=1)
        student.pref_values["a"] = "x"
        student.pref_values["b"] = "x"
        session.add(student)
        checked.commit(session)
        student.pref_values["a"] = "y"  # sets the value of the object already there
        assert checked.commit(session) == [("update", "prefs", (1, "a"))]
        student.prefs["a"] = Pref(key="a", value="z")  # a new object for the same key
        assert checked.commit(session) == [("update", "prefs", (1, "a"))]
        assert checked.last.changes[0].new == {"value": "z"}
        del student.pref_values["b"]
        assert checked.commit(session) == [("delete", "prefs", (1, "b"))]


def test_a_many_to_many_over_the_table_of_a_mapped_class(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        mix = Mix(id=1)
        first, second = Song(id=1, title="a"), Song(id=2, title="b")
        mix.songs.append(first)  # a row no Track object holds, as the class's own
        session.add_all([mix, second])
        assert ("insert", "tracks", (1, 1)) in checked.commit(session)
        (track,) = checked.last.for_model(Track)
        assert track.new == {"mix_id": 1, "song_id": 1, "plays": 0}
        mix.songs.append(second)
        assert checked.commit(session) == [("insert", "tracks", (1, 2))]
        mix.songs.remove(first)
        assert checked.commit(session) == [("delete", "tracks", (1, 1))]
        loaded = session.get(Track, (1, 2))
        assert loaded is not None
        loaded.plays = 3  # and an object's own row, as always
        assert checked.commit(session) == [("update", "tracks", (1, 2))]
        session.delete(mix)
        assert checked.commit(session) == [("delete", "mixes", (1,)), ("delete", "tracks", (1, 2))]


# -- one-to-many and many-to-one cascades -------------------------------------------------------


def test_single_parent_delete_orphan_of_a_many_to_one(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, events: dbevents.Events
) -> None:
    calls = calls_of(events, Profile, "before_delete", "after_delete")
    with CSession() as session:
        account = Account(id=1, profile=Profile(id=1, bio="a"))
        session.add(account)
        checked.commit(session)
        account.profile = Profile(id=2, bio="b")
        assert checked.commit(session) == [
            ("delete", "profiles", (1,)),
            ("insert", "profiles", (2,)),
            ("update", "accounts", (1,)),
        ]
        account.profile = None
        assert checked.commit(session) == [
            ("delete", "profiles", (2,)),
            ("update", "accounts", (1,)),
        ]
    assert calls == [
        ("before_delete", (1,)),
        ("after_delete", (1,)),
        ("before_delete", (2,)),
        ("after_delete", (2,)),
    ]


def test_moving_a_child_to_another_parent(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        session.add_all([Shelf(id=1, books=[Book(id=1, title="a")]), Shelf(id=2)])
        checked.commit(session)
        book = session.get(Book, 1)
        assert book is not None
        book.shelf = session.get(Shelf, 2)  # lazy="raise" on both sides: never loaded
        assert checked.commit(session) == [("update", "books", (1,))]
        assert checked.last.changes[0].old == {"shelf_id": 1}
        one, two = session.scalars(
            sa.select(Shelf).options(sa_orm.selectinload(Shelf.books)).order_by(Shelf.id)
        )
        two.books.remove(book)  # both sides of the move in one flush
        one.books.append(book)
        assert checked.commit(session) == [("update", "books", (1,))]
        assert (checked.last.changes[0].old, checked.last.changes[0].new) == (
            {"shelf_id": 2},
            {"shelf_id": 1},
        )


def test_deleting_through_lazy_raise_relationships(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, events: dbevents.Events
) -> None:
    calls = calls_of(events, Book, "after_delete")
    with CSession() as session:
        shelf = Shelf(id=1, books=[Book(id=1), Book(id=2)], tags=[Tag(id=1, code="x")])
        session.add(shelf)
        checked.commit(session)
        session.delete(session.get(Shelf, 1))  # the flush loads what it must, lazy="raise" or not
        assert checked.commit(session) == [
            ("delete", "books", (1,)),
            ("delete", "books", (2,)),
            ("delete", "shelves", (1,)),
            ("unlink", "shelf_tags", (1, 1)),
        ]
    assert calls == [("after_delete", (1,)), ("after_delete", (2,))]


def test_rows_that_point_at_each_other(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        a, b = Node(id=1), Node(id=2)
        a.peer, b.peer = b, a  # written by a second UPDATE of each, after both INSERTs
        session.add_all([a, b])
        checked.commit(session)
        assert {c.pk: dict(c.new or {})["peer_id"] for c in checked.last.changes} == {
            (1,): 2,
            (2,): 1,
        }
        a.peer = None
        session.delete(b)  # b's key is cleared before it is deleted
        assert checked.commit(session) == [("delete", "nodes", (2,)), ("update", "nodes", (1,))]


# -- keys that change -------------------------------------------------------------------------


def test_a_changed_key_moves_its_association_rows(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        code = Code(code="a", tags=[Tag(id=1, code="x"), Tag(id=2, code="y")])
        session.add(code)
        checked.commit(session)
        code.code = "b"  # one UPDATE of the rows of labels, a parameter set for each
        assert checked.commit(session) == [
            ("delete", "codes", ("a",)),
            ("insert", "codes", ("b",)),
            ("link", "labels", ("b", 1)),
            ("link", "labels", ("b", 2)),
            ("unlink", "labels", ("a", 1)),
            ("unlink", "labels", ("a", 2)),
        ]
        code.tags.append(Tag(id=3, code="z"))
        session.flush()
        code.code = "c"  # moves a row linked in this transaction: one link, under "c"
        assert checked.commit(session) == [
            ("delete", "codes", ("b",)),
            ("insert", "codes", ("c",)),
            ("insert", "tags", (3,)),
            ("link", "labels", ("c", 1)),
            ("link", "labels", ("c", 2)),
            ("link", "labels", ("c", 3)),
            ("unlink", "labels", ("b", 1)),
            ("unlink", "labels", ("b", 2)),
        ]


def test_an_update_of_several_parameter_sets_that_moves_rows(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    old: sa.BindParameter[str] = sa.bindparam("old_code")
    move = labels.update().where(labels.c.code == old, labels.c.tag_id == sa.bindparam("old"))
    with CSession() as session:
        session.add_all([Code(code="a", tags=[Tag(id=1, code="x"), Tag(id=2, code="y")])])
        session.add(Code(code="b"))
        checked.commit(session)
        session.execute(
            move,
            [{"code": "b", "old_code": "a", "old": 1}, {"code": "b", "old_code": "a", "old": 2}],
        )
        assert checked.commit(session) == [
            ("link", "labels", ("b", 1)),
            ("link", "labels", ("b", 2)),
            ("unlink", "labels", ("a", 1)),
            ("unlink", "labels", ("a", 2)),
        ]
        session.execute(labels.update().where(labels.c.code == "b").values(code="a"))
        assert len(checked.commit(session)) == 4  # (one parameter set: it returns its rows)
        songs: sa.Table = Song.__table__  # type: ignore[assignment]
        session.add_all([Song(id=1, title="a"), Song(id=2, title="b")])
        checked.commit(session)
        session.execute(  # a mapped table's rows: a new key is a delete and an insert
            songs.update().where(songs.c.id == sa.bindparam("old")),
            [{"id": 11, "old": 1}, {"id": 12, "old": 2}],
        )
        assert checked.commit(session) == [
            ("delete", "songs", (1,)),
            ("delete", "songs", (2,)),
            ("insert", "songs", (11,)),
            ("insert", "songs", (12,)),
        ]
        # where each row went, parameter sets naming rows by a range can't tell
        ranged = labels.update().where(labels.c.tag_id >= sa.bindparam("lowest"))
        with pytest.warns(dbevents.DbEventsWarning, match="moves to new keys in 'labels'"):
            session.execute(ranged, [{"code": "b", "lowest": 2}, {"code": "b", "lowest": 9}])
        session.rollback()


# -- deleting parents of many-to-many rows --------------------------------------------------------


def enforce_foreign_keys(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite":  # (SQLite acts on foreign keys only when asked)
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys=ON"))
        engine.dispose()


def test_passive_deletes_on_a_many_to_many(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with CSession() as session:
        session.add_all([Club(id=i, members=[Person(id=i), Person(id=i + 10)]) for i in (1, 2)])
        checked.commit(session)
        loaded = session.get(Club, 1)
        assert loaded is not None and len(loaded.members) == 2
        session.delete(loaded)  # loaded: unlinked by the flush
        assert checked.commit(session) == [
            ("delete", "clubs", (1,)),
            ("unlink", "club_members", (1, 1)),
            ("unlink", "club_members", (11, 1)),
        ]
        session.delete(session.get(Club, 2))  # not loaded: left to the ON DELETE CASCADE
        with pytest.warns(dbevents.DbEventsWarning, match="club_members rows of Club.members"):
            session.flush()
        session.rollback()


def test_a_delete_statement_leaves_many_to_many_rows_to_the_database(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, engine: sa.Engine
) -> None:
    enforce_foreign_keys(engine)
    with CSession() as session:
        session.add(Club(id=1, members=[Person(id=1), Person(id=2)]))
        checked.commit(session)
        # SQLAlchemy unlinks nothing for a statement: the foreign key's ON DELETE does
        with pytest.warns(dbevents.DbEventsWarning, match="club_members rows that refer"):
            session.execute(sa.delete(Club).where(Club.id == 1))
        session.commit()
    assert [c.table for c in checked.last.changes] == ["clubs"]
    with CSession() as session:
        assert session.execute(sa.select(club_members)).all() == []


def test_a_passive_delete_on_sqlite_without_foreign_keys_is_not_reported(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's: the other databases always act on their foreign keys")
    with CSession() as session:
        session.add(Club(id=1, members=[Person(id=1), Person(id=2)]))
        checked.commit(session)
        session.delete(session.get_one(Club, 1))  # not loaded, and left to an ON DELETE...
        # ...that SQLite ignores: the links stay, as the change set says (warnings are errors)
        assert checked.commit(session) == [("delete", "clubs", (1,))]
    with CSession() as session:
        assert len(session.execute(sa.select(club_members)).all()) == 2


def test_a_delete_statement_on_sqlite_without_foreign_keys_is_not_reported(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's: the other databases always act on their foreign keys")
    with CSession() as session:
        session.add(Club(id=1, members=[Person(id=1), Person(id=2)]))
        checked.commit(session)
        session.execute(sa.delete(Club).where(Club.id == 1))  # (warnings are errors here)
        # nothing cascades: the change set holds what changed, and nobody is told otherwise
        assert checked.commit(session) == [("delete", "clubs", (1,))]
    with CSession() as session:
        assert len(session.execute(sa.select(club_members)).all()) == 2


def test_a_delete_statement_without_on_delete_unlinks_nothing(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, backend: str
) -> None:
    with CSession() as session:
        a, b = Person(id=1), Person(id=2)
        a.following.append(b)
        session.add(a)
        checked.commit(session)
        delete = sa.delete(Person).where(Person.id == 2)
        if backend == "postgresql":  # the foreign key of follows refuses
            # (told of the club_members rows, which say ON DELETE CASCADE)
            with (
                pytest.warns(dbevents.DbEventsWarning, match="club_members rows that refer"),
                pytest.raises(sa.exc.IntegrityError),
            ):
                session.execute(delete)
            return
        # SQLite, its foreign keys not enforced: the row stays, pointing nowhere
        session.execute(delete)
        assert checked.commit(session) == [("delete", "people", (2,))]


# -- vetoes and savepoints ---------------------------------------------------------------------


def test_a_vetoed_delete_keeps_its_links(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked, events: dbevents.Events
) -> None:
    @events.listens_for(Person, "before_delete")
    def keep(cls: type[Person], rows: RowSet[Person]) -> bool:
        return True

    with CSession() as session:
        a, b = Person(id=1), Person(id=2)
        a.following.append(b)
        a.tags.add(Tag(id=1, code="x"))
        session.add(a)
        checked.commit(session)
        session.delete(a)  # collections not loaded
        assert checked.commit(session) == []
        assert len(a.following) == 1
        session.delete(a)  # and loaded
        assert checked.commit(session) == []


def test_links_in_a_rolled_back_savepoint_are_dropped(
    CSession: sa_orm.sessionmaker[sa_orm.Session], checked: Checked
) -> None:
    with CSession() as session:
        a, b, c = Person(id=1), Person(id=2), Person(id=3)
        a.following.append(b)
        session.add_all([a, c])
        checked.commit(session)
        with session.begin_nested() as savepoint:
            a.following.remove(b)
            a.following.append(c)
            session.flush()
            savepoint.rollback()
        a.following.append(c)
        assert checked.commit(session) == [("link", "follows", (1, 3))]
