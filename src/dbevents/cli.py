"""The ``dbevents`` command: dump, load, verify, relay, handlers and tail.

Every database command takes ``--db URL`` (or ``DBEVENTS_DB``) and ``--metadata
module:attr`` (a MetaData or a declarative base), or ``--app module:attr`` for a
Flask app with Flask-SQLAlchemy, whose engine and metadata are used.
"""

from __future__ import annotations

try:
    import click
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError("the dbevents command needs click: pip install 'dbevents[cli]'") from error

import importlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa

from . import sqlite
from .changes import ChangeSet
from .delivery import Sink
from .dump import driver_reason, dump
from .events import Events
from .exceptions import DbEventsError
from .fileformat import JOURNAL, resolve_metadata
from .load import Mode, load
from .sinks.outbox import DEFAULT_TABLE
from .urls import engine_from_url
from .verify import verify

__all__ = ["main"]

_DIRECTORY = click.Path(file_okay=False, path_type=Path)


def import_object(spec: str) -> Any:
    """Import ``module:attr`` (dotted attributes allowed), with the working directory importable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected module:attr, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(f"cannot import {module_name!r}: {error}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(f"{module_name!r} has no attribute {attr!r}") from None
    return target


@contextmanager
def _database(db: str | None, metadata: str | None, app: str | None) -> Iterator[tuple[Any, Any]]:
    """The bind and metadata named by ``--db``/``--metadata``, or by a Flask ``--app``."""
    if app is not None:
        flask_app = import_object(app)
        with flask_app.app_context():
            extension = flask_app.extensions.get("sqlalchemy")
            if extension is None:
                raise click.UsageError(f"{app} has no Flask-SQLAlchemy extension")
            yield (
                (engine_from_url(db, existing=False) if db else extension.engine),
                (import_object(metadata) if metadata else extension.metadata),
            )
        return
    if db is None or metadata is None:
        raise click.UsageError("give --db URL and --metadata module:attr, or --app module:attr")
    # (dump, load and verify refuse a missing SQLite file themselves, each saying why)
    engine = sqlite.configure(engine_from_url(db, existing=False))
    try:
        yield engine, resolve_metadata(import_object(metadata))
    finally:
        engine.dispose()


def _database_options(fn: Any) -> Any:
    fn = click.option("--app", help="A Flask app (module:attr) with Flask-SQLAlchemy.")(fn)
    fn = click.option("--metadata", help="A MetaData or declarative base (module:attr).")(fn)
    return click.option("--db", envvar="DBEVENTS_DB", help="Database URL [env DBEVENTS_DB].")(fn)


def _tables(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


@contextmanager
def _reported() -> Iterator[None]:
    """Print dbevents and database errors as one ``Error:`` line with exit status 1."""
    try:
        yield
    except DbEventsError as error:
        raise click.ClickException(str(error)) from None
    except sa.exc.DBAPIError as error:
        # what dbevents cannot pin on a table: a server that is away, a refused login
        raise click.ClickException(f"database error: {driver_reason(error)}") from None
    except sa.exc.ArgumentError as error:  # a database URL SQLAlchemy cannot parse
        raise click.ClickException(f"--db: {error}") from None
    except OSError as error:  # a data directory that is a file, or that can't be written
        raise click.ClickException(_file_error(error)) from None


def _file_error(error: OSError) -> str:
    """Which path the file system refused, why, and what to check."""
    where = error.filename if error.filename is not None else "a file"
    if isinstance(error, FileExistsError | NotADirectoryError):
        why = "a file is in the way of a directory"
    else:
        why = error.strerror or str(error)
    return f"{where}: {why}; check the path and its permissions"


@click.group()
def main() -> None:
    """Database events for SQLAlchemy: dump, load and verify data, relay and follow changes."""


@main.command("dump")
@click.argument("directory", type=_DIRECTORY)
@_database_options
@click.option("--tables", help="Comma-separated table names (default: all).")
def dump_command(
    directory: Path, db: str | None, metadata: str | None, app: str | None, tables: str | None
) -> None:
    """Write every table to DIRECTORY: one <table>.jsonl each and manifest.json."""
    with _reported(), _database(db, metadata, app) as (bind, meta):
        manifest = dump(bind, meta, directory, tables=_tables(tables))
    rows = sum(entry.rows or 0 for entry in manifest.tables)
    click.echo(f"dumped {rows} rows of {len(manifest.tables)} tables to {directory}")


@main.command("load")
@click.argument("directory", type=_DIRECTORY)
@_database_options
@click.option("--truncate", is_flag=True, help="Empty the loaded tables first.")
@click.option("--upsert", is_flag=True, help="Insert or update rows by primary key.")
@click.option("--tables", help="Comma-separated table names (default: all in DIRECTORY).")
@click.option("--batch-size", default=5000, show_default=True, help="Rows per batch.")
@click.option(
    "--no-check-schema", is_flag=True, help="Load even if the schema fingerprint differs."
)
def load_command(
    directory: Path,
    db: str | None,
    metadata: str | None,
    app: str | None,
    truncate: bool,
    upsert: bool,
    tables: str | None,
    batch_size: int,
    no_check_schema: bool,
) -> None:
    """Load DIRECTORY (a dump or a mirror) in one transaction, with no callbacks and no capture."""
    if truncate and upsert:
        raise click.UsageError("--truncate and --upsert exclude each other")
    mode: Mode = "truncate" if truncate else "upsert" if upsert else "insert"
    with _reported(), _database(db, metadata, app) as (bind, meta):
        counts = load(
            bind,
            meta,
            directory,
            mode=mode,
            tables=_tables(tables),
            batch_size=batch_size,
            check_schema=not no_check_schema,
        )
    click.echo(f"loaded {sum(counts.values())} rows into {len(counts)} tables from {directory}")


@main.command("verify")
@click.argument("directory", type=_DIRECTORY)
@_database_options
@click.option("--tables", help="Comma-separated table names (default: all in DIRECTORY).")
@click.option("--no-check-schema", is_flag=True, help="Compare even if the schema differs.")
def verify_command(
    directory: Path,
    db: str | None,
    metadata: str | None,
    app: str | None,
    tables: str | None,
    no_check_schema: bool,
) -> None:
    """Compare DIRECTORY with the database; exit 1 when they differ."""
    with _reported(), _database(db, metadata, app) as (bind, meta):
        differences = verify(
            bind, meta, directory, tables=_tables(tables), check_schema=not no_check_schema
        )
    for difference in differences:
        click.echo(str(difference))
    if differences:
        click.echo(f"{len(differences)} differences", err=True)
        sys.exit(1)
    click.echo("no differences")


@main.command("handlers")
@click.option("--events", "spec", required=True, help="The Events object (module:attr).")
def handlers_command(spec: str) -> None:
    """List the registered callbacks and where they are defined."""
    events = import_object(spec)
    if not isinstance(events, Events):
        raise click.BadParameter(f"{spec} is {events!r}, not a dbevents.Events")
    for handler in events.handlers():
        click.echo(str(handler))


@main.command("relay")
@click.option(
    "--db",
    envvar="DBEVENTS_DB",
    required=True,
    help="Database URL with the outbox [env DBEVENTS_DB].",
)
@click.option(
    "--to",
    "targets",
    multiple=True,
    required=True,
    help="mirror:DIR or redis://host:port/0?stream=NAME[&maxlen=N][&per_change=1] (repeatable).",
)
@click.option("--once", is_flag=True, help="Deliver what is there, then exit.")
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Change sets per batch at the most.",
)
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
@click.option(
    "--table-name",
    default=DEFAULT_TABLE,
    show_default=True,
    help="The outbox table: the table_name given to OutboxSink.",
)
@click.option(
    "--schema",
    default=None,
    help="The outbox table's schema: the schema given to OutboxSink, or its metadata's.",
)
def relay_command(
    db: str,
    targets: tuple[str, ...],
    once: bool,
    batch_size: int,
    quiet: bool,
    table_name: str,
    schema: str | None,
) -> None:
    """Deliver outbox rows to sinks at least once; stop with SIGTERM or Ctrl-C."""
    from .relay import relay  # type: ignore[import-not-found, unused-ignore]

    level = logging.WARNING if quiet else logging.INFO
    with _reported(), _logged_to_stderr(level), opened_sinks(targets) as sinks:
        count = relay(
            db, sinks, once=once, batch_size=batch_size, table_name=table_name, schema=schema
        )
    click.echo(f"delivered {count} change sets")


@contextmanager
def _logged_to_stderr(level: int) -> Iterator[None]:
    """Show what the relay logs (its start, progress every 10 s, retries) on stderr while
    the command runs, unless logging was configured already (by an app, say)."""
    logger = logging.getLogger("dbevents")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextmanager
def opened_sinks(targets: Iterable[str]) -> Iterator[list[Sink]]:
    """The sinks :func:`make_sink` makes of ``targets``, closed when the block ends.

    The command made them, so it closes them (a Redis client, for one), even when
    a later target is refused or the relay fails.
    """
    with ExitStack() as stack:
        sinks = []
        for target in targets:
            sink = make_sink(target)
            close = getattr(sink, "close", None)
            if callable(close):
                stack.callback(close)
            sinks.append(sink)
        yield sinks


def make_sink(target: str) -> Sink:
    """A sink from ``mirror:DIR`` or ``redis://host:port/db?stream=NAME``."""
    if target.startswith("mirror:"):
        from .sinks.mirror import MirrorSink

        return MirrorSink(target.removeprefix("mirror:"))
    if target.startswith(("redis://", "rediss://", "unix://")):
        url, stream, options = _split_stream(target, _SINK_OPTIONS)
        from .sinks.redis import RedisStreamSink  # type: ignore[import-not-found, unused-ignore]

        try:
            maxlen = int(options["maxlen"]) if "maxlen" in options else None
            per_change = options.get("per_change", "0").lower() in ("1", "true", "yes")
            sink = RedisStreamSink(url, stream, maxlen=maxlen, per_change=per_change)
        except ValueError as error:
            raise click.BadParameter(f"{target}: {error}", param_hint="--to") from None
        try:  # the client's options are checked when it first connects: check them now
            sink.client.connection_pool.make_connection().disconnect()
        except (ValueError, TypeError) as error:
            sink.close()
            raise click.BadParameter(f"{target}: {error}", param_hint="--to") from None
        return sink  # type: ignore[no-any-return, unused-ignore]
    raise click.BadParameter(f"unknown sink {target!r}: use mirror:DIR or redis://...?stream=NAME")


#: what ``--to redis://...`` takes in its query besides ``stream`` and redis-py's own options
_SINK_OPTIONS = ("maxlen", "per_change")


def _split_stream(target: str, own: tuple[str, ...] = ()) -> tuple[str, str, dict[str, str]]:
    """A redis URL's stream, the options named in ``own``, and the URL without them."""
    parts = urlsplit(target)
    query = parse_qsl(parts.query)
    streams = [value for key, value in query if key == "stream"]
    if not streams:
        raise click.BadParameter(f"{target}: add ?stream=NAME")
    options = {key: value for key, value in query if key in own}
    rest = urlencode([(key, value) for key, value in query if key != "stream" and key not in own])
    return urlunsplit(parts._replace(query=rest)), streams[0], options


@main.command("tail")
@click.argument("source")
@click.option("--all", "everything", is_flag=True, help="Start with what is already there.")
@click.option("--follow/--no-follow", default=True, help="Keep waiting for new changes.")
@click.option("--json", "as_json", is_flag=True, help="Print each change set as JSON.")
def tail_command(source: str, everything: bool, follow: bool, as_json: bool) -> None:
    """Print changes as they arrive in a mirror DIRECTORY or a redis://...?stream=NAME."""
    from .tail import follow_mirror, follow_stream

    stream_errors: tuple[type[Exception], ...] = ()
    if source.startswith(("redis://", "rediss://", "unix://")):
        url, stream, _ = _split_stream(source)
        changesets = follow_stream(url, stream, everything=everything, follow=follow)
        stream_errors = _redis_errors()
    else:
        if not Path(source).is_dir():  # a mirror not written yet still has its directory
            raise click.BadParameter(f"{source} is no directory", param_hint="SOURCE")
        changesets = follow_mirror(Path(source) / JOURNAL, everything=everything, follow=follow)
    try:
        for changeset in changesets:
            _print(changeset, as_json)
    except KeyboardInterrupt:
        pass
    except stream_errors as error:  # a server that is away or refuses the client
        reason = str(error).rstrip(".")
        raise click.ClickException(
            f"{source}: {reason}; check the Redis URL and that the server is running"
        ) from None


def _redis_errors() -> tuple[type[Exception], ...]:
    """What redis-py raises, when it is installed (else following the stream says what to do)."""
    try:
        import redis
    except ImportError:
        return ()
    return (redis.RedisError,)


def _print(changeset: ChangeSet, as_json: bool) -> None:
    if as_json:
        click.echo(changeset.to_json().decode())
        return
    stamp = changeset.committed_at.isoformat(timespec="seconds")
    for change in changeset.changes:
        pk = change.pk[0] if len(change.pk) == 1 else change.pk
        click.echo(
            f"{changeset.id} {stamp} {changeset.actor or '-'} "
            f"{change.op.value} {change.table} {pk!r}"
        )
    sys.stdout.flush()
