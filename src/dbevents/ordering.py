"""Which thread or task delivers each committed change set, and in which order.

A change set takes its place in its thread's or asyncio task's queue when its
transaction commits (:func:`enqueue`), and is delivered when the transaction
has ended (:func:`deliver_queued`), so that receivers may use the session
again.  A commit made while a change set is being delivered (an after_commit
callback or a listener that writes and commits) is delivered after it, by the
delivery already running, for every :class:`Events`: a sink that keeps rows never
applies a later change before an earlier one.  Commits made by asyncio tasks a
receiver starts (which copy its context), SQLAlchemy's own included (``async with
maker.begin()`` commits in a task of its own), join that delivery while it runs.

Two ways a change set could be left in a queue are closed: a receiver
cancelled (an asyncio timeout) lets the others run and the queue drain before
the cancellation goes on, and a commit cancelled between COMMIT and the end of
its transaction (while SQLAlchemy hands the connection back) has its change set
delivered when its task ends, unless a later commit of the task delivered it first.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, final

from .changes import ChangeSet
from .delivery import deliver_one, raise_failures

if TYPE_CHECKING:
    from .events import Events

__all__ = ["deliver_queued", "enqueue"]

Queued = tuple["Events", ChangeSet, Sequence[type[Any] | None]]


@final
class _Order:
    """The change sets one thread or asyncio task committed and has not delivered yet, in
    the order they were committed; whether it is delivering them now (further up its stack)."""

    __slots__ = ("delivering", "owner", "queue", "watched")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.queue: list[Queued] = []
        self.delivering = False
        #: a task's order: its end is watched for change sets left behind
        self.watched = False


#: this thread's or task's order; a task started meanwhile copies the variable, and
#: starts an order of its own (the owner tells)
_order: ContextVar[_Order | None] = ContextVar("dbevents.delivery_order", default=None)
#: the order being delivered, while it is: what a task or thread started by one of its
#: receivers commits joins it
_delivering: ContextVar[_Order | None] = ContextVar("dbevents.delivering", default=None)


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
    if order is not None and order.owner == strand:
        return order
    started_by = _delivering.get()
    if started_by is not None and started_by.delivering:
        return started_by  # a commit of a receiver's own: after the change set it is given
    order = _Order(strand)
    _order.set(order)
    return order


def enqueue(events: Events, changeset: ChangeSet, models: Sequence[type[Any] | None]) -> None:
    """Give a change set its place in the delivery order; called as its transaction commits.

    ``models`` holds the mapped class of each change (``None`` for association and
    Core-only tables).  :func:`deliver_queued` delivers it.
    """
    order = _current_order()
    order.queue.append((events, changeset, models))
    if not order.watched and isinstance(order.owner, asyncio.Task):
        order.watched = True
        order.owner.add_done_callback(partial(_left_behind, order))


def deliver_queued() -> None:
    """Deliver the change sets this thread or task queued, in the order they were committed.

    Called while delivering (a callback that commits), it leaves what was queued
    meanwhile to the delivery already running, which gets to it after the change
    set it is delivering.  With ``robust=False`` the receivers' failures are
    raised together as an :class:`ExceptionGroup` at the end; a receiver cancelled
    re-raises its cancellation then.
    """
    order = _order.get()
    if order is None or not order.queue or order.delivering or order.owner != _strand():
        return  # (nothing queued here: the usual case, on every transaction's end)
    _drain(order)


def _drain(order: _Order) -> None:
    queue = order.queue
    order.delivering = True
    token = _delivering.set(order)
    failures: list[BaseException] = []  # cancellations, and the errors not robust
    try:
        while queue:
            events, changeset, models = queue.pop(0)
            failed = deliver_one(events, changeset, models)
            failures += (f for f in failed if not (events.robust and isinstance(f, Exception)))
    finally:
        order.delivering = False
        _delivering.reset(token)
    raise_failures(failures, False, "change set receiver(s)")


def _left_behind(order: _Order, task: asyncio.Task[Any]) -> None:
    """A task ended with change sets queued: its commit was cancelled after COMMIT, before
    the transaction ended.  They are delivered by a task of their own, in a greenlet, as
    AsyncSession delivers (async receivers are awaited there)."""
    if not order.queue or order.delivering:
        return
    from sqlalchemy.util import greenlet_spawn  # (greenlet is there: a task committed)

    task.get_loop().create_task(greenlet_spawn(_drain, order))
