"""The model callback decorators: ``@before_insert`` ... ``@after_commit``.

A decorator only marks the function and checks its signature; the function is
returned unchanged, so it stays callable and keeps its type.  The marks are
collected through the MRO when a model is first written (see
:mod:`dbevents.registry`), so callbacks declared on a mixin or base class apply
to every mapped subclass, base first.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from .changes import Op
from .exceptions import ConfigurationError

__all__ = [
    "EVENTS",
    "after_commit",
    "after_delete",
    "after_destroy",
    "after_insert",
    "after_save",
    "after_update",
    "before_commit",
    "before_delete",
    "before_destroy",
    "before_insert",
    "before_save",
    "before_update",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Every event name, with the arguments its callbacks take after the model class.
EVENTS: Final[dict[str, tuple[str, ...]]] = {
    "before_insert": ("fields",),
    "after_insert": ("fields", "pk"),
    "before_update": ("rows", "fields"),
    "after_update": ("rows", "fields"),
    "before_delete": ("rows",),
    "after_delete": ("rows",),
    "before_save": ("row",),
    "after_save": ("row",),
    "before_destroy": ("row",),
    "after_destroy": ("row",),
    "before_commit": ("op", "change"),
    "after_commit": ("op", "change"),
}

_MARK = "__dbevents__"


@dataclass(frozen=True, slots=True)
class Mark:
    """One registration of a function for an event; ``op`` filters ``after_commit``."""

    event: str
    op: Op | None = None


def check_signature(fn: Callable[..., Any], event: str, op: Op | None = None) -> None:
    """Raise :class:`ConfigurationError` unless ``fn`` can take ``event``'s arguments.

    Only ``after_commit`` callbacks may be ``async def``: they run at delivery, where
    awaitables are awaited; the others run inside the flush or the commit.
    """
    if event not in EVENTS:
        known = ", ".join(EVENTS)
        raise ConfigurationError(f"unknown event {event!r}; expected one of: {known}")
    if event != "after_commit" and is_async(fn):
        raise ConfigurationError(
            f"{qualname(fn)}: {a_or_an(event)} callback runs synchronously inside the "
            "transaction, where an async def would never be awaited, so it would neither run "
            "nor veto; make it a plain def (only after_commit callbacks may be async)"
        )
    params = ("cls", "change") if op is not None else ("cls", *EVENTS[event])
    check_arguments(fn, f"{a_or_an(event)} callback", params)


def check_arguments(fn: Any, what: str, params: tuple[str, ...]) -> None:
    """Raise :class:`ConfigurationError` unless ``fn`` is a callable that takes ``params``.

    :param what: what ``fn`` is registered as, for the message (``"an on_commit listener"``).
    :param params: the names of the positional arguments ``fn`` is called with.
    """
    if not callable(fn):
        raise ConfigurationError(f"{fn!r}: {what} must be callable")
    try:
        signature = inspect.signature(fn)
    except ValueError:  # builtins without a signature: let them fail when called
        return
    try:
        signature.bind(*params)
    except TypeError:
        shape = ", ".join(params)
        raise ConfigurationError(
            f"{qualname(fn)}: {what} is called as ({shape}); "
            f"its signature {signature} cannot take that"
        ) from None


def a_or_an(word: str) -> str:
    """``word`` with its indefinite article: ``"an after_insert"``, ``"a before_insert"``."""
    return f"an {word}" if word[:1] in tuple("aeiou") else f"a {word}"


def qualname(fn: Any) -> str:
    """How a message names a function: its qualified name, else its repr."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is an ``async def``, or an object whose ``__call__`` is one, also
    behind decorators that say what they wrap (``functools.wraps``)."""
    with contextlib.suppress(ValueError):  # (a cycle of __wrapped__: taken as it is)
        fn = inspect.unwrap(fn)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def marks(value: Any) -> tuple[Mark, ...]:
    """Return the marks a class attribute carries (unwrapping classmethod)."""
    fn = getattr(value, "__func__", value)
    return getattr(fn, _MARK, ()) if callable(fn) else ()


def callable_of(value: Any) -> Callable[..., Any]:
    """Return the plain function behind a class attribute that carries marks."""
    return getattr(value, "__func__", value)  # type: ignore[no-any-return]


class _Decorator:
    """Marks a model method as the callback of one event."""

    __slots__ = ("event", "op")

    def __init__(self, event: str, op: Op | None = None) -> None:
        self.event = event
        self.op = op

    def __call__(self, fn: F | None = None, /, *args: Any, **kwargs: Any) -> F:
        target = callable_of(fn)
        if fn is None or args or kwargs or not callable(target):
            # @before_insert() would otherwise fail with a TypeError about a missing 'fn'
            spelled, more = self._spelled(), " more" if self.op else ""
            called = "()" if fn is None and not args and not kwargs else "(...)"
            raise ConfigurationError(
                f"write @{spelled} without{more} parentheses, not @{spelled}{called}: "
                "it takes the decorated function only"
            )
        check_signature(target, self.event, self.op)
        existing = getattr(target, _MARK, ())
        setattr(target, _MARK, (*existing, Mark(self.event, self.op)))
        return fn

    def _spelled(self) -> str:
        suffix = f".operation(Op.{self.op.name})" if self.op else ""
        return f"{self.event}{suffix}"

    def __repr__(self) -> str:
        return f"<dbevents.{self._spelled()}>"


class _CommitDecorator(_Decorator):
    """``@after_commit``, plus ``@after_commit.operation(Op.X)`` for one kind of change."""

    __slots__ = ()

    def operation(self, op: Op | None = None, /) -> _Decorator:
        """Mark a callback ``(cls, change)`` that runs only for changes of kind ``op``."""
        if not isinstance(op, Op):
            got = "nothing" if op is None else repr(op)
            raise ConfigurationError(
                f"operation() takes a dbevents.Op, got {got}: pass the kind of change, "
                f"as in @{self.event}.operation(Op.INSERT)"
            )
        return _Decorator(self.event, op)


before_insert: Final = _Decorator("before_insert")
"""``(cls, fields)``: before a row is inserted; may change ``fields``; ``True`` vetoes."""
after_insert: Final = _Decorator("after_insert")
"""``(cls, fields, pk)``: after a row was inserted; ``pk`` is its new primary key."""
before_update: Final = _Decorator("before_update")
"""``(cls, rows, fields)``: before rows are updated with ``fields``; ``True`` vetoes."""
after_update: Final = _Decorator("after_update")
"""``(cls, rows, fields)``: after rows were updated."""
before_delete: Final = _Decorator("before_delete")
"""``(cls, rows)``: before rows are deleted; ``True`` vetoes."""
after_delete: Final = _Decorator("after_delete")
"""``(cls, rows)``: after rows were deleted (``rows.pks`` still known)."""
before_save: Final = _Decorator("before_save")
"""``(cls, row)``: before one row is inserted or updated; ``True`` vetoes."""
after_save: Final = _Decorator("after_save")
"""``(cls, row)``: after one row was inserted or updated."""
before_destroy: Final = _Decorator("before_destroy")
"""``(cls, row)``: before one row is deleted; ``True`` vetoes."""
after_destroy: Final = _Decorator("after_destroy")
"""``(cls, row)``: after one row was deleted."""
before_commit: Final = _Decorator("before_commit")
"""``(cls, op, change)``: per net change, inside the transaction just before COMMIT."""
after_commit: Final = _CommitDecorator("after_commit")
"""``(cls, op, change)``: per net change of a committed transaction."""
