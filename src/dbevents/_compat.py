"""Every private SQLAlchemy detail dbevents relies on, in one place.

SQLAlchemy 2.0 and 2.1 differ in some of these; ``tests/test_compat.py``
checks each one on the installed version, so an upgrade that breaks one fails
there first, with a clear name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

__all__ = [
    "NO_VALUE",
    "all_mappers",
    "as_without_returning",
    "autocommits",
    "await_in_greenlet",
    "callers_return_defaults",
    "committed_state",
    "dml_entity",
    "dml_table",
    "dml_values",
    "explicit_returning",
    "flush_candidates",
    "flush_running",
    "in_greenlet",
    "mappers_own_rows",
    "multi_values",
    "post_updated",
    "prefixes",
    "provisioning_connection",
    "root_engine",
    "rendered_prefixes",
    "returns_defaults",
    "returns_rows_itself",
    "sa_version",
    "supplemental_returning",
    "transaction_connections",
    "type_on",
    "upsert_clause",
    "upsert_set_keys",
    "with_upsert_set",
    "where_criteria",
    "with_dml_values",
    "with_multi_values",
    "without_values",
]

T = TypeVar("T")

#: "no value loaded", as found in InstanceState.committed_state
NO_VALUE: Any = sa_orm.LoaderCallableStatus.NO_VALUE

sa_version: tuple[int, int] = tuple(int(p) for p in sa.__version__.split(".")[:2])  # type: ignore[assignment]


def committed_state(state: sa_orm.InstanceState[Any]) -> dict[str, Any]:
    """The values attributes had before they were modified since the last flush or load.

    Private: ``InstanceState.committed_state``.  Writing an old value into it is
    what ``active_history=True`` would have done on the attribute.
    """
    return state.committed_state


def root_engine(engine: sa.Engine) -> sa.Engine:
    """The engine ``engine.execution_options(...)`` was made from, if it was.

    Such an engine shares the pool and the events of the one it came from, so
    dbevents listens on that one only, once.  Private: ``OptionEngine._proxied``.
    """
    while isinstance(getattr(engine, "_proxied", None), sa.Engine):
        engine = engine._proxied  # type: ignore[attr-defined]
    return engine


def flush_candidates(
    session: sa_orm.Session,
) -> tuple[list[sa_orm.InstanceState[Any]], ...]:
    """The states a flush would insert, update and delete, as three lists.

    ``session.new`` / ``dirty`` / ``deleted`` hold the same, as objects: finding
    each object's state again costs more than the flush bookkeeping itself.  A
    persistent orphan (a ``delete-orphan`` child its parent let go of) is dirty
    to the session, and deleted by the flush: it is among the deletes.
    Private: ``Session._new``, ``Session._dirty_states``, ``Session._deleted``,
    ``Mapper._delete_orphans`` and ``Mapper._is_orphan()``, as ``Session._flush``
    uses them.
    """
    deleted = session._deleted
    dirty = [state for state in session._dirty_states if state not in deleted]
    orphans = [
        state
        for state in dirty
        if _orphanable(state.class_) and state.key is not None and state.mapper._is_orphan(state)
    ]
    if orphans:
        orphaned = set(orphans)
        dirty = [state for state in dirty if state not in orphaned]
    return list(session._new), dirty, [*deleted, *orphans]


_orphanable_classes: dict[type[Any], bool] = {}
# a relationship configured later may make a class orphanable: asked again then
sa_event.listen(sa_orm.Mapper, "after_configured", _orphanable_classes.clear)


def _orphanable(cls: type[Any]) -> bool:
    """Whether objects of ``cls`` can be orphans (a relationship to it cascades delete-orphan)."""
    orphanable = _orphanable_classes.get(cls)
    if orphanable is None:
        mapper = sa.inspect(cls)
        orphanable = any(m._delete_orphans for m in mapper.iterate_to_root())
        _orphanable_classes[cls] = orphanable
    return orphanable


def provisioning_connection(session: sa_orm.Session) -> bool:
    """Whether ``session`` is beginning its transaction on a connection right now.

    A SAVEPOINT emitted meanwhile is the session's own (``begin_nested()``, or
    ``join_transaction_mode="create_savepoint"``); any other one on its connection
    was begun by the application.  Private: ``Session._transaction``,
    ``SessionTransaction._state``.
    """
    transaction = session._transaction
    return transaction is not None and transaction._state is _PROVISIONING


_PROVISIONING: Any = sa_orm.session.SessionTransactionState.PROVISIONING_CONNECTION


def autocommits(connection: sa.Connection) -> bool:
    """Whether ``connection`` is in ``AUTOCOMMIT`` isolation, of its own or its engine's.

    Private: ``Connection._is_autocommit_isolation()``.
    """
    return bool(connection._is_autocommit_isolation())


def transaction_connections(transaction: sa_orm.SessionTransaction) -> frozenset[sa.Connection]:
    """The connections a root session transaction has begun so far.

    SQLAlchemy 2.1: ``SessionTransaction.connections``; 2.0 has no public way.
    Private there: ``SessionTransaction._connections``.
    """
    public = getattr(transaction, "connections", None)
    if public is not None:
        return frozenset(public)
    return frozenset(entry[0] for entry in transaction._connections.values())


def in_greenlet() -> bool:
    """Whether we run inside SQLAlchemy's asyncio greenlet bridge (AsyncSession)."""
    try:
        from sqlalchemy.util.concurrency import in_greenlet as check
    except ImportError:  # pragma: no cover - greenlet not installed
        return False
    return bool(check())


def await_in_greenlet(awaitable: Awaitable[T]) -> T:
    """Await from synchronous code running under AsyncSession (2.0: await_only, 2.1: await_)."""
    import sqlalchemy.util as sa_util

    waiter = getattr(sa_util, "await_", None) or sa_util.await_only
    return waiter(awaitable)  # type: ignore[no-any-return, unused-ignore]


def all_mappers() -> list[sa_orm.Mapper[Any]]:
    """Every mapper of every live registry (private: ``mapperlib._all_registries``)."""
    from sqlalchemy.orm import mapperlib

    return [mapper for reg in mapperlib._all_registries() for mapper in reg.mappers]


def mappers_own_rows(
    execution_options: Mapping[str, Any], mappers: tuple[sa_orm.Mapper[Any], ...]
) -> bool:
    """Whether the flush runs a statement for the rows of objects of these (base) mappers,
    rather than for the rows a relationship writes to its ``secondary`` table.

    Private: the unit of work runs the former with its base mapper's
    ``Mapper._compiled_cache`` as the ``compiled_cache`` option, the latter with none.
    """
    cache = execution_options.get("compiled_cache")
    return cache is not None and any(cache is mapper._compiled_cache for mapper in mappers)


def flush_running(flush_context: Any) -> bool:
    """Whether a flush (not a legacy bulk operation) is writing right now.

    Private: ``UOWTransaction.transaction``, the flush's subtransaction, set only
    once the flush found work; a failed flush leaves it closed.
    """
    transaction = getattr(flush_context, "transaction", None)
    return transaction is not None and bool(transaction.is_active)


def post_updated(flush_context: Any) -> list[tuple[sa_orm.InstanceState[Any], set[Any]]]:
    """The rows a ``relationship(post_update=True)`` may have written with a second UPDATE
    in this flush, each with the columns that UPDATE may set; rows the flush deletes are
    left out.  SQLAlchemy lists every row the relationship was looked at for, and writes
    those whose key changed.

    Such an UPDATE fires no mapper event.  Private: ``UOWTransaction.post_update_states``
    (base mapper -> (states, columns)) and ``UOWTransaction.states`` (state -> (isdelete,
    listonly)).
    """
    registered = getattr(flush_context, "post_update_states", None)
    if not registered:
        return []
    flushed = flush_context.states
    return [
        (state, columns)
        for states, columns in registered.values()
        for state in states
        if not flushed.get(state, (False,))[0]
    ]


def explicit_returning(statement: Any) -> bool:
    """Whether a DML statement has a RETURNING clause of its own (private: ``_returning``)."""
    return bool(getattr(statement, "_returning", ()))


def returns_defaults(statement: Any) -> bool:
    """Whether a DML statement was given ``return_defaults()`` (private: ``_return_defaults``);
    SQLAlchemy's bulk INSERT gives it one when it needs the new keys itself."""
    return bool(getattr(statement, "_return_defaults", False))


def callers_return_defaults(statement: Any) -> bool:
    """Whether the application gave a DML statement ``return_defaults()`` of its own: not the
    ORM's bulk INSERT or UPDATE by primary key, which gives the statements it runs for each
    table one (private: ``_return_defaults``, and ``_annotations``, see :func:`dml_table`).

    Its ``returned_defaults`` is then the application's: whatever dbevents added to that
    RETURNING would show there.
    """
    annotations = getattr(statement, "_annotations", {})
    return (
        returns_defaults(statement)
        and "_emit_insert_table" not in annotations
        and "_emit_update_table" not in annotations
    )


def supplemental_returning(statement: Any) -> bool:
    """Whether a DML statement was given ``return_defaults(supplemental_cols=...)``, which
    makes its result return rows (private: ``_supplemental_returning``)."""
    return bool(getattr(statement, "_supplemental_returning", None))


def returns_rows_itself(
    connection: sa.Connection, statement: Any, parameters: list[dict[str, Any]]
) -> bool:
    """Whether SQLAlchemy makes ``statement`` RETURN rows of its own accord: an INSERT's new
    key, its own ``return_defaults()``, ``synchronize_session="fetch"``.

    An UPDATE or DELETE RETURNs only for those two, told by the statement (the ORM's
    ``synchronize_session`` is in its annotations); any other is compiled as the
    connection compiles what it executes, through the same cache (private:
    ``_annotations``, ``_compile_w_cache``, ``Engine._compiled_cache``).
    """
    if not isinstance(statement, sa.Insert) and not returns_defaults(statement):
        return statement._annotations.get("synchronize_session") == "fetch"  # type: ignore[no-any-return]
    options = connection.get_execution_options()
    compiled = statement._compile_w_cache(
        dialect=connection.dialect,
        compiled_cache=options.get("compiled_cache", connection.engine._compiled_cache),
        column_keys=sorted(parameters[0]) if parameters and parameters[0] else [],
        for_executemany=len(parameters) > 1,
        schema_translate_map=options.get("schema_translate_map"),
    )[0]
    return bool(compiled.effective_returning)


def as_without_returning(result: sa.CursorResult[Any], *, returned_rows: bool) -> None:
    """Make ``result`` what SQLAlchemy returns for a statement without the RETURNING that
    ``return_defaults(supplemental_cols=...)`` added: rows fetched and closed, as for its
    own ``return_defaults()`` (``returned_rows``), or none at all.  ``returned_defaults_rows``
    keep them.  Private: ``CursorResult.cursor_strategy``, ``_metadata``, ``_soft_close``.
    """
    from sqlalchemy.engine import cursor

    if returned_rows:
        result.all()  # as SQLAlchemy does with its own: fetched, then closed
    else:
        result.cursor_strategy = cursor._NO_CURSOR_DML
        result._metadata = result._no_result_metadata
    result._soft_close()


def prefixes(statement: Any) -> tuple[Any, ...]:
    """A statement's ``prefix_with()`` prefixes, such as ``OR REPLACE`` (private: ``_prefixes``)."""
    return tuple(getattr(statement, "_prefixes", ()))


def rendered_prefixes(statement: Any, dialect: str) -> list[str]:
    """The text of each ``prefix_with()`` prefix a statement renders on ``dialect`` (its
    name), such as ``OR REPLACE``.  Private: ``_prefixes``, pairs of the prefix and the
    dialect it is for, ``"*"`` for every one."""
    return [
        str(getattr(prefix, "text", prefix))
        for prefix, only in prefixes(statement)
        if only in ("*", dialect)
    ]


def dml_values(statement: Any) -> list[tuple[Any, Any]] | None:
    """The SET / VALUES pairs of a DML statement, in order; None when it has none.

    Private: ``_values`` (2.1 keeps ordered values there too), ``_ordered_values`` (2.0).
    """
    values = getattr(statement, "_values", None)
    if values is not None:
        return list(values.items())
    ordered = getattr(statement, "_ordered_values", None)
    return list(ordered) if ordered is not None else None


def with_dml_values(statement: Any, pairs: list[tuple[Any, Any]]) -> Any:
    """A copy of ``statement`` whose SET / VALUES pairs are exactly ``pairs``."""
    clone = statement._generate()
    if getattr(statement, "_ordered_values", None) is not None:
        clone._ordered_values = None
        return clone.ordered_values(*pairs)
    clone._values = None  # values() coerces each value, as if the caller had passed it
    return clone.values(dict(pairs))


def without_values(statement: Any) -> Any:
    """A copy of an INSERT without its ``values()`` (private: ``_values``, ``_multi_values``)."""
    clone = statement._generate()
    clone._values = None
    if getattr(clone, "_ordered_values", None) is not None:
        clone._ordered_values = None
    clone._multi_values = ()
    return clone


def with_multi_values(statement: Any, rows: list[dict[Any, Any]]) -> Any:
    """A copy of an INSERT whose multi-row ``values([...])`` are exactly ``rows``."""
    return without_values(statement).values(rows)


def dml_table(statement: Any) -> Any:
    """The table a DML statement writes.

    Private: the ORM's bulk INSERT and UPDATE by primary key run the statement once
    per table of a joined-inheritance mapper, each annotated with the table it
    writes (``_emit_insert_table`` / ``_emit_update_table``), while ``.table`` still
    names the mapped class's own table.
    """
    annotations = getattr(statement, "_annotations", {})
    for key in ("_emit_update_table", "_emit_insert_table"):
        table = annotations.get(key)
        if table is not None:
            return table
    return statement.table


def dml_entity(statement: Any) -> type[Any] | None:
    """The mapped class an ORM DML statement names, or None (a Core table's statement).

    Private: ``_annotations["parententity"]`` of the statement's table, which is
    where ``statement.entity_description`` reads it from, by way of the plugin
    lookups and the dictionary that make it cost a microsecond on every statement.
    """
    annotations = getattr(statement.table, "_annotations", None)
    entity = getattr(annotations.get("parententity"), "entity", None) if annotations else None
    return entity if isinstance(entity, type) else None


def upsert_clause(statement: Any) -> Any | None:
    """An INSERT's ON CONFLICT / ON DUPLICATE KEY clause, or None.

    Private: ``_post_values_clause``.  Its ``inferred_target_elements`` and
    ``constraint_target`` (PostgreSQL and SQLite) are the conflict target.
    """
    return getattr(statement, "_post_values_clause", None)


def upsert_set_keys(clause: Any) -> list[Any] | None:
    """The SET targets (column keys or columns) of an ON CONFLICT DO UPDATE, or None.

    Undocumented: ``update_values_to_set``, pairs on 2.0 and a dict on 2.1.  None for
    MySQL's ON DUPLICATE KEY UPDATE, which keeps them otherwise.
    """
    values = getattr(clause, "update_values_to_set", None)
    if values is None:
        return None
    return list(values) if isinstance(values, dict) else [key for key, _ in values]


def with_upsert_set(statement: Any, values: Mapping[str, Any]) -> Any:
    """A copy of an ``ON CONFLICT DO UPDATE`` INSERT that also SETs ``values`` (by column key).

    Private: ``_post_values_clause``, ``update_values_to_set`` (pairs on SQLAlchemy 2.0,
    a dict on 2.1), ``_clone()`` and ``_generate()``.
    """
    clause = upsert_clause(statement)._clone()  # type: ignore[union-attr]
    given = clause.update_values_to_set
    if isinstance(given, dict):
        clause.update_values_to_set = {**given, **values}
    else:
        clause.update_values_to_set = [*given, *values.items()]
    clone = statement._generate()
    clone._post_values_clause = clause
    return clone


def multi_values(statement: Any) -> list[Any] | None:
    """The rows of an INSERT's ``values([...])``, or None (private: ``_multi_values``)."""
    multi = getattr(statement, "_multi_values", None)
    return list(multi[0]) if multi else None


def where_criteria(statement: Any) -> tuple[Any, ...]:
    """The WHERE criteria of a statement, one per ``.where()`` (private: ``_where_criteria``)."""
    return tuple(getattr(statement, "_where_criteria", ()))


def type_on(kind: sa.types.TypeEngine[Any], dialect_name: str) -> sa.types.TypeEngine[Any]:
    """The type a column of type ``kind`` has on the dialect called ``dialect_name``: the one
    ``kind.with_variant(...)`` gave for it, else ``kind`` itself."""
    variant: sa.types.TypeEngine[Any] = kind._variant_mapping.get(dialect_name, kind)
    return variant
