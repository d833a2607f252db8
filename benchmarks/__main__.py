"""Run every benchmark and print one table.

``python -m benchmarks [--quick] [--backend sqlite|postgresql] [--only NAME]``.

Each ``benchmarks/bench_*.py`` module with a ``run(quick)`` function is a
benchmark; ``run`` returns rows ``{operation, variant, backend, seconds, rows,
peak_mb}`` (and may take ``backends=`` too).  Ratios are taken, within this one
run, against the ``bare SQLAlchemy`` and ``raw DB-API`` rows of the same
operation, backend and row count.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import pkgutil
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from benchmarks import common
from benchmarks.common import BACKENDS, BARE, RAW, VARIANT_ORDER, Result, Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="dbevents benchmarks: one table, one run"
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs and rows (< 2 minutes)")
    parser.add_argument(
        "--backend", action="append", choices=BACKENDS, help="only this backend (repeatable)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="only these modules: uow, statements, peers, ... (repeatable, or comma-separated)",
    )
    parser.add_argument("--rows", type=int, help="rows per case instead of each benchmark's own")
    parser.add_argument("--runs", type=int, help="timed runs per case (default 5, --quick 3)")
    parser.add_argument(
        "--format", choices=("text", "markdown"), default="text", help="table format"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    only = {name.strip() for item in args.only or () for name in item.split(",") if name.strip()}
    backends = tuple(dict.fromkeys(args.backend or BACKENDS))
    modules = list(_discover(only))
    if not modules:
        parser.error(f"no benchmark module matches --only {', '.join(sorted(only))}")
    started = time.monotonic()
    with _postgres(backends) as pg_url:
        if pg_url is None:
            backends = tuple(b for b in backends if b != "postgresql")
        common.configure(
            Settings(
                quick=args.quick,
                rows=args.rows,
                runs=args.runs,
                backends=backends,
                pg_url=pg_url,
                verbose=not args.quiet,
            )
        )
        results: list[Result] = []
        try:
            for name, module in modules:
                common.log(f"== {name}")
                results.extend(_run_module(name, module, args.quick, backends))
        finally:
            common.shutdown()
        versions = _versions(pg_url)
    elapsed = time.monotonic() - started
    results = [r for r in results if r.get("backend") in backends]
    table = [r for r in results if _is_timed(r)]
    notes = [r["note"] for r in results if r.get("note")]
    print(render(table, args.format))
    if notes:
        print()
        print("Notes:" if args.format == "text" else "**Notes**\n")
        for note in notes:
            print(f"- {note}")
    print()
    print(("Versions: " if args.format == "text" else "**Versions**: ") + ", ".join(versions))
    mode = "quick" if args.quick else "full"
    print(f"Mode: {mode}; {len(table)} rows in {elapsed:.0f}s.")
    if args.json:
        # NaN is not JSON: rows without a timing (notes) get null
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in results
        ]
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "rows": rows}, f, indent=1, default=str)
    return 0


def _discover(only: set[str]) -> Iterator[tuple[str, ModuleType]]:
    import benchmarks

    names = sorted(
        info.name
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name.startswith("bench_")
    )
    for module_name in names:
        short = module_name.removeprefix("bench_")
        if only and short not in only and module_name not in only:
            continue
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
        except ImportError as error:
            common.log(
                f"skipped benchmarks.{module_name}: {error} (./dev bench installs the bench group)"
            )
            continue
        if callable(getattr(module, "run", None)):
            yield short, module


def _run_module(
    name: str, module: ModuleType, quick: bool, backends: tuple[str, ...]
) -> list[Result]:
    kwargs: dict[str, Any] = {}
    if "backends" in inspect.signature(module.run).parameters:
        kwargs["backends"] = backends
    try:
        rows: list[Result] = list(module.run(quick, **kwargs))
    except common.MissingPackage as error:
        common.log(f"skipped {name}: {error}")
        return []
    except Exception as error:  # one broken benchmark must not hide the others' figures
        import traceback

        common.log(f"benchmark {name} FAILED: {error!r}\n{traceback.format_exc()}")
        return []
    return rows


def _is_timed(row: Result) -> bool:
    seconds = row.get("seconds")
    return isinstance(seconds, int | float) and not math.isnan(seconds)


@contextlib.contextmanager
def _postgres(backends: tuple[str, ...]) -> Iterator[str | None]:
    """A PostgreSQL server for the run if asked for; ``None`` (and a hint) if none starts."""
    if "postgresql" not in backends:
        yield None
        return
    try:
        from tests.servers import PostgresServer, ServerError
    except ImportError as error:
        common.log(f"no PostgreSQL: {error} (run from the repository root)")
        yield None
        return
    try:
        server = PostgresServer()
    except (ServerError, OSError) as error:
        common.log(f"PostgreSQL rows skipped: {error}")
        yield None
        return
    try:
        yield server.url()
    finally:
        server.stop()


# -- the table -------------------------------------------------------------------------------------

COLUMNS = (
    "operation",
    "rows",
    "backend",
    "variant",
    "median s",
    "rows/s",
    "× bare",
    "× raw",
    "× bare (min)",
    "peak MB",
    "spread",
)


def render(rows: Sequence[Result], fmt: str = "text") -> str:
    """The table: one line per (operation, rows, backend, variant), ratios within the run."""
    lines = [_cells(row, rows) for row in _ordered(rows)]
    if fmt == "markdown":
        out = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [
        max(len(c), *(len(cells[i]) for cells in lines)) if lines else len(c)
        for i, c in enumerate(COLUMNS)
    ]
    numeric = {1, 4, 5, 6, 7, 8, 9, 10}

    def fmt_line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    out = [fmt_line(COLUMNS), fmt_line(["-" * w for w in widths])]
    previous: tuple[Any, ...] | None = None
    for row, cells in zip(_ordered(rows), lines, strict=True):
        group = (row["operation"], row["rows"], row["backend"])
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(fmt_line(cells))
    return "\n".join(out)


def _ordered(rows: Sequence[Result]) -> list[Result]:
    operations = list(dict.fromkeys(r["operation"] for r in rows))
    variants = list(VARIANT_ORDER) + [
        v for v in dict.fromkeys(r["variant"] for r in rows) if v not in VARIANT_ORDER
    ]
    return sorted(
        rows,
        key=lambda r: (
            operations.index(r["operation"]),
            r["rows"],
            BACKENDS.index(r["backend"]) if r["backend"] in BACKENDS else len(BACKENDS),
            variants.index(r["variant"]),
        ),
    )


def _cells(row: Result, rows: Sequence[Result]) -> list[str]:
    seconds = row["seconds"]
    bare_row = _reference(row, rows, BARE)
    bare = bare_row["seconds"] if bare_row else None
    raw_row = _reference(row, rows, RAW)
    raw = raw_row["seconds"] if raw_row else None
    # the fastest runs are the least disturbed by other load on the machine
    best = min(row.get("runs") or [seconds])
    bare_best = min(bare_row.get("runs") or [bare_row["seconds"]]) if bare_row else None
    peak = row.get("peak_mb")
    runs = row.get("runs") or []
    spread = f"±{(max(runs) - min(runs)) / 2 / seconds:.0%}" if len(runs) > 1 and seconds else ""
    return [
        row["operation"],
        f"{row['rows']:,}",
        row["backend"],
        row["variant"],
        f"{seconds:.4f}" if seconds < 1 else f"{seconds:.3f}",
        f"{row['rows'] / seconds:,.0f}" if seconds else "",
        f"{seconds / bare:.2f}" if bare else "",
        f"{seconds / raw:.2f}" if raw else "",
        f"{best / bare_best:.2f}" if bare_best else "",
        f"{peak:.1f}" if isinstance(peak, int | float) else "",
        spread,
    ]


def _reference(row: Result, rows: Sequence[Result], variant: str) -> Result | None:
    for other in rows:
        if (
            other["variant"] == variant
            and other["operation"] == row["operation"]
            and other["backend"] == row["backend"]
            and other["rows"] == row["rows"]
            and other["seconds"]
        ):
            return other
    return None


# -- versions --------------------------------------------------------------------------------------


def _versions(pg_url: str | None) -> list[str]:
    found = [
        f"Python {platform.python_version()}",
        f"SQLAlchemy {sa.__version__}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if pg_url is not None:
        with contextlib.suppress(Exception):
            engine = sa.create_engine(pg_url)
            with engine.connect() as conn:
                found.append(f"PostgreSQL {conn.exec_driver_sql('SHOW server_version').scalar()}")
            engine.dispose()
    for dist, label in (
        ("psycopg", "psycopg"),
        ("dbevents", "dbevents"),
        ("SQLAlchemy-Continuum", "SQLAlchemy-Continuum"),
        ("pydal", "pyDAL"),
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = importlib.metadata.version(dist)
            if dist == "dbevents":
                version += _git_revision()
            found.append(f"{label} {version}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    found.append(f"{platform.machine()} × {os.cpu_count()} CPUs, load {load:.1f}")
    return found


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" ({rev}{', modified' if dirty else ''})"


if __name__ == "__main__":
    sys.exit(main())
