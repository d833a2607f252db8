"""Per-session state and the transaction lifecycle: buffers, savepoints, commit, delivery.

SQLAlchemy fires ``after_commit`` when a SAVEPOINT is released and
``after_rollback`` when one is rolled back, so neither can be trusted alone.
Each root or SAVEPOINT transaction gets its own buffer; ``after_commit`` marks
the one that committed (a root's change set takes its place in the delivery
order there, see :func:`~.delivery.deliver_queued`), and ``after_transaction_end``
then merges it into its parent (a savepoint), delivers it (the root), or drops it
(never marked).

A SAVEPOINT the application begins on the session's connection itself
(``session.connection().begin_nested()``) is no session transaction, so no
session event tells of it: its statements do (see ``dispatch.connection``), and
it gets a buffer the same way, merged when it is released and dropped when it
is rolled back.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any, Final, cast, final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from . import sqlite
from ._compat import autocommits
from .capture import Buffer
from .changes import ChangeSet
from .dispatch.flush import end_flushes
from .ids import new_id
from .ordering import deliver_queued, enqueue
from .registry import vetoes_nothing
from .warn import warn

if TYPE_CHECKING:
    from .dispatch.flush import FlushState
    from .events import Events

__all__ = ["STATE_KEY", "SessionState", "state_of"]

#: ``session.info`` key holding ``{Events: SessionState}``
STATE_KEY: Final = "dbevents.state"
_MAX_COMMIT_ROUNDS: Final = 100

logger = logging.getLogger("dbevents")

Transaction = sa_orm.SessionTransaction


@final
class SessionState:
    """What one :class:`Events` tracks for one session."""

    __slots__ = (
        "autocommit",
        "buffers",
        "committing",
        "events",
        "flush",
        "prepared",
        "ran_before_commit",
        "savepoints",
    )

    def __init__(self, events: Events) -> None:
        self.events = events
        self.buffers: dict[Transaction, Buffer] = {}
        #: the flush in progress, if any
        self.flush: FlushState | None = None
        #: (change set, buffer version) built in the root's before_commit
        self.prepared: tuple[ChangeSet, int] | None = None
        #: the root's before_commit is over: rows changed now are changed by the application's
        #: own before_commit listeners, or by SQLAlchemy's last flush before COMMIT
        self.committing = False
        #: the buffer keys whose before_commit callbacks ran in this commit
        self.ran_before_commit: set[Any] = set()
        #: SAVEPOINTs the application began on the session's connection, outermost
        #: first: (name, the session transaction they were begun in, buffer)
        self.savepoints: list[tuple[str, Transaction, Buffer]] = []
        #: the root transaction writes on a connection in AUTOCOMMIT: each statement is
        #: durable as it runs, whatever the session does with its transaction
        self.autocommit = False

    def buffer(self, session: sa_orm.Session) -> Buffer:
        """The buffer of the innermost root or SAVEPOINT transaction, begun if need be."""
        transaction = session.get_nested_transaction() or session.get_transaction()
        assert transaction is not None, "rows are only recorded inside a transaction"
        return self._innermost(transaction)

    def _innermost(self, transaction: Transaction) -> Buffer:
        """The buffer of ``transaction``'s innermost application SAVEPOINT, else its own."""
        for _, owner, savepoint_buffer in reversed(self.savepoints):
            if owner is transaction:
                return savepoint_buffer
        buffer = self.buffers.get(transaction)
        if buffer is None:
            buffer = self.buffers[transaction] = Buffer()
        return buffer

    # -- SAVEPOINTs begun on the session's connection -----------------------------------

    def savepoint_begun(self, session: sa_orm.Session, name: str) -> None:
        """The application began SAVEPOINT ``name`` on the session's connection."""
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is not None:
            self.savepoints.append((name, transaction, Buffer()))

    def savepoint_ended(self, name: str, released: bool) -> None:
        """SAVEPOINT ``name`` was released (its rows join the enclosing one) or rolled back.

        Ending a SAVEPOINT ends those begun after it as well, as in SQL.
        """
        names = [begun for begun, _, _ in self.savepoints]
        if name not in names:
            return  # one of the session's own
        index = names.index(name)
        owner = self.savepoints[index][1]
        ended, self.savepoints = self.savepoints[index:], self.savepoints[:index]
        if released:
            enclosing = self._innermost(owner)
            for _, _, buffer in ended:
                buffer.merge_into(enclosing)

    def _end_savepoints_of(self, transaction: Transaction, committed: bool) -> None:
        """The session transaction ended: so did the SAVEPOINTs begun in it."""
        if not self.savepoints:
            return  # (the usual case, on every transaction event)
        ended = [entry for entry in self.savepoints if entry[1] is transaction]
        if not ended:
            return
        self.savepoints = [entry for entry in self.savepoints if entry[1] is not transaction]
        if committed:
            own = self._innermost(transaction)
            for _, _, buffer in ended:
                buffer.merge_into(own)

    def began_on(self, connection: sa.Connection) -> None:
        """The session's transaction began on ``connection``."""
        # (a configured SQLite engine emits its own BEGIN, in AUTOCOMMIT too: it stays
        # transactional)
        if autocommits(connection) and not sqlite.is_configured(connection.engine):
            self.autocommit = True

    # -- transaction events ----------------------------------------------------------------

    def before_commit(self, session: sa_orm.Session) -> None:
        """Root only: flush, run before_commit callbacks, stage in-transaction sinks."""
        if session.in_nested_transaction():
            return
        # flush first: the net change set must be complete before anyone looks at it
        session.flush()
        root = session.get_transaction()
        if root is not None:
            self._end_savepoints_of(root, committed=True)  # COMMIT keeps what they hold
        buffer = self.buffers.get(root) if root is not None else None
        self.prepared = None
        self.ran_before_commit = set()
        if buffer:
            self._run_before_commit(session, buffer, flush=True)
            self._prepare(session, buffer)
        self.committing = True

    def changed_while_committing(self, session: sa_orm.Session) -> None:
        """After each flush and statement: rows changed since the root's before_commit.

        SQLAlchemy runs the application's ``before_commit`` listeners after
        dbevents' own when they were registered later, then flushes what they
        left: the rows they change get their before_commit callbacks (what those
        change, that same last flush writes) and the in-transaction sinks (the
        outbox) are given the change set again, so that the row it writes is the
        change set that commits.
        """
        if not self.committing or session.in_nested_transaction():
            return
        root = session.get_transaction()
        buffer = self.buffers.get(root) if root is not None else None
        if buffer is None:
            return
        prepared = self.prepared
        if (prepared[1] == buffer.version) if prepared is not None else not buffer:
            return  # no row changed since, or nothing to tell then or now
        self._run_before_commit(session, buffer, flush=False)
        self._prepare(session, buffer)

    def _prepare(self, session: sa_orm.Session, buffer: Buffer) -> None:
        """Build the root's change set (the same id and time as one built before) and hand
        it to the in-transaction sinks."""
        changeset = self._changeset(buffer, self.prepared[0] if self.prepared else None)
        self.prepared = (changeset, buffer.version)
        for sink in self.events.transactional_sinks:
            sink.write(session, changeset)

    def _run_before_commit(self, session: sa_orm.Session, buffer: Buffer, *, flush: bool) -> None:
        registry = self.events.registry
        done = self.ran_before_commit
        for _ in range(_MAX_COMMIT_ROUNDS):
            # models first: a commit of many rows of models without before_commit costs a set
            callbacks_of = {
                model: callbacks
                for model in set(buffer.models.values())
                if model is not None and (callbacks := registry.table(model).get("before_commit"))
            }
            # keys alone: a (key, model) pair per row would be an object per row that the
            # garbage collector tracks (the model is a class), while a key is plain values
            models = buffer.models
            pending = [
                key for key, model in models.items() if model in callbacks_of and key not in done
            ]
            if not pending:
                return
            for key in pending:
                done.add(key)
                model = models.get(key)
                if model is None:
                    continue  # an earlier callback's flush netted this row away
                for fn, _ in callbacks_of.get(model, ()):
                    change = buffer.change(key)
                    if fn(model, change.op, change) is True:
                        vetoes_nothing(fn, "before_commit")
            if not flush:
                return  # (SQLAlchemy's own last flush writes what they changed)
            session.flush()  # what the callbacks changed joins this transaction
        raise RuntimeError("before_commit callbacks keep changing rows; gave up after 100 rounds")

    def after_commit(self, session: sa_orm.Session) -> None:
        """Mark the transaction that committed: the innermost savepoint, else the root,
        whose change set takes its place in the delivery order now."""
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            return
        self._end_savepoints_of(transaction, committed=True)
        buffer = self.buffers.get(transaction)
        if buffer is None:
            return
        buffer.committed = True
        if transaction.parent is None and buffer:
            enqueue(self.events, self._committed_changeset(buffer), list(buffer.models.values()))

    def after_transaction_end(self, session: sa_orm.Session, transaction: Transaction) -> None:
        """Merge a released savepoint, deliver a committed root, drop anything else."""
        self._end_savepoints_of(transaction, committed=False)  # rolled back (or merged)
        buffer = self.buffers.pop(transaction, None)
        if transaction.parent is None:
            if buffer and not buffer.committed and self.autocommit:
                _warn_durable_rollback()
            self.autocommit = False
            self.prepared = None
            self.committing = False
            self._forget_all_but(session.get_transaction())
            end_flushes(session)  # a failed flush never reached after_flush_postexec
            deliver_queued()  # (what after_commit queued, for this Events and any other)
            return
        if buffer is not None and buffer.committed and buffer and transaction.nested:
            buffer.merge_into(self._enclosing_buffer(transaction))

    def _forget_all_but(self, live: Transaction | None) -> None:
        """The root transaction ended: drop the buffers and SAVEPOINTs of its transactions.

        Those of ``live``, the session's transaction now, stay: it is None, unless a
        receiver wrote through the session while the change set of another
        :class:`Events` installed on it was delivered, which ran before this one heard
        of the end, and began the session's next transaction.
        """
        if live is None:
            self.buffers.clear()
            self.savepoints.clear()
            return
        self.buffers = {t: b for t, b in self.buffers.items() if _root_of(t) is live}
        self.savepoints = [entry for entry in self.savepoints if _root_of(entry[1]) is live]

    def _committed_changeset(self, buffer: Buffer) -> ChangeSet:
        """The change set of the root's buffer: the one built in before_commit, unless rows
        changed since."""
        prepared = self.prepared
        if prepared is not None and prepared[1] == buffer.version:
            return prepared[0]
        if prepared is not None and self.events.transactional_sinks:
            logger.warning(
                "rows changed after before_commit (by another before_commit listener?); "
                "the in-transaction sinks did not see them"
            )
        return self._changeset(buffer, prepared[0] if prepared else None)

    def _enclosing_buffer(self, transaction: Transaction) -> Buffer:
        parent = transaction.parent
        while parent is not None and not (parent.nested or parent.parent is None):
            parent = parent.parent
        assert parent is not None
        return self._innermost(parent)

    def _changeset(self, buffer: Buffer, previous: ChangeSet | None = None) -> ChangeSet:
        return ChangeSet(
            id=previous.id if previous else new_id(),
            committed_at=previous.committed_at if previous else dt.datetime.now(dt.UTC),
            actor=self.events.current_actor(),
            # (Change values made when first looked at: the type says what they become)
            changes=cast(Any, buffer.snapshot()),
        )


def _warn_durable_rollback() -> None:
    warn(
        "the session rolled back a transaction that wrote on a connection in AUTOCOMMIT, "
        "where every statement is durable at once: its rows stay written, but no change "
        "set is delivered for them; commit() the session to have them delivered"
    )


def _root_of(transaction: Transaction) -> Transaction:
    while transaction.parent is not None:
        transaction = transaction.parent
    return transaction


def state_of(session: sa_orm.Session, events: Events) -> SessionState:
    """Return (creating it) the state ``events`` keeps for ``session``."""
    states: dict[Events, SessionState] | None = session.info.get(STATE_KEY)
    if states is None:
        states = session.info[STATE_KEY] = {}
    state = states.get(events)
    if state is None:
        state = states[events] = SessionState(events)
    return state
