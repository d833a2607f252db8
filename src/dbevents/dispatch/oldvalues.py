"""Old values a change needs that the session has not loaded.

A dirty attribute that was expired when it was set (or changed in place) has no
old value, a deleted object may have expired columns, and the flush sets some
columns itself (onupdate, the version counter, many-to-one foreign keys).  Before
the flush writes, those are read with one SELECT per mapper and put where
SQLAlchemy keeps them, so its own history (and no-op detection) has them like any
other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .._compat import NO_VALUE
from .plan import ModelPlan
from .writelock import take_write_lock

__all__ = [
    "column_label",
    "load_old_values",
    "select_by_identity",
    "unknown_old_values",
    "unloaded_columns",
    "unloaded_moved_children",
    "unloaded_set_by_flush",
]

State = sa_orm.InstanceState[Any]

_FETCH_CHUNK: Final = 500


def load_old_values(
    session: sa_orm.Session,
    plan_of: Callable[[sa_orm.Mapper[Any]], ModelPlan],
    candidates: tuple[list[State], ...],
) -> None:
    """Fetch the unknown old values of changed rows: one SELECT per mapper.

    A dirty attribute that was expired when it was set (or changed in place) has no old
    value, on an updated object as on a deleted one; a deleted object may have expired
    columns, and an updated one expired columns that the
    UPDATE itself will set (onupdate, the version counter).  The values are put
    where SQLAlchemy itself keeps them, so its own no-op detection benefits as well:
    an old value of a dirty attribute in its history, any other as loaded.
    """
    _, dirty, deleted = candidates
    # per mapper: (state, keys whose old value goes into the history, keys to load)
    missing: dict[sa_orm.Mapper[Any], list[tuple[State, list[str], list[str]]]] = {}
    moved: set[State] = set()
    for state in dirty:
        committed = state.committed_state
        mapper = state.mapper
        plan = plan_of(mapper)
        one_to_many = plan.spec.one_to_many
        if one_to_many and not one_to_many.isdisjoint(committed):
            changed = one_to_many & committed.keys()
            for child, keys in unloaded_moved_children(plan_of, state, changed, moved):
                missing.setdefault(child.mapper, []).append((child, [], keys))
        if plan.keep_old and not plan.spec.pk_keys.isdisjoint(committed):
            # a new primary key: delivered as the old key's row deleted, which is the whole
            # row, and the new key's inserted (see rows.record_update)
            keys = unknown_old_values(plan, state)
            unloaded = unloaded_columns(plan, state)
            if keys or unloaded:
                missing.setdefault(mapper, []).append((state, keys, unloaded))
            continue
        for old in committed.values():
            if old is NO_VALUE:
                break
        else:  # every old value is known: the common case
            if plan.flush_sets:
                unloaded = unloaded_set_by_flush(plan, state)
                if unloaded:
                    missing.setdefault(mapper, []).append((state, [], unloaded))
            continue
        if not plan.wants_old:
            continue
        keys = unknown_old_values(plan, state)
        unloaded = unloaded_set_by_flush(plan, state) if plan.flush_sets else []
        if keys or unloaded:
            missing.setdefault(mapper, []).append((state, keys, unloaded))
    for state in deleted:
        plan = plan_of(state.mapper)
        if not plan.wants_old or state.key is None:
            continue
        # a column set while expired, or changed in place (a mutable JSON value), holds
        # its new value in the object: the row deleted had the old one
        expired = unknown_old_values(plan, state) if state.committed_state else []
        keys = unloaded_columns(plan, state)
        if keys or expired:
            missing.setdefault(state.mapper, []).append((state, expired, keys))
    for mapper, items in missing.items():
        keys = sorted({key for _, expired, unloaded in items for key in (*expired, *unloaded)})
        found = select_by_identity(session, mapper, keys, [st.identity for st, _, _ in items])
        for state, expired, unloaded in items:
            row = found.get(state.identity or ())
            if row is None:
                continue  # gone already: the flush will report it
            for key in expired:
                state.committed_state[key] = row[key]
            for key in unloaded:
                sa_orm.attributes.set_committed_value(state.obj(), key, row[key])


def unloaded_moved_children(
    plan_of: Callable[[sa_orm.Mapper[Any]], ModelPlan],
    state: State,
    relationships: Iterable[str],
    seen: set[State],
) -> Iterator[tuple[State, list[str]]]:
    """The persistent objects these one-to-many collections of ``state`` gained or lost,
    with their expired columns, for those whose old values are captured.

    The flush writes their foreign keys itself, after ``before_flush``; when their
    columns are expired, SQLAlchemy loads each of them on its own as it does, and so
    would the old values: read before, with one SELECT per mapper, neither happens.
    ``seen`` holds the children found so far, which are not yielded again.
    """
    obj, passive = state.obj(), sa_orm.PassiveFlag.PASSIVE_NO_INITIALIZE
    for key in relationships:
        history = sa_orm.attributes.get_history(obj, key, passive)
        for child in (*history.added, *history.deleted):
            child_state = sa_orm.attributes.instance_state(child) if child is not None else None
            if child_state is None or child_state.key is None or child_state in seen:
                continue
            seen.add(child_state)
            plan = plan_of(child_state.mapper)
            if plan.keep_old:
                values, column_keys = child_state.dict, plan.spec.column_keys
                # (an expired attribute set since is in the dict: not to be overwritten)
                keys = [
                    k
                    for k in child_state.expired_attributes
                    if k in column_keys and k not in values
                ]
                if keys:
                    yield child_state, keys


def unloaded_set_by_flush(plan: ModelPlan, state: State) -> list[str]:
    """The columns the flush will set itself on ``state`` whose old value is not loaded.

    Those are the onupdate and version columns, and the foreign keys of a changed
    many-to-one relationship, which SQLAlchemy copies from the related object as it
    writes: loaded, their old values land in the history like any other.
    """
    values, committed = state.dict, state.committed_state
    spec = plan.spec
    keys = [key for key in spec.generated_keys if key not in values and key not in committed]
    many_to_one = spec.many_to_one
    if many_to_one and not many_to_one.keys().isdisjoint(committed):
        for relationship in many_to_one.keys() & committed.keys():
            keys.extend(
                local
                for local, _ in many_to_one[relationship]
                if local not in values and local not in committed and local not in keys
            )
    return keys


def unknown_old_values(plan: ModelPlan, state: State) -> list[str]:
    """The column attributes of ``state`` changed without their old value known: set while
    expired or deferred, or flagged modified (``flag_modified``, a ``Mutable`` value
    changed in place), which SQLAlchemy records as no old value at all."""
    column_keys = plan.spec.column_keys
    return [
        key for key, old in state.committed_state.items() if old is NO_VALUE and key in column_keys
    ]


def unloaded_columns(plan: ModelPlan, state: State) -> list[str]:
    """The column attributes of ``state`` not loaded; when all are (the common case), found
    with one set comparison."""
    values, column_keys = state.dict, plan.spec.column_keys
    if values.keys() >= column_keys:
        return []
    return [key for key in column_keys if key not in values]


def column_label(name: str) -> str:
    """The label :func:`select_by_identity` reads a column without an attribute under (one
    that no attribute key takes)."""
    return f"_column_{name}"


def select_by_identity(
    session: sa_orm.Session | sa.Connection,
    mapper: sa_orm.Mapper[Any],
    keys: list[str],
    identities: list[Any],
    unmapped: list[sa.Column[Any]] | None = None,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Load attribute values of the rows with these identities, keyed by identity.

    :param unmapped: columns of the mapper's table it has no attribute for, read too,
        each under :func:`column_label` of its name.
    """
    pk_columns = list(mapper.primary_key)
    pk_attrs = [mapper.get_property_by_column(c).key for c in pk_columns]
    columns = [mapper.attrs[k].expression.label(k) for k in keys]  # type: ignore[attr-defined, unused-ignore]
    columns += [column.label(column_label(column.name)) for column in unmapped or ()]
    pk_labels = [c.label(f"_pk{i}") for i, c in enumerate(pk_columns)]
    connection = (
        session
        if isinstance(session, sa.Connection)
        else session.connection(bind_arguments={"mapper": mapper})
    )
    # rows a flush writes or has written: read under the write lock (SQLite), see writelock
    take_write_lock(connection, mapper.local_table, sa.Update)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for start in range(0, len(identities), _FETCH_CHUNK):
        chunk = identities[start : start + _FETCH_CHUNK]
        where = (
            pk_columns[0].in_([ident[0] for ident in chunk])
            if len(pk_columns) == 1
            else sa.tuple_(*pk_columns).in_(chunk)
        )
        query = sa.select(*pk_labels, *columns).select_from(mapper.persist_selectable).where(where)
        for row in connection.execute(query).mappings():
            ident = tuple(row[f"_pk{i}"] for i in range(len(pk_attrs)))
            found[ident] = dict(row)
    return found
