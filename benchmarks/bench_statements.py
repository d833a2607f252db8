"""Statements through the session: UPDATE / DELETE with WHERE, ORM bulk INSERT, UPDATE by key.

- ``stmt update``: ``session.execute(update(M).where(M.id <= n).values(...))``
- ``stmt delete``: ``session.execute(delete(M).where(M.id <= n))``
- ``bulk insert``: ``session.execute(insert(M), dicts)``
- ``bulk update by pk``: ``session.execute(update(M), dicts_with_pk)``

``M`` is :class:`~benchmarks.bench_uow.SetContact`, with the six set-level
callbacks (no-ops) and no row-level ones; the keys-only capture variant uses
:class:`~benchmarks.bench_uow.PlainContact`, which has no callbacks.

Each is committed.  Besides the raw driver and bare SQLAlchemy, UPDATE and
DELETE have a floor: the bare statement plus one Core SELECT of the rows it
affects, which is the least any capture of old values can cost.  The bulk
INSERT has one too: the bare statement with ``return_defaults()`` of the key,
which is what SQLAlchemy itself costs to tell the keys it generated.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from benchmarks import common
from benchmarks.bench_uow import (
    CAPTURE_KEYS,
    Base,
    PlainContact,
    SetContact,
    insert_sql,
    seed,
    sessionmaker_for,
    update_sql,
    values,
)
from benchmarks.common import (
    BARE,
    CALLBACKS,
    CAPTURE,
    FLOOR,
    MEMORY,
    RAW,
    RETURNING_FLOOR,
    Database,
    Result,
)

__all__ = ["run"]

TABLE = SetContact.__tablename__
STMT_UPDATE_SQL = f"UPDATE {TABLE} SET name = {{p}}, score = {{p}} WHERE id <= {{p}}"
STMT_DELETE_SQL = f"DELETE FROM {TABLE} WHERE id <= {{p}}"


class Statement:
    """One statement (or bulk call) through a session of ``variant``, then commit."""

    def __init__(self, db: Database, rows: int, op: str, variant: str) -> None:
        self.db, self.rows, self.op, self.variant = db, rows, op, variant
        floor = variant in (FLOOR, RETURNING_FLOOR)
        self.maker, self.sink = sessionmaker_for(db, BARE if floor else variant)
        self.model: Any = PlainContact if variant in (CAPTURE_KEYS, RETURNING_FLOOR) else SetContact
        self.params: list[dict[str, Any]] = []

    def setup(self) -> None:
        if self.sink is not None:
            self.sink.clear()
        if self.op == "bulk insert":
            self.db.reset(Base.metadata)
            self.params = [
                {"name": n, "email": e, "score": s, "active": a} for n, e, s, a in values(self.rows)
            ]
            return
        seed(self.db, self.rows, self.model)
        if self.op == "bulk update by pk":
            self.params = [
                {"id": i + 1, "name": f"name {i} (renamed)", "score": i + 1}
                for i in range(self.rows)
            ]

    def action(self) -> None:
        with self.maker() as session:
            if self.variant == FLOOR:
                # what capturing old values must read at least: the affected rows
                table = SetContact.__table__
                session.execute(sa.select(table).where(table.c.id <= self.rows)).all()
            self._execute(session)
            session.commit()

    def _execute(self, session: sa_orm.Session) -> None:
        model = self.model
        if self.op == "stmt update":
            session.execute(
                sa.update(model).where(model.id <= self.rows).values(name="renamed", score=7)
            )
        elif self.op == "stmt delete":
            session.execute(sa.delete(model).where(model.id <= self.rows))
        elif self.op == "bulk insert" and self.variant == RETURNING_FLOOR:
            session.execute(sa.insert(model).return_defaults(model.id), self.params)
        elif self.op == "bulk insert":
            session.execute(sa.insert(model), self.params)
        else:
            session.execute(sa.update(model), self.params)

    def teardown(self) -> None:
        self.params = []


class RawStatement:
    """The same SQL with the driver: one statement, or executemany for the bulk paths."""

    def __init__(self, db: Database, rows: int, op: str) -> None:
        self.db, self.rows, self.op = db, rows, op
        self.params: list[tuple[Any, ...]] = []

    def setup(self) -> None:
        if self.op == "bulk insert":
            self.db.reset(Base.metadata)
            self.params = list(values(self.rows))
            return
        seed(self.db, self.rows, SetContact)
        if self.op == "bulk update by pk":
            self.params = [(f"name {i} (renamed)", i + 1, i + 1) for i in range(self.rows)]

    def action(self) -> None:
        conn = self.db.connect_raw()
        cursor = conn.cursor()
        p = self.db.param
        if self.op == "stmt update":
            cursor.execute(STMT_UPDATE_SQL.format(p=p), ("renamed", 7, self.rows))
        elif self.op == "stmt delete":
            cursor.execute(STMT_DELETE_SQL.format(p=p), (self.rows,))
        elif self.op == "bulk insert":
            cursor.executemany(insert_sql(SetContact, p), self.params)
        else:
            cursor.executemany(update_sql(SetContact, p), self.params)
        conn.commit()

    def teardown(self) -> None:
        self.db.close_raw()
        self.params = []


def make_statement(db: Database, rows: int, op: str, variant: str) -> common.Bench:
    if variant == RAW:
        return RawStatement(db, rows, op)
    return Statement(db, rows, op, variant)


def _variants(op: str) -> list[tuple[str, str, dict[str, Any]]]:
    names = [RAW]
    if op in ("stmt update", "stmt delete"):
        names.append(FLOOR)
    names += [BARE, CALLBACKS, CAPTURE, MEMORY]
    if op == "bulk insert":
        names[1:1] = [RETURNING_FLOOR]
        names.append(CAPTURE_KEYS)
    return [
        (v, "benchmarks.bench_statements:make_statement", {"op": op, "variant": v}) for v in names
    ]


def run(quick: bool) -> list[Result]:
    """Statement UPDATE / DELETE (10k, and 100k unless quick), bulk INSERT and UPDATE by key."""
    sizes = [common.rows_for(10_000, 1_000)]
    if not quick and common.settings().rows is None:
        sizes.append(100_000)
    cases: list[common.Case] = []
    for op in ("stmt update", "stmt delete", "bulk insert", "bulk update by pk"):
        for rows in sizes if op != "bulk update by pk" else sizes[:1]:
            for case in common.cases_for(op, rows, _variants(op)):
                # the floor runs bare SQLAlchemy: no dbevents listeners in its process
                floor = case.variant in (FLOOR, RETURNING_FLOOR)
                cases.append(_in_group(case, BARE) if floor else case)
    # a 10,000-row statement takes a few milliseconds, where one millisecond of noise is 0.2
    # on a ratio: three times the runs for those
    short = [c for c in cases if c.operation.startswith("stmt ") and c.rows < 100_000]
    return common.measure(short, runs=3 * common.runs_for()) + common.measure(
        [c for c in cases if c not in short]
    )


def _in_group(case: common.Case, group: str) -> common.Case:
    from dataclasses import replace

    return replace(case, group=group)
