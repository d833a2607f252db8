"""A tour of dbevents on embedded SQLite: callbacks, vetoes, statements and change sets,
then a JSON mirror of the database kept in a data directory, reloaded into a fresh
database with events off, and verified.

Run it with ``./dev demo`` (or ``python examples/demo.py`` where dbevents is installed).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet, RowSet, after_commit, after_insert, before_insert, before_update


class Base(sa_orm.DeclarativeBase):
    pass


contact_groups = sa.Table(
    "contact_groups",
    Base.metadata,
    sa.Column("contact_id", sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("group_id", sa.ForeignKey("groups.id"), primary_key=True),
)

#: how many times each callback of Contact ran
calls: Counter[str] = Counter()


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40))


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(80), unique=True)
    score: Mapped[int] = mapped_column(default=0)
    groups: Mapped[list[Group]] = sa_orm.relationship(secondary=contact_groups)

    @before_insert
    def normalize(cls, fields: dict[str, Any]) -> bool:
        calls["before_insert"] += 1
        email = fields["email"] = str(fields["email"]).strip().lower()
        say(f"  before_insert  {fields}")
        vetoed = email.endswith("@spam.example")
        if vetoed:  # say it: a vetoed row leaves no other trace to see
            say(f"  vetoed         {email}: not inserted, no after_insert, not in the change set")
        return vetoed  # True vetoes the row

    @after_insert
    def created(cls, fields: dict[str, Any], pk: int) -> None:
        calls["after_insert"] += 1
        say(f"  after_insert   pk={pk} email={fields['email']}")

    @before_update
    def guard(cls, rows: RowSet[Contact], fields: dict[str, Any]) -> None:
        calls["before_update"] += 1
        say(f"  before_update  {counted(rows.count(), 'row')} <- {fields}")

    @after_commit
    def publish(cls, op: dbevents.Op, change: dbevents.Change) -> None:
        calls["after_commit"] += 1
        say(f"  after_commit   {op.value} contact {change.pk}")


def say(text: str) -> None:
    print(text, flush=True)


def counted(number: int, noun: str) -> str:
    """``1 change``, ``3 changes``: the noun in the number it counts."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def show(changeset: ChangeSet) -> None:
    """Print a change set as a reader wants to see it."""
    say(f"  change set {changeset.id} ({counted(len(changeset.changes), 'change')})")
    for change in changeset.changes:
        if change.op.value in ("link", "unlink"):
            detail = ""
        elif change.op.value == "update":
            detail = ", ".join(
                f"{key}: {change.old.get(key)!r} -> {value!r}"  # type: ignore[union-attr]
                for key, value in (change.new or {}).items()
            )
        else:
            detail = ", ".join(f"{k}={v!r}" for k, v in (change.values or {}).items())
        say(f"    {change.op.value:<7} {change.table}{list(change.pk)}  {detail}")


def list_files(directory: Path) -> None:
    """Print the files of a data directory with their sizes and what they hold."""
    roles = {
        "manifest.json": "the tables: file, key and columns, row counts",
        ".journal.jsonl": "one change set per committed transaction, fsynced",
        ".lock": "locked while a process appends or compacts",
    }
    for path in sorted(directory.iterdir()):
        role = roles.get(path.name, "one JSON object per row")
        say(f"  {path.name:<20} {path.stat().st_size:>5} bytes   {role}")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dbevents-demo-"))
    try:
        tour(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def tour(workdir: Path) -> None:
    data_dir = workdir / "data"
    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{workdir / 'crm.db'}"))
    Base.metadata.create_all(engine)
    memory = dbevents.MemorySink()
    mirror = dbevents.MirrorSink(data_dir, metadata=Base)
    events = dbevents.Events(sinks=[memory, mirror])
    events.on_commit(show)
    Session = events.install(sa_orm.sessionmaker(engine))  # noqa: N806

    say(f"working in {workdir} (removed at the end)")
    say("  database: crm.db")
    say("  DATA_DIR: data/, kept by a MirrorSink\n")
    say("1. The unit of work: callbacks fire, the spam address is vetoed")
    with Session() as session, dbevents.acting_as("demo"):
        sales = Group(name="sales")
        session.add_all([Contact(email=" Ada@Example.com ", groups=[sales]), sales])
        session.add(Contact(email="bot@spam.example"))
        session.commit()

    say("\n2. A savepoint rolled back leaves no trace in the change set")
    with Session() as session:
        session.add(Contact(email="grace@example.com"))
        with session.begin_nested() as savepoint:
            session.add(Contact(email="temp@example.com"))
            session.flush()
            savepoint.rollback()
        session.commit()

    say("\n3. Bulk statements run the same callbacks and are captured with old values")
    with Session() as session:
        session.execute(
            sa.insert(Contact), [{"email": "LIN@example.com"}, {"email": "x@spam.example"}]
        )
        session.execute(sa.update(Contact).where(Contact.score == 0).values(score=5))
        session.commit()

    say("\n4. Many-to-many edits and deletes")
    with Session() as session:
        ada = session.scalars(sa.select(Contact).where(Contact.email == "ada@example.com")).one()
        ada.groups.clear()
        session.delete(session.scalars(sa.select(Contact).filter_by(email="lin@example.com")).one())
        session.commit()

    say("\n5. Muted: no callbacks, nothing captured (what loads use)")
    with events.muted(), Session() as session:
        session.add(Contact(email="quiet@example.com"))
        session.commit()
    say("  (nothing printed above: muted)")

    say(f"\nMemorySink holds {len(memory.rows('contacts'))} contacts:")
    for pk, row in sorted(memory.rows("contacts").items()):
        say(f"  {pk}: {row['email']} score={row['score']}")

    say("\n6. The mirror: each change set above was appended to DATA_DIR's journal")
    list_files(data_dir)
    mirror.compact()  # also runs by itself once the journal is large or old enough
    say("  compacted: the journal is folded into one file per table")
    list_files(data_dir)
    first = (data_dir / "contacts.jsonl").read_text(encoding="utf-8").splitlines()[0]
    say(f"  contacts.jsonl, line 1: {first}")

    say("\n7. Reload the mirror into a fresh database with dbevents.load, events muted")
    fresh = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{workdir / 'fresh.db'}"))
    Base.metadata.create_all(fresh)
    FreshSession = events.install(sa_orm.sessionmaker(fresh))  # noqa: N806
    callbacks, delivered = sum(calls.values()), len(memory.changesets)
    with events.muted(), FreshSession() as session:  # even through an installed session
        counts = dbevents.load(session.connection(), Base, data_dir)
        session.commit()
    loaded = ", ".join(f"{table} {rows}" for table, rows in counts.items())
    say(f"  loaded {sum(counts.values())} rows ({loaded})")
    say(f"  callbacks run: {sum(calls.values()) - callbacks}")
    say(f"  change sets delivered: {len(memory.changesets) - delivered}")
    with FreshSession() as session:
        emails = session.scalars(sa.select(Contact.email).order_by(Contact.id))
        say(f"  the fresh database holds: {', '.join(emails)}")

    say("\n8. dbevents.verify compares the mirror with each database")
    differences = dbevents.verify(fresh, Base, data_dir)
    clean = "" if differences else ", clean"
    say(f"  fresh database: {counted(len(differences), 'difference')}{clean}")
    for difference in differences:
        say(f"    {difference}")
    differences = dbevents.verify(engine, Base, data_dir)
    say(f"  first database: {counted(len(differences), 'difference')}; step 5 wrote while muted:")
    for difference in differences:
        say(f"    {difference}")
    engine.dispose()
    fresh.dispose()
    say("\ndone.")


if __name__ == "__main__":
    main()
