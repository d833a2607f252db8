"""CPU instructions per row of a unit-of-work benchmark, counted by valgrind.

Timings on a shared machine move by 20 % from run to run; instruction counts do
not, so a change of a few per cent to the per-row path shows up in one try::

    python -m benchmarks.instructions update "bare SQLAlchemy" "dbevents callbacks"

Each variant runs twice under ``valgrind --tool=callgrind`` on SQLite, once with
one timed action and once without; the difference, divided by the rows, is the
action's count per row.  Needs valgrind (``apt-get install valgrind``); about
a minute per variant.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys

from benchmarks import bench_uow, common

_ROWS = 2000


def _run(variant: str, op: str, actions: int) -> None:
    """Set up and warm the case, then run ``actions`` actions (the setups run either way)."""
    db = common.open_database("sqlite")
    case = bench_uow.make_uow(db, _ROWS, op, variant)
    case.setup()
    case.action()
    case.teardown()
    case.setup()
    gc.collect()
    if actions:
        case.action()
    case.teardown()


def _count(variant: str, op: str, actions: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        op,
        variant,
        str(actions),
    ]
    # a fixed hash seed: the same dict and set layouts, so the same instructions, each run
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=["insert", "update", "delete"])
    parser.add_argument("variants", nargs="+", help='e.g. "bare SQLAlchemy"')
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # under valgrind: the variant, then the number of actions
        _run(args.variants[0], args.op, int(args.variants[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    for variant in args.variants:
        per_row = (_count(variant, args.op, 1) - _count(variant, args.op, 0)) / _ROWS
        print(f"{args.op} {variant}: {per_row:,.0f} instructions per row", flush=True)


if __name__ == "__main__":
    main()
