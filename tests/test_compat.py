"""Each private SQLAlchemy detail dbevents relies on, checked on the installed version.

An upgrade of SQLAlchemy that breaks one of them fails here first, by name.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects import postgresql, sqlite

from dbevents import _compat
from tests.models import Address, Base, Company, Contact, Dog

companies: sa.Table = Company.__table__  # type: ignore[assignment]


def test_version_is_supported() -> None:
    assert _compat.sa_version >= (2, 0)


def test_committed_state_holds_the_old_value(tables: sa.Engine) -> None:
    with sa_orm.Session(tables) as session:
        company = Company(name="a")
        session.add(company)
        session.flush()
        company.name = "b"
        assert _compat.committed_state(sa.inspect(company))["name"] == "a"
        session.rollback()


def test_no_value_marks_an_unloaded_attribute(tables: sa.Engine) -> None:
    with sa_orm.Session(tables, expire_on_commit=True) as session:
        company = Company(name="a")
        session.add(company)
        session.commit()
        company.name = "b"  # expired: the old value was never loaded
        assert _compat.committed_state(sa.inspect(company)).get("name") is _compat.NO_VALUE
        session.rollback()


def test_all_mappers_finds_the_test_models() -> None:
    assert sa.inspect(Company) in _compat.all_mappers()


def test_flush_running_only_while_the_flush_writes(tables: sa.Engine) -> None:
    seen: list[bool] = []
    with sa_orm.Session(tables) as session:
        sa.event.listen(
            session, "after_flush", lambda s, ctx: seen.append(_compat.flush_running(ctx))
        )
        sa.event.listen(
            session, "before_flush", lambda s, ctx, i: seen.append(_compat.flush_running(ctx))
        )
        session.add(Company(name="a"))
        session.flush()
        session.rollback()
    assert seen == [False, True]


def test_post_updated_names_the_rows_and_columns_of_the_second_update(engine: sa.Engine) -> None:
    from tests.test_relationship_writes import Entry, RBase, Widget

    RBase.metadata.create_all(engine)
    seen: list[list[tuple[Any, set[Any]]]] = []
    with sa_orm.Session(engine) as session:
        sa.event.listen(
            session, "after_flush", lambda s, ctx: seen.append(_compat.post_updated(ctx))
        )
        widget = Widget(name="w")
        widget.favorite = Entry(widget=widget)
        session.add(widget)
        session.flush()
        session.rollback()
    assert seen == [[(sa.inspect(widget), {Widget.__table__.c.favorite_id})]]


def test_mappers_own_rows_tells_an_objects_row_from_a_secondary_row(engine: sa.Engine) -> None:
    from tests.test_collections_usage import CBase, Mix, Song, Track

    CBase.metadata.create_all(engine)
    writers = (sa.inspect(Track).base_mapper,)
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, statement: Any, multiparams: Any, params: Any, options: Any) -> None:
        if isinstance(statement, sa.Insert) and statement.table.name == "tracks":
            seen.append((str(params or multiparams), _compat.mappers_own_rows(options, writers)))

    sa.event.listen(engine, "before_execute", record)
    try:
        with sa_orm.Session(engine) as session:
            session.add(Mix(id=1, songs=[Song(id=1, title="a")]))  # the secondary's row
            session.flush()
            session.add(Track(mix_id=1, song_id=2))  # an object's own row
            session.add(Song(id=2, title="b"))
            session.flush()
            session.rollback()
    finally:
        sa.event.remove(engine, "before_execute", record)
    assert [own for _, own in seen] == [False, True]


def test_explicit_returning_and_where_criteria() -> None:
    table = companies
    plain = sa.update(table).where(table.c.id == 1).where(sa.false())
    assert not _compat.explicit_returning(plain)
    assert _compat.explicit_returning(plain.returning(table.c.id))
    assert len(_compat.where_criteria(plain)) == 2


def test_returns_defaults_and_prefixes() -> None:
    plain = sa.insert(companies)
    assert not _compat.returns_defaults(plain) and _compat.prefixes(plain) == ()
    assert _compat.returns_defaults(plain.return_defaults(companies.c.id))
    (prefix,) = _compat.prefixes(plain.prefix_with("OR IGNORE"))
    assert "OR IGNORE" in str(prefix[0])
    both = plain.prefix_with("OR REPLACE").prefix_with(sa.text("IGNORE"), dialect="mysql")
    assert _compat.rendered_prefixes(both, "sqlite") == ["OR REPLACE"]
    assert _compat.rendered_prefixes(both, "mysql") == ["OR REPLACE", "IGNORE"]
    assert _compat.rendered_prefixes(plain, "sqlite") == []


def test_callers_return_defaults_are_told_from_the_orms_own(tables: sa.Engine) -> None:
    seen: list[tuple[bool, bool]] = []

    def statement(conn: Any, statement: Any, *args: Any) -> None:
        if isinstance(statement, sa.Insert | sa.Update):
            seen.append(
                (_compat.returns_defaults(statement), _compat.callers_return_defaults(statement))
            )

    sa.event.listen(tables, "before_execute", statement)
    try:
        with sa_orm.Session(tables) as session:
            # the ORM's bulk INSERT gives the statement it runs a return_defaults() of its own
            session.execute(sa.insert(Company).returning(Company.id), [{"name": "a"}])
            session.execute(sa.insert(companies).values(name="b").return_defaults())
            session.execute(sa.update(Company).values(name="c").return_defaults(Company.rating))
            session.execute(sa.update(Company).values(name="d"))
            session.rollback()
    finally:
        sa.event.remove(tables, "before_execute", statement)
    assert seen == [(True, False), (True, True), (True, True), (False, False)]


def test_a_result_is_made_as_without_the_returning_supplemental_cols_added(
    tables: sa.Engine,
) -> None:
    table = companies
    update = sa.update(table).where(table.c.id >= 1).values(name="x")
    insert = sa.insert(table).values(name="n")
    with tables.begin() as conn:
        conn.execute(sa.insert(table), [{"name": "a"}, {"name": "b"}])
        for statement, params in ((update, []), (insert, []), (sa.insert(table), [{"name": "c"}])):
            returning = statement.return_defaults(supplemental_cols=[table.c.id])
            assert _compat.supplemental_returning(returning)
            assert not _compat.supplemental_returning(statement)
            itself = _compat.returns_rows_itself(conn, statement, params)
            # SQLAlchemy returns an INSERT's new key itself on PostgreSQL (SQLite: lastrowid)
            assert itself == (statement is not update and conn.dialect.name == "postgresql")
            result = conn.execute(returning, params or None)
            assert result.returned_defaults_rows
            _compat.as_without_returning(result, returned_rows=itself)
            assert result.returned_defaults_rows  # still there for dbevents
            assert result.returns_rows == itself
            if itself:
                assert result.all() == []
            else:
                with pytest.raises(sa.exc.ResourceClosedError):
                    result.all()


def test_dml_values_round_trip() -> None:
    table = companies
    statement = sa.update(table).values(name="a", rating=2)
    pairs = _compat.dml_values(statement)
    assert pairs is not None and [getattr(k, "key", k) for k, _ in pairs] == ["name", "rating"]
    changed = _compat.with_dml_values(statement, [(k, 9) for k, _ in pairs[1:]])
    assert "name" not in str(changed) and "rating" in str(changed)
    assert _compat.dml_values(sa.update(table)) is None
    ordered = sa.update(table).ordered_values((table.c.rating, 1), (table.c.name, "x"))
    assert [getattr(k, "key", k) for k, _ in _compat.dml_values(ordered) or []] == [
        "rating",
        "name",
    ]


def test_type_on_is_the_variant_a_dialect_uses() -> None:
    kind = sa.String(20).with_variant(sa.Text(), "sqlite")
    assert isinstance(_compat.type_on(kind, "sqlite"), sa.Text)
    assert _compat.type_on(kind, "postgresql") is kind
    assert _compat.type_on(sa.Integer(), "sqlite").__class__ is sa.Integer


def test_dml_table_is_the_table_each_bulk_statement_writes(tables: sa.Engine) -> None:
    written: list[str] = []
    entities: list[type[Any] | None] = []

    def seen(conn: Any, statement: Any, *args: Any) -> None:
        if isinstance(statement, sa.Insert | sa.Update):
            written.append(_compat.dml_table(statement).name)
            entities.append(_compat.dml_entity(statement))

    sa.event.listen(tables, "before_execute", seen)
    try:
        with sa_orm.Session(tables) as session:
            session.execute(sa.insert(Dog), [{"id": 1, "name": "rex", "bark": "woof"}])
            session.execute(sa.update(Dog), [{"id": 1, "name": "rex II", "bark": "grr"}])
            session.execute(sa.update(Dog).where(Dog.id == 1).values(bark="arf"))
    finally:
        sa.event.remove(tables, "before_execute", seen)
    assert written == ["animals", "dogs", "animals", "dogs", "dogs"]
    assert entities == [Dog] * 5
    assert _compat.dml_entity(sa.update(companies)) is None


def test_upsert_clause_and_multi_values() -> None:
    table = companies
    rows = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    for insert in (postgresql.insert, sqlite.insert):
        statement = insert(table).values(rows)
        assert _compat.upsert_clause(statement) is None
        sent = _compat.multi_values(statement) or []
        assert [{getattr(c, "key", c): v for c, v in row.items()} for row in sent] == rows
        fewer = _compat.multi_values(_compat.with_multi_values(statement, rows[1:])) or []
        assert [{getattr(c, "key", c): v for c, v in row.items()} for row in fewer] == rows[1:]
        by_key = statement.on_conflict_do_update(index_elements=[table.c.id], set_={"name": "x"})
        clause = _compat.upsert_clause(by_key)
        assert clause is not None
        assert list(clause.inferred_target_elements) == [table.c.id]
        assert _compat.upsert_set_keys(clause) == ["name"]
        stamped = _compat.with_upsert_set(by_key, {"rating": 2})
        assert _compat.upsert_set_keys(_compat.upsert_clause(stamped)) == ["name", "rating"]
        assert _compat.upsert_set_keys(_compat.upsert_clause(by_key)) == ["name"]  # (a copy)
        by_column = statement.on_conflict_do_update(
            index_elements=[table.c.id], set_={table.c.name: "x", "rating": 1}
        )
        assert _compat.upsert_set_keys(_compat.upsert_clause(by_column)) == [table.c.name, "rating"]
        assert type(_compat.upsert_clause(statement.on_conflict_do_nothing())).__name__ == (
            "OnConflictDoNothing"
        )
    named = postgresql.insert(table).on_conflict_do_update(constraint="pk", set_={"name": "x"})
    assert (
        _compat.upsert_set_keys(_compat.upsert_clause(statement.on_conflict_do_nothing())) is None
    )
    clause = _compat.upsert_clause(named)
    assert clause is not None and clause.constraint_target == "pk"
    assert _compat.multi_values(sa.insert(table).values(id=1)) is None


def test_greenlet_bridge_is_detected() -> None:
    from sqlalchemy.util import greenlet_spawn

    async def main() -> tuple[bool, bool]:
        async def answer() -> int:
            return 42

        def sync() -> bool:
            return _compat.in_greenlet() and _compat.await_in_greenlet(answer()) == 42

        return _compat.in_greenlet(), bool(await greenlet_spawn(sync))

    assert asyncio.run(main()) == (False, True)
    assert Base.metadata.tables  # the models module is importable alongside


def test_flush_candidates_are_the_states_of_new_dirty_and_deleted(tables: sa.Engine) -> None:
    with sa_orm.Session(tables) as session:
        kept, changed, gone = Company(name="kept"), Company(name="a"), Company(name="gone")
        session.add_all([kept, changed, gone])
        session.flush()
        added = Company(name="new")
        session.add(added)
        changed.name = "b"
        session.delete(gone)
        gone.name = "dirty and deleted: only deleted"
        new, dirty, deleted = _compat.flush_candidates(session)
        assert new == [sa.inspect(added)]
        assert dirty == [sa.inspect(changed)]
        assert deleted == [sa.inspect(gone)]
        session.rollback()


def test_flush_candidates_count_a_persistent_orphan_among_the_deletes(tables: sa.Engine) -> None:
    with sa_orm.Session(tables) as session:
        contact = Contact(email="o@x", addresses=[Address(city="a"), Address(city="b")])
        session.add(contact)
        session.flush()
        orphan = contact.addresses.pop(0)  # delete-orphan: the flush deletes it
        _, dirty, deleted = _compat.flush_candidates(session)
        assert sa.inspect(orphan) in deleted and sa.inspect(orphan) not in dirty
        session.rollback()


def test_provisioning_connection_tells_the_sessions_own_savepoints(tables: sa.Engine) -> None:
    seen: list[bool] = []
    with sa_orm.Session(tables) as session:

        def savepoint(connection: sa.Connection, name: str | None) -> None:
            seen.append(_compat.provisioning_connection(session))

        sa.event.listen(tables, "savepoint", savepoint)
        try:
            assert not _compat.provisioning_connection(session)
            session.begin_nested()
            connection = session.connection()  # the session begins its SAVEPOINT here
            connection.begin_nested().rollback()  # one of the application's
            session.rollback()
        finally:
            sa.event.remove(tables, "savepoint", savepoint)
    assert seen == [True, False]


def test_transaction_connections_are_those_the_root_transaction_began(tables: sa.Engine) -> None:
    with sa_orm.Session(tables) as session:
        root = session.begin()
        assert _compat.transaction_connections(root) == frozenset()
        connection = session.connection()
        session.begin_nested()  # a savepoint's statements run on the same connection
        session.execute(sa.select(1))
        assert _compat.transaction_connections(root) == {connection}
        session.rollback()


def test_autocommits_tells_the_engines_and_the_connections_isolation(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert not _compat.autocommits(conn)
        assert _compat.autocommits(conn.execution_options(isolation_level="AUTOCOMMIT"))
    auto = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        with auto.connect() as conn:
            assert _compat.autocommits(conn)
    finally:
        auto.dispose()
