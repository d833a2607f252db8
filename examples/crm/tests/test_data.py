"""Data in and out of the CRM: dumpdata, loaddata (events off), verify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask

from crm.events.cache_db_updates import cache

MakeApp = Callable[..., flask.Flask]


def populate(app: flask.Flask, seed: dict[str, str]) -> None:
    """Writes on every path: the unit of work, links, a bulk INSERT, an UPDATE statement."""
    client = app.test_client()
    assert client.post("/api/login", json={"email": "ada@example.com"}).status_code == 200
    ids = []
    for i, group in enumerate(("vip", "press", "vip")):
        body = {"first_name": f"F{i}", "last_name": "L", "email": f"c{i}@example.com"}
        response = client.post("/api/contacts", json={**body, "subgroup_ids": [seed[group]]})
        ids.append(response.get_json()["id"])
    client.patch(f"/api/contacts/{ids[0]}", json={"subgroup_ids": [seed["press"]]})
    client.delete(f"/api/contacts/{ids[2]}")
    deals = [{"title": f"d{i}", "amount": i * 10, "contact_id": ids[i % 2]} for i in range(4)]
    assert client.post("/api/deals", json=deals).status_code == 201
    client.post("/api/deals/advance", json={"from": "lead", "to": "won"})


def snapshot(app: flask.Flask) -> dict[str, Any]:
    client = app.test_client()
    return {"contacts": client.get("/api/contacts").json, "deals": client.get("/api/deals").json}


def run(app: flask.Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=list(args))


def test_dump_load_verify_into_a_fresh_database(
    app: flask.Flask, seed: dict[str, str], make_app: MakeApp, tmp_path: Path
) -> None:
    populate(app, seed)
    dump = tmp_path / "dump"
    result = run(app, "dumpdata", str(dump))
    assert result.exit_code == 0, result.output

    fresh = make_app("fresh")
    cache.clear()
    result = run(fresh, "loaddata", str(dump))
    assert result.exit_code == 0, result.output
    assert cache.changesets == []  # loaded with events off
    result = run(fresh, "dbevents", "verify", str(dump))
    assert result.exit_code == 0, result.output
    # ids, authors and times are the dumped ones: nothing was stamped again
    assert snapshot(fresh) == snapshot(app)

    deal = snapshot(fresh)["deals"][0]
    fresh.test_client().patch(f"/api/deals/{deal['id']}", json={"stage": "lost"})
    result = run(fresh, "dbevents", "verify", str(dump))
    assert result.exit_code == 1
    assert deal["id"] in result.output and "lost" in result.output


def test_handlers_show_the_crm_events(app: flask.Flask) -> None:
    result = run(app, "dbevents", "handlers")
    assert result.exit_code == 0, result.output
    for model in ("Contact", "Deal", "User"):
        assert f"{model}.before_insert -> dbevents.fields:stamp_insert" in result.output
        assert f"{model}.before_update -> dbevents.fields:stamp_update" in result.output
