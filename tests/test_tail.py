"""Following a mirror's journal: every change set once, in order, across compactions."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Generator
from pathlib import Path

from dbevents.changes import Change, ChangeSet, Op
from dbevents.fileformat import JOURNAL
from dbevents.ids import new_id
from dbevents.sinks.mirror import MirrorSink
from dbevents.tail import follow_mirror
from tests.datamodels import metadata


def tag(number: int, label: str = "") -> ChangeSet:
    row = {"id": number, "label": label or f"tag {number}"}
    change = Change(Op.INSERT, "tags", "Tag", (number,), None, row)
    return ChangeSet(new_id(), dt.datetime.now(dt.UTC), None, (change,))


def numbers(follow: Generator[ChangeSet, None, None], count: int) -> list[int]:
    return [next(follow).changes[0].pk[0] for _ in range(count)]


def later(action: object, seconds: float = 0.2) -> threading.Timer:
    """Run ``action`` while the follower polls (it blocks in ``next()`` until a line is whole)."""
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.start()
    return timer


def test_a_compaction_between_two_polls_loses_and_repeats_nothing(tmp_path: Path) -> None:
    sink = MirrorSink(tmp_path, metadata=metadata)
    sink.publish(tag(1))
    follow = follow_mirror(tmp_path / JOURNAL, everything=True, poll=0.01)
    assert numbers(follow, 1) == [1]
    old_position = (tmp_path / JOURNAL).stat().st_size

    sink.publish(tag(2))
    sink.publish(tag(3))
    sink.compact()
    for number in range(4, 8):  # the new journal grows past the old read position
        sink.publish(tag(number, "x" * 7 * number))
    assert (tmp_path / JOURNAL).stat().st_size > old_position

    assert numbers(follow, 6) == [2, 3, 4, 5, 6, 7]  # the old journal's end, then the new one
    sink.publish(tag(8))
    assert numbers(follow, 1) == [8]
    follow.close()


def test_a_line_cut_by_a_crash_and_then_replaced_is_never_read_in_part(tmp_path: Path) -> None:
    sink = MirrorSink(tmp_path, metadata=metadata)
    sink.publish(tag(1))
    with (tmp_path / JOURNAL).open("ab") as journal:
        journal.write(tag(2).to_json()[:25])  # a writer killed in the middle of its append
    follow = follow_mirror(tmp_path / JOURNAL, poll=0.01)

    timer = later(lambda: sink.publish(tag(3, "a longer label than the cut line had")))
    try:
        assert numbers(follow, 1) == [3]
    finally:
        timer.join()
    follow.close()


def test_a_line_being_written_when_tail_starts_is_read_whole(tmp_path: Path) -> None:
    sink = MirrorSink(tmp_path, metadata=metadata)
    sink.publish(tag(1))
    line = tag(2).to_json() + b"\n"
    with (tmp_path / JOURNAL).open("ab") as journal:
        journal.write(line[:30])
    follow = follow_mirror(tmp_path / JOURNAL, poll=0.01)

    def finish() -> None:
        with (tmp_path / JOURNAL).open("ab") as journal:
            journal.write(line[30:])

    timer = later(finish)
    try:
        assert numbers(follow, 1) == [2]
    finally:
        timer.join()
    follow.close()


def test_a_journal_emptied_in_place_is_read_again_from_its_start(tmp_path: Path) -> None:
    sink = MirrorSink(tmp_path, metadata=metadata)
    sink.publish(tag(1))
    follow = follow_mirror(tmp_path / JOURNAL, everything=True, poll=0.01)
    assert numbers(follow, 1) == [1]

    (tmp_path / JOURNAL).write_bytes(b"")  # same file, emptied: as a mirror of old did
    for number in range(2, 5):
        sink.publish(tag(number, "y" * 9 * number))

    assert numbers(follow, 3) == [2, 3, 4]
    follow.close()
