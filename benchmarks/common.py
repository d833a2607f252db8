"""Shared benchmark machinery: settings, databases, worker processes and timing.

Every variant of a benchmark runs in a worker process of its own, one per
isolation group (normally the variant): dbevents and the peers listen on
SQLAlchemy classes process-wide (mapper events, engine events, Continuum's
session listeners), and a bare SQLAlchemy figure measured in a process where
any of them is installed would pay for them too.  The parent runs the cases in
rounds, one run of every case per round, so background load spreads evenly
over the variants that are compared with each other.

A case is timed as ``setup()`` (untimed: fresh tables, seed rows, loaded
objects), ``action()`` (timed), ``teardown()`` (untimed).  The first round is a
warm-up run under :mod:`tracemalloc`, which gives the peak memory and is not
timed (in quick mode it is not traced); the median of the other rounds is the
figure.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypedDict

import sqlalchemy as sa

__all__ = [
    "BARE",
    "BY_HAND",
    "CALLBACKS",
    "CAPTURE",
    "FLOOR",
    "RETURNING_FLOOR",
    "MEMORY",
    "RAW",
    "SQLITE_NO_SYNC",
    "Bench",
    "Case",
    "Database",
    "MissingPackage",
    "Result",
    "Settings",
    "call_in_worker",
    "configure",
    "measure",
    "open_database",
    "rows_for",
    "runs_for",
    "settings",
    "shutdown",
]

# Variant names.  Ratios are taken against the rows named RAW and BARE of the
# same operation, backend and row count, so every module must use these exact names.
RAW: Final = "raw DB-API"
FLOOR: Final = "floor: SELECT + bare"
#: the floor of key capture on a bulk INSERT: the bare statement, returning the keys
RETURNING_FLOOR: Final = "floor: RETURNING + bare"
BARE: Final = "bare SQLAlchemy"
#: the model callbacks called from SQLAlchemy's mapper events, listened to by hand
BY_HAND: Final = "mapper events by hand"
CALLBACKS: Final = "dbevents callbacks"
CAPTURE: Final = "dbevents + capture"
MEMORY: Final = "dbevents + MemorySink"

#: order of the variants in the table; others follow in the order they first appear
VARIANT_ORDER: Final = (RAW, FLOOR, RETURNING_FLOOR, BARE, BY_HAND, CALLBACKS, CAPTURE, MEMORY)

BACKENDS: Final = ("sqlite", "postgresql")


class Result(TypedDict, total=False):
    """One row of the table; the first six keys are what every benchmark module returns."""

    operation: str
    variant: str
    backend: str
    seconds: float
    rows: int
    peak_mb: float | None
    #: every timed run, in seconds (optional)
    runs: list[float]
    #: shown under the table (optional)
    note: str


@dataclass(frozen=True)
class Settings:
    """What the runner was asked for; benchmark modules read it with :func:`settings`."""

    quick: bool = False
    #: row count for every benchmark instead of its own default (tiny test runs)
    rows: int | None = None
    #: timed runs per case instead of the default (5, or 3 with ``quick``)
    runs: int | None = None
    backends: tuple[str, ...] = BACKENDS
    #: URL of the PostgreSQL server's maintenance database, when postgresql is selected
    pg_url: str | None = None
    #: print progress on stderr
    verbose: bool = True


_settings = Settings()


def settings() -> Settings:
    """The runner's settings (in a worker too)."""
    return _settings


def configure(new: Settings) -> None:
    """Replace the settings; the runner calls this before any benchmark runs."""
    global _settings
    _settings = new


def runs_for(full: int = 5, quick: int = 3) -> int:
    """Timed runs per case: ``--runs``, else ``quick`` or ``full``."""
    if _settings.runs is not None:
        return _settings.runs
    return quick if _settings.quick else full


def rows_for(full: int, quick: int | None = None) -> int:
    """Rows per case: ``--rows``, else ``quick`` (default: ``full``) or ``full``."""
    if _settings.rows is not None:
        return _settings.rows
    return quick if _settings.quick and quick is not None else full


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    if _settings.verbose:
        print(message, file=sys.stderr, flush=True)


class MissingPackage(Exception):
    """A peer package is not installed; the message says how to install it."""


# -- databases (in workers) --------------------------------------------------------------------


@dataclass
class Database:
    """One empty database a worker benchmarks on, and how to reach it."""

    backend: str
    #: SQLAlchemy URL
    url: str
    engine: sa.Engine
    #: the SQLite file (sqlite only)
    path: str | None = None
    _raw: list[Any] = field(default_factory=list)

    @property
    def param(self) -> str:
        """The DB-API parameter marker of the driver (``?`` or ``%s``)."""
        return "?" if self.backend == "sqlite" else "%s"

    def connect_raw(self) -> Any:
        """A plain DB-API connection of the driver, outside SQLAlchemy (cached)."""
        if not self._raw:
            if self.backend == "sqlite":
                assert self.path is not None
                conn = sqlite3.connect(self.path)
                conn.execute(SQLITE_NO_SYNC)
                self._raw.append(conn)
            else:
                import psycopg

                url = self.engine.url.set(drivername="postgresql")
                self._raw.append(psycopg.connect(url.render_as_string(hide_password=False)))
        return self._raw[0]

    def reset(self, metadata: sa.MetaData) -> None:
        """Drop and create ``metadata``'s tables: fresh tables for every run.

        SQLite keeps a dropped table's pages for the next one to reuse, scattered as
        the runs before left them, so a table's layout, and the time a statement over
        it takes, would depend on which cases ran before in the process: VACUUM gives
        every run the same compact file.
        """
        with self.engine.begin() as conn:
            metadata.drop_all(conn)
        if self.backend == "sqlite":
            assert self.path is not None
            vacuum = sqlite3.connect(self.path, isolation_level=None)  # (outside a transaction)
            try:
                vacuum.execute("VACUUM")
            finally:
                vacuum.close()
        with self.engine.begin() as conn:
            metadata.create_all(conn)

    def close_raw(self) -> None:
        """Close the DB-API connection, so the next run's DROP TABLE is not blocked."""
        for conn in self._raw:
            conn.close()
        self._raw.clear()


_databases: dict[str, Database] = {}

#: every SQLite connection of a benchmark, like the PostgreSQL server's fsync=off: the
#: figures are the CPU work of each variant, not how fast this machine's disk syncs
SQLITE_NO_SYNC: Final = "PRAGMA synchronous = OFF"


def open_database(backend: str) -> Database:
    """This process's database on ``backend``, made at first use and dropped at exit."""
    db = _databases.get(backend)
    if db is not None:
        return db
    import dbevents.sqlite

    if backend == "sqlite":
        directory = tempfile.mkdtemp(prefix="dbevents-bench-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, "bench.db")
        engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{path}"))
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute(SQLITE_NO_SYNC))
        db = Database(backend, str(engine.url), engine, path)
    elif backend == "postgresql":
        if _settings.pg_url is None:
            raise RuntimeError(
                "no PostgreSQL server: the runner starts one for --backend postgresql"
            )
        name = f"bench_{os.getpid()}"
        admin = sa.create_engine(_settings.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        url = sa.make_url(_settings.pg_url).set(database=name)
        engine = sa.create_engine(url)
        db = Database(backend, url.render_as_string(hide_password=False), engine)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    _databases[backend] = db
    return db


# -- cases ---------------------------------------------------------------------------------------


class Bench(Protocol):
    """One benchmark case as a worker runs it."""

    def setup(self) -> None: ...
    def action(self) -> None: ...
    def teardown(self) -> None: ...


#: ``factory(db, rows, **params) -> Bench``, named as ``"module:function"``
Factory = Callable[..., Bench]


@dataclass(frozen=True)
class Case:
    """What to measure: a factory run in the worker of ``group`` (default: the variant)."""

    operation: str
    variant: str
    backend: str
    rows: int
    factory: str
    params: tuple[tuple[str, Any], ...] = ()
    group: str = ""

    @property
    def worker_group(self) -> str:
        return self.group or self.variant

    def label(self) -> str:
        return f"{self.operation} [{self.rows}] {self.backend}: {self.variant}"


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


# -- workers ---------------------------------------------------------------------------------------


def _worker_main(conn: multiprocessing.connection.Connection, config: Settings) -> None:
    configure(config)
    benches: dict[Case, Bench] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        kind, payload = message
        try:
            if kind == "run":
                reply: Any = _run_once(benches, *payload)
            else:
                name, args = payload
                reply = _resolve(name)(*args)
            conn.send(("ok", reply))
        except MissingPackage as error:
            conn.send(("missing", str(error)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


def _run_once(benches: dict[Case, Bench], case: Case, traced: bool) -> tuple[float, float | None]:
    bench = benches.get(case)
    if bench is None:
        db = open_database(case.backend)
        bench = benches[case] = _resolve(case.factory)(db, case.rows, **dict(case.params))
    bench.setup()
    gc.collect()
    peak: float | None = None
    if traced:
        tracemalloc.start()
    try:
        start = time.perf_counter()
        bench.action()
        seconds = time.perf_counter() - start
        if traced:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        if traced:
            tracemalloc.stop()
        bench.teardown()
    return seconds, peak


class WorkerError(Exception):
    """A case failed in its worker; the message holds the worker's traceback."""


class _Worker:
    def __init__(self, group: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.group = group
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, _settings), name=f"bench {group}", daemon=True
        )
        self.process.start()
        child.close()

    def ask(self, message: Any) -> Any:
        self.conn.send(message)
        return self.reply()

    def reply(self) -> Any:
        try:
            status, reply = self.conn.recv()
        except EOFError:
            raise WorkerError(f"the worker of {self.group!r} died") from None
        if status == "missing":
            raise MissingPackage(reply)
        if status == "error":
            raise WorkerError(reply)
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


_workers: dict[str, _Worker] = {}


def _worker(group: str) -> _Worker:
    worker = _workers.get(group)
    if worker is None or not worker.process.is_alive():
        worker = _workers[group] = _Worker(group)
    return worker


def shutdown() -> None:
    """Stop every worker process (the runner calls it at the end)."""
    for worker in _workers.values():
        worker.close()
    _workers.clear()


atexit.register(shutdown)


def call_in_worker(group: str, function: str, *args: Any) -> Any:
    """Call ``"module:function"(*args)`` in the worker of ``group`` and return its result."""
    return _worker(group).ask(("call", (function, args)))


def measure(cases: Sequence[Case], runs: int | None = None) -> list[Result]:
    """Time every case: a traced warm-up round, then ``runs`` rounds; one result per case.

    A case whose peer package is missing is skipped with a hint on stderr; a
    failing case is reported on stderr and left out of the table.
    """
    runs = runs_for() if runs is None else runs
    times: dict[Case, list[float]] = {case: [] for case in cases}
    peaks: dict[Case, float | None] = {}
    hints: set[str] = set()
    for case, outcome in _warm_up(cases):
        if _failed(case, outcome, hints):
            times.pop(case)
            continue
        seconds, peaks[case] = outcome
        memory = f", peak {peaks[case]:.1f} MB" if peaks[case] is not None else ""
        log(f"  {case.label()}: warm-up {seconds:.3f}s{memory}")
    live = [case for case in cases if case in times]
    for round_ in range(runs):
        # rotate the order each round so no variant always runs right after another
        shift = round_ % len(live) if live else 0
        for case in live[shift:] + live[:shift]:
            try:
                outcome = _worker(case.worker_group).ask(("run", (case, False)))
            except (MissingPackage, WorkerError) as error:
                outcome = error
            if _failed(case, outcome, hints):
                times.pop(case)
            else:
                times[case].append(outcome[0])
        live = [case for case in live if case in times]
    return [
        Result(
            operation=case.operation,
            variant=case.variant,
            backend=case.backend,
            seconds=statistics.median(times[case]) if times[case] else float("nan"),
            rows=case.rows,
            peak_mb=peaks.get(case),
            runs=times[case],
        )
        for case in cases
        if case in times
    ]


def _warm_up(cases: Sequence[Case]) -> Iterable[tuple[Case, Any]]:
    """Run every case once, the workers side by side: these runs are not timed.

    Under tracemalloc (not in quick mode), for the peak memory, which the other
    workers' load does not change.
    """
    traced = not _settings.quick
    queues: dict[str, list[Case]] = {}
    for case in cases:
        queues.setdefault(case.worker_group, []).append(case)
    pending: dict[Any, tuple[_Worker, Case]] = {}

    def start(group: str) -> None:
        if queues[group]:
            case = queues[group].pop(0)
            worker = _worker(group)
            worker.conn.send(("run", (case, traced)))
            pending[worker.conn] = (worker, case)

    for group in queues:
        start(group)
    while pending:
        for conn in multiprocessing.connection.wait(list(pending)):
            worker, case = pending.pop(conn)
            try:
                outcome: Any = worker.reply()
            except (MissingPackage, WorkerError) as error:
                outcome = error
            yield case, outcome
            start(worker.group)


def _failed(case: Case, outcome: Any, hints: set[str]) -> bool:
    """Report a missing package (once per hint) or a failure; tell whether there was one."""
    if isinstance(outcome, MissingPackage):
        if str(outcome) not in hints:
            hints.add(str(outcome))
            log(f"skipped {case.variant}: {outcome}")
        return True
    if isinstance(outcome, WorkerError):
        log(f"FAILED {case.label()}\n{outcome}")
        return True
    return False


def cases_for(
    operation: str,
    rows: int,
    variants: Iterable[tuple[str, str, dict[str, Any]]],
    backends: Iterable[str] | None = None,
) -> list[Case]:
    """Cases of one operation: ``(variant, "module:factory", params)`` on every backend."""
    chosen = _settings.backends if backends is None else tuple(backends)
    return [
        Case(operation, variant, backend, rows, factory, tuple(sorted(params.items())))
        for backend in chosen
        for variant, factory, params in variants
    ]


def with_rows(case: Case, rows: int) -> Case:
    """The same case with another row count."""
    return replace(case, rows=rows)
