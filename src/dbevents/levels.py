"""Capture levels: how much of each model's (or table's) changes an Events captures.

A level is set per class, class name or table name (``Events(capture=...)``,
``set_capture_level``), else on the class (``__dbevents_capture__``), else it is
``"old+new"``.  The flush asks for every row, so each mapper's level is resolved
once and kept until a level is set again.
"""

from __future__ import annotations

from typing import Any, cast, final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from .capture import LEVELS, CaptureLevel
from .exceptions import ConfigurationError
from .mapping import TableSpec
from .warn import warn

__all__ = ["CaptureLevels"]


@final
class CaptureLevels:
    """The capture levels set for one :class:`~dbevents.Events`, resolved per mapper."""

    __slots__ = ("_by_mapper", "_by_table", "settings")

    def __init__(self) -> None:
        #: the levels set, by class, class name or table name
        self.settings: dict[type[Any] | str, CaptureLevel] = {}
        self._by_mapper: dict[sa_orm.Mapper[Any], CaptureLevel] = {}
        self._by_table: dict[TableSpec, CaptureLevel] = {}

    def set(self, key: type[Any] | str, level: CaptureLevel) -> None:
        """Set the level of a class, a class name or a table name."""
        if level not in LEVELS:
            raise ConfigurationError(f"capture level must be one of {LEVELS}, not {level!r}")
        self.settings[key] = level
        self._by_mapper.clear()
        self._by_table.clear()

    def of(self, mapper: sa_orm.Mapper[Any]) -> CaptureLevel:
        """The level of a mapper's rows."""
        level = self._by_mapper.get(mapper)
        if level is None:
            if not self._by_mapper:
                _warn_unknown_names(self.settings)
            level = self._by_mapper[mapper] = self._resolve(mapper)
        return level

    def of_table(self, spec: TableSpec) -> CaptureLevel:
        """The level of a table's rows: its model's, else the table's own setting."""
        level = self._by_table.get(spec)  # (looked up for every statement)
        if level is None:
            model = spec.mapped_class()
            if model is not None:
                level = self.of(sa.inspect(model))
            else:
                level = self.settings.get(spec.name, "old+new")
            self._by_table[spec] = level
        return level

    def _resolve(self, mapper: sa_orm.Mapper[Any]) -> CaptureLevel:
        model, settings = mapper.class_, self.settings
        for klass in model.__mro__:
            for key in (klass, klass.__name__):
                if key in settings:
                    return settings[key]
        for table in mapper.tables:  # its own table first, then those it inherits
            for name in (table.fullname, table.name):
                if name in settings:
                    return settings[name]
        level = getattr(model, "__dbevents_capture__", "old+new")
        if level not in LEVELS:
            raise ConfigurationError(
                f"{model.__name__}.__dbevents_capture__ must be one of {LEVELS}, not {level!r}",
                model=model,
            )
        return cast(CaptureLevel, level)


def _warn_unknown_names(settings: dict[type[Any] | str, CaptureLevel]) -> None:
    """Warn about levels set for a name no mapped class or known table has.

    Checked when the first level is looked up, once the models are usually all
    mapped: a misspelt name would otherwise leave its model at the default level.
    """
    names = [key for key in settings if isinstance(key, str)]
    if not names:
        return
    from ._compat import all_mappers

    known: set[str] = set()
    for mapper in all_mappers():
        known.add(mapper.class_.__name__)
        metadata = getattr(mapper.local_table, "metadata", None)
        for table in metadata.tables.values() if metadata is not None else ():
            known.update((table.name, table.fullname))
    for name in names:
        if name not in known:
            warn(
                f"capture={{{name!r}: ...}}: no mapped class or table of the mapped classes' "
                f"metadata is called {name!r}; check the spelling (its level applies to a "
                "Core table of that name only)"
            )
