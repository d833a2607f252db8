"""The benchmark runner in a tiny mode prints a complete table; timings are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CORE_VARIANTS = [
    "raw DB-API",
    "bare SQLAlchemy",
    "dbevents callbacks",
    "dbevents + capture",
    "dbevents + MemorySink",
]
OPERATIONS = [
    "uow insert",
    "uow update",
    "uow delete",
    "stmt update",
    "stmt delete",
    "bulk insert",
    "bulk update by pk",
]


def _run_benchmarks(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--rows", "50", "--runs", "1", "--backend", "sqlite"]
        + ["--json", str(out), "--quiet", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "FAILED" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return result.stdout, data


def test_tiny_run_prints_every_operation_and_variant(tmp_path: Path) -> None:
    stdout, data = _run_benchmarks(tmp_path, "--only", "uow,statements")
    timed = {
        (row["operation"], row["variant"]): row
        for row in data["rows"]
        if row["backend"] == "sqlite" and isinstance(row["seconds"], float)
    }
    for operation in OPERATIONS:
        for variant in CORE_VARIANTS:
            row = timed.get((operation, variant))
            assert row is not None, f"no row for {operation} / {variant}"
            assert row["rows"] == 50
            assert row["seconds"] > 0
            assert row["peak_mb"] is not None
    for operation in ("uow insert", "uow update", "uow delete"):
        assert (operation, "mapper events by hand") in timed
    for operation in ("stmt update", "stmt delete"):
        assert (operation, "floor: SELECT + bare") in timed
    assert ("bulk insert", "floor: RETURNING + bare") in timed
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("operation"))
    for column in ("median s", "rows/s", "× bare", "× raw", "peak MB"):
        assert column in header
    table = [line for line in lines if line.startswith(("uow ", "stmt ", "bulk "))]
    assert len(table) == len(timed)
    versions = next(line for line in lines if line.startswith("Versions:"))
    for name in ("Python", "SQLAlchemy", "SQLite", "dbevents"):
        assert name in versions
    # bytes per captured change, one note per unit-of-work operation
    notes = [line for line in lines if "B/change" in line]
    assert len(notes) == 3


def test_peers_run_or_are_skipped_with_a_hint(tmp_path: Path) -> None:
    _, data = _run_benchmarks(tmp_path, "--only", "peers")
    variants = {row["variant"] for row in data["rows"]}
    # the seed CRM's pattern needs nothing beyond SQLAlchemy
    assert "seed after_flush + after_commit" in variants
    for row in data["rows"]:
        assert row["backend"] == "sqlite"
        assert row["rows"] == 50
