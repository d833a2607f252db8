"""The Flask extension's DATA_DIR: a MirrorSink per app that follows every commit."""

from __future__ import annotations

from pathlib import Path

import dbevents
from dbevents.flask import DBEvents
from tests.test_flask import MakeApp, Memo, _add_memo, db, ext, make_app

__all__ = ["ext", "make_app"]  # the fixtures, shared with test_flask


def test_data_dir_keeps_a_mirror(
    ext: DBEvents, make_app: MakeApp, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "mirror"
    app = make_app(db_url, DATA_DIR=str(data))
    with app.app_context():
        ids = [_add_memo(title) for title in ("a", "b", "c")]
        db.session.get_one(Memo, ids[0]).title = "changed"
        db.session.delete(db.session.get_one(Memo, ids[1]))
        db.session.commit()
        assert ext.data_dir() == data
        assert dbevents.verify(db.engine, db.metadata, data) == []
    result = app.test_cli_runner().invoke(args=["dbevents", "verify", str(data)])
    assert result.exit_code == 0, result.output


def test_dbevents_data_dir_comes_first(ext: DBEvents, make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(
        f"sqlite:///{tmp_path / 'x.db'}",
        DATA_DIR=str(tmp_path / "generic"),
        DBEVENTS_DATA_DIR=str(tmp_path / "ours"),
    )
    assert ext.data_dir(app) == tmp_path / "ours"
