"""The README's steps, replayed as written: its ``flask`` commands and its ``curl`` requests."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import flask
import pytest
from flask.testing import FlaskClient

MakeApp = Callable[..., flask.Flask]

EXAMPLE = Path(__file__).resolve().parents[1]
CONSOLE = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_steps() -> Iterator[list[str]]:
    """Each command of the README's console blocks, as the shell would split it."""
    for block in CONSOLE.findall((EXAMPLE / "README.md").read_text(encoding="utf-8")):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                yield words


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for ``examples/crm``: the README's relative paths land here."""
    directory = tmp_path / "crm"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def replay_readme(app: flask.Flask) -> dict[str, Any]:
    """Run the README's steps against ``app``: the JSON each ``curl`` got back, by path."""
    client = app.test_client()  # one client: its cookies are curl's jar
    responses: dict[str, Any] = {}
    for words in readme_steps():
        if words[:3] == ["flask", "--app", "crm"]:
            _flask(app, words[3:])
        elif words[0] == "curl":
            path, response = _curl(client, words[1:])
            responses[urlsplit(path).path] = response
        else:
            pytest.fail(f"README step not replayed: {shlex.join(words)}")
    return responses


def test_the_readme_steps_work_as_written(make_app: MakeApp, cwd: Path) -> None:
    responses = replay_readme(make_app(DATA_DIR=str(cwd / "instance" / "data")))

    user = responses["/api/login"]["id"]
    # what the README says /api/changes returns: the last change sets, with their authors
    recent = responses["/api/changes"]
    assert [changeset["actor"] for changeset in recent] == [user, user]
    assert [{(c["op"], c["table"]) for c in changeset["changes"]} for changeset in recent] == [
        {("insert", "contacts")},
        {("insert", "deals")},
    ]


def test_the_readme_says_what_api_changes_returns() -> None:
    readme = " ".join((EXAMPLE / "README.md").read_text(encoding="utf-8").split())

    assert "`GET /api/changes?limit=N` lists the last N change sets" in readme


def test_the_readme_steps_leave_nothing_for_git(make_app: MakeApp, cwd: Path) -> None:
    replay_readme(make_app(DATA_DIR=str(cwd / "instance" / "data")))
    lines = (EXAMPLE / ".gitignore").read_text(encoding="utf-8").splitlines()
    ignored = {line for line in lines if line and not line.startswith("#")}

    written = {f"{path.name}/" if path.is_dir() else path.name for path in cwd.iterdir()}

    assert written == {"instance/"}
    assert written <= ignored


def _flask(app: flask.Flask, args: list[str]) -> None:
    if args == ["run"]:
        return  # the test client stands in for the server
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, (args, result.output)


def _curl(client: FlaskClient, args: list[str]) -> tuple[str, Any]:
    """Send what ``curl ARGS`` sends: a POST of its ``-d`` JSON, or a GET."""
    options: dict[str, str] = {}
    urls = []
    words = iter(args)
    for word in words:
        if word.startswith("-"):
            options[word] = next(words)
        else:
            urls.append(word)
    [url] = urls
    parts = urlsplit(url)
    path = f"{parts.path}?{parts.query}" if parts.query else parts.path
    if "-c" in options:  # curl writes its cookie jar there
        Path(options["-c"]).touch()
    if "-d" in options:
        assert options.get("-H") == "Content-Type: application/json"
        response = client.post(path, json=json.loads(options["-d"]))
    else:
        response = client.get(path)
    assert response.status_code in (200, 201), (url, response.get_json())
    return path, response.get_json()
