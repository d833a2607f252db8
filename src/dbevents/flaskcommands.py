"""The Flask commands :class:`~dbevents.flask.DBEvents` adds to an app.

``flask dumpdata DIR`` and ``flask loaddata DIR`` (with events off), and
``flask dbevents verify DIR | relay | handlers``.  An app with ``SQLALCHEMY_BINDS``
keeps its databases in one directory, as its mirror does: each command covers
every one of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Final, Literal

import click
import sqlalchemy as sa
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy

from .delivery import TransactionalSink
from .exceptions import DbEventsError
from .fileformat import Manifest, Source, bookkeeping, fingerprint
from .flask import _AppState, _state

__all__ = ["COMMANDS"]


def _db() -> SQLAlchemy:
    return _state(None).db


@click.command("dumpdata")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tables", help="Comma-separated table names (default: all).")
@with_appcontext
def _dumpdata(directory: Path, tables: str | None) -> None:
    """Write the database to DIRECTORY, one JSON Lines file per table."""
    from .dump import dump

    db = _db()
    wanted = _split(tables)
    with _reported():
        if len(db.metadatas) == 1:
            manifest = dump(db.engine, db.metadata, directory, tables=wanted)
        else:  # one directory for all the app's databases, as its mirror keeps them
            binds = _binds(db, wanted)
            parts = [dump(engine, meta, directory, tables=names) for engine, meta, names in binds]
            entries = tuple(entry for part in parts for entry in part.tables)
            all_tables = [meta.tables[name] for _, meta, names in binds for name in names]
            manifest = Manifest("dump", entries, fingerprint(all_tables))
            manifest.write(directory)
    rows = sum(entry.rows or 0 for entry in manifest.tables)
    click.echo(f"dumped {rows} rows of {len(manifest.tables)} tables to {directory}")


@click.command("loaddata")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--truncate", is_flag=True, help="Empty the loaded tables first.")
@click.option("--upsert", is_flag=True, help="Insert or update rows by primary key.")
@click.option("--tables", help="Comma-separated table names (default: all in DIRECTORY).")
@with_appcontext
def _loaddata(directory: Path, truncate: bool, upsert: bool, tables: str | None) -> None:
    """Load DIRECTORY (a dump or a mirror) into the database, with events off."""
    from .load import load

    if truncate and upsert:
        raise click.UsageError("--truncate and --upsert exclude each other")
    mode: Literal["insert", "truncate", "upsert"] = (
        "truncate" if truncate else "upsert" if upsert else "insert"
    )
    state = _state(None)
    db = state.db
    with _reported(), state.ext.events.muted():
        if len(db.metadatas) == 1:
            counts = load(db.engine, db.metadata, directory, mode=mode, tables=_split(tables))
        else:  # every database or none: each commits only once all have loaded
            binds = _binds(db, _split(tables), directory)
            _check_schema(directory, db)
            counts = {}
            with ExitStack() as stack:
                for engine, meta, names in binds:
                    conn = stack.enter_context(engine.begin())
                    counts.update(
                        load(conn, meta, directory, mode=mode, tables=names, check_schema=False)
                    )
    click.echo(f"loaded {sum(counts.values())} rows into {len(counts)} tables from {directory}")


@click.group("dbevents")
def _group() -> None:
    """dbevents: verify a data directory, relay the outbox, list the callbacks."""


@_group.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tables", help="Comma-separated table names (default: all in DIRECTORY).")
@with_appcontext
def _verify(directory: Path, tables: str | None) -> None:
    """Compare DIRECTORY with the database; exit 1 when they differ."""
    from .verify import verify

    db = _db()
    with _reported():
        if len(db.metadatas) == 1:
            differences = verify(db.engine, db.metadata, directory, tables=_split(tables))
        else:
            binds = _binds(db, _split(tables), directory)
            _check_schema(directory, db)
            differences = [
                difference
                for engine, meta, names in binds
                for difference in verify(engine, meta, directory, tables=names, check_schema=False)
            ]
    for difference in differences:
        click.echo(str(difference))
    if differences:
        raise click.exceptions.Exit(1)
    click.echo(f"{directory} matches the database")


@_group.command("relay")
@click.option("--once", is_flag=True, help="Deliver what the outbox holds, then exit.")
@click.option(
    "--table-name",
    help="The outbox table [default: DBEVENTS_OUTBOX_TABLE, else the app's OutboxSink's].",
)
@click.option("--schema", help="The outbox table's schema [default: that of the app's OutboxSink].")
@with_appcontext
def _relay(once: bool, table_name: str | None, schema: str | None) -> None:
    """Deliver the outbox's change sets to the app's other sinks."""
    relay = importlib.import_module("dbevents.relay").relay
    state = _state(None)
    sinks = [sink for sink in state.sinks if not isinstance(sink, TransactionalSink)]
    if not sinks:
        raise click.UsageError("no sink to relay to: set DBEVENTS_SINKS or DBEVENTS_DATA_DIR")
    own = _outboxes_of(state)
    if table_name is None:
        table_name = state.outbox_table
    if table_name is None:
        if len(own) > 1:
            names = sorted(name if not where else f"{where}.{name}" for name, where in own)
            raise click.UsageError(
                f"the app has several outboxes ({', '.join(names)}): choose with --table-name"
            )
        table_name, in_schema = own.pop() if own else (_default_outbox(), None)
        schema = schema if schema is not None else in_schema
    elif schema is None:  # the app's outbox of that name says its schema
        schema = next((where for name, where in own if name == table_name), None)
    with _reported():
        count = relay(state.db.engine, sinks, once=once, table_name=table_name, schema=schema)
    click.echo(f"relayed {count} change sets")


def _binds(
    db: SQLAlchemy, tables: list[str] | None, directory: Path | None = None
) -> list[tuple[sa.Engine, sa.MetaData, list[str]]]:
    """The app's databases (``SQLALCHEMY_BINDS``) and which of ``tables`` each holds.

    By default the tables are all of the app's, or all of ``directory``'s; a name that no
    database holds goes to the default one, which refuses it with its usual message.
    """
    if tables is None and directory is not None:
        tables = [
            entry.name
            for entry in Manifest.read(directory).tables
            if not any(bookkeeping(m.tables[entry.name]) for m in _holding(db, entry.name))
        ]
    binds = []
    for key, meta in db.metadatas.items():
        names = list(meta.tables) if tables is None else [n for n in tables if n in meta.tables]
        if key is None:
            names += [n for n in tables or () if not _holding(db, n)]
        if names:
            binds.append((db.engines[key], meta, names))
    return binds


def _holding(db: SQLAlchemy, name: str) -> list[sa.MetaData]:
    return [meta for meta in db.metadatas.values() if name in meta.tables]


def _check_schema(directory: Path, db: SQLAlchemy) -> None:
    """Refuse a directory written from another schema: its fingerprint covers every database."""
    from .load import check_fingerprint

    if Manifest.read(directory).fingerprint is None:  # a mirror of tables of several registries
        return
    combined = sa.MetaData()
    for meta in db.metadatas.values():
        for table in meta.tables.values():
            table.to_metadata(combined)
    check_fingerprint(Source(directory), combined)


def _outboxes_of(state: _AppState) -> set[tuple[str, str | None]]:
    """The tables and schemas of the app's own OutboxSinks, so a renamed outbox, or one in
    a schema, needs no second setting."""
    outbox = importlib.import_module("dbevents.sinks.outbox")
    return {
        (sink.table.name, sink.table.schema)
        for sink in state.transactional
        if isinstance(sink, outbox.OutboxSink)
    }


def _default_outbox() -> str:
    return str(importlib.import_module("dbevents.sinks.outbox").DEFAULT_TABLE)


@_group.command("handlers")
@with_appcontext
def _handlers() -> None:
    """List the registered callbacks, and where they are defined."""
    for handler in _state(None).ext.events.handlers():
        click.echo(str(handler))


@contextmanager
def _reported() -> Iterator[None]:
    """Show dbevents' own errors (bad input, bad options) as a message, not a traceback."""
    try:
        yield
    except DbEventsError as error:
        raise click.ClickException(str(error)) from error


def _split(names: str | None) -> list[str] | None:
    return [name.strip() for name in names.split(",") if name.strip()] if names else None


#: what :meth:`DBEvents.init_app <dbevents.flask.DBEvents.init_app>` adds to ``app.cli``
COMMANDS: Final = (_dumpdata, _loaddata, _group)
