"""What one :class:`Events` does with one mapper's rows, resolved once per mapper.

The unit of work asks these questions for every row it writes: which callbacks
run, how much is captured, whether old values are needed.  Answering them from
the registry and the capture settings on every row costs more than the answers
are worth, so each mapper gets a plan, kept until a registration or a capture
level changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import sqlalchemy.orm as sa_orm

from ..mapping import MapperSpec, mapper_spec
from ..registry import Callbacks

if TYPE_CHECKING:
    from ..events import Events

__all__ = ["ModelPlan", "Plans"]

_BEFORE = ("before_save", "before_insert", "before_update", "before_delete", "before_destroy")
_AFTER = ("after_insert", "after_update", "after_delete", "after_save", "after_destroy")


@final
class ModelPlan:
    """The callbacks and the capture level of one mapper's rows, for one :class:`Events`."""

    __slots__ = (
        "after",
        "after_delete",
        "after_destroy",
        "after_insert",
        "after_save",
        "after_update",
        "before",
        "before_delete",
        "before_destroy",
        "before_insert",
        "before_save",
        "before_update",
        "capture",
        "flush_sets",
        "keep_new",
        "keep_old",
        "model",
        "spec",
        "wants_old",
        "writes",
    )

    def __init__(self, events: Events, mapper: sa_orm.Mapper[Any]) -> None:
        self.spec: MapperSpec = mapper_spec(mapper)
        self.model: type[Any] = mapper.class_
        table = events.registry.table(mapper.class_)
        level = events.level_of(mapper)
        #: rows are recorded at all (any level but "off")
        self.capture = level != "off"
        #: changes carry old values ("old+new") / new values ("new" and "old+new")
        self.keep_old = level == "old+new"
        self.keep_new = level in ("new", "old+new")
        #: any callback around a write (not the commit ones)
        self.writes = table.writes
        #: old values must be known: for capture, or for callbacks to skip no-op updates
        self.wants_old = self.keep_old or self.writes
        #: the flush may set columns itself (onupdate, version, many-to-one foreign keys)
        #: whose old values the change needs
        self.flush_sets = self.keep_old and bool(self.spec.generated_keys or self.spec.many_to_one)
        self.before_save: Callbacks = table.get("before_save")
        self.before_insert: Callbacks = table.get("before_insert")
        self.before_update: Callbacks = table.get("before_update")
        self.before_delete: Callbacks = table.get("before_delete")
        self.before_destroy: Callbacks = table.get("before_destroy")
        self.after_insert: Callbacks = table.get("after_insert")
        self.after_update: Callbacks = table.get("after_update")
        self.after_delete: Callbacks = table.get("after_delete")
        self.after_save: Callbacks = table.get("after_save")
        self.after_destroy: Callbacks = table.get("after_destroy")
        #: any before_* / after_* callback: rows are visited for them
        self.before = any(table.get(event) for event in _BEFORE)
        self.after = any(table.get(event) for event in _AFTER)


@final
class Plans(dict[sa_orm.Mapper[Any], ModelPlan]):
    """The plans of one :class:`Events`, made on first lookup.

    ``plans[mapper]`` runs for every row a flush writes; a dict lookup is cheaper
    than a method call that does one.
    """

    __slots__ = ("events",)

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events

    def __missing__(self, mapper: sa_orm.Mapper[Any]) -> ModelPlan:
        plan = self[mapper] = ModelPlan(self.events, mapper)
        return plan
