"""A small JSON API for contacts and deals, with sign-in so writes have an author."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import flask
import flask_login
import sqlalchemy as sa

from crm.db import db
from crm.events.cache_db_updates import cache
from crm.events.catch_db_updates import request_changesets
from crm.models import Contact, Deal, Subgroup, User

api = flask.Blueprint("api", __name__, url_prefix="/api")
login_manager = flask_login.LoginManager()

M = TypeVar("M")
Json = dict[str, Any]

CONTACT_FIELDS = ("first_name", "last_name", "email", "company_id")
DEAL_FIELDS = ("title", "amount", "stage", "contact_id")


def load_user(user_id: str) -> User | None:
    return db.session.get(User, user_id)


login_manager.user_loader(load_user)


@api.after_request
def name_changesets(response: flask.Response) -> flask.Response:
    """Tell the client which change sets its request committed."""
    ids = [changeset.id for changeset in request_changesets()]
    if ids:
        response.headers["X-Changesets"] = ",".join(ids)
    return response


@api.errorhandler(400)
@api.errorhandler(404)
def error(exc: Any) -> tuple[Json, int]:
    return {"error": exc.description}, exc.code


# -- sign-in -----------------------------------------------------------------------------------


@api.post("/login")
def login() -> Json:
    email = _body().get("email")
    user = db.session.scalar(sa.select(User).where(User.email == email))
    if user is None:
        flask.abort(404, f"no user with email {email!r}")
    flask_login.login_user(user)
    return {"id": user.id}


@api.post("/logout")
def logout() -> Json:
    flask_login.logout_user()
    return {}


# -- contacts ----------------------------------------------------------------------------------


@api.get("/contacts")
def list_contacts() -> list[Json]:
    contacts = db.session.scalars(sa.select(Contact).order_by(Contact.created_at, Contact.id))
    return [_contact(contact) for contact in contacts]


@api.post("/contacts")
def create_contact() -> tuple[Json, int]:
    body = _body()
    contact = Contact(**_required(body, CONTACT_FIELDS[:3]), company_id=body.get("company_id"))
    contact.subgroups = _subgroups(body.get("subgroup_ids", []))
    db.session.add(contact)
    db.session.commit()
    return _contact(contact), 201


@api.get("/contacts/<contact_id>")
def get_contact(contact_id: str) -> Json:
    return _contact(_get(Contact, contact_id))


@api.patch("/contacts/<contact_id>")
def update_contact(contact_id: str) -> Json:
    contact = _get(Contact, contact_id)
    body = _body()
    for name in CONTACT_FIELDS:
        if name in body:
            setattr(contact, name, body[name])
    if "subgroup_ids" in body:
        contact.subgroups = _subgroups(body["subgroup_ids"])
    db.session.commit()
    return _contact(contact)


@api.delete("/contacts/<contact_id>")
def delete_contact(contact_id: str) -> tuple[str, int]:
    db.session.delete(_get(Contact, contact_id))
    db.session.commit()
    return "", 204


# -- deals -----------------------------------------------------------------------------------


@api.get("/deals")
def list_deals() -> list[Json]:
    deals = db.session.scalars(sa.select(Deal).order_by(Deal.created_at, Deal.id))
    return [_deal(deal) for deal in deals]


@api.post("/deals")
def create_deals() -> tuple[Json | list[Json], int]:
    """One deal (an object), or many in one bulk INSERT (a list)."""
    body = flask.request.get_json(silent=True)
    if isinstance(body, list):
        rows = [_deal_values(_object(item), required=True) for item in body]
        ids = db.session.scalars(sa.insert(Deal).returning(Deal.id), rows).all()
        db.session.commit()
        return [_deal(_get(Deal, deal_id)) for deal_id in ids], 201
    deal = Deal(**_deal_values(_body(), required=True))
    db.session.add(deal)
    db.session.commit()
    return _deal(deal), 201


@api.patch("/deals/<deal_id>")
def update_deal(deal_id: str) -> Json:
    deal = _get(Deal, deal_id)
    for name, value in _deal_values(_body(), required=False).items():
        setattr(deal, name, value)
    db.session.commit()
    return _deal(deal)


@api.post("/deals/advance")
def advance_deals() -> Json:
    """Move every deal of one stage to another, in one UPDATE statement."""
    body = _required(_body(), ("from", "to"))
    statement = sa.update(Deal).where(Deal.stage == body["from"]).values(stage=body["to"])
    result = db.session.execute(statement)
    db.session.commit()
    return {"updated": result.rowcount}  # type: ignore[attr-defined]


# -- change sets -------------------------------------------------------------------------------


@api.get("/changes")
def list_changes() -> list[Json]:
    """The most recent change sets held by the cache, oldest first (``?limit=N``, default 20)."""
    limit = flask.request.args.get("limit", 20, type=int)
    recent = cache.changesets[-limit:] if limit > 0 else []
    return [json.loads(changeset.to_json()) for changeset in recent]


# -- helpers ---------------------------------------------------------------------------------


def _body() -> Json:
    return _object(flask.request.get_json(silent=True))


def _object(value: Any) -> Json:
    if not isinstance(value, dict):
        flask.abort(400, "expected a JSON object")
    return value


def _required(body: Json, names: tuple[str, ...]) -> Json:
    missing = [name for name in names if not body.get(name)]
    if missing:
        flask.abort(400, f"missing: {', '.join(missing)}")
    return {name: body[name] for name in names}


def _get(model: type[M], pk: str) -> M:
    found = db.session.get(model, pk)
    if found is None:
        flask.abort(404, f"no {model.__name__} {pk!r}")
    return found


def _subgroups(ids: Any) -> list[Subgroup]:
    if not isinstance(ids, list):
        flask.abort(400, "subgroup_ids: expected a list")
    return [_get(Subgroup, pk) for pk in ids]


def _deal_values(body: Json, *, required: bool) -> Json:
    values = _required(body, ("title",)) if required else {}
    values.update((name, body[name]) for name in DEAL_FIELDS if name in body)
    if "amount" in values:
        try:
            values["amount"] = Decimal(str(values["amount"]))
        except InvalidOperation:
            flask.abort(400, f"amount: not a number: {values['amount']!r}")
    return values


def _contact(contact: Contact) -> Json:
    return {
        "id": contact.id,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "email": contact.email,
        "company_id": contact.company_id,
        "subgroup_ids": sorted(subgroup.id for subgroup in contact.subgroups),
        **_authorship(contact),
    }


def _deal(deal: Deal) -> Json:
    return {
        "id": deal.id,
        "title": deal.title,
        "amount": str(deal.amount),
        "stage": deal.stage,
        "contact_id": deal.contact_id,
        **_authorship(deal),
    }


def _authorship(record: Contact | Deal) -> Json:
    return {
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "updated_at": record.updated_at.isoformat() if record.updated_at else None,
        "created_by": record.created_by,
        "updated_by": record.updated_by,
    }
