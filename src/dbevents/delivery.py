"""Handing a committed :class:`ChangeSet` to callbacks, listeners and sinks, each isolated."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, final, runtime_checkable

from ._compat import await_in_greenlet, in_greenlet
from .callbacks import check_arguments, qualname
from .changes import ChangeSet
from .exceptions import ConfigurationError
from .registry import vetoes_nothing

if TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .events import Events

__all__ = ["Receiver", "Sink", "TransactionalSink", "check_sink", "deliver_queued", "enqueue"]

logger = logging.getLogger("dbevents")

#: an ``on_commit`` listener, or a sink's ``publish``
Receiver = Callable[[ChangeSet], Any]


@runtime_checkable
class Sink(Protocol):
    """Receives every committed change set, after the commit.

    ``publish`` runs in the committing thread, before ``commit()`` returns.  A
    sink may also define ``close()``.  Inheriting from this class is not needed.
    """

    def publish(self, changeset: ChangeSet) -> None: ...


@runtime_checkable
class TransactionalSink(Protocol):
    """A sink that also writes inside the transaction, just before COMMIT (the outbox).

    ``write`` may execute SQL on the session's connection; if it raises, the
    commit fails and nothing is committed.  When rows change after it ran (a
    ``before_commit`` listener of the application's that runs after dbevents'),
    it is called again with the change set as it is now, under the same ``id``:
    it then replaces what it wrote (or removes it, when no change is left).
    """

    def publish(self, changeset: ChangeSet) -> None: ...

    def write(self, session: sa_orm.Session, changeset: ChangeSet) -> None: ...


@final
class _Order:
    """The change sets one thread or asyncio task committed and has not delivered yet, in
    the order they were committed; whether it is delivering them now (further up its stack).

    Each change set takes its place when its transaction commits, so that a commit made
    while another is being delivered (an after_commit callback that writes and commits)
    comes after it for every Events, even one whose turn to deliver the first has not
    come yet.
    """

    __slots__ = ("delivering", "owner", "queue")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.queue: list[tuple[Events, ChangeSet, Sequence[type[Any] | None]]] = []
        self.delivering = False


#: kept in a context variable, which a task started meanwhile copies: each order knows
#: its thread or task, and another one starts an order of its own
_order: ContextVar[_Order | None] = ContextVar("dbevents.delivery_order", default=None)


def _strand() -> object:
    """The asyncio task running now, else the thread (AsyncSession's sync code runs in a
    greenlet within its task)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop running in this thread
        task = None
    return task if task is not None else threading.get_ident()


def _current_order() -> _Order:
    order, strand = _order.get(), _strand()
    if order is None or order.owner != strand:
        order = _Order(strand)
        _order.set(order)
    return order


def enqueue(events: Events, changeset: ChangeSet, models: Sequence[type[Any] | None]) -> None:
    """Give a change set its place in the delivery order; called as its transaction commits.

    ``models`` holds the mapped class of each change (``None`` for association and
    Core-only tables).  :func:`deliver_queued` delivers it.
    """
    _current_order().queue.append((events, changeset, models))


def deliver_queued() -> None:
    """Deliver the change sets this thread or task queued, in the order they were committed.

    Each runs its model after_commit callbacks, then its listeners and sinks in
    registration order.  Every failure is logged on the ``dbevents`` logger and
    passed to the ``on_error`` handlers; the others still run.  With
    ``robust=False`` the failures are raised together as an :class:`ExceptionGroup`
    at the end.  Called while delivering (a callback that commits), it leaves what
    was queued meanwhile to the delivery already running, which gets to it after
    the change set it is delivering: every receiver gets change sets in the order
    they were committed, so a sink that keeps rows never applies a later change
    before an earlier one.
    """
    order = _order.get()
    if order is None or not order.queue or order.delivering or order.owner != _strand():
        return  # (nothing queued here: the usual case, on every transaction's end)
    queue = order.queue
    order.delivering = True
    errors: list[Exception] = []
    try:
        while queue:
            events, changeset, models = queue.pop(0)
            failed = _deliver_one(events, changeset, models)
            if not events.robust:
                errors += failed
    finally:
        order.delivering = False
    if errors:
        raise ExceptionGroup(f"{len(errors)} change set receiver(s) failed", errors)


def _deliver_one(
    events: Events, changeset: ChangeSet, models: Sequence[type[Any] | None]
) -> list[Exception]:
    """Deliver one change set (see :func:`deliver`); return the failures."""
    errors: list[Exception] = []
    registry = events.registry
    callbacks_of = {
        model: callbacks
        for model in set(models)
        if model is not None and (callbacks := registry.table(model).get("after_commit"))
    }
    if callbacks_of:  # (else the change set's Change values need not be made here)
        for change, model in zip(changeset.changes, models, strict=True):
            for fn, op in callbacks_of.get(model, ()) if model is not None else ():
                if op is None:
                    _call(events, fn, changeset, errors, model, change.op, change)
                elif op is change.op:
                    _call(events, fn, changeset, errors, model, change)
    for receiver in events.receivers:
        _call(events, receiver, changeset, errors, changeset)
    return errors


def _call(
    events: Events,
    fn: Callable[..., Any],
    changeset: ChangeSet,
    errors: list[Exception],
    *args: Any,
) -> None:
    try:
        result = fn(*args)
        if result is not None and inspect.isawaitable(result):
            result = _await(result, events, fn, args)
        if result is True and isinstance(args[0], type):  # a model callback, given its class
            vetoes_nothing(fn, "after_commit")
    except Exception as error:
        errors.append(error)
        logger.exception("dbevents: %r failed on change set %s", fn, changeset.id)
        for handler in events.error_handlers:
            try:
                handler(error, fn, changeset)
            except Exception:
                logger.exception("dbevents: error handler %r failed", handler)


def _await(awaitable: Any, events: Events, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Await an async receiver: inside AsyncSession through its greenlet, else in a new loop."""
    if in_greenlet():
        return await_in_greenlet(awaitable)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(awaitable))
    awaitable.close()
    raise RuntimeError(
        f"{qualname(fn)}: {_role(events, fn, args)} can't be awaited from a synchronous "
        "Session commit running inside an event loop; commit with an AsyncSession, or make "
        "it a plain def"
    )


def _role(events: Events, fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """What ``fn`` was registered as, for a message."""
    if isinstance(args[0], type):  # model callbacks get the model class first
        return f"an async after_commit callback of {args[0].__name__}"
    if any(getattr(fn, "__self__", None) is sink for sink in events.sinks):
        return "the async publish of a sink"
    return "an async on_commit listener"


def check_sink(sink: object) -> None:
    """Raise :class:`ConfigurationError` unless ``sink`` is a sink: an object (not a class)
    whose ``publish`` takes one change set."""
    if isinstance(sink, type):
        raise ConfigurationError(
            f"{sink.__qualname__} is a class, not a sink: pass an instance, such as "
            f"{sink.__qualname__}()"
        )
    if not isinstance(sink, Sink):
        raise ConfigurationError(f"{sink!r} is not a sink: it has no publish(changeset) method")
    check_arguments(sink.publish, "a sink's publish", ("changeset",))


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
