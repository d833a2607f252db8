"""Which callbacks run for which model: decorators collected through the MRO plus
functions registered with :meth:`Events.listens_for`.

The result for a model class is a :class:`Table`, built once and cached, so the
flush asks one dictionary per object and nothing more.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, final

from .callbacks import EVENTS, a_or_an, callable_of, marks, qualname
from .changes import Op
from .warn import warn

__all__ = ["Handler", "Registry", "Table", "VETOING", "first_veto", "vetoes_nothing"]

Callback = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Handler:
    """One registered callback, as listed by :meth:`Events.handlers`."""

    model: type[Any]
    event: str
    callback: Callback
    op: Op | None
    where: str

    def __str__(self) -> str:
        suffix = f".operation({self.op.name})" if self.op else ""
        return f"{self.model.__name__}.{self.event}{suffix} -> {self.where}"


@final
class Table:
    """The callbacks of one model, per event, in the order they run."""

    __slots__ = ("by_event", "row_level", "writes")

    def __init__(self, entries: list[tuple[str, Callback, Op | None]]) -> None:
        by_event: dict[str, list[tuple[Callback, Op | None]]] = {}
        for event, fn, op in entries:
            by_event.setdefault(event, []).append((fn, op))
        self.by_event = {event: tuple(items) for event, items in by_event.items()}
        #: any row-level callback: statements then materialize the affected rows
        self.row_level = any(
            event in self.by_event
            for event in ("before_save", "after_save", "before_destroy", "after_destroy")
        )
        #: any callback that runs around a write (not the commit ones)
        self.writes = any(event not in ("before_commit", "after_commit") for event in by_event)

    def get(self, event: str) -> tuple[tuple[Callback, Op | None], ...]:
        return self.by_event.get(event, ())


_EMPTY = Table([])


@final
class Registry:
    """Function-style registrations of one :class:`Events`, and the per-model tables."""

    __slots__ = ("_listeners", "_tables")

    def __init__(self) -> None:
        self._listeners: list[tuple[type[Any], str, Callback, Op | None, bool]] = []
        self._tables: dict[type[Any], Table] = {}

    def add(
        self, model: type[Any], event: str, fn: Callback, *, op: Op | None, propagate: bool
    ) -> None:
        self._listeners.append((model, event, fn, op, propagate))
        self._tables.clear()  # a base-class registration changes every subclass's table

    def table(self, model: type[Any]) -> Table:
        table = self._tables.get(model)
        if table is None:
            entries = [(event, fn, op) for event, fn, op, _ in self._collect(model)]
            table = self._tables[model] = Table(entries) if entries else _EMPTY
        return table

    def handlers(self, model: type[Any]) -> list[Handler]:
        return [
            Handler(model, event, fn, op, _where(fn, owner))
            for event, fn, op, owner in self._collect(model)
        ]

    def _collect(self, model: type[Any]) -> list[tuple[str, Callback, Op | None, type[Any]]]:
        mro = model.__mro__
        owner_of: dict[str, type[Any]] = {}
        for klass in mro:  # the class that wins attribute lookup owns the name
            for name in vars(klass):
                owner_of.setdefault(name, klass)
        entries: list[tuple[str, Callback, Op | None, type[Any]]] = []
        for klass in reversed(mro):  # base first
            for name, value in vars(klass).items():
                if owner_of[name] is klass:
                    for mark in marks(value):
                        entries.append((mark.event, callable_of(value), mark.op, klass))
            for target, event, fn, op, propagate in self._listeners:
                if target is klass and (propagate or klass is model):
                    entries.append((event, fn, op, klass))
        assert all(event in EVENTS for event, *_ in entries)
        return entries


def _where(fn: Callback, owner: type[Any]) -> str:
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    try:
        file = inspect.getsourcefile(fn)
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return name
    return f"{name} ({file}:{line})"


Callbacks = tuple[tuple[Callback, Op | None], ...]


def first_veto(callbacks: Callbacks, model: type[Any], *args: Any) -> Callback | None:
    """Run ``callbacks`` in order until one returns ``True`` (a veto); return that one."""
    for fn, _ in callbacks:
        if fn(model, *args) is True:
            return fn
    return None


#: the events whose callbacks veto by returning ``True``
VETOING: Final = (
    "before_insert",
    "before_update",
    "before_delete",
    "before_save",
    "before_destroy",
)

#: callbacks already warned about by :func:`vetoes_nothing`
_vetoes_told: weakref.WeakSet[Callback] = weakref.WeakSet()


def run_all(callbacks: Callbacks, event: str, model: type[Any], *args: Any) -> None:
    """Run every callback of an event that cannot veto; one returning ``True`` is warned
    about (see :func:`vetoes_nothing`), and the others still run."""
    for fn, _ in callbacks:
        if fn(model, *args) is True:
            vetoes_nothing(fn, event)


def vetoes_nothing(fn: Callback, event: str) -> None:
    """Warn, once per callback, that ``fn``, a callback of ``event``, returned ``True``.

    Called where the return value of a callback that cannot veto is seen: Emmett's
    after_* callbacks abort by returning ``True``, and ours would silently go on.
    """
    if event in VETOING or fn in _vetoes_told:
        return
    with contextlib.suppress(TypeError):  # one that can't be weakly referenced: every time
        _vetoes_told.add(fn)
    if event == "before_commit":
        advice = "raise an exception to abort the commit"
    elif event == "after_commit":
        advice = "the transaction has committed already; return None"
    else:
        advice = f"the write is done already; to veto it, return True from before_{event[6:]}"
    warn(
        f"{qualname(fn)} returned True, but {a_or_an(event)} callback cannot veto (only "
        f"{', '.join(VETOING[:-1])} and {VETOING[-1]} can): {advice}"
    )
