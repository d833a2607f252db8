"""Writing one table during :func:`dbevents.load`: checks, batches, COPY, and naming the bad record.

Values are checked in Python before they reach the database.  What only the
database can tell (a duplicate key, a missing foreign-key target) is found
again afterwards by :func:`diagnose`, which reads the file once more and names
the first record at fault, so the fast path keeps no per-row state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .codec import decode
from .columns import ColumnRule
from .diagnose import diagnose, existing, show, skip
from .exceptions import ConfigurationError, LoadError
from .fileformat import Source
from .progress import Progress

if TYPE_CHECKING:
    from .load import Mode, TablePlan

__all__ = ["TableWriter"]

Batch = list[tuple[Path, int, list[Any]]]


class _Refused(Exception):
    """The driver refused rows written outside SQLAlchemy (COPY)."""


class TableWriter:
    """Insert one table's records in batches, then set its deferred foreign keys."""

    def __init__(
        self, conn: sa.Connection, source: Source, plan: TablePlan, mode: Mode, batch_size: int
    ) -> None:
        self.conn, self.source, self.plan = conn, source, plan
        self.mode, self.batch_size = mode, batch_size
        self.name = plan.table.fullname
        self._key_index = [plan.columns.index(name) for name in plan.key]

    def insert(self, bar: Progress) -> int:
        """Write every record; :class:`LoadError` names the first bad one."""
        return self._guarded("insert", lambda: self._insert(bar))

    def set_deferred(self) -> None:
        """Second pass: UPDATE the deferred foreign-key columns now that every row exists."""
        self._guarded("update", self._set_deferred)

    def _guarded(self, phase: str, work: Callable[[], int]) -> int:
        # PostgreSQL aborts the transaction on an error: a savepoint keeps it usable for diagnose()
        savepoint = self.conn.begin_nested() if self.conn.dialect.name == "postgresql" else None
        try:
            done = work()
        except (sa.exc.DBAPIError, _Refused) as error:
            if savepoint is not None:
                savepoint.rollback()
            cause = error.orig if isinstance(error, sa.exc.DBAPIError) else error.args[0]
            message = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
            raise diagnose(self.conn, self.source, self.plan, phase, message) from None
        except BaseException:
            if savepoint is not None and savepoint.is_active:
                savepoint.rollback()
            raise
        if savepoint is not None:
            savepoint.commit()
        return done

    def _insert(self, bar: Progress) -> int:
        plan = self.plan
        columns, rules, count = plan.columns, plan.rules, 0
        expected = frozenset(columns)
        accepts = []
        for rule in rules:
            accepted = set(rule.types or ())
            if rule.nullable:
                accepted.add(type(None))
            accepts.append(frozenset(accepted))
        checks = list(zip(accepts, rules, strict=True))
        #: per tuple of value types seen: the positions to decode (tagged values)
        known: dict[tuple[type, ...], tuple[int, ...]] = {}
        # values of the right type that may still be refused: too long, or not an Enum label
        bounded = [
            (i, rule, rule.length or sys.maxsize, rule.labels)
            for i, rule in enumerate(rules)
            if rule.length or rule.labels
        ]
        deferred = [i for i, name in enumerate(columns) if name in plan.deferred]
        guard_keys = self.mode == "insert" and self._has_rows()
        drop_known = self.mode == "upsert" and not plan.table.primary_key.columns
        batch: Batch = []
        with self._writer() as write:

            def flush() -> None:
                nonlocal batch
                if guard_keys:
                    self._refuse_existing(batch)
                if drop_known:
                    batch = self._unknown_only(batch)
                if batch:
                    write([values for _, _, values in batch])
                    bar.advance(len(batch))
                batch = []

            # rows come in their JSON form: only the tagged values (dicts, lists) are decoded
            for path, number, row in self.source.records(plan.entry, decoded=False):
                if row.keys() != expected:
                    raise self._shape_error(path, number, row)
                values = [row[name] for name in columns]
                kinds = tuple(map(type, values))
                tagged = known.get(kinds)
                if tagged is None:
                    tagged = self._check(checks, values, path, number)
                    if len(known) < 4096:  # a kinds tuple that passed once passes again
                        known[kinds] = tagged
                else:
                    for i in tagged:
                        value = values[i] = decode(values[i])
                        if type(value) not in accepts[i]:
                            self._refuse(rules[i], value, path, number)
                for i, rule, limit, labels in bounded:
                    value = values[i]
                    if type(value) is str and (
                        len(value) > limit or (labels is not None and value not in labels)
                    ):
                        values[i] = self._member(rule, value, path, number)
                for i in deferred:
                    values[i] = None
                batch.append((path, number, values))
                count += 1
                if len(batch) >= self.batch_size:
                    flush()
            if batch:
                flush()
        return count

    def _check(
        self,
        checks: list[tuple[frozenset[type], ColumnRule]],
        values: list[Any],
        path: Path,
        number: int,
    ) -> tuple[int, ...]:
        """Decode tagged values in place and check every value; the positions decoded."""
        tagged = []
        for i, (allowed, rule) in enumerate(checks):
            value = values[i]
            if type(value) in allowed:
                continue
            if type(value) is dict or type(value) is list:
                tagged.append(i)
                value = values[i] = decode(value)
                if type(value) in allowed:
                    continue
            self._refuse(rule, value, path, number)
        return tuple(tagged)

    def _member(self, rule: ColumnRule, name: str, path: Path, number: int) -> Any:
        """The Enum member a string that is no label of the column names, or a LoadError."""
        member = rule.member(name)
        if member is None:
            raise LoadError(
                f"{self.name}.{rule.name}: {rule.problem(name)} ({path.name}, record {number})",
                path=path,
                record=number,
                column=rule.name,
            )
        return member

    def _refuse(self, rule: ColumnRule, value: Any, path: Path, number: int) -> None:
        """Raise :class:`LoadError` if ``value`` cannot go into the column."""
        problem = rule.problem(value)
        if problem is not None:
            raise LoadError(
                f"{self.name}.{rule.name}: {problem} ({path.name}, record {number})",
                path=path,
                record=number,
                column=rule.name,
            )

    def _shape_error(self, path: Path, number: int, row: dict[str, Any]) -> LoadError:
        columns = self.plan.columns
        for name in row:
            if name not in self.plan.table.columns:
                problem = f"unknown column {name!r}"
                break
            if name not in columns:
                problem = f"column {name!r} is not in the manifest"
                break
        else:
            name = next(column for column in columns if column not in row)
            problem = f"column {name!r} is missing"
        return LoadError(
            f"{self.name}: {problem} ({path.name}, record {number})",
            path=path,
            record=number,
            column=name,
        )

    @contextmanager
    def _writer(self) -> Iterator[Callable[[list[list[Any]]], None]]:
        """The fastest way this database takes whole rows: COPY, raw executemany, or Core."""
        conn, table, columns = self.conn, self.plan.table, self.plan.columns
        dialect = conn.dialect
        whole = self.mode != "upsert" and len(columns) == len(table.columns)
        processors = [
            (i, process)
            for i, name in enumerate(columns)
            if (process := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        ]

        def processed(rows: list[list[Any]]) -> list[list[Any]]:
            for values in rows:
                for i, process in processors:
                    values[i] = process(values[i])
            return rows

        preparer = dialect.identifier_preparer
        quoted = ", ".join(preparer.quote(name) for name in columns)
        if whole and dialect.name == "postgresql" and dialect.driver == "psycopg":
            import psycopg

            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            sql = f"COPY {preparer.format_table(table)} ({quoted}) FROM STDIN"

            def send(rows: list[list[Any]]) -> None:
                # one COPY per batch: the connection can run other queries between batches
                try:
                    with cursor.copy(sql) as copy:
                        for values in processed(rows):
                            copy.write_row(values)
                except psycopg.Error as error:
                    raise _Refused(error) from error

            try:
                yield send
            finally:
                cursor.close()
        elif whole and dialect.name == "sqlite" and dialect.paramstyle == "qmark":
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {preparer.format_table(table)} ({quoted}) VALUES ({marks})"

            def execute(rows: list[list[Any]]) -> None:
                skip(conn, sql, [tuple(values) for values in processed(rows)])

            yield execute
        else:
            statement = self._insert_statement()

            def execute_core(rows: list[list[Any]]) -> None:
                skip(conn, statement, [dict(zip(columns, v, strict=True)) for v in rows])

            yield execute_core

    def _insert_statement(self) -> Any:
        table, plan = self.plan.table, self.plan
        if self.mode != "upsert" or not table.primary_key.columns:
            return sa.insert(table)
        name = self.conn.dialect.name
        if name not in ("postgresql", "sqlite"):
            raise ConfigurationError(f"mode='upsert' is not supported on {name}")
        insert = postgresql.insert(table) if name == "postgresql" else sqlite.insert(table)
        key = [table.c[k] for k in plan.key]
        # deferred columns too: they go in as NULL, so a row the file holds with NULL there
        # loses a stale reference, and the second pass sets the others
        update = [n for n in plan.columns if n not in plan.key]
        if not update:
            return insert.on_conflict_do_nothing(index_elements=key)
        return insert.on_conflict_do_update(
            index_elements=key, set_={n: insert.excluded[n] for n in update}
        )

    def _has_rows(self) -> bool:
        return (
            skip(self.conn, sa.select(sa.literal(1)).select_from(self.plan.table).limit(1)).first()
            is not None
        )

    def _keys(self, batch: Batch) -> list[tuple[Any, ...]]:
        return [tuple(values[i] for i in self._key_index) for _, _, values in batch]

    def _refuse_existing(self, batch: Batch) -> None:
        known = existing(self.conn, self.plan.table, self.plan.key, self._keys(batch))
        for (path, number, _), key in zip(batch, self._keys(batch), strict=True):
            if key in known:
                raise LoadError(
                    f"{self.name}: key {show(self.plan.key, key)} is already in the database "
                    f"({path.name}, record {number}); load with mode='upsert' or "
                    "mode='truncate' (--upsert or --truncate on the command line)",
                    path=path,
                    record=number,
                    column=self.plan.key[0],
                )

    def _unknown_only(self, batch: Batch) -> Batch:
        known = existing(self.conn, self.plan.table, self.plan.key, self._keys(batch))
        return [
            item for item, key in zip(batch, self._keys(batch), strict=True) if key not in known
        ]

    def _set_deferred(self) -> int:
        plan, table = self.plan, self.plan.table
        names = sorted(plan.deferred)
        statement = (
            sa.update(table)
            .where(*[table.c[k] == sa.bindparam(f"k_{i}") for i, k in enumerate(plan.key)])
            .values({name: sa.bindparam(f"v_{i}") for i, name in enumerate(names)})
        )
        batch: list[dict[str, Any]] = []
        done = 0
        for _, _, row in self.source.records(plan.entry):
            values = [row[name] for name in names]
            if all(value is None for value in values):
                continue  # the first pass wrote NULL there, on insert and upsert alike
            params = {f"k_{i}": row[k] for i, k in enumerate(plan.key)}
            params.update({f"v_{i}": value for i, value in enumerate(values)})
            batch.append(params)
            if len(batch) >= self.batch_size:
                skip(self.conn, statement, batch)
                done, batch = done + len(batch), []
        if batch:
            skip(self.conn, statement, batch)
        return done + len(batch)
