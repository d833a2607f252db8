"""Handing a committed :class:`ChangeSet` to callbacks, listeners and sinks, each isolated.

In which order, and by which thread or task, is :mod:`.ordering`'s business.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._compat import await_in_greenlet, in_greenlet
from .callbacks import check_arguments, qualname
from .changes import ChangeSet, each_change
from .exceptions import ConfigurationError
from .registry import vetoes_nothing

if TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

    from .events import Events

__all__ = ["Receiver", "Sink", "TransactionalSink", "check_sink", "deliver_one", "raise_failures"]

logger = logging.getLogger("dbevents")

#: an ``on_commit`` listener, or a sink's ``publish``
Receiver = Callable[[ChangeSet], Any]


@runtime_checkable
class Sink(Protocol):
    """Receives every committed change set, after the commit.

    ``publish`` runs in the committing thread, before ``commit()`` returns.  A
    sink may also define ``close()``.  Inheriting from this class is not needed.
    """

    # (object: under AsyncSession, an async def publish is awaited)
    def publish(self, changeset: ChangeSet) -> object: ...


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


def deliver_one(
    events: Events, changeset: ChangeSet, models: Sequence[type[Any] | None]
) -> list[BaseException]:
    """Deliver one change set: its model after_commit callbacks, then its listeners and
    sinks, in registration order; return the failures.

    Every failure is logged on the ``dbevents`` logger and passed to the ``on_error``
    handlers, and the other receivers still run.  A receiver cancelled (an asyncio
    timeout, a task cancelled) is logged and returned among the failures too, for the
    caller to raise once every receiver had the change set.
    """
    errors: list[BaseException] = []
    registry = events.registry
    callbacks_of = {
        model: callbacks
        for model in set(models)
        if model is not None and (callbacks := registry.table(model).get("after_commit"))
    }
    if callbacks_of:  # (else the change set's Change values need not be made here)
        for change, model in zip(each_change(changeset), models, strict=True):
            for fn, op in callbacks_of.get(model, ()) if model is not None else ():
                if op is None:
                    _call(events, fn, changeset, errors, model, change.op, change)
                elif op is change.op:
                    _call(events, fn, changeset, errors, model, change)
    for receiver in events.receivers:
        _call(events, receiver, changeset, errors, changeset)
    return errors


def raise_failures(failures: Sequence[BaseException], robust: bool, what: str) -> None:
    """Re-raise a cancellation among the receivers' ``failures``; unless ``robust``, raise
    the errors together as an :class:`ExceptionGroup` of ``what`` failed."""
    for failure in failures:
        if not isinstance(failure, Exception):
            raise failure
    if failures and not robust:
        errors = [failure for failure in failures if isinstance(failure, Exception)]
        raise ExceptionGroup(f"{len(errors)} {what} failed", errors)


def _call(
    events: Events,
    fn: Callable[..., Any],
    changeset: ChangeSet,
    errors: list[BaseException],
    *args: Any,
) -> None:
    try:
        result = fn(*args)
        if result is not None and inspect.isawaitable(result):
            result = _await(result, events, fn, args)
        if result is True and isinstance(args[0], type):  # a model callback, given its class
            vetoes_nothing(fn, "after_commit")
    except asyncio.CancelledError as cancelled:
        errors.append(cancelled)
        logger.warning(
            "dbevents: %r was cancelled on change set %s; the other receivers still get it",
            fn,
            changeset.id,
        )
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
