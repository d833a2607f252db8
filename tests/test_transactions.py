"""Property: every commit delivers exactly the net difference it made to the database.

A hypothesis state machine drives one session through random sequences of
unit-of-work writes (values, SQL expressions), statements, many-to-many links, flushes, savepoints
(released, rolled back, or broken by a flush error), commits, rollbacks and
closes.  After each commit the delivered change set must equal the difference
between the tables before and after that transaction, read with plain SQL; a
rollback or a close without commit must deliver nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet, Op
from tests.fixtures import table_rows


class PBase(sa_orm.DeclarativeBase):
    pass


node_tags = sa.Table(
    "node_tags",
    PBase.metadata,
    sa.Column("node_id", sa.ForeignKey("nodes.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id"), primary_key=True),
)


class Tag(PBase):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)


class Node(PBase):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    n: Mapped[int] = mapped_column(server_default=sa.text("0"))
    tags: Mapped[list[Tag]] = sa_orm.relationship(secondary=node_tags)
    #: a many-to-one SQLAlchemy writes with a second UPDATE (post_update), so that any
    #: node may point at any other, itself included
    buddy_id: Mapped[int | None] = mapped_column(sa.ForeignKey("nodes.id"))
    buddy: Mapped[Node | None] = sa_orm.relationship(
        remote_side=[id], foreign_keys=[buddy_id], post_update=True
    )


TABLES = ("nodes", "node_tags")
names = st.sampled_from(["a", "b", "c", "d"])
numbers = st.integers(min_value=0, max_value=3)
#: ids upserts use: far from those the sequence hands out, so that inserts never collide
UPSERT_IDS = [100_001, 100_002, 100_003]


def snapshot(engine: sa.Engine) -> dict[str, dict[Any, dict[str, Any]]]:
    return {table: table_rows(engine, table) for table in TABLES}


def expected(before: dict[str, Any], after: dict[str, Any]) -> set[Any]:
    """The net changes between two snapshots, in the shape of :func:`delivered`."""
    out: set[Any] = set()
    for table in TABLES:
        old_rows, new_rows = before[table], after[table]
        link = table == "node_tags"
        for pk in old_rows.keys() | new_rows.keys():
            old, new = old_rows.get(pk), new_rows.get(pk)
            if old is None:
                out.add((table, "link" if link else "insert", pk, None, _items(new)))
            elif new is None:
                out.add((table, "unlink" if link else "delete", pk, _items(old), None))
            elif old != new:
                keys = [k for k in new if old[k] != new[k]]
                out.add((table, "update", pk, _items(old, keys), _items(new, keys)))
    return out


def delivered(changeset: ChangeSet) -> set[Any]:
    out: set[Any] = set()
    for c in changeset.changes:
        old = None if c.op in (Op.INSERT, Op.LINK) else _items(c.old)
        new = None if c.op in (Op.DELETE, Op.UNLINK) else _items(c.new)
        if c.op in (Op.LINK, Op.UNLINK):  # association rows: the key is the whole row
            old = _items(dict(zip(("node_id", "tag_id"), c.pk, strict=True))) if old else None
            new = _items(dict(zip(("node_id", "tag_id"), c.pk, strict=True))) if new else None
        out.add((c.table, c.op.value, c.pk, old, new))
    return out


def pick(data: Any, options: list[Any]) -> Any:
    """One of ``options``, drawn the same way whatever their number (replays stay stable)."""
    return options[data.draw(st.integers(0, 7)) % len(options)]


def _items(row: Any, keys: list[str] | None = None) -> tuple[tuple[str, Any], ...]:
    row = dict(row or {})
    return tuple(sorted((k, v) for k, v in row.items() if keys is None or k in keys))


@pytest.mark.parametrize("examples", [200, pytest.param(3000, marks=pytest.mark.soak)])
def test_every_commit_delivers_the_net_difference(engine: sa.Engine, examples: int) -> None:
    PBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Tag), [{"id": i} for i in (1, 2, 3)])
    events = dbevents.Events()
    received: list[ChangeSet] = []
    events.on_commit(received.append)
    maker = events.install(sa_orm.sessionmaker(engine))

    class Transactions(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            with engine.begin() as conn:
                conn.execute(node_tags.delete())
                conn.execute(sa.update(Node).values(buddy_id=None))
                conn.execute(sa.delete(Node))
            self.session = maker()
            self.savepoints: list[sa_orm.SessionTransaction] = []
            self.before = snapshot(engine)
            received.clear()

        def teardown(self) -> None:
            self.session.close()

        # -- picking rows the session can see ----------------------------------------------
        def nodes(self) -> list[Node]:
            """The nodes in the database, less those the session will delete."""
            with self.session.no_autoflush:
                nodes = self.session.scalars(sa.select(Node).order_by(Node.id))
                return [n for n in nodes if n not in self.session.deleted]

        @rule(data=st.data(), name=names, n=numbers)
        def add(self, data: Any, name: str, n: int) -> None:
            self.session.add(Node(name=name, n=n))

        @rule(data=st.data(), n=numbers)
        def modify(self, data: Any, n: int) -> None:
            nodes = self.nodes()
            if nodes:
                pick(data, nodes).n = n

        @rule(data=st.data())
        def increment_in_sql(self, data: Any) -> None:
            nodes = self.nodes()
            if nodes:  # the flush writes n = n + 1: the change has the value read back
                pick(data, nodes).n = Node.n + 1

        def deletable(self) -> list[Node]:
            """The nodes that may be deleted: persistent, and nobody's buddy."""
            nodes = [n for n in self.nodes() if n in self.session and n not in self.session.new]
            with self.session.no_autoflush:  # buddy has no backref: a buddy can't be deleted
                buddies = {id(n.buddy) for n in [*nodes, *self.session.new] if n.buddy}
            return [n for n in nodes if id(n) not in buddies]

        @rule(data=st.data())
        def delete(self, data: Any) -> None:
            nodes = self.deletable()
            if nodes:
                self.session.delete(pick(data, nodes))

        @rule(data=st.data(), name=names, n=st.none() | numbers)
        def replace(self, data: Any, name: str, n: int | None) -> None:
            """Delete a node and add a new one under its key: the flush UPDATEs the row."""
            victims = self.deletable()
            if victims:
                victim = pick(data, victims)
                self.session.delete(victim)
                node = Node(id=victim.id, name=name)
                if n is not None:  # else the row keeps its n: a row switch writes what is set
                    node.n = n
                self.session.add(node)

        @rule(data=st.data(), tag=st.integers(1, 3))
        def link(self, data: Any, tag: int) -> None:
            nodes = self.nodes()
            if nodes:
                node = pick(data, nodes)
                target = self.session.get(Tag, tag)
                if target not in node.tags:
                    node.tags.append(target)

        @rule(data=st.data())
        def unlink(self, data: Any) -> None:
            linked = [n for n in self.nodes() if n.tags]
            if linked:
                node = pick(data, linked)
                node.tags.remove(pick(data, node.tags))

        @rule(data=st.data())
        def befriend(self, data: Any) -> None:
            nodes = self.nodes()
            if nodes:
                pick(data, nodes).buddy = pick(data, [None, *nodes, Node(name="b")])

        @rule(data=st.data())
        def expire(self, data: Any) -> None:
            nodes = [n for n in self.nodes() if n not in self.session.dirty]
            if nodes:  # its old value is not known any more when it is changed next
                self.session.expire(pick(data, nodes), ["n"])

        @rule(n=numbers, name=names)
        def statement_update(self, n: int, name: str) -> None:
            self.session.execute(sa.update(Node).where(Node.name == name).values(n=n))

        @rule(name=names)
        def statement_delete(self, name: str) -> None:
            linked = sa.select(node_tags.c.node_id)
            other = sa_orm.aliased(Node)
            buddies = sa.select(other.buddy_id).where(other.buddy_id.is_not(None))
            self.session.execute(
                sa.delete(Node).where(
                    Node.name == name, Node.id.not_in(linked), Node.id.not_in(buddies)
                ),
                execution_options={"synchronize_session": "fetch"},
            )

        @rule(rows=st.lists(st.tuples(names, numbers), min_size=1, max_size=3))
        def bulk_insert(self, rows: list[tuple[str, int]]) -> None:
            self.session.execute(sa.insert(Node), [{"name": a, "n": n} for a, n in rows])

        @rule(
            rows=st.lists(
                st.tuples(st.sampled_from(UPSERT_IDS), names, numbers),
                min_size=1,
                max_size=3,
                unique_by=lambda row: row[0],
            )
        )
        def upsert(self, rows: list[tuple[int, str, int]]) -> None:
            dialect = self.session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = insert(Node).values([{"id": i, "name": a, "n": n} for i, a, n in rows])
            excluded = statement.excluded
            self.session.execute(
                statement.on_conflict_do_update(
                    index_elements=[Node.id], set_={"name": excluded.name, "n": excluded.n}
                )
            )
            self.session.expire_all()  # an upsert leaves loaded objects as they were

        @rule()
        def flush(self) -> None:
            self.session.flush()

        @rule()
        def begin_nested(self) -> None:
            self.savepoints.append(self.session.begin_nested())

        @precondition(lambda self: self.savepoints)
        @rule()
        def release(self) -> None:
            self.savepoints.pop().commit()

        @precondition(lambda self: self.savepoints)
        @rule()
        def rollback_savepoint(self) -> None:
            self.savepoints.pop().rollback()

        @rule(name=names, n=numbers, keep=st.booleans())
        def connection_savepoint(self, name: str, n: int, keep: bool) -> None:
            # one the application begins on the session's connection, not session.begin_nested()
            self.session.flush()  # what is pending is not the savepoint's
            savepoint = self.session.connection().begin_nested()
            self.session.execute(sa.update(Node).where(Node.name == name).values(n=n))
            self.session.execute(sa.insert(Node), [{"name": name, "n": n}])
            if keep:
                savepoint.commit()
            else:
                savepoint.rollback()
                self.session.expire_all()  # the session does not know what it undid

        @rule()
        def flush_error_in_savepoint(self) -> None:
            savepoint = self.session.begin_nested()
            self.session.add(Node(name=None))  # NOT NULL violated
            with pytest.raises(sa.exc.IntegrityError):
                self.session.flush()
            savepoint.rollback()

        @rule()
        def commit(self) -> None:
            count = len(received)
            self.session.commit()
            self.savepoints.clear()
            after = snapshot(engine)
            want = expected(self.before, after)
            if want:
                assert len(received) == count + 1
                assert delivered(received[-1]) == want
            else:
                assert len(received) == count  # nothing changed: nothing delivered
            self.before = after

        @rule()
        def rollback(self) -> None:
            count = len(received)
            self.session.rollback()
            self.savepoints.clear()
            assert len(received) == count

        @rule()
        def close(self) -> None:
            count = len(received)
            self.session.close()
            self.savepoints.clear()
            assert len(received) == count
            assert snapshot(engine) == self.before

        @invariant()
        def nothing_delivered_before_commit(self) -> None:
            assert all(cs.changes for cs in received)

    run_state_machine_as_test(
        Transactions,
        settings=settings(
            max_examples=examples,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    events.uninstall(maker)
