"""Every write path: callbacks, vetoes, skip, mute and the delivered changes.

Each path runs on SQLite and PostgreSQL; the delivered change set is compared
with the difference between the table before and after, read with plain SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from dbevents import ChangeSet, Op, RowSet
from dbevents.dispatch.record import update_diffs
from dbevents.dispatch.stored import read_tuples
from dbevents.mapping import table_spec
from tests.fixtures import recorded_sql, table_rows


class SBase(sa_orm.DeclarativeBase):
    pass


class Item(SBase):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40))
    qty: Mapped[int] = mapped_column(server_default=sa.text("0"))


items: sa.Table = Item.__table__  # type: ignore[assignment]
Write = Callable[[sa_orm.Session], Any]
Calls = list[tuple[Any, ...]]


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    SBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"name": f"n{i}", "qty": i} for i in (1, 2, 3)])
    return engine


@pytest.fixture
def calls(events: dbevents.Events) -> Calls:
    """Callbacks on Item that record their calls, upper-case names and veto 'veto'."""
    log: Calls = []

    @events.listens_for(Item, "before_insert")
    def before_insert(cls: type[Item], fields: dict[str, Any]) -> bool:
        log.append(("before_insert", fields["name"]))
        fields["name"] = fields["name"].upper()
        return bool(fields["name"] == "VETO")

    @events.listens_for(Item, "after_insert")
    def after_insert(cls: type[Item], fields: dict[str, Any], pk: Any) -> None:
        log.append(("after_insert", fields["name"], fields["qty"], pk))

    @events.listens_for(Item, "before_update")
    def before_update(cls: type[Item], rows: RowSet[Item], fields: dict[str, Any]) -> bool:
        log.append(("before_update", rows.count(), dict(fields)))
        if "qty" in fields:
            fields["qty"] += 100
        return bool(fields.get("name") == "veto")

    @events.listens_for(Item, "after_update")
    def after_update(cls: type[Item], rows: RowSet[Item], fields: dict[str, Any]) -> None:
        log.append(("after_update", sorted(rows.pks or ()), dict(fields)))

    @events.listens_for(Item, "before_delete")
    def before_delete(cls: type[Item], rows: RowSet[Item]) -> bool:
        names = sorted(item.name for item in rows)
        log.append(("before_delete", names))
        return "veto" in names

    @events.listens_for(Item, "after_delete")
    def after_delete(cls: type[Item], rows: RowSet[Item]) -> None:
        log.append(("after_delete", sorted(rows.pks or ())))

    return log


@pytest.fixture
def Session(  # noqa: N802
    events: dbevents.Events, db: sa.Engine
) -> Iterator[sa_orm.sessionmaker[sa_orm.Session]]:
    maker = events.install(sa_orm.sessionmaker(db))
    yield maker
    events.uninstall(maker)


def run(maker: sa_orm.sessionmaker[sa_orm.Session], write: Write) -> Any:
    with maker() as session:
        result = write(session)
        rowcount = getattr(result, "rowcount", None)
        session.commit()
    return rowcount


def diff(before: dict[Any, dict[str, Any]], after: dict[Any, dict[str, Any]]) -> set[Any]:
    """The net difference of two table states, as (op, pk, old, new) tuples."""
    out: set[Any] = set()
    for pk in before.keys() | after.keys():
        old, new = before.get(pk), after.get(pk)
        if old is None and new is not None:
            out.add(("insert", pk, None, tuple(sorted(new.items()))))
        elif new is None and old is not None:
            out.add(("delete", pk, tuple(sorted(old.items())), None))
        elif old != new and old is not None and new is not None:
            changed = [k for k in new if old[k] != new[k]]
            out.add(
                (
                    "update",
                    pk,
                    tuple((k, old[k]) for k in sorted(changed)),
                    tuple((k, new[k]) for k in sorted(changed)),
                )
            )
    return out


def delivered(changesets: list[ChangeSet], *, tables: bool = False) -> set[Any]:
    """The delivered changes as :func:`diff` tells them (prefixed by the table with ``tables``)."""
    out: set[Any] = set()
    for cs in changesets:
        for c in cs.changes:
            old = tuple(sorted((c.old or {}).items())) if c.op is not Op.INSERT else None
            new = tuple(sorted((c.new or {}).items())) if c.op is not Op.DELETE else None
            change = (c.op.value, c.pk, old, new)
            out.add((c.table, *change) if tables else change)
    return out


def check_delivered(db: sa.Engine, maker: Any, changesets: list[ChangeSet], write: Write) -> Any:
    before = table_rows(db, "items")
    rowcount = run(maker, write)
    assert delivered(changesets) == diff(before, table_rows(db, "items"))
    return rowcount


# -- INSERT ------------------------------------------------------------------------------------

ROWS = [{"name": "a", "qty": 1}, {"name": "veto", "qty": 2}, {"name": "b", "qty": 7}]

INSERTS: dict[str, Write] = {
    "orm bulk": lambda s: s.execute(sa.insert(Item), ROWS),
    "multi-row values": lambda s: s.execute(sa.insert(Item).values(ROWS)),
    "core multi-row values": lambda s: s.execute(items.insert().values(ROWS)),
    "orm returning": lambda s: s.scalars(sa.insert(Item).returning(Item.id), ROWS).all(),
    "core table": lambda s: s.execute(items.insert(), ROWS),
}


@pytest.mark.parametrize("path", INSERTS)
def test_bulk_insert_runs_callbacks_per_row_and_vetoes_rows(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    check_delivered(db, Session, changesets, INSERTS[path])
    names = {row["name"]: row for row in table_rows(db, "items").values()}
    assert "A" in names and "B" in names and "VETO" not in names and "veto" not in names
    assert [c for c in calls if c[0] == "before_insert"] == [
        ("before_insert", "a"),
        ("before_insert", "veto"),
        ("before_insert", "b"),
    ]
    after = sorted(c for c in calls if c[0] == "after_insert")
    assert after == [
        ("after_insert", "A", 1, names["A"]["id"]),
        ("after_insert", "B", 7, names["B"]["id"]),
    ]


def test_insert_values_can_be_changed_and_vetoed(
    Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    check_delivered(db, Session, changesets, lambda s: s.execute(sa.insert(Item).values(name="x")))
    assert {r["name"]: r["qty"] for r in table_rows(db, "items").values()}["X"] == 0
    assert ("after_insert", "X", 0, 4) in calls  # the server default, read back
    vetoed = run(Session, lambda s: s.execute(sa.insert(Item).values(name="veto")))
    assert vetoed in (0, -1)  # a real result; PostgreSQL's driver reports no count for INSERT
    assert len(table_rows(db, "items")) == 4
    assert len(changesets) == 1


#: an INSERT of one row, in each form that gives its values
ONE_ROW_INSERTS: dict[str, Callable[[sa_orm.Session, str], Any]] = {
    "values": lambda s, name: s.execute(sa.insert(Item).values(name=name)),
    "parameter set": lambda s, name: s.execute(sa.insert(Item), {"name": name}),
    "core parameter set": lambda s, name: s.execute(items.insert(), {"name": name}),
    "bound value": lambda s, name: s.execute(
        sa.insert(Item).values(name=sa.bindparam("n")), {"n": name}
    ),
    "parameter over values": lambda s, name: s.execute(
        sa.insert(Item).values(name="other"), {"name": name}
    ),
}


@pytest.mark.parametrize("path", ONE_ROW_INSERTS)
def test_a_one_row_insert_runs_callbacks_with_its_values_whatever_its_form(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    insert = ONE_ROW_INSERTS[path]
    check_delivered(db, Session, changesets, lambda s: insert(s, "x"))
    assert {r["name"] for r in table_rows(db, "items").values()} == {"n1", "n2", "n3", "X"}
    assert calls == [("before_insert", "x"), ("after_insert", "X", 0, 4)]
    run(Session, lambda s: insert(s, "veto"))
    assert len(table_rows(db, "items")) == 4 and len(changesets) == 1


def test_a_multi_row_insert_whose_callbacks_add_a_column_to_some_rows_is_refused(
    Session: Any, events: dbevents.Events, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    """SQLAlchemy writes the columns of the first row only: refused, not half written."""

    @events.listens_for(Item, "before_insert")
    def some(cls: type[Item], fields: dict[str, Any]) -> None:
        if fields["name"] == "b":
            fields["qty"] = 9

    with Session() as session:
        with pytest.raises(dbevents.ConfigurationError, match="different columns"):
            session.execute(sa.insert(Item).values([{"name": "a"}, {"name": "b"}]))
        session.execute(sa.insert(Item).values([{"name": "b", "qty": 2}, {"name": "c", "qty": 1}]))
        session.commit()  # a change of a column every row has is fine
    rows = {r["name"]: r["qty"] for r in table_rows(db, "items").values()}
    assert (rows["b"], rows["c"], len(rows)) == (9, 1, 5)


def test_a_bulk_insert_with_every_row_vetoed_returns_a_real_empty_result(
    Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    rowcount = run(Session, lambda s: s.execute(sa.insert(Item), [{"name": "veto"}] * 2))
    assert rowcount in (0, -1)  # PostgreSQL's driver reports no count for INSERT
    assert len(table_rows(db, "items")) == 3 and changesets == []
    assert [c[0] for c in calls] == ["before_insert", "before_insert"]


def test_insert_values_returning_runs_callbacks_and_is_captured(
    Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    # run as the one parameter set it is: the caller gets the rows of its own RETURNING
    got: list[Any] = []
    write = sa.insert(Item).values(name="x").returning(Item.id, Item.name)
    check_delivered(db, Session, changesets, lambda s: got.extend(s.execute(write).all()))
    assert got == [(4, "X")]
    assert ("after_insert", "X", 0, 4) in calls
    vetoed: list[Any] = []
    veto = sa.insert(Item).values(name="veto").returning(Item.id)
    run(Session, lambda s: vetoed.extend(s.execute(veto).all()))
    assert vetoed == [] and len(table_rows(db, "items")) == 4 and len(changesets) == 1


# -- the caller's result -------------------------------------------------------------------------

#: statements whose rows dbevents reads through a RETURNING of its own
OWN_RETURNING: dict[str, Write] = {
    "update": lambda s: s.execute(sa.update(Item).where(Item.id >= 2).values(name="x")),
    "update of an expression": lambda s: s.execute(
        sa.update(Item).where(Item.id >= 2).values(qty=Item.qty + 1)
    ),
    "update, fetch": lambda s: s.execute(
        sa.update(Item).where(Item.id >= 2).values(name="x"),
        execution_options={"synchronize_session": "fetch"},
    ),
    "core update": lambda s: s.execute(items.update().where(items.c.id >= 2).values(name="x")),
    "delete": lambda s: s.execute(sa.delete(Item).where(Item.id >= 3)),
    "core delete": lambda s: s.execute(items.delete().where(items.c.id >= 3)),
    "insert values": lambda s: s.execute(sa.insert(Item).values(name="n")),
    "core insert": lambda s: s.execute(items.insert().values(name="n")),
    "multi-row values": lambda s: s.execute(sa.insert(Item).values([{"name": "n"}, {"name": "m"}])),
}


def _shape(result: Any) -> tuple[Any, ...]:
    """What the caller can tell of a result: its type, whether and what rows it returns."""
    try:
        rows: Any = result.all()
    except sa.exc.ResourceClosedError:
        rows = "closed"
    returns = getattr(result, "returns_rows", None)
    return type(result).__name__, returns, getattr(result, "rowcount", None), rows


@pytest.mark.parametrize("path", OWN_RETURNING)
def test_the_caller_gets_the_result_sqlalchemy_gives(
    path: str, events: dbevents.Events, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    """dbevents' RETURNING is taken out of the result again: no rows of its own show."""
    shapes = []
    for maker in (sa_orm.sessionmaker(db), Session):  # without dbevents, then with
        with maker() as session:
            shapes.append(_shape(OWN_RETURNING[path](session)))
            session.rollback()
    assert shapes[1] == shapes[0]
    with Session() as session:  # and it is captured all the same
        OWN_RETURNING[path](session)
        session.commit()
    assert changesets and changesets[0].changes


# -- UPDATE ------------------------------------------------------------------------------------

UPDATES: dict[str, Write] = {
    "orm where": lambda s: s.execute(sa.update(Item).where(Item.id >= 2).values(qty=5)),
    "orm fetch": lambda s: s.execute(
        sa.update(Item).where(Item.id >= 2).values(qty=5),
        execution_options={"synchronize_session": "fetch"},
    ),
    "query": lambda s: s.query(Item).filter(Item.id >= 2).update({"qty": 5}),
    "core table": lambda s: s.execute(items.update().where(items.c.id >= 2).values(qty=5)),
    # SQLAlchemy SETs what a parameter names, and binds a bindparam() there
    "bound value": lambda s: s.execute(
        sa.update(Item).where(Item.id >= 2).values(qty=sa.bindparam("q")), {"q": 5}
    ),
    "parameter": lambda s: s.execute(items.update().where(items.c.id >= 2), {"qty": 5}),
    "parameter over values": lambda s: s.execute(
        sa.update(Item).where(Item.id >= 2).values(qty=1), {"qty": 5}
    ),
    "bound where": lambda s: s.execute(
        items.update().where(items.c.id >= sa.bindparam("low")).values(qty=5), {"low": 2}
    ),
    "executemany": lambda s: s.execute(
        items.update().where(items.c.id == sa.bindparam("key")).values(qty=5),
        [{"key": 2}, {"key": 3}],
    ),
    "executemany, two criteria": lambda s: s.execute(
        items.update()
        .where(items.c.id == sa.bindparam("key"), items.c.qty > sa.bindparam("least"))
        .values(qty=5),
        [{"key": 1, "least": 1}, {"key": 2, "least": 1}, {"key": 3, "least": 1}],
    ),
}


@pytest.mark.parametrize("path", UPDATES)
def test_update_statement_runs_set_callbacks_and_may_change_values(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    check_delivered(db, Session, changesets, UPDATES[path])
    assert {pk: r["qty"] for pk, r in table_rows(db, "items").items()} == {
        (1,): 1,
        (2,): 105,
        (3,): 105,
    }
    assert calls == [
        ("before_update", 2, {"qty": 5}),
        ("after_update", [(2,), (3,)], {"qty": 105}),
    ]


def test_an_update_of_several_parameter_sets_keeps_them_when_a_callback_changes_values(
    Session: Any, events: dbevents.Events, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    @events.listens_for(Item, "before_update")
    def more(cls: type[Item], rows: RowSet[Item], fields: dict[str, Any]) -> None:
        fields["qty"] = 9

    by_key = items.update().where(items.c.id == sa.bindparam("key")).values(name="x")
    check_delivered(db, Session, changesets, lambda s: s.execute(by_key, [{"key": 2}, {"key": 3}]))
    assert {pk: (r["name"], r["qty"]) for pk, r in table_rows(db, "items").items()} == {
        (1,): ("n1", 1),
        (2,): ("x", 9),
        (3,): ("x", 9),
    }


def test_an_update_whose_values_are_parameters_keeps_them_when_a_callback_changes_values(
    Session: Any, events: dbevents.Events, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    seen: list[Any] = []

    @events.listens_for(Item, "before_update")
    def more(cls: type[Item], rows: RowSet[Item], fields: dict[str, Any]) -> None:
        seen.append(fields["name"])
        fields["qty"] = 9

    by_key = (
        items.update()
        .where(items.c.id == sa.bindparam("key"))
        .values(name=sa.bindparam("new_name"))
    )
    sets = [{"key": 2, "new_name": "two"}, {"key": 3, "new_name": "three"}]
    check_delivered(db, Session, changesets, lambda s: s.execute(by_key, sets))
    assert {pk: (r["name"], r["qty"]) for pk, r in table_rows(db, "items").items()} == {
        (1,): ("n1", 1),
        (2,): ("two", 9),
        (3,): ("three", 9),
    }
    # a value that differs per parameter set is shown as the statement holds it
    assert isinstance(seen[0], sa.BindParameter) and seen[0].key == "new_name"


VETOED_UPDATES: dict[str, Write] = {
    "orm where": lambda s: s.execute(sa.update(Item).where(Item.id >= 2).values(name="veto")),
    "query": lambda s: s.query(Item).filter(Item.id >= 2).update({"name": "veto"}),
    "core table": lambda s: s.execute(items.update().where(items.c.id >= 2).values(name="veto")),
    "parameter": lambda s: s.execute(items.update().where(items.c.id >= 2), {"name": "veto"}),
}


@pytest.mark.parametrize("path", VETOED_UPDATES)
def test_vetoed_update_returns_rowcount_zero_and_leaves_rows(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    before = table_rows(db, "items")
    with Session() as session:
        result = VETOED_UPDATES[path](session)
        assert (result if isinstance(result, int) else result.rowcount) == 0
        session.commit()
    assert table_rows(db, "items") == before
    assert changesets == []
    assert [c[0] for c in calls] == ["before_update"]


ABORTED: dict[str, Write] = {
    "orm bulk insert": INSERTS["orm bulk"],
    "multi-row values": INSERTS["multi-row values"],
    "one row": lambda s: s.execute(sa.insert(Item).values(name="veto", qty=1)),
    "update": lambda s: s.execute(sa.update(Item).where(Item.id == 1).values(name="veto")),
    "update by key": lambda s: s.execute(sa.update(Item), [{"id": 1, "name": "veto"}]),
}


@pytest.mark.parametrize("path", ABORTED)
def test_abort_raise_raises_for_a_vetoed_statement(
    path: str,
    Session: Any,
    calls: Calls,
    events: dbevents.Events,
    changesets: list[ChangeSet],
    db: sa.Engine,
) -> None:
    events.abort = "raise"
    before = table_rows(db, "items")
    with Session() as session:
        with pytest.raises(dbevents.AbortError, match="abort") as info:
            ABORTED[path](session)
        assert info.value.model is Item
        session.commit()  # the transaction is still usable, and nothing was written
    assert table_rows(db, "items") == before
    assert changesets == []


KEY_UPDATES: dict[str, Write] = {
    "one row": lambda s: s.execute(sa.update(Item).where(Item.id == 1).values(id=10, name="x")),
    "shifted": lambda s: s.execute(sa.update(Item).where(Item.id >= 2).values(id=Item.id + 100)),
    "core, key and value": lambda s: s.execute(
        items.update().where(items.c.id == 3).values(id=30, qty=items.c.qty + 1)
    ),
}


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.execute(sa.update(Item).values(name="n2", qty=3)),
        lambda s: s.execute(items.update().values(name="n2", qty=3)),
    ],
    ids=["orm", "core"],
)
def test_an_update_statement_reports_only_what_it_changed(
    write: Write, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    # rows (n1, 1), (n2, 2), (n3, 3): one changes both columns, each other one of them
    check_delivered(db, Session, changesets, write)
    assert sorted((c.pk, dict(c.old or {}), dict(c.new or {})) for c in changesets[0].changes) == [
        ((1,), {"name": "n1", "qty": 1}, {"name": "n2", "qty": 3}),
        ((2,), {"qty": 2}, {"qty": 3}),
        ((3,), {"name": "n3"}, {"name": "n2"}),
    ]
    changesets.clear()
    run(Session, write)  # the same again: every row matches, none changes
    assert changesets == []


def test_an_update_is_paired_with_its_old_rows_by_key_whatever_their_order(
    db: sa.Engine,
) -> None:
    spec = table_spec(items)
    columns = [items.c.id, items.c.name]
    with db.begin() as conn:
        old_rows = read_tuples(conn, columns, items.c.id >= 2, {})
        result = conn.execute(
            items.update()
            .where(items.c.id >= 2)
            .values(name="x")
            .return_defaults(supplemental_cols=columns)
        )
        reversed_order = update_diffs(spec, columns, result, old_rows=old_rows[::-1])
        one_short = update_diffs(spec, columns, result, old_rows=old_rows[1:])
        conn.rollback()
    assert reversed_order is not None and one_short is not None
    diffs, keys = reversed_order
    assert sorted(keys) == [(2,), (3,)]
    assert sorted(zip(diffs[0::3], diffs[1::3], diffs[2::3], strict=True)) == [
        ((2,), {"name": "n2"}, {"name": "x"}),
        ((3,), {"name": "n3"}, {"name": "x"}),
    ]
    assert one_short[0] == [(3,), {"name": "n3"}, {"name": "x"}]


@pytest.mark.parametrize("path", KEY_UPDATES)
def test_update_statement_that_sets_the_key_moves_the_rows(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    # a row under a new key is a different row to every consumer keyed by it: the old
    # key is delivered as deleted and the new one as inserted, as on the unit of work
    check_delivered(db, Session, changesets, KEY_UPDATES[path])
    ops = sorted(change.op.value for cs in changesets for change in cs.changes)
    assert ops and set(ops) == {"delete", "insert"}


def test_bulk_update_by_primary_key_vetoes_and_captures_per_row(
    Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    params: list[dict[str, Any]] = [
        {"id": 1, "qty": 9},
        {"id": 2, "name": "veto"},
        {"id": 3, "name": "z"},
    ]
    check_delivered(db, Session, changesets, lambda s: s.execute(sa.update(Item), params))
    rows = table_rows(db, "items")
    assert rows[(1,)]["qty"] == 109 and rows[(2,)]["name"] == "n2" and rows[(3,)]["name"] == "z"
    assert sorted(c for c in calls if c[0] == "after_update") == [
        ("after_update", [(1,)], {"qty": 109}),
        ("after_update", [(3,)], {"name": "z"}),
    ]


# -- upserts ------------------------------------------------------------------------------------


def dialect_insert(session: sa_orm.Session) -> Any:
    """The INSERT with ON CONFLICT of the session's database."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def upsert(target: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> Write:
    """An upsert of row 1 (there) and row 7 (new), by values or as executemany parameters."""
    sent = [{"id": 1, "name": "one", "qty": 10}, {"id": 7, "name": "seven", "qty": 7}]

    def write(session: sa_orm.Session) -> Any:
        statement = dialect_insert(session)(Item)
        if rows is None:
            statement = statement.values(sent)
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            **target, set_={"name": excluded.name, "qty": excluded.qty}
        )
        return session.execute(statement, rows) if rows else session.execute(statement)

    return write


UPSERTS: dict[str, Write] = {
    "by column": upsert({"index_elements": [Item.id]}),
    "by name": upsert({"index_elements": ["id"]}),
    "executemany": upsert(
        {"index_elements": [Item.id]},
        [{"id": 1, "name": "one", "qty": 10}, {"id": 7, "name": "seven", "qty": 7}],
    ),
    "do nothing": lambda s: s.execute(
        dialect_insert(s)(Item)
        .values([{"id": 1, "name": "one"}, {"id": 8, "name": "eight"}])
        .on_conflict_do_nothing()
    ),
}


@pytest.mark.parametrize("path", UPSERTS)
def test_an_upsert_delivers_inserts_and_updates_with_old_values(
    path: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    # to SQLAlchemy an upsert is an INSERT; a row it updated must not be told as inserted
    check_delivered(db, Session, changesets, UPSERTS[path])
    ops = {change.pk: change.op for cs in changesets for change in cs.changes}
    assert ops == (
        {(8,): Op.INSERT} if path == "do nothing" else {(1,): Op.UPDATE, (7,): Op.INSERT}
    )


def test_an_upsert_runs_after_insert_only_for_the_rows_it_inserted(
    Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    check_delivered(db, Session, changesets, UPSERTS["executemany"])
    assert [call for call in calls if call[0] == "after_insert"] == [
        ("after_insert", "SEVEN", 7, 7)
    ]
    assert sorted(call[1] for call in calls if call[0] == "before_insert") == ["one", "seven"]


class Tag(SBase):
    __tablename__ = "tags"
    __table_args__ = (sa.UniqueConstraint("label", name="uq_tags_label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(20))
    note: Mapped[str] = mapped_column(sa.String(20))


@pytest.mark.parametrize("target", ["index_elements", "constraint", "none"])
def test_an_upsert_on_another_unique_key_finds_the_row_it_updates(
    target: str, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    with db.begin() as conn:
        conn.execute(sa.insert(Tag), [{"id": 1, "label": "red", "note": "old"}])
    with Session() as session:
        statement = dialect_insert(session)(Tag).values(
            [{"label": "red", "note": "new"}, {"label": "blue", "note": "first"}]
        )
        dialect = session.get_bind().dialect.name
        if target == "none" and dialect == "postgresql":
            pytest.skip("PostgreSQL needs a conflict target for DO UPDATE")
        if target == "constraint" and dialect == "sqlite":
            pytest.skip("SQLite has no ON CONFLICT ON CONSTRAINT")
        how = {"index_elements": {"index_elements": [Tag.label]}, "none": {}}.get(
            target, {"constraint": "uq_tags_label"}
        )
        session.execute(
            statement.on_conflict_do_update(**how, set_={"note": statement.excluded.note})
        )
        session.commit()
    (changeset,) = changesets
    by_op = {change.op: change for change in changeset.changes}
    assert set(by_op) == {Op.UPDATE, Op.INSERT}
    assert (by_op[Op.UPDATE].pk, by_op[Op.UPDATE].old, by_op[Op.UPDATE].new) == (
        (1,),
        {"note": "old"},
        {"note": "new"},
    )
    assert by_op[Op.INSERT].new == {"id": 2, "label": "blue", "note": "first"}


RETURNING_WRITES: dict[str, tuple[Write, list[tuple[Any, ...]]]] = {
    "orm update": (
        lambda s: s.execute(
            sa.update(Item).where(Item.id >= 2).values(qty=5).returning(Item.id, Item.qty)
        ).all(),
        [(2, 105), (3, 105)],  # (the callback added 100 to qty)
    ),
    "orm update of entities": (
        lambda s: [
            (i.id, i.name) for i in s.scalars(sa.update(Item).values(name="x").returning(Item))
        ],
        [(1, "x"), (2, "x"), (3, "x")],
    ),
    "core update": (
        lambda s: s.execute(
            items.update().where(items.c.id == 1).values(qty=9).returning(items.c.qty)
        ).all(),
        [(109,)],
    ),
    "orm delete": (
        lambda s: s.execute(sa.delete(Item).where(Item.id >= 2).returning(Item.name)).all(),
        [("n2",), ("n3",)],
    ),
    "core delete": (
        lambda s: s.execute(items.delete().where(items.c.id == 3).returning(items.c.id)).all(),
        [(3,)],
    ),
}


@pytest.mark.parametrize("path", RETURNING_WRITES)
def test_a_statement_with_its_own_returning_keeps_its_result_and_is_captured(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    write, returned = RETURNING_WRITES[path]
    results: list[Any] = []
    check_delivered(db, Session, changesets, lambda s: results.append(sorted(write(s))))
    assert results == [returned]
    assert changesets and [c[0] for c in calls][-1] in ("after_update", "after_delete")


# -- DELETE ------------------------------------------------------------------------------------

DELETES: dict[str, Write] = {
    "orm where": lambda s: s.execute(sa.delete(Item).where(Item.id >= 2)),
    "query": lambda s: s.query(Item).filter(Item.id >= 2).delete(),
    "core table": lambda s: s.execute(items.delete().where(items.c.id >= 2)),
}


@pytest.mark.parametrize("path", DELETES)
def test_delete_statement_runs_callbacks_and_captures_old_rows(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    assert check_delivered(db, Session, changesets, DELETES[path]) in (2, None)
    assert list(table_rows(db, "items")) == [(1,)]
    assert calls == [("before_delete", ["n2", "n3"]), ("after_delete", [(2,), (3,)])]


def test_vetoed_delete_keeps_the_rows(
    Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    with db.begin() as conn:  # outside any session: no callbacks, nothing captured
        conn.execute(items.update().where(items.c.id == 3).values(name="veto"))
    result = run(Session, lambda s: s.execute(sa.delete(Item).where(Item.id >= 2)))
    assert result == 0
    assert len(table_rows(db, "items")) == 3
    assert changesets == []
    assert calls == [("before_delete", ["n2", "veto"])]


@pytest.mark.parametrize(
    ("level", "pks"), [("off", (None, None)), ("keys", (((2,), (3,)), ((3,),)))]
)
def test_statement_rows_are_keys_when_captured_else_the_where_clause(
    level: str, pks: tuple[Any, Any], db: sa.Engine
) -> None:
    events = dbevents.Events(capture={Item: level})  # type: ignore[dict-item]
    seen: Calls = []

    @events.listens_for(Item, "after_update")
    def updated(cls: type[Item], rows: RowSet[Item], fields: dict[str, Any]) -> None:
        seen.append((rows.pks, sorted(item.id for item in rows.select()), dict(fields)))

    @events.listens_for(Item, "after_delete")
    def deleted(cls: type[Item], rows: RowSet[Item]) -> None:
        seen.append((rows.pks, rows.count()))

    maker = events.install(sa_orm.sessionmaker(db))
    try:
        with maker() as session:
            session.execute(sa.update(Item).where(Item.qty >= 2).values(name="x"))
            session.execute(sa.delete(Item).where(Item.id == 3))
            session.commit()
    finally:
        events.uninstall(maker)
    # off: Emmett's dbset, the WHERE clause read when asked; else the keys of the rows written
    assert seen == [(pks[0], [2, 3], {"name": "x"}), (pks[1], 0)]


# -- paths without callbacks, skip and mute ----------------------------------------------------

CAPTURE_ONLY: dict[str, Write] = {
    "connection insert": lambda s: s.connection().execute(items.insert(), [{"name": "c"}]),
    "connection update": lambda s: s.connection().execute(items.update().values(qty=3)),
    "connection delete": lambda s: s.connection().execute(items.delete().where(items.c.id == 1)),
    "bulk_insert_mappings": lambda s: s.bulk_insert_mappings(Item, [{"name": "m"}]),
    "bulk_update_mappings": lambda s: s.bulk_update_mappings(Item, [{"id": 2, "name": "u"}]),
    "bulk_save_objects": lambda s: s.bulk_save_objects([Item(name="o")]),
    "skip_callbacks": lambda s: s.execute(
        sa.update(Item).values(qty=4), execution_options={"skip_callbacks": True}
    ),
    "update_naive": lambda s: RowSet(Item, s, where=Item.id == 1).update_naive(qty=8),
    "delete_naive": lambda s: RowSet(Item, s, where=Item.id == 1).delete_naive(),
}


@pytest.mark.parametrize("path", CAPTURE_ONLY)
def test_paths_without_callbacks_are_still_captured(
    path: str, Session: Any, calls: Calls, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    check_delivered(db, Session, changesets, CAPTURE_ONLY[path])
    assert changesets, "the write was not captured"
    assert calls == []


@pytest.mark.parametrize("path", ["orm bulk", "core table"])
def test_muted_statements_run_no_callbacks_and_capture_nothing(
    path: str, events: dbevents.Events, Session: Any, calls: Calls, changesets: list[ChangeSet]
) -> None:
    with events.muted():
        run(Session, INSERTS[path])
        run(Session, UPDATES["orm where"])
        run(Session, DELETES["orm where"])
    assert calls == []
    assert changesets == []


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.execute(
            sa.update(Item).where(Item.id == 1).values(qty=Item.qty + 10),
            execution_options={"synchronize_session": False},
        ),
        lambda s: s.execute(items.update().where(items.c.id == 1).values(qty=items.c.qty + 10)),
    ],
    ids=["orm, not synchronized", "core"],
)
def test_after_save_sees_the_row_as_the_statement_left_it(
    events: dbevents.Events, Session: Any, write: Write
) -> None:
    seen: list[tuple[str, int]] = []
    # before_save loads the objects into the session before the UPDATE changes their rows
    events.listens_for(Item, "before_save")(lambda cls, row: seen.append(("before", row.qty)))
    events.listens_for(Item, "after_save")(lambda cls, row: seen.append(("after", row.qty)))
    run(Session, write)
    assert seen == [("before", 1), ("after", 11)]


def test_row_level_callbacks_on_statements_see_objects(
    events: dbevents.Events, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    seen: Calls = []

    @events.listens_for(Item, "before_save")
    def before_save(cls: type[Item], row: Item) -> bool:
        seen.append(("before_save", row.name))
        return row.name == "n3"

    @events.listens_for(Item, "after_save")
    def after_save(cls: type[Item], row: Item) -> None:
        seen.append(("after_save", row.id, row.qty))

    @events.listens_for(Item, "after_destroy")
    def after_destroy(cls: type[Item], row: Item) -> None:
        seen.append(("after_destroy", row.id))

    check_delivered(db, Session, changesets, lambda s: s.execute(sa.update(Item).values(qty=50)))
    assert sorted(seen) == sorted(
        [
            ("before_save", "n1"),
            ("before_save", "n2"),
            ("before_save", "n3"),
            ("after_save", 1, 50),
            ("after_save", 2, 50),
        ]
    )
    assert table_rows(db, "items")[(3,)]["qty"] == 3  # vetoed row by row
    seen.clear()
    run(Session, lambda s: s.execute(sa.delete(Item).where(Item.id <= 2)))
    assert sorted(seen) == [("after_destroy", 1), ("after_destroy", 2)]


def test_a_row_vetoed_in_a_delete_statement_gets_no_after_destroy(
    events: dbevents.Events, Session: Any, changesets: list[ChangeSet], db: sa.Engine
) -> None:
    destroyed: list[int] = []
    events.listens_for(Item, "before_destroy")(lambda cls, row: row.name == "n2")
    events.listens_for(Item, "after_destroy")(lambda cls, row: destroyed.append(row.id))

    check_delivered(db, Session, changesets, lambda s: s.execute(sa.delete(Item)))

    assert sorted(destroyed) == [1, 3]
    assert list(table_rows(db, "items")) == [(2,)]  # the vetoed row stays


def test_a_session_on_an_engine_made_by_execution_options_is_captured_once(
    events: dbevents.Events, db: sa.Engine, changesets: list[ChangeSet]
) -> None:
    """It shares the events of the engine it was made from: listening on both would run
    dbevents twice for each statement."""
    sent = recorded_sql(db)
    for name, bind in (("x", db), ("y", db.execution_options(logging_token="tenant"))):
        maker = events.install(sa_orm.sessionmaker(bind))
        try:
            with maker() as session:
                session.execute(sa.update(Item).where(Item.id == 1), {"name": name})
                session.commit()
        finally:
            events.uninstall(maker)
    half = len(sent) // 2
    assert sent[:half] == sent[half:]  # the same SQL, once each
    assert [len(cs.changes) for cs in changesets] == [1, 1]
