"""dump and load throughput, 1,000,000 rows (20,000 with ``--quick``), against the raw driver.

- ``dump``: :func:`dbevents.dump` against raw DB-API ``fetchall()`` plus one
  ``json.dumps`` per row (``default=str``) written to a file.
- ``mirror append``: :meth:`MirrorSink.publish` of one small change set per
  commit (journal append and fsync) against ``os.write`` + ``os.fsync`` of the
  same line; rows are commits, no database involved.
- ``load``: :func:`dbevents.load` (insert mode: every value checked, then
  executemany on SQLite, COPY on PostgreSQL) against the raw driver taking the
  same rows already in memory: ``executemany`` on SQLite, ``COPY`` on PostgreSQL.
  ``raw: parse + ...`` also reads them from the dump's JSON Lines first.

The table has the common column types: integer key, strings, Decimal, an aware
datetime, boolean and integer.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import dbevents
from benchmarks import common
from benchmarks.common import RAW, Database, Result
from dbevents.ids import new_id

__all__ = ["run"]

OURS = "dbevents"
RAW_PARSE = "raw: parse JSON Lines + driver"

metadata = sa.MetaData()
table = sa.Table(
    "bench_dumpload",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(200), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("score", sa.Integer, nullable=False),
)
COLUMNS = [column.name for column in table.columns]
_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def run(quick: bool) -> list[Result]:
    """dump and load of one table, dbevents and the raw driver, on every selected backend."""
    rows = common.rows_for(1_000_000, 20_000)
    cases = common.cases_for(
        "dump",
        rows,
        [(variant, f"{__name__}:DumpLoad", {"op": "dump"}) for variant in (RAW, OURS)],
    )
    cases += common.cases_for(
        "load",
        rows,
        [(variant, f"{__name__}:DumpLoad", {"op": "load"}) for variant in (RAW, RAW_PARSE, OURS)],
    )
    cases += common.cases_for(
        "mirror append",
        common.rows_for(2_000, 200),
        [(variant, f"{__name__}:Append", {}) for variant in (RAW, OURS)],
        backends=common.settings().backends[:1],
    )
    cases = [replace(case, params=(*case.params, ("variant", case.variant))) for case in cases]
    # a million-row run takes minutes per round: three timed rounds, two when quick
    return common.measure(cases, runs=common.runs_for(3, 2))


def generate(count: int) -> Iterator[tuple[Any, ...]]:
    """The benchmark rows, as Python values."""
    for i in range(1, count + 1):
        yield (
            i,
            f"name {i}",
            f"user{i}@example.com",
            decimal.Decimal(i % 10_000_000).scaleb(-2),
            _START + dt.timedelta(seconds=i),
            i % 2 == 0,
            i % 1000,
        )


def _sqlite_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What SQLAlchemy stores on SQLite: datetimes as text, Decimal as REAL, booleans as 0/1."""
    id_, name, email, amount, created, active, score = row
    stamp = created.strftime("%Y-%m-%d %H:%M:%S.%f")
    return (id_, name, email, float(amount), stamp, int(active), score)


class DumpLoad:
    """One case: ``op`` is ``"dump"`` or ``"load"``; ``variant`` picks the implementation."""

    def __init__(self, db: Database, rows: int, op: str, variant: str) -> None:
        self.db, self.rows, self.op, self.variant = db, rows, op, variant
        self.work = Path(tempfile.mkdtemp(prefix="dbevents-bench-dumpload-"))
        self.dumped = self.work / "source"
        self.values: list[tuple[Any, ...]] = []
        metadata.create_all(db.engine)

    def setup(self) -> None:
        if self.op == "dump":
            if self._count() != self.rows:
                self._truncate()
                self._insert_raw(self._ready(generate(self.rows)))
            shutil.rmtree(self.work / "out", ignore_errors=True)
            return
        if not self.dumped.exists():
            self._truncate()
            self._insert_raw(self._ready(generate(self.rows)))
            dbevents.dump(self.db.engine, metadata, self.dumped, progress=False)
        if self.variant == RAW and not self.values:
            self.values = list(self._ready(generate(self.rows)))
        self._truncate()

    def action(self) -> None:
        if self.op == "dump":
            if self.variant == OURS:
                dbevents.dump(self.db.engine, metadata, self.work / "out", progress=False)
            else:
                self._dump_raw(self.work / "out")
        elif self.variant == OURS:
            dbevents.load(self.db.engine, metadata, self.dumped, progress=False)
        elif self.variant == RAW:
            self._insert_raw(self.values)
        else:
            self._insert_raw(self._ready(self._parsed()))

    def teardown(self) -> None:
        self.db.close_raw()

    def _count(self) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)

    def _truncate(self) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(table.delete())

    def _parsed(self) -> Iterator[tuple[Any, ...]]:
        """The dump's rows through json.loads only: the least a loader from the file does."""
        with (self.dumped / "bench_dumpload.jsonl").open("rb") as handle:
            for line in handle:
                data = json.loads(line)
                yield (
                    data["id"],
                    data["name"],
                    data["email"],
                    decimal.Decimal(data["amount"]["$decimal"]),
                    dt.datetime.fromisoformat(data["created"]["$datetime"]),
                    data["active"],
                    data["score"],
                )

    def _ready(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """Rows as the driver takes them (SQLite: as SQLAlchemy would store them)."""
        if self.db.backend == "sqlite":
            return (_sqlite_values(row) for row in rows)
        return iter(rows)

    def _insert_raw(self, rows: Any) -> None:
        conn = self.db.connect_raw()
        names = ", ".join(COLUMNS)
        if self.db.backend == "sqlite":
            marks = ", ".join("?" * len(COLUMNS))
            conn.executemany(f"INSERT INTO bench_dumpload ({names}) VALUES ({marks})", rows)
        else:
            with (
                conn.cursor() as cursor,
                cursor.copy(f"COPY bench_dumpload ({names}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        conn.commit()

    def _dump_raw(self, directory: Path) -> None:
        directory.mkdir()
        conn = self.db.connect_raw()
        cursor = conn.cursor()
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM bench_dumpload ORDER BY id")
        rows = cursor.fetchall()
        with (directory / "bench_dumpload.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(dict(zip(COLUMNS, row, strict=True)), default=str))
                handle.write("\n")
        cursor.close()
        conn.rollback()


class Append:
    """Publish ``rows`` change sets of one INSERT each to a mirror, or write them raw."""

    def __init__(self, db: Database, rows: int, variant: str) -> None:
        del db  # no database: the cost is the journal's
        self.rows, self.variant = rows, variant
        row = {"id": 1, "name": "name 1", "email": "user1@example.com", "score": 7}
        change = dbevents.Change(dbevents.Op.INSERT, "bench_dumpload", None, (1,), None, row)
        self.changeset = dbevents.ChangeSet(new_id(), _START, None, (change,))
        self.work = Path(tempfile.mkdtemp(prefix="dbevents-bench-mirror-"))

    def setup(self) -> None:
        shutil.rmtree(self.work / "mirror", ignore_errors=True)

    def action(self) -> None:
        if self.variant == OURS:
            sink = dbevents.MirrorSink(self.work / "mirror")
            for _ in range(self.rows):
                sink.publish(self.changeset)
            return
        (self.work / "mirror").mkdir()
        fd = os.open(self.work / "mirror" / "journal", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            for _ in range(self.rows):
                os.write(fd, self.changeset.to_json() + b"\n")
                os.fsync(fd)
        finally:
            os.close(fd)

    def teardown(self) -> None:
        pass
