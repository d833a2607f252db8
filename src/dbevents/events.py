"""The :class:`Events` object: one registry and configuration, installed on sessions."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TypeVar, final

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from .callbacks import check_arguments, check_signature, is_async, qualname
from .capture import CaptureLevel
from .changes import ChangeSet, Op
from .context import current_actor
from .delivery import Receiver, Sink, TransactionalSink, check_sink
from .dispatch import completion, flush, rows, statement
from .dispatch.connection import bind_connection
from .dispatch.plan import ModelPlan, Plans
from .exceptions import ConfigurationError
from .levels import CaptureLevels
from .mapping import TableSpec
from .registry import Handler, Registry
from .session import state_of
from .targets import known_bind, session_target_of, warn_unconfigured_sqlite

__all__ = ["Events"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
ErrorHandler = Callable[[Exception, Callable[..., Any], ChangeSet], Any]


@final
class _Mute:
    """One :meth:`Events.muted` block: running until it ends, for every task started in it."""

    __slots__ = ("active", "outer")

    def __init__(self, outer: _Mute | None) -> None:
        self.active = True
        self.outer = outer


@final
class Events:
    """Model callbacks and committed change sets for the sessions it is installed on.

    :param sinks: receive every committed :class:`ChangeSet` after the commit, those of one
        thread or task in commit order.
    :param abort: ``"skip"`` (default) skips a vetoed operation where that is safe and
        raises :class:`AbortError` otherwise; ``"raise"`` always raises.
    :param robust: when ``False``, failures of after-commit receivers are raised as an
        :class:`ExceptionGroup` once all of them ran (the commit has happened).
    :param actor: called for the actor when no :func:`acting_as` block sets one.
    :param raw_sql: what to do about writes dbevents cannot see (``text()``, driver SQL)
        or capture (``INSERT … FROM SELECT``): ``"ignore"``, ``"warn"`` (default) or ``"raise"``.
    :param capture: capture level per model (class or class name) or table name:
        ``"off"``, ``"keys"``, ``"new"`` or ``"old+new"`` (the default).
    """

    __slots__ = (
        "__weakref__",
        "_installed",
        "_muted",
        "_plans",
        "abort",
        "actor",
        "levels",
        "error_handlers",
        "raw_sql",
        "receivers",
        "registry",
        "robust",
        "sinks",
        "transactional_sinks",
    )

    def __init__(
        self,
        *,
        sinks: Iterable[Sink] = (),
        abort: Literal["skip", "raise"] = "skip",
        robust: bool = True,
        actor: Callable[[], Any] | None = None,
        raw_sql: Literal["ignore", "warn", "raise"] = "warn",
        capture: Mapping[type[Any] | str, CaptureLevel] | None = None,
    ) -> None:
        if abort not in ("skip", "raise"):
            raise ConfigurationError(f"abort must be 'skip' or 'raise', not {abort!r}")
        if raw_sql not in ("ignore", "warn", "raise"):
            raise ConfigurationError(
                f"raw_sql must be 'ignore', 'warn' or 'raise', not {raw_sql!r}"
            )
        if isinstance(sinks, Sink | str) or not isinstance(sinks, Iterable):
            raise ConfigurationError(
                f"sinks takes a list of sinks, not a {type(sinks).__name__}: "
                "write Events(sinks=[sink]), not Events(sinks=sink)"
            )
        self.registry = Registry()
        self.abort = abort
        self.robust = robust
        self.actor = actor
        self.raw_sql = raw_sql
        #: the capture levels set, resolved per mapper
        self.levels = CaptureLevels()
        self.sinks: list[Sink] = []
        self.transactional_sinks: list[TransactionalSink] = []
        #: on_commit listeners and sinks' publish methods, in registration order
        self.receivers: list[Receiver] = []
        self.error_handlers: list[ErrorHandler] = []
        self._installed: list[Any] = []
        self._plans = Plans(self)
        self._muted: ContextVar[_Mute | None] = ContextVar(
            f"dbevents.muted.{id(self)}", default=None
        )
        for model, level in (capture or {}).items():
            self.set_capture_level(model, level)
        for sink in sinks:
            self.add_sink(sink)

    def __repr__(self) -> str:
        return f"<Events sinks={len(self.sinks)} installed={len(self._installed)}>"

    # -- installing ------------------------------------------------------------------------

    def install(self, target: T) -> T:
        """Listen on the sessions ``target`` makes; installing twice is a no-op.

        :param target: a :class:`~sqlalchemy.orm.Session` subclass or instance, a
            :class:`~sqlalchemy.orm.sessionmaker`, a :class:`~sqlalchemy.orm.scoped_session`
            (such as Flask-SQLAlchemy's ``db.session``), an ``async_sessionmaker`` made
            with its own ``sync_session_class``, or one ``AsyncSession`` (its sync session
            alone).  Sessions of other classes are never touched.
        :returns: ``target``, so it can be used as a decorator or inline.
        """
        session_target = session_target_of(target)
        if any(existing is session_target for existing in self._installed):
            return target
        for name, fn in self._listeners():
            sa_event.listen(session_target, name, fn)
        self._installed.append(session_target)
        rows.listen_mappers()
        bind = known_bind(target)
        if bind is not None:
            warn_unconfigured_sqlite(bind)
        return target

    def uninstall(self, target: Any) -> None:
        """Stop listening on ``target``'s sessions (installed with :meth:`install`)."""
        session_target = session_target_of(target)
        for index, existing in enumerate(self._installed):
            if existing is session_target:
                for name, fn in self._listeners():
                    sa_event.remove(session_target, name, fn)
                del self._installed[index]
                return

    def _listeners(self) -> list[tuple[str, Callable[..., Any]]]:
        return [
            ("before_flush", self._before_flush),
            ("after_flush", self._after_flush),
            ("after_flush_postexec", self._after_flush_postexec),
            ("before_commit", self._before_commit),
            ("after_commit", self._after_commit),
            ("after_transaction_end", self._after_transaction_end),
            ("after_begin", self._after_begin),
            ("do_orm_execute", self._do_orm_execute),
        ]

    def _before_flush(self, session: sa_orm.Session, context: Any, instances: Any) -> None:
        flush.before_flush(state_of(session, self), session, context)

    def _after_flush(self, session: sa_orm.Session, context: Any) -> None:
        completion.after_flush(state_of(session, self), session)

    def _after_flush_postexec(self, session: sa_orm.Session, context: Any) -> None:
        st = state_of(session, self)
        flush.after_flush_postexec(st, session)
        st.changed_while_committing(session)

    def _before_commit(self, session: sa_orm.Session) -> None:
        state_of(session, self).before_commit(session)

    def _after_commit(self, session: sa_orm.Session) -> None:
        state_of(session, self).after_commit(session)

    def _after_transaction_end(self, session: sa_orm.Session, transaction: Any) -> None:
        state_of(session, self).after_transaction_end(session, transaction)

    def _do_orm_execute(self, orm_state: sa_orm.ORMExecuteState) -> Any:
        st = state_of(orm_state.session, self)
        result = statement.do_orm_execute(st, orm_state)
        if st.committing and (orm_state.is_insert or orm_state.is_update or orm_state.is_delete):
            # a write by a before_commit listener of the application's: the change set the
            # in-transaction sinks were given must take it in
            if result is None:
                result = orm_state.invoke_statement()
            st.changed_while_committing(orm_state.session)
        return result

    def _after_begin(self, session: sa_orm.Session, transaction: Any, connection: Any) -> None:
        warn_unconfigured_sqlite(connection.engine)
        # (the connection layer finds the installed Events through the state)
        state_of(session, self).began_on(connection)
        bind_connection(session, connection)

    # -- registering -----------------------------------------------------------------------

    def listens_for(
        self, model: type[Any], event: str, *, propagate: bool = True, op: Op | None = None
    ) -> Callable[[F], F]:
        """Register a function as a callback of ``model`` (and its subclasses).

        The function takes the same arguments as the decorator of the same name,
        the model class first.  Raises :class:`ConfigurationError` at once for an
        unknown event, an unmapped class or a signature that does not fit.

        :param propagate: also run for subclasses of ``model`` (the default).
        :param op: with ``"after_commit"``, run only for changes of this kind, as
            ``fn(model, change)`` (like ``@after_commit.operation(op)``).
        """
        _require_mapped(model)
        if op is not None and event != "after_commit":
            raise ConfigurationError(f"op= filters after_commit callbacks only, not {event!r}")
        check_signature(lambda *args: None, event)  # an unknown event fails before decoration

        def decorator(fn: F) -> F:
            check_signature(fn, event, op)
            self.registry.add(model, event, fn, op=op, propagate=propagate)
            self._plans.clear()
            return fn

        return decorator

    def on_commit(self, fn: F | None = None) -> F:
        """Register ``fn(changeset)`` to run after every committed transaction.

        Listeners and sinks run in registration order.  ``async def`` listeners are
        awaited (before ``await session.commit()`` returns, under AsyncSession).
        """
        fn = _checked_listener(fn, "on_commit", "an on_commit listener", ("changeset",))
        self.receivers.append(fn)
        return fn

    def on_error(self, fn: F | None = None) -> F:
        """Register ``fn(error, receiver, changeset)``, called when a receiver fails.

        It runs synchronously, so it can't be an ``async def``.
        """
        fn = _checked_listener(
            fn, "on_error", "an on_error handler", ("error", "receiver", "changeset")
        )
        if is_async(fn):
            raise ConfigurationError(
                f"{qualname(fn)}: an on_error handler is called without being awaited, so an "
                "async def would never run; make it a plain def"
            )
        self.error_handlers.append(fn)
        return fn

    def add_sink(self, sink: Sink) -> Sink:
        """Add a sink after the receivers already registered."""
        check_sink(sink)
        self.sinks.append(sink)
        self.receivers.append(sink.publish)
        if isinstance(sink, TransactionalSink):
            self.transactional_sinks.append(sink)
        return sink

    def autodiscover(self, package: str) -> list[str]:
        """Import every module of ``package`` (recursively), so their registrations run.

        :returns: the names of the modules imported.
        """
        root = importlib.import_module(package)
        names = [package]
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
            importlib.import_module(info.name)
            names.append(info.name)
        return names

    def handlers(self, *models: type[Any]) -> list[Handler]:
        """List the callbacks registered for ``models`` (default: every mapped class)."""
        targets = models or tuple(_mapped_classes())
        return [handler for model in targets for handler in self.registry.handlers(model)]

    # -- capture levels, mute, actor -------------------------------------------------------

    def set_capture_level(self, model: type[Any] | str, level: CaptureLevel) -> None:
        """Set how much of ``model``'s changes is captured: off, keys, new or old+new.

        :param model: a mapped class, a class name, or a table name (which sets the
            level of the models stored in that table).
        """
        if not isinstance(model, str):
            _require_mapped(model)
        self.levels.set(model, level)
        self._plans.clear()

    def level_of(self, mapper: sa_orm.Mapper[Any]) -> CaptureLevel:
        """The capture level of a mapper's rows."""
        return self.levels.of(mapper)

    def level_of_table(self, spec: TableSpec) -> CaptureLevel:
        """The capture level of a table's rows: its model's, else the table's own setting."""
        return self.levels.of_table(spec)

    @property
    def plan_of(self) -> Callable[[sa_orm.Mapper[Any]], ModelPlan]:
        """What to do with the rows of a mapper: its callbacks and capture level.

        A dict lookup, made on every written row: no Python call but the first.
        """
        return self._plans.__getitem__

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Turn callbacks and capture off for writes made inside the block.

        Only the current thread or asyncio task is affected, and the tasks it starts
        inside the block, until the block ends.  Change sets of work done before the
        block are still delivered when it commits.
        """
        block = _Mute(self._muted.get())
        token = self._muted.set(block)
        try:
            yield
        finally:
            block.active = False  # (for the tasks started inside: they copied the variable)
            self._muted.reset(token)

    @property
    def is_muted(self) -> bool:
        """Whether the current context is inside :meth:`muted`."""
        block = self._muted.get()
        while block is not None:
            if block.active:
                return True
            block = block.outer  # a block nested in one still running
        return False

    def current_actor(self) -> str | None:
        """The actor for a change set: :func:`acting_as`, else the ``actor`` callable."""
        actor = current_actor()
        if actor is None and self.actor is not None:
            actor = self.actor()
        return None if actor is None else str(actor)


def _checked_listener(fn: F | None, method: str, what: str, params: tuple[str, ...]) -> F:
    """Return ``fn``; raise :class:`ConfigurationError` unless ``method`` can register it."""
    if fn is None:  # @events.on_commit() would otherwise fail with a TypeError about 'fn'
        raise ConfigurationError(
            f"write @events.{method} without parentheses, not @events.{method}()"
        )
    check_arguments(fn, what, params)
    return fn


def _require_mapped(model: Any) -> None:
    mapper = sa.inspect(model, raiseerr=False) if isinstance(model, type) else None
    if not isinstance(mapper, sa_orm.Mapper):
        raise ConfigurationError(f"{model!r} is not a mapped class", model=model)


def _mapped_classes() -> Iterator[type[Any]]:
    from ._compat import all_mappers

    for mapper in sorted(all_mappers(), key=lambda m: m.class_.__qualname__):
        yield mapper.class_
