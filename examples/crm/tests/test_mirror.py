"""The CRM's DATA_DIR: a mirror that follows every write and reloads into a fresh database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import flask
import pytest
from test_data import populate, run, snapshot

MakeApp = Callable[..., flask.Flask]


@pytest.fixture
def app(make_app: MakeApp, tmp_path: Path) -> flask.Flask:
    """The CRM with its mirror in ``tmp_path/data``."""
    return make_app(DATA_DIR=str(tmp_path / "data"))


def test_the_mirror_follows_every_write(
    app: flask.Flask, seed: dict[str, str], make_app: MakeApp
) -> None:
    populate(app, seed)
    data_dir = app.config["DATA_DIR"]
    result = run(app, "dbevents", "verify", data_dir)
    assert result.exit_code == 0, result.output

    fresh = make_app("fresh")
    result = run(fresh, "loaddata", data_dir)
    assert result.exit_code == 0, result.output
    result = run(fresh, "dbevents", "verify", data_dir)
    assert result.exit_code == 0, result.output
    assert snapshot(fresh) == snapshot(app)
