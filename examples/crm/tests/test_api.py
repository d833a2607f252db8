"""The CRM driven through its JSON API: ids and authors, change sets, the cache."""

from __future__ import annotations

from typing import Any

import flask
import sqlalchemy as sa
from flask.testing import FlaskClient

from crm.db import db
from crm.events.cache_db_updates import cache
from crm.models import Deal


def _signed_in(app: flask.Flask, email: str = "ada@example.com") -> FlaskClient:
    client = app.test_client()
    response = client.post("/api/login", json={"email": email})
    assert response.status_code == 200, response.get_json()
    return client


def _changes(client: FlaskClient, response: Any) -> list[dict[str, Any]]:
    """The changes of the change sets a response names, read back from /api/changes."""
    ids = response.headers.get("X-Changesets", "").split(",")
    recent = client.get("/api/changes?limit=100").get_json()
    return [change for cs in recent if cs["id"] in ids for change in cs["changes"]]


def _ops(changes: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(change["op"], change["table"]) for change in changes}


def test_contact_lifecycle(app: flask.Flask, seed: dict[str, str]) -> None:
    client = _signed_in(app)
    created = client.post(
        "/api/contacts",
        json={
            "first_name": "Grace",
            "last_name": "Hopper",
            "email": "grace@example.com",
            "subgroup_ids": [seed["vip"]],
        },
    )
    assert created.status_code == 201
    contact = created.get_json()
    assert len(contact["id"]) == 5
    assert (contact["created_by"], contact["updated_by"]) == (seed["user"], seed["user"])
    assert contact["created_at"] == contact["updated_at"] is not None
    changes = _changes(client, created)
    assert _ops(changes) == {("insert", "contacts"), ("link", "contact_subgroup")}
    link = next(change for change in changes if change["op"] == "link")
    assert link["new"] == {"contact_id": contact["id"], "subgroup_id": seed["vip"]}

    url = f"/api/contacts/{contact['id']}"
    updated = client.patch(url, json={"email": "g@example.com", "subgroup_ids": [seed["press"]]})
    assert updated.get_json()["email"] == "g@example.com"
    assert updated.get_json()["updated_at"] > contact["updated_at"]
    changes = _changes(client, updated)
    assert _ops(changes) == {
        ("update", "contacts"),
        ("link", "contact_subgroup"),
        ("unlink", "contact_subgroup"),
    }
    update = next(change for change in changes if change["op"] == "update")
    assert update["old"]["email"] == "grace@example.com"
    assert update["new"]["email"] == "g@example.com"

    deleted = client.delete(url)
    assert deleted.status_code == 204
    assert _ops(_changes(client, deleted)) == {
        ("delete", "contacts"),
        ("unlink", "contact_subgroup"),
    }
    assert client.get(url).status_code == 404
    assert cache.get("contacts", (contact["id"],)) is None


def test_a_patch_that_changes_nothing_commits_nothing(
    app: flask.Flask, seed: dict[str, str]
) -> None:
    client = _signed_in(app)
    contact = client.post(
        "/api/contacts", json={"first_name": "A", "last_name": "B", "email": "a@example.com"}
    ).get_json()
    same = client.patch(f"/api/contacts/{contact['id']}", json={"first_name": "A"})
    assert same.status_code == 200
    assert "X-Changesets" not in same.headers
    assert same.get_json()["updated_at"] == contact["updated_at"]


def test_deals_in_bulk_and_by_statement(app: flask.Flask, seed: dict[str, str]) -> None:
    client = _signed_in(app)
    created = client.post(
        "/api/deals",
        json=[{"title": f"deal {i}", "amount": f"{i}00.50"} for i in range(5)]
        + [{"title": "won already", "stage": "won"}],
    )
    assert created.status_code == 201
    deals = created.get_json()
    assert len({deal["id"] for deal in deals}) == 6
    assert all(len(deal["id"]) == 5 and deal["created_by"] == seed["user"] for deal in deals)
    assert (deals[1]["amount"], deals[5]["amount"]) == ("100.50", "0.00")

    advanced = client.post("/api/deals/advance", json={"from": "lead", "to": "qualified"})
    assert advanced.get_json() == {"updated": 5}
    changes = _changes(client, advanced)
    assert len(changes) == 5
    assert all(change["old"]["stage"] == "lead" for change in changes)
    assert all(change["new"]["stage"] == "qualified" for change in changes)
    # the author is the same, the time is not: only updated_at moved with the stage
    assert all(set(change["new"]) == {"stage", "updated_at"} for change in changes)
    stages = {deal["title"]: deal["stage"] for deal in client.get("/api/deals").get_json()}
    assert stages == {**{f"deal {i}": "qualified" for i in range(5)}, "won already": "won"}


def test_anonymous_writes_have_no_author(app: flask.Flask, seed: dict[str, str]) -> None:
    deal = app.test_client().post("/api/deals", json={"title": "x"}).get_json()
    assert (deal["created_by"], deal["updated_by"]) == (None, None)
    assert cache.changesets[-1].actor is None


def test_bad_requests(app: flask.Flask, seed: dict[str, str]) -> None:
    client = app.test_client()
    missing = client.post("/api/contacts", json={"first_name": "A"})
    assert missing.status_code == 400 and "last_name" in missing.get_json()["error"]
    assert client.post("/api/deals", json={"title": "x", "amount": "lots"}).status_code == 400
    assert client.post("/api/deals", data="not json").status_code == 400
    assert client.get("/api/contacts/nope0").status_code == 404
    assert client.post("/api/login", json={"email": "who@example.com"}).status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Deal)) == 0
    assert cache.changesets == []
