"""The demo that ``./dev demo`` runs: it finishes, and its output tells the whole tour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_the_whole_tour(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    for step in range(1, 9):
        assert f"\n{step}. " in out
    lines = [line.strip() for line in out.splitlines()]
    # callbacks and change sets
    assert "after_insert   pk=1 email=ada@example.com" in lines
    # the vetoes the headings announce are shown, on the unit of work and on a bulk INSERT
    for spam in ("bot@spam.example", "x@spam.example"):
        assert (
            f"vetoed         {spam}: not inserted, no after_insert, not in the change set" in lines
        )
    inserted = [line for line in lines if line.startswith(("after_insert", "insert "))]
    assert inserted and not any("spam" in line for line in inserted)
    # counts read as English: one change, three changes
    assert any(line.endswith("(1 change)") for line in lines)
    assert any(line.endswith("(3 changes)") for line in lines)
    assert "before_update  3 rows <- {'score': 5}" in lines
    assert "1 changes" not in out and "(s)" not in out
    assert "link    contact_groups[1, 1]" in lines
    assert "update  contacts[1]  score: 0 -> 5" in lines
    # the mirror, before and after compaction
    listed = [line.split()[0] for line in lines if " bytes " in line]
    assert listed.count(".journal.jsonl") == 2 and listed.count("manifest.json") == 2
    assert listed.count("contacts.jsonl") == 1  # written by the compaction
    assert 'contacts.jsonl, line 1: {"id":1,"email":"ada@example.com","score":5}' in lines
    # reloaded muted, and verified
    assert "loaded 3 rows (groups 1, contacts 2, contact_groups 0)" in lines  # as dump orders
    assert "callbacks run: 0" in lines
    assert "change sets delivered: 0" in lines
    assert "the fresh database holds: ada@example.com, grace@example.com" in lines
    assert "fresh database: 0 differences, clean" in lines
    assert "first database: 1 difference; step 5 wrote while muted:" in lines
    assert "contacts (3,): in the database, not in the directory" in lines
    assert lines[-1] == "done."
    assert not any(tmp_path.iterdir())  # its files live in a temp dir it removes
