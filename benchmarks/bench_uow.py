"""Unit of work: add / modify / delete objects and commit, 10,000 rows.

Variants: the same SQL through the raw driver, bare SQLAlchemy, the same
no-op callbacks called from SQLAlchemy's mapper events listened to by hand (the
floor of per-row dispatch), and dbevents with every model callback (no-op
functions: what is measured is the dispatch), then with ``old+new`` capture,
then with a :class:`~dbevents.MemorySink` too.

Also home of the benchmark model, the per-variant session factories, the
capture footprint (bytes per captured change) and a profile of the dbevents
path: ``python -m benchmarks.bench_uow --profile``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import sqlalchemy.event as sa_event
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

import dbevents
from benchmarks import common
from benchmarks.common import BARE, BY_HAND, CALLBACKS, CAPTURE, MEMORY, RAW, Database, Result

__all__ = ["Base", "Contact", "PlainContact", "SetContact", "run", "sessionmaker_for"]

#: capture at the keys level on a model without callbacks: what that capture alone costs
CAPTURE_KEYS = "dbevents capture (keys) only"


class Base(sa_orm.DeclarativeBase):
    pass


class ContactColumns:
    """The columns of every contact table, dbevents' and the peers'."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(200))
    score: Mapped[int]
    active: Mapped[bool]


class _SetCallbacks:
    """The set-level callbacks, as no-ops: what is measured is the dispatch."""

    @dbevents.before_insert
    def _before_insert(cls, fields: dict[str, Any]) -> None:
        pass

    @dbevents.after_insert
    def _after_insert(cls, fields: dict[str, Any], pk: Any) -> None:
        pass

    @dbevents.before_update
    def _before_update(cls, rows: Any, fields: dict[str, Any]) -> None:
        pass

    @dbevents.after_update
    def _after_update(cls, rows: Any, fields: dict[str, Any]) -> None:
        pass

    @dbevents.before_delete
    def _before_delete(cls, rows: Any) -> None:
        pass

    @dbevents.after_delete
    def _after_delete(cls, rows: Any) -> None:
        pass


class _RowCallbacks:
    """The row-level and commit callbacks, as no-ops."""

    @dbevents.before_save
    def _before_save(cls, row: Any) -> None:
        pass

    @dbevents.after_save
    def _after_save(cls, row: Any) -> None:
        pass

    @dbevents.before_destroy
    def _before_destroy(cls, row: Any) -> None:
        pass

    @dbevents.after_destroy
    def _after_destroy(cls, row: Any) -> None:
        pass

    @dbevents.before_commit
    def _before_commit(cls, op: Any, change: Any) -> None:
        pass

    @dbevents.after_commit
    def _after_commit(cls, op: Any, change: Any) -> None:
        pass


class Contact(_RowCallbacks, _SetCallbacks, ContactColumns, Base):
    """The unit-of-work model: all twelve callbacks."""

    __tablename__ = "bench_contacts"


class SetContact(_SetCallbacks, ContactColumns, Base):
    """The statement model: set-level callbacks only.

    Row-level callbacks make statements materialize every affected row, a cost
    paid only by models that declare them.
    """

    __tablename__ = "bench_set_contacts"


class PlainContact(ContactColumns, Base):
    """A model without callbacks."""

    __tablename__ = "bench_plain_contacts"


#: a mapped class with the contact columns (peers map their own)
Model = type[Any]


def insert_sql(model: Model, p: str) -> str:
    """The driver's INSERT of one contact."""
    columns = "name, email, score, active"
    return f"INSERT INTO {model.__tablename__} ({columns}) VALUES ({p}, {p}, {p}, {p})"


def update_sql(model: Model, p: str) -> str:
    """The driver's UPDATE of one contact by key: name, score, id."""
    return f"UPDATE {model.__tablename__} SET name = {p}, score = {p} WHERE id = {p}"


def delete_sql(model: Model, p: str) -> str:
    """The driver's DELETE of one contact by key."""
    return f"DELETE FROM {model.__tablename__} WHERE id = {p}"


Values = tuple[str, str, int, bool]


def values(rows: int) -> list[Values]:
    """The column values of ``rows`` new contacts."""
    return [(f"name {i}", f"user{i}@example.com", i, i % 2 == 0) for i in range(rows)]


def seed(db: Database, rows: int, model: Model = Contact) -> None:
    """Fresh tables, ``model``'s holding contacts with ids 1..rows, written by the driver."""
    db.reset(model.metadata)
    conn = db.connect_raw()
    cursor = conn.cursor()
    cursor.executemany(insert_sql(model, db.param), values(rows))
    conn.commit()
    db.close_raw()


def sessionmaker_for(db: Database, variant: str) -> tuple[sa_orm.sessionmaker[Any], Any]:
    """A sessionmaker for ``variant``, and its MemorySink (or None)."""

    class BenchSession(sa_orm.Session):
        pass

    maker = sa_orm.sessionmaker(db.engine, class_=BenchSession)
    if variant == BARE:
        return maker, None
    if variant == BY_HAND:
        listen_by_hand(Contact)
        return maker, None
    capture: dict[type[Any] | str, Any] = {}
    if variant == CALLBACKS:
        capture = {Contact: "off", SetContact: "off"}
    elif variant == CAPTURE_KEYS:
        capture = {PlainContact: "keys"}
    elif variant not in (CAPTURE, MEMORY):
        raise ValueError(f"not a dbevents variant: {variant!r}")
    sink = dbevents.MemorySink() if variant == MEMORY else None
    events = dbevents.Events(sinks=[sink] if sink is not None else [], capture=capture)
    events.install(maker)
    return maker, sink


_listened_by_hand: set[Model] = set()


def listen_by_hand(model: Model) -> None:
    """Call no-op callbacks per row from SQLAlchemy's mapper events, as by hand.

    The same calls with the same arguments as dbevents makes for ``model``'s
    eight row callbacks (``before_save``, ``before_insert(fields)``, ...), and
    nothing else: no veto, no write-back of ``fields``, no no-op detection, and
    the ``after_*`` ones run inside the flush rather than once it succeeded.
    What SQLAlchemy's own event system costs for them is the floor of any
    per-row dispatch, dbevents' included.  Listens once per process.
    """
    if model in _listened_by_hand:
        return
    _listened_by_hand.add(model)

    def callback(cls: Any, *args: Any) -> None:
        pass

    keys = [attr.key for attr in sa.inspect(model).column_attrs]

    def before_insert(mapper: Any, connection: Any, state: Any) -> None:
        values = state.dict
        callback(model, state.obj())
        callback(model, {key: values[key] for key in keys if key in values})

    def after_insert(mapper: Any, connection: Any, state: Any) -> None:
        values = state.dict
        fields = {key: values[key] for key in keys if key in values}
        callback(model, fields, state.identity)
        callback(model, state.obj())

    def around_update(mapper: Any, connection: Any, state: Any) -> None:
        obj, values = state.obj(), state.dict
        callback(model, obj)
        callback(model, (obj,), {key: values[key] for key in state.committed_state})

    def around_delete(mapper: Any, connection: Any, state: Any) -> None:
        obj = state.obj()
        callback(model, obj)
        callback(model, (obj,))

    for name, fn in (
        ("before_insert", before_insert),
        ("after_insert", after_insert),
        ("before_update", around_update),
        ("after_update", around_update),
        ("before_delete", around_delete),
        ("after_delete", around_delete),
    ):
        sa_event.listen(model, name, fn, raw=True)


class UnitOfWork:
    """Insert, update or delete ``rows`` objects through the session, then commit.

    :param maker: the sessionmaker to use instead of ``variant``'s (peers bring their own).
    """

    def __init__(
        self,
        db: Database,
        rows: int,
        op: str,
        variant: str,
        *,
        model: Model = Contact,
        maker: sa_orm.sessionmaker[Any] | None = None,
    ) -> None:
        self.db, self.rows, self.op, self.model = db, rows, op, model
        if maker is None:
            self.maker, self.sink = sessionmaker_for(db, variant)
        else:
            self.maker, self.sink = maker, None
        self.session: sa_orm.Session | None = None
        self.objects: list[Any] = []
        self.data: list[Values] = []

    def setup(self) -> None:
        if self.sink is not None:
            self.sink.clear()
        if self.op == "insert":
            self.db.reset(self.model.metadata)
            self.data = values(self.rows)
            return
        seed(self.db, self.rows, self.model)
        self.session = self.maker()
        model = self.model
        self.objects = list(self.session.scalars(sa.select(model).order_by(model.id)))

    def action(self) -> None:
        if self.op == "insert":
            model = self.model
            with self.maker() as session:
                session.add_all(
                    [model(name=n, email=e, score=s, active=a) for n, e, s, a in self.data]
                )
                session.commit()
            return
        session = self.session
        assert session is not None
        if self.op == "update":
            for obj in self.objects:
                obj.name = obj.name + " (renamed)"
                obj.score = obj.score + 1
        else:
            for obj in self.objects:
                session.delete(obj)
        session.commit()

    def teardown(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.objects = []
        self.data = []


class RawUnitOfWork:
    """The statements of the unit of work, with the driver's executemany."""

    def __init__(self, db: Database, rows: int, op: str) -> None:
        self.db, self.rows, self.op = db, rows, op
        self.params: list[tuple[Any, ...]] = []

    def setup(self) -> None:
        if self.op == "insert":
            self.db.reset(Base.metadata)
            self.params = list(values(self.rows))
        elif self.op == "update":
            seed(self.db, self.rows)
            self.params = [(f"name {i} (renamed)", i + 1, i + 1) for i in range(self.rows)]
        else:
            seed(self.db, self.rows)
            self.params = [(i + 1,) for i in range(self.rows)]

    def action(self) -> None:
        sql = {"insert": insert_sql, "update": update_sql, "delete": delete_sql}[self.op]
        conn = self.db.connect_raw()
        conn.cursor().executemany(sql(Contact, self.db.param), self.params)
        conn.commit()

    def teardown(self) -> None:
        self.db.close_raw()
        self.params = []


def make_uow(db: Database, rows: int, op: str, variant: str) -> common.Bench:
    if variant == RAW:
        return RawUnitOfWork(db, rows, op)
    return UnitOfWork(db, rows, op, variant)


VARIANTS = (RAW, BARE, BY_HAND, CALLBACKS, CAPTURE, MEMORY)


def run(quick: bool) -> list[Result]:
    """Unit-of-work insert, update and delete on every selected backend."""
    rows = common.rows_for(10_000, 1_000)
    cases = [
        case
        for op in ("insert", "update", "delete")
        for case in common.cases_for(
            f"uow {op}",
            rows,
            [(v, "benchmarks.bench_uow:make_uow", {"op": op, "variant": v}) for v in VARIANTS],
        )
    ]
    results = common.measure(cases)
    for backend in common.settings().backends:
        try:
            footprint = common.call_in_worker(
                MEMORY, "benchmarks.bench_uow:capture_footprint", backend, rows
            )
        except (common.WorkerError, common.MissingPackage) as error:
            common.log(f"capture footprint on {backend} failed: {error}")
            continue
        results.extend(footprint)
    return results


# -- capture footprint -------------------------------------------------------------------------


def capture_footprint(backend: str, rows: int) -> list[Result]:
    """Bytes per captured change: JSON size, and what dbevents holds after a flush.

    Measured on the MemorySink variant: for each operation, one flush of ``rows``
    objects under :mod:`tracemalloc`; the bytes still allocated by dbevents code
    when the flush returns are the session buffer (plus the after-callback list),
    the values themselves being shared with the objects until they expire.
    """
    db = common.open_database(backend)
    notes: list[Result] = []
    for op in ("insert", "update", "delete"):
        bench = UnitOfWork(db, rows, op, MEMORY)
        sink = bench.sink
        assert sink is not None
        bench.setup()
        session = bench.session or bench.maker()
        if op == "insert":
            session.add_all(
                [Contact(name=n, email=e, score=s, active=a) for n, e, s, a in bench.data]
            )
        elif op == "update":
            for obj in bench.objects:
                obj.name = obj.name + " (renamed)"
                obj.score = obj.score + 1
        else:
            for obj in bench.objects:
                session.delete(obj)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        session.flush()
        peak = tracemalloc.get_traced_memory()[1] - base
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        held = sum(
            stat.size_diff
            for stat in after.compare_to(before, "filename")
            if "/dbevents/" in stat.traceback[0].filename.replace("\\", "/")
        )
        session.commit()
        session.close()
        changeset = sink.changesets[-1]
        count = len(changeset.changes)
        json_bytes = len(changeset.to_json())
        note = (
            f"uow {op} [{rows}] {backend}: {count} changes; "
            f"JSON {json_bytes / count:.0f} B/change; "
            f"held by dbevents after flush {held / count:.0f} B/change; "
            f"flush peak (whole process) {peak / count:.0f} B/change"
        )
        notes.append(
            Result(
                operation=f"footprint uow {op}",
                variant=MEMORY,
                backend=backend,
                seconds=float("nan"),
                rows=rows,
                peak_mb=peak / 2**20,
                note=note,
            )
        )
        bench.teardown()
    return notes


# -- profile -------------------------------------------------------------------------------------


_PROFILED_FILES = ("dispatch/flush.py", "capture.py", "session.py", "events.py")


def profile(backend: str, rows: int, variant: str, top: int) -> str:
    """cProfile the dbevents unit of work; the report lists the hot spots in its own modules."""
    db = common.open_database(backend)
    out = io.StringIO()
    for op in ("insert", "update", "delete"):
        bench = UnitOfWork(db, rows, op, variant)
        bench.setup()
        bench.action()  # warm-up: compiled statement caches, mapper specs
        bench.teardown()
        bench.setup()
        profiler = cProfile.Profile()
        profiler.enable()
        bench.action()
        profiler.disable()
        bench.teardown()
        stats = pstats.Stats(profiler, stream=out)
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"\n=== uow {op}, {rows} rows, {backend}, {variant}: {total:.3f}s profiled", file=out)
        own = _own_rows(stats)
        share = sum(tt for _, _, tt, _ in own)
        print(
            f"time inside dbevents functions (tottime): {share:.3f}s = {share / total:.0%}",
            file=out,
        )
        print(f"{'tottime':>8} {'cumtime':>8} {'calls':>8}  function", file=out)
        for name, calls, tt, ct in sorted(own, key=lambda r: -r[2])[:top]:
            print(f"{tt:8.3f} {ct:8.3f} {calls:8d}  {name}", file=out)
        stats.sort_stats("cumulative")
        print("\ntop by cumulative time (all code):", file=out)
        stats.print_stats(top)
    return out.getvalue()


def _own_rows(stats: pstats.Stats) -> list[tuple[str, int, float, float]]:
    rows = []
    for (filename, line, func), (_, calls, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        path = filename.replace("\\", "/")
        if "/dbevents/" in path:
            short = path.split("/dbevents/", 1)[1]
            rows.append((f"{short}:{line} {func}", calls, tt, ct))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_uow")
    parser.add_argument("--profile", action="store_true", help="profile the dbevents path")
    parser.add_argument("--backend", default="sqlite", choices=common.BACKENDS)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--variant", default=MEMORY, choices=(CALLBACKS, CAPTURE, MEMORY))
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if not args.profile:
        parser.error("run the benchmarks with python -m benchmarks; this entry point profiles")
    run_with_backend(
        args.backend, lambda: print(profile(args.backend, args.rows, args.variant, args.top))
    )


def run_with_backend(backend: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` with a PostgreSQL server started for it when ``backend`` asks for one."""
    if backend != "postgresql":
        fn()
        return
    from tests.servers import PostgresServer

    with PostgresServer() as pg:
        common.configure(common.Settings(backends=(backend,), pg_url=pg.url()))
        fn()


if __name__ == "__main__":
    main()
