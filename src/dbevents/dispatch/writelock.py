"""SQLite: take the write lock before reading what a write is about to change.

dbevents reads some rows before a statement writes them (the rows an UPDATE or
DELETE matches, the rows an upsert may update, the largest rowid before a bulk
INSERT), and a flush's old values that were not loaded.  On SQLite a read inside
a transaction holds a shared lock, and a connection holding one that then asks
for the write lock while another connection has it gets ``database is locked``
at once: SQLite won't wait, as waiting could deadlock.  Without the read, the
write would simply have waited for the other writer to commit.  So before
reading, dbevents takes the write lock the write is about to take anyway, with
the same kind of statement on the same table, one that writes nothing: it waits
as the write would, and the rows read can't change before the write runs.
"""

from __future__ import annotations

import weakref
from typing import Any, Final

import sqlalchemy as sa

from .stored import SKIP_CAPTURE, table_name

__all__ = ["take_write_lock"]

_OPTIONS: Final = {SKIP_CAPTURE: True}

#: the transaction each connection took write locks in, and of which databases (schemas:
#: an attached database has a lock of its own): once each is enough
_locked: weakref.WeakKeyDictionary[sa.Connection, tuple[Any, set[str | None]]] = (
    weakref.WeakKeyDictionary()
)


def take_write_lock(connection: sa.Connection, table: Any, kind: type[Any]) -> None:
    """Take the database's write lock before an INSERT, UPDATE or DELETE (``kind``, the
    statement's class) of ``table`` (SQLite only, once per transaction and database)."""
    if connection.dialect.name != "sqlite" or not isinstance(table, sa.Table):
        return
    transaction = connection.get_transaction()
    if transaction is None:
        return
    # the database the write is about to write: the schema schema_translate_map gives it
    schema = connection.schema_for_object(table)
    taken = _locked.get(connection)
    if taken is None or taken[0] is not transaction:
        taken = (transaction, set())
    elif schema in taken[1]:
        return
    # plain SQL: SQLAlchemy would compute the table's Python defaults for the statement
    name = table_name(connection, table)
    column = connection.dialect.identifier_preparer.quote(
        next(iter(table.primary_key.columns or table.columns)).name
    )
    if issubclass(kind, sa.Insert):
        noop = f"INSERT INTO {name} ({column}) SELECT {column} FROM {name} WHERE 0"
    elif issubclass(kind, sa.Update):
        noop = f"UPDATE {name} SET {column} = {column} WHERE 0"
    else:
        noop = f"DELETE FROM {name} WHERE 0"
    connection.exec_driver_sql(noop, execution_options=_OPTIONS)
    taken[1].add(schema)
    _locked[connection] = taken
