"""Compare a data directory (a dump or a mirror) with the live database, row by row."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import sqlalchemy as sa

from .columns import ColumnRule
from .diagnose import skip
from .dump import naming_refusals, reading
from .fileformat import Source, resolve_metadata
from .load import TablePlan, plan
from .progress import Progress
from .urls import refuse_async

__all__ = ["Difference", "verify"]

_LOOKUP = 500
#: rows fetched at a time when scanning a whole table, so that the driver never holds it all
_STREAM = 5000


@dataclass(frozen=True, slots=True)
class Difference:
    """One row on which the directory and the database disagree.

    :ivar kind: ``"missing"`` (in the directory, not in the database), ``"extra"``
        (in the database only) or ``"changed"`` (both, with different ``columns``).
    :ivar expected: the row in the directory; ``actual``: the row in the database.
    """

    table: str
    kind: Literal["missing", "extra", "changed"]
    key: tuple[Any, ...]
    columns: tuple[str, ...] = ()
    expected: Mapping[str, Any] | None = None
    actual: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        where = f"{self.table} {self.key!r}"
        if self.kind == "missing":
            return f"{where}: in the directory, missing from the database"
        if self.kind == "extra":
            return f"{where}: in the database, not in the directory"
        assert self.expected is not None and self.actual is not None
        changes = "; ".join(
            f"{name}: {self.expected.get(name)!r} in the directory, "
            f"{self.actual.get(name)!r} in the database"
            for name in self.columns
        )
        return f"{where}: {changes}"


def verify(
    bind: sa.Engine | sa.Connection | str,
    metadata: Any,
    path: Path | str,
    *,
    tables: Iterable[str] | None = None,
    check_schema: bool = True,
    progress: bool | None = None,
) -> list[Difference]:
    """Return every difference between the directory ``path`` and the database, by table.

    Values are compared through each column's type, so a datetime that SQLite
    returns without its zone, or a REAL with fewer digits, still matches.  Memory
    grows with the number of keys, not with the rows.

    :param progress: show progress on stderr; by default only when it is a terminal.

    :raises LoadError: the directory is unreadable or does not fit ``metadata``.
    :raises ConfigurationError: ``bind`` is an asyncio engine, the database lacks a table
        (or its SQLite file does not exist), or it refused to read one.
    """
    refuse_async(bind, "dbevents.verify", "lambda sync_conn: dbevents.verify(sync_conn, ...)")
    source = Source(path)
    plans = plan(source, resolve_metadata(metadata), tables, check_schema=check_schema)
    differences: list[Difference] = []
    bar = Progress("verify", progress)
    with reading(bind, [item.table for item in plans]) as conn:
        for item in plans:
            bar.start(item.table.fullname, item.entry.rows)
            with naming_refusals(item.table):
                differences.extend(_compare(conn, source, item, bar))
            bar.finish()
    return differences


def _compare(
    conn: sa.Connection, source: Source, item: TablePlan, bar: Progress
) -> Iterator[Difference]:
    if item.table.primary_key.columns:
        return _by_key(conn, source, item, bar)
    return _as_multiset(conn, source, item, bar)


def _by_key(
    conn: sa.Connection, source: Source, item: TablePlan, bar: Progress
) -> Iterator[Difference]:
    table, key = item.table, item.key
    rules = [ColumnRule(table.c[name]) for name in item.columns]
    seen: set[tuple[Any, ...]] = set()
    batch: list[dict[str, Any]] = []

    def compare() -> Iterator[Difference]:
        keys = [tuple(row[name] for name in key) for row in batch]
        found = _rows_by_key(conn, table, key, keys)
        for pk, expected in zip(keys, batch, strict=True):
            actual = found.get(pk)
            if actual is None:
                yield Difference(table.fullname, "missing", pk, expected=expected)
                continue
            changed = tuple(
                rule.name for rule in rules if not rule.same(expected[rule.name], actual[rule.name])
            )
            if changed:
                yield Difference(table.fullname, "changed", pk, changed, expected, actual)
        bar.advance(len(batch))

    for _, _, row in source.records(item.entry):
        seen.add(tuple(row[name] for name in key))
        batch.append(row)
        if len(batch) >= _LOOKUP:
            yield from compare()
            batch = []
    if batch:
        yield from compare()
    columns = [table.c[name] for name in key]
    every_row = sa.select(table).order_by(*columns).execution_options(yield_per=_STREAM)
    for found in skip(conn, every_row).mappings():
        pk = tuple(found[name] for name in key)
        if pk not in seen:
            yield Difference(table.fullname, "extra", pk, actual=dict(found))


def _rows_by_key(
    conn: sa.Connection, table: sa.Table, key: Sequence[str], keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    columns = [table.c[name] for name in key]
    if len(columns) == 1:
        where = columns[0].in_([pk[0] for pk in keys])
    else:
        where = sa.tuple_(*columns).in_(keys)
    return {
        tuple(row[name] for name in key): dict(row)
        for row in skip(conn, sa.select(table).where(where)).mappings()
    }


def _as_multiset(
    conn: sa.Connection, source: Source, item: TablePlan, bar: Progress
) -> Iterator[Difference]:
    """A table without a primary key: compare the rows as multisets of whole rows."""
    table, names = item.table, item.columns
    rules = [ColumnRule(table.c[name]) for name in names]

    # SQLite keeps a datetime's wall time and drops its zone
    wall_time = conn.dialect.name == "sqlite"

    def normal(row: Mapping[str, Any] | sa.RowMapping) -> tuple[Any, ...]:
        return tuple(_hashable(row[rule.name], wall_time) for rule in rules)

    expected = Counter(normal(row) for _, _, row in source.records(item.entry))
    bar.advance(expected.total())
    every_row = sa.select(table).execution_options(yield_per=_STREAM)
    actual = Counter(normal(row) for row in skip(conn, every_row).mappings())
    for row, count in (expected - actual).items():
        for _ in range(count):
            yield Difference(
                table.fullname, "missing", row, expected=dict(zip(names, row, strict=True))
            )
    for row, count in (actual - expected).items():
        for _ in range(count):
            yield Difference(
                table.fullname, "extra", row, actual=dict(zip(names, row, strict=True))
            )


#: what a NaN counts as in a table without a key, compared as a multiset: NaN equals
#: nothing, not even itself, so two of them would never pair up
_NAN: Final = ("$nan",)


def _hashable(value: Any, wall_time: bool) -> Any:
    if isinstance(value, dict | list):
        return repr(value)
    if (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, decimal.Decimal) and value.is_nan()
    ):
        return _NAN
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.replace(tzinfo=None) if wall_time else value.astimezone(dt.UTC)
    return value
