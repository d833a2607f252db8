"""Rows the database changes itself when the flush deletes their parent.

A relationship with ``passive_deletes`` leaves the rows of a collection it has
not loaded to its foreign key's ``ON DELETE``: no statement of the flush writes
them, so dbevents can't capture them.  It says so, as it does of raw SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from ..mapping import table_spec
from .uncaptured import uncaptured

if TYPE_CHECKING:
    from .flush import FlushState, State

__all__ = ["tell_rows_left_to_the_database"]


def tell_rows_left_to_the_database(fs: FlushState, deleted: list[State]) -> None:
    """Say that rows the database deletes or updates itself go by uncaptured.

    A relationship with ``passive_deletes`` leaves the rows of a collection not
    loaded to its foreign key's ON DELETE (with ``"all"``, loaded ones too unless
    the delete cascades to them): no statement of the flush writes them, so no
    change tells of them and no callback runs.  Told once per relationship.
    """
    plan_of = fs.plan_of
    if not any(plan_of(mapper).spec.passive_deletes for mapper in {s.mapper for s in deleted}):
        return  # the common case, told once per mapper rather than per row
    told: set[Any] = set()
    for state in deleted:
        for rel, action in plan_of(state.mapper).spec.passive_deletes.items():
            if rel in told or not _left_to_the_database(rel, state) or not _watched(fs, rel):
                continue
            told.add(rel)
            owner = f"{state.class_.__name__}.{rel.key}"
            secondary = rel.secondary
            rows = rel.mapper.class_.__name__ if secondary is None else str(secondary.description)
            verb = "deletes" if action == "CASCADE" else "updates"
            uncaptured(
                [fs.st],
                f"the database itself {verb} the {rows} rows of {owner} along with "
                f"{sa_orm.util.state_str(state)} (passive_deletes and ON DELETE {action}): they "
                f"are missing from the change set and get no callbacks; load {owner} before the "
                f"delete, or drop passive_deletes, to have them captured "
                f'(Events(raw_sql="ignore") silences this)',
            )


def _left_to_the_database(rel: Any, state: State) -> bool:
    if rel.key not in state.dict:
        return True  # not loaded: the flush won't load it
    return bool(rel.passive_deletes == "all" and not rel.cascade.delete)


def _watched(fs: FlushState, rel: Any) -> bool:
    """Whether the rows of ``rel`` are captured or have callbacks."""
    secondary = rel.secondary
    if secondary is not None:
        # (a secondary that is no Table, a join say, is never captured)
        return isinstance(secondary, sa.Table) and (
            fs.events.level_of_table(table_spec(secondary)) != "off"
        )
    plan = fs.plan_of(rel.mapper)
    return plan.capture or plan.writes
