"""Peers on the same workloads: the seed CRM's hand-written listeners, SQLAlchemy-Continuum, pyDAL.

- ``seed after_flush + after_commit``: the seed CRM's ``catch_db_updates``
  (``after_flush`` keeps ``session.new/dirty/deleted``) and ``cache_db_updates``
  (after the commit, each object's columns go into an in-memory cache), on the
  unit of work.
- ``SQLAlchemy-Continuum``: a versioned model (``__versioned__ = {}``), on the
  unit of work.
- ``pyDAL callbacks`` and ``pyDAL (no callbacks)``: ``table.insert()`` per row
  (next to the unit-of-work insert) and set-level ``db(query).update()`` /
  ``.delete()`` (next to the statements), with the six ``_before_*`` /
  ``_after_*`` callbacks as no-ops, and with none at all.

The peer packages come from the ``bench`` dependency group; a missing one skips
its rows with a hint.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm

from benchmarks import common
from benchmarks.bench_uow import UnitOfWork, values
from benchmarks.common import BARE, RAW, Database, MissingPackage, Result

__all__ = ["run"]

SEED = "seed after_flush + after_commit"
CONTINUUM = "SQLAlchemy-Continuum"
PYDAL = "pyDAL callbacks"
PYDAL_BARE = "pyDAL (no callbacks)"

_HINT = "pip install --group bench (./dev bench installs it)"


# -- the seed CRM's pattern ------------------------------------------------------------------------


def seed_sessionmaker(db: Database) -> tuple[sa_orm.sessionmaker[Any], dict[Any, Any]]:
    """A sessionmaker with the seed CRM's two listeners, and the cache they fill."""

    class SeedSession(sa_orm.Session):
        pass

    cache: dict[tuple[str, Any], dict[str, Any]] = {}

    def catch_db_updates_after_flush(session: sa_orm.Session, flush_context: Any) -> None:
        # the seed keeps what the flush wrote: after the transaction these sets are empty
        changes = session.info.setdefault("changes", {"created": [], "updated": [], "deleted": []})
        changes["created"].extend(session.new)
        changes["updated"].extend(session.dirty)
        changes["deleted"].extend(session.deleted)

    def cache_db_updates_after_commit(session: sa_orm.Session) -> None:
        changes = session.info.pop("changes", None)
        if not changes:
            return
        for obj in (*changes["created"], *changes["updated"]):
            mapper = sa.inspect(obj).mapper
            row = {attr.key: getattr(obj, attr.key) for attr in mapper.column_attrs}
            cache[(mapper.local_table.name, row["id"])] = row
        for obj in changes["deleted"]:
            cache.pop((sa.inspect(obj).mapper.local_table.name, obj.id), None)

    def forget(session: sa_orm.Session, previous_transaction: Any) -> None:
        session.info.pop("changes", None)

    sa_event.listen(SeedSession, "after_flush", catch_db_updates_after_flush)
    sa_event.listen(SeedSession, "after_commit", cache_db_updates_after_commit)
    sa_event.listen(SeedSession, "after_soft_rollback", forget)
    return sa_orm.sessionmaker(db.engine, class_=SeedSession), cache


def make_seed(db: Database, rows: int, op: str) -> common.Bench:
    maker, cache = seed_sessionmaker(db)
    bench = UnitOfWork(db, rows, op, SEED, maker=maker)
    return _Clearing(bench, cache.clear)


class _Clearing:
    """A bench whose cache is emptied before each run, as dbevents' MemorySink is."""

    def __init__(self, bench: common.Bench, clear: Callable[[], None]) -> None:
        self.bench, self.clear = bench, clear

    def setup(self) -> None:
        self.clear()
        self.bench.setup()

    def action(self) -> None:
        self.bench.action()

    def teardown(self) -> None:
        self.bench.teardown()


# -- SQLAlchemy-Continuum -------------------------------------------------------------------------

_continuum_model: list[type[Any]] = []


def continuum_model() -> type[Any]:
    """The versioned contact model, mapped once per process."""
    if _continuum_model:
        return _continuum_model[0]
    try:
        from sqlalchemy_continuum import make_versioned  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise MissingPackage(f"SQLAlchemy-Continuum is not installed: {_HINT}") from None
    from benchmarks.bench_uow import ContactColumns

    make_versioned(user_cls=None)

    class VersionedBase(sa_orm.DeclarativeBase):
        pass

    class VersionedContact(ContactColumns, VersionedBase):
        __tablename__ = "bench_contacts"
        __versioned__: dict[str, Any] = {}

    sa_orm.configure_mappers()  # Continuum builds the version classes here
    _continuum_model.append(VersionedContact)
    return VersionedContact


def make_continuum(db: Database, rows: int, op: str) -> common.Bench:
    model = continuum_model()
    maker = sa_orm.sessionmaker(db.engine)
    return UnitOfWork(db, rows, op, CONTINUUM, model=model, maker=maker)


# -- pyDAL ---------------------------------------------------------------------------------------

_tables = itertools.count(1)


class PyDAL:
    """pyDAL on the same database: per-row ``insert()``, or set-level ``update()``/``delete()``."""

    def __init__(self, db: Database, rows: int, op: str, callbacks: bool) -> None:
        try:
            import pydal  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError:
            raise MissingPackage(f"pyDAL is not installed: {_HINT}") from None
        self.db, self.rows, self.op, self.callbacks = db, rows, op, callbacks
        if db.backend == "sqlite":
            assert db.path is not None
            folder = os.path.dirname(db.path)
            uri = "sqlite://pydal.db"
        else:
            try:
                import psycopg2  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: F401
            except ImportError:
                raise MissingPackage(f"pyDAL needs psycopg2 on PostgreSQL: {_HINT}") from None
            url = sa.make_url(db.url)
            folder = os.path.dirname(common.open_database("sqlite").path or ".")
            uri = f"postgres:psycopg2://{url.username}@{url.host}:{url.port}/{url.database}"
        self.dal = pydal.DAL(uri, folder=folder, pool_size=0, check_reserved=None)
        if db.backend == "sqlite":
            self.dal.executesql(common.SQLITE_NO_SYNC)
        self.table: Any = None

    def setup(self) -> None:
        import pydal  # type: ignore[import-untyped, import-not-found, unused-ignore]

        if self.table is not None:
            self.table.drop()
            self.dal.commit()
        # a new table per run: pyDAL keeps migration files and won't define one twice
        self.table = table = self.dal.define_table(
            f"bench_pydal_{os.getpid()}_{next(_tables)}",
            pydal.Field("name", length=100),
            pydal.Field("email", length=200),
            pydal.Field("score", "integer"),
            pydal.Field("active", "boolean"),
        )
        self.dal.commit()
        if self.callbacks:
            table._before_insert.append(lambda fields: None)
            table._after_insert.append(lambda fields, id: None)
            table._before_update.append(lambda dbset, fields: None)
            table._after_update.append(lambda dbset, fields: None)
            table._before_delete.append(lambda dbset: None)
            table._after_delete.append(lambda dbset: None)
        else:
            for name in ("insert", "update", "delete"):
                setattr(table, f"_before_{name}", [])
                setattr(table, f"_after_{name}", [])
        self.data = values(self.rows)
        if self.op != "uow insert":
            p = "?" if self.db.backend == "sqlite" else "%s"
            cursor = self.dal._adapter.cursor
            cursor.executemany(
                f"INSERT INTO {table._tablename} (name, email, score, active) "
                f"VALUES ({p}, {p}, {p}, {p})",
                [(n, e, s, "T" if a else "F") for n, e, s, a in self.data],
            )
            self.dal.commit()

    def action(self) -> None:
        table = self.table
        if self.op == "uow insert":
            for n, e, s, a in self.data:
                table.insert(name=n, email=e, score=s, active=a)
        elif self.op == "stmt update":
            self.dal(table.id <= self.rows).update(name="renamed", score=7)
        else:
            self.dal(table.id <= self.rows).delete()
        self.dal.commit()

    def teardown(self) -> None:
        self.data = []


def make_pydal(db: Database, rows: int, op: str, callbacks: bool) -> common.Bench:
    return PyDAL(db, rows, op, callbacks)


def run(quick: bool) -> list[Result]:
    """Every peer on the unit-of-work and statement workloads, where it installs.

    Continuum writes a version row per change, one statement each: it runs on
    fewer rows (2,000; 100 with ``quick``), with bare SQLAlchemy and the raw
    driver measured again at that size for its ratios.
    """
    rows = common.rows_for(10_000, 1_000)
    continuum_rows = min(rows, common.rows_for(2_000, 100))
    cases: list[common.Case] = []
    continuum: list[common.Case] = []
    for op in ("insert", "update", "delete"):
        cases += common.cases_for(
            f"uow {op}", rows, [(SEED, "benchmarks.bench_peers:make_seed", {"op": op})]
        )
        references = [
            (variant, "benchmarks.bench_uow:make_uow", {"op": op, "variant": variant})
            for variant in (RAW, BARE)
        ]
        continuum += common.cases_for(
            f"uow {op}",
            continuum_rows,
            [
                *(references if continuum_rows != rows else []),
                (CONTINUUM, "benchmarks.bench_peers:make_continuum", {"op": op}),
            ],
        )
    for op in ("uow insert", "stmt update", "stmt delete"):
        cases += common.cases_for(
            op,
            rows,
            [
                (PYDAL_BARE, "benchmarks.bench_peers:make_pydal", {"op": op, "callbacks": False}),
                (PYDAL, "benchmarks.bench_peers:make_pydal", {"op": op, "callbacks": True}),
            ],
        )
    # Continuum's runs take long; quick mode times it once
    return common.measure(cases) + common.measure(continuum, common.runs_for(quick=1))
