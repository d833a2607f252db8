"""Every ``python`` code block in the README and in ``docs/`` runs as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        for index, match in enumerate(FENCE.finditer(path.read_text(encoding="utf-8"))):
            found.append((f"{path.relative_to(ROOT)}#{index + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[w for w, _ in blocks()])
def test_code_block_runs(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    run(where, code, monkeypatch)


def run(where: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a block as the body of a module of its own (mapped annotations resolve there)."""
    module = types.ModuleType(f"docs_block_{abs(hash(where))}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, where, "exec"), module.__dict__)


def test_readme_quickstart_prints_the_committed_change(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    where, code = blocks()[0]
    assert where == "README.md#1"
    run(where, code, monkeypatch)
    assert "insert (1,) {'id': 1, 'email': 'ada@example.com'}" in capsys.readouterr().out


def test_public_names_are_sorted_and_complete() -> None:
    import dbevents

    assert dbevents.__all__ == sorted(dbevents.__all__)
    public = {name for name in vars(dbevents) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(dbevents, name)).__name__ == "module"}
    assert set(dbevents.__all__) == public - (modules - {"sqlite"})
