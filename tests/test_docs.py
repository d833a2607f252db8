"""Every ``python`` code block in the README and in ``docs/`` runs as written, and the docs build.

A block whose first line is ``# test_<name>.py`` is a pytest module: it is written to a
file of that name and run by pytest in a subprocess.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
TEST_MODULE = re.compile(r"# (test_\w+\.py)\n")
#: a Markdown link's target: a page, maybe with an anchor
LINK = re.compile(r"\]\(([^)\s]+)\)")


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("**/*.md"))]:
        for index, match in enumerate(FENCE.finditer(path.read_text(encoding="utf-8"))):
            found.append((f"{path.relative_to(ROOT)}#{index + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[w for w, _ in blocks()])
def test_code_block_runs(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    test_module = TEST_MODULE.match(code)
    if test_module is not None:
        run_tests(test_module.group(1), code, tmp_path)
    else:
        run(where, code, monkeypatch)


def run(where: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a block as the body of a module of its own (mapped annotations resolve there)."""
    module = types.ModuleType(f"docs_block_{abs(hash(where))}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, where, "exec"), module.__dict__)


def run_tests(name: str, code: str, directory: Path) -> None:
    """Run a block that is a pytest module; every test in it must pass."""
    (directory / name).write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", name],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout


def test_readme_quickstart_prints_the_committed_change(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    where, code = blocks()[0]
    assert where == "README.md#1"
    run(where, code, monkeypatch)
    assert "insert (1,) {'id': 1, 'email': 'ada@example.com'}" in capsys.readouterr().out


def test_the_index_links_every_page() -> None:
    linked = {target.partition("#")[0] for target in LINK.findall((DOCS / "index.md").read_text())}
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.glob("**/*.md")}
    assert pages - {"index.md"} <= linked


def test_relative_links_resolve() -> None:
    for page in [ROOT / "README.md", *DOCS.glob("**/*.md")]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            path, _, _ = target.partition("#")
            if "://" in path or not path:
                continue
            assert (page.parent / path).resolve().exists(), f"{page.name}: {target}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_the_docs_build_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_public_names_are_sorted_and_complete() -> None:
    import dbevents

    assert dbevents.__all__ == sorted(dbevents.__all__)
    public = {name for name in vars(dbevents) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(dbevents, name)).__name__ == "module"}
    assert set(dbevents.__all__) == public - (modules - {"sqlite"})


def test_every_exception_and_every_sink_is_exported() -> None:
    import dbevents
    import dbevents.exceptions
    import dbevents.sinks

    assert set(dbevents.exceptions.__all__) <= set(dbevents.__all__)
    assert dbevents.sinks.__all__ == sorted(dbevents.sinks.__all__)
    for module in pkgutil.iter_modules(dbevents.sinks.__path__):
        sinks = importlib.import_module(f"dbevents.sinks.{module.name}")
        for name in sinks.__all__:
            if name.endswith("Sink"):
                assert name in dbevents.sinks.__all__, name
                assert getattr(dbevents.sinks, name) is getattr(sinks, name)
