"""The transactional outbox: each change set written into a table inside its own transaction.

A change set delivered after COMMIT is lost when the process dies between the
two.  :class:`OutboxSink` closes that gap: in the root ``before_commit``, after
the final flush, it inserts the net change set into ``dbevents_outbox`` on the
session's connection, so the row commits or rolls back with the data.
:func:`dbevents.relay` then hands the rows to other sinks at least once and
deletes them.  On PostgreSQL the insert also sends ``NOTIFY``, which wakes the
relays at once instead of at their next poll (not in a two-phase session, whose
PREPARE TRANSACTION PostgreSQL refuses after a ``NOTIFY``).

Rows a relay could not deliver after its retries are moved to
``dbevents_outbox_dead`` with their error, never dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

import sqlalchemy as sa

from .._compat import transaction_connections
from ..changes import ChangeSet
from ..dispatch.connection import SKIP_CAPTURE
from ..exceptions import ConfigurationError
from ..fileformat import BOOKKEEPING, resolve_metadata
from ..urls import refuse_async

if TYPE_CHECKING:
    import sqlalchemy.orm as sa_orm

__all__ = ["DEFAULT_TABLE", "OutboxSink", "dead_table", "notify_channel", "outbox_table"]

#: the outbox's default table name; the dead-letter table adds ``_dead``
DEFAULT_TABLE: Final = "dbevents_outbox"

_VALUES: Final = ("id", "created_at", "payload", "attempts")
#: ``session.info`` key: the change set id each OutboxSink wrote last on the session
_WRITTEN: Final = "dbevents.outbox_written"
# dbevents' own bookkeeping: never captured, never a raw-SQL warning
_OWN: Final = {SKIP_CAPTURE: True}


def outbox_table(
    metadata: sa.MetaData, name: str = DEFAULT_TABLE, schema: str | None = None
) -> sa.Table:
    """Define the outbox table on ``metadata``: one row per committed change set.

    ``seq`` grows in insertion order, and the relay delivers in that order
    (SQLite may reuse the numbers of rows deleted from the end, which is harmless).

    :param schema: the table's schema; by default that of ``metadata``.
    """
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        schema=schema,
        info={BOOKKEEPING: True},
    )


def dead_table(
    metadata: sa.MetaData, name: str = DEFAULT_TABLE, schema: str | None = None
) -> sa.Table:
    """Define the dead-letter table ``<name>_dead``: rows parked after repeated failures."""
    return sa.Table(
        f"{name}_dead",
        metadata,
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
        info={BOOKKEEPING: True},
    )


def notify_channel(table: sa.Table) -> str:
    """The PostgreSQL ``NOTIFY`` channel a relay of ``table`` listens on."""
    return table.name


@final
class OutboxSink:
    """Write each change set into the outbox table inside the transaction that made it.

    Add it to ``Events(sinks=[...])`` and feed every other sink through
    :func:`dbevents.relay`, so each of them gets the change set even when the
    writer dies right after COMMIT.

    :param metadata: a ``MetaData`` (or declarative base's ``metadata``) to add
        the outbox and dead-letter tables to, for ``create_all`` and Alembic; a
        private one when omitted.
    :param table_name: the outbox table's name (the relay must be given the same).
    :param schema: the schema of both tables (the relay must be given the same); by
        default that of ``metadata``, e.g. ``MetaData(schema="app")``.
    """

    __slots__ = ("_insert", "_notifying_insert", "dead", "table")

    def __init__(
        self,
        metadata: sa.MetaData | type[Any] | None = None,
        table_name: str = DEFAULT_TABLE,
        schema: str | None = None,
    ) -> None:
        if not table_name:
            raise ConfigurationError("OutboxSink: table_name must not be empty")
        metadata = sa.MetaData() if metadata is None else resolve_metadata(metadata)
        schema = metadata.schema if schema is None else schema
        # a second sink on the same metadata reuses the tables the first one defined
        existing = metadata.tables.get(_key(table_name, schema))
        #: the outbox table
        self.table: sa.Table = (
            existing if existing is not None else outbox_table(metadata, table_name, schema)
        )
        existing_dead = metadata.tables.get(_key(f"{table_name}_dead", schema))
        #: the dead-letter table, ``<table_name>_dead``
        self.dead: sa.Table = (
            existing_dead if existing_dead is not None else dead_table(metadata, table_name, schema)
        )
        table = self.table
        self._insert = table.insert()
        # PostgreSQL: INSERT and NOTIFY in one statement, so one round trip, not two
        inserted = (
            table.insert()
            .values({name: sa.bindparam(name) for name in _VALUES})
            .returning(table.c.seq)
            .cte("dbevents_inserted")
        )
        self._notifying_insert = sa.select(
            sa.func.pg_notify(notify_channel(table), "")
        ).select_from(inserted)

    def create_table(self, bind: sa.Engine | sa.Connection) -> None:
        """Create the outbox and dead-letter tables unless they exist (idempotent)."""
        refuse_async(bind, "OutboxSink.create_table", "outbox.create_table")
        if isinstance(bind, sa.Engine):
            with bind.begin() as connection:
                self.create_table(connection)
            return
        self.table.create(bind, checkfirst=True)
        self.dead.create(bind, checkfirst=True)

    def write(self, session: sa_orm.Session, changeset: ChangeSet) -> None:
        """Insert ``changeset`` into the outbox on the session's connection, before COMMIT.

        Runs in the root ``before_commit`` after the final flush; an error here
        fails the commit, so no transaction commits without its outbox row.  Called
        again with the same change set id when rows changed since (a ``before_commit``
        listener of the application's that runs after dbevents'), it replaces the row
        (or deletes it, when nothing is left to tell).
        """
        table = self.table
        connection = self._connection(session)
        written: dict[OutboxSink, str] = session.info.setdefault(_WRITTEN, {})
        if written.get(self) == changeset.id:
            row = table.c.id == changeset.id
            if changeset.changes:
                payload = changeset.to_json().decode()
                statement: Any = table.update().where(row).values(payload=payload)
            else:
                statement = table.delete().where(row)
            connection.execute(statement, execution_options=_OWN)
            return
        values = {
            "id": changeset.id,
            "created_at": changeset.committed_at,
            "payload": changeset.to_json().decode(),
            "attempts": 0,
        }
        # NOTIFY is sent at COMMIT only, never for a rolled-back transaction; PostgreSQL
        # refuses to PREPARE a transaction that sent one, so a two-phase session's row
        # waits for the relays' next poll
        notify = connection.dialect.name == "postgresql" and not session.twophase
        statement = self._notifying_insert if notify else self._insert
        connection.execute(statement, values, execution_options=_OWN)
        written[self] = changeset.id

    def _connection(self, session: sa_orm.Session) -> sa.Connection:
        """The connection the outbox row goes on: the outbox table's bind, else, for a
        session bound per class (``binds={Base: engine}``), the one database the
        transaction writes to."""
        try:
            return session.connection(bind_arguments={"clause": self.table})
        except sa.exc.UnboundExecutionError:
            root = session.get_transaction()
            connections = transaction_connections(root) if root is not None else frozenset()
            if len(connections) == 1:
                return next(iter(connections))
            raise ConfigurationError(
                f"{self!r}: the session has no bind for {self.table.fullname!r} and writes to "
                f"{len(connections)} databases; bind the outbox table where its rows belong: "
                "sessionmaker(binds={..., outbox.table: engine})"
            ) from None

    def publish(self, changeset: ChangeSet) -> None:
        """Do nothing: the row is already committed, and the relay delivers it."""

    def __repr__(self) -> str:
        schema = "" if self.table.schema is None else f", schema={self.table.schema!r}"
        return f"OutboxSink(table_name={self.table.name!r}{schema})"


def _key(name: str, schema: str | None) -> str:
    """A table's key in ``MetaData.tables``: ``schema.name``, or the name alone."""
    return name if schema is None else f"{schema}.{name}"
