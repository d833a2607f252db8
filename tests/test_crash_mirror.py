"""A MirrorSink writer killed with SIGKILL mid-append or mid-compaction leaves a mirror that loads.

Each iteration runs a writer process on a fresh SQLite database and mirror,
kills it at a random moment, then loads the mirror into another database and
verifies it against what the writer committed: the mirror holds every committed
transaction, or all but the last one (killed between COMMIT and the append,
which only the outbox can close).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import dbevents
import dbevents.sqlite
from tests.datamodels import metadata

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 24
FILLER = "x" * 2000

WRITER = textwrap.dedent(
    """
    import sys
    import sqlalchemy as sa
    import sqlalchemy.orm as sa_orm
    import dbevents
    import dbevents.sqlite
    from tests.datamodels import Tag, Thing, metadata

    engine = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{sys.argv[1]}"))
    metadata.create_all(engine)
    mirror = dbevents.MirrorSink(sys.argv[2], metadata=metadata, compact_bytes=6000)
    events = dbevents.Events(sinks=[mirror])
    maker = sa_orm.sessionmaker(engine)
    events.install(maker)
    with maker() as session:
        session.add(Thing(id=1, name="0"))
        session.commit()
    print("ready", flush=True)
    while True:
        with maker() as session:
            counter = session.get_one(Thing, 1)
            k = int(counter.name) + 1
            counter.name = str(k)
            session.add(Thing(id=k + 1, name="filler", note="x" * 2000))
            session.add(Tag(id=k, label=f"t{k}"))
            if (previous := session.get(Tag, k - 1)) is not None:
                previous.label = f"t{k - 1}u"
            if (old := session.get(Tag, k - 3)) is not None:
                session.delete(old)
            session.commit()
    """
)

State = dict[str, dict[int, tuple[object, ...]]]


def state(k: int) -> State:
    """What the writer's database holds after ``k`` loop transactions."""
    things: dict[int, tuple[object, ...]] = {1: (str(k), None)}
    things.update({j + 1: ("filler", FILLER) for j in range(1, k + 1)})
    tags: dict[int, tuple[object, ...]] = {
        j: (f"t{j}" if j == k else f"t{j}u",) for j in range(max(1, k - 2), k + 1)
    }
    return {"things": things, "tags": tags}


def read(engine: sa.Engine) -> State:
    with engine.connect() as conn:
        things = conn.execute(sa.text("SELECT id, name, note FROM things"))
        tags = conn.execute(sa.text("SELECT id, label FROM tags"))
        return {
            "things": {row[0]: tuple(row[1:]) for row in things},
            "tags": {row[0]: tuple(row[1:]) for row in tags},
        }


def test_mirror_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240501)
    torn = mid_compaction = behind = 0
    for iteration in range(ITERATIONS):
        work = tmp_path / f"run{iteration}"
        work.mkdir()
        mirror = work / "mirror"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(work / "writer.db"), str(mirror)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()

        journal = mirror / ".journal.jsonl"
        tail = journal.read_bytes()[-1:] if journal.exists() else b""
        torn += tail not in (b"", b"\n")
        mid_compaction += any(mirror.glob(".*.tmp"))
        source = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{work / 'writer.db'}"))
        target = dbevents.sqlite.configure(sa.create_engine(f"sqlite:///{work / 'loaded.db'}"))
        try:
            committed = int(str(read(source)["things"][1][0]))
            metadata.create_all(target)
            dbevents.load(target, metadata, mirror)
            loaded = read(target)
            differences = dbevents.verify(source, metadata, mirror)
        finally:
            source.dispose()
            target.dispose()

        if loaded == state(committed):
            assert differences == [], iteration
            continue
        behind += 1
        assert committed >= 1 and loaded == state(committed - 1), iteration
        last = {("things", (1,)), ("things", (committed + 1,))}
        last |= {("tags", (j,)) for j in (committed, committed - 1, committed - 3)}
        assert differences and {(d.table, d.key) for d in differences} <= last, iteration
    print(
        f"\nkills: {ITERATIONS}, torn appends: {torn}, mid-compaction: {mid_compaction}, "
        f"one commit behind: {behind}"
    )
