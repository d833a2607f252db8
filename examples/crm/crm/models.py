"""The CRM's tables: seven root models, and contacts grouped into subgroups (many-to-many)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.db import Base, Model
from dbevents import fields


class Record:
    """What every record has: a unique 5-character id, and who made and changed it, when.

    The columns are filled by ``crm.events.update_auto_fields``.
    """

    id: Mapped[str] = fields.uid(5)
    created_at: Mapped[dt.datetime | None] = fields.created_at()
    updated_at: Mapped[dt.datetime | None] = fields.updated_at()
    created_by: Mapped[str | None] = fields.created_by(sa.String(5))
    updated_by: Mapped[str | None] = fields.updated_by(sa.String(5))


contact_subgroup = sa.Table(
    "contact_subgroup",
    Base.metadata,
    sa.Column("contact_id", sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("subgroup_id", sa.ForeignKey("subgroups.id"), primary_key=True),
)


class Organization(Record, Model):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(sa.String(100))


class User(Record, Model):
    """A person who signs in; the author of what they write (Flask-Login's user protocol)."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(sa.String(200), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    organization_id: Mapped[str | None] = mapped_column(sa.ForeignKey("organizations.id"))

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return self.id


class Company(Record, Model):
    __tablename__ = "companies"

    name: Mapped[str] = mapped_column(sa.String(100))
    organization_id: Mapped[str | None] = mapped_column(sa.ForeignKey("organizations.id"))
    contacts: Mapped[list[Contact]] = relationship(back_populates="company")


class Contact(Record, Model):
    __tablename__ = "contacts"

    first_name: Mapped[str] = mapped_column(sa.String(100))
    last_name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(200))
    company_id: Mapped[str | None] = mapped_column(sa.ForeignKey("companies.id"))
    company: Mapped[Company | None] = relationship(back_populates="contacts")
    subgroups: Mapped[list[Subgroup]] = relationship(
        secondary=contact_subgroup, back_populates="contacts"
    )
    deals: Mapped[list[Deal]] = relationship(back_populates="contact")


class Subgroup(Record, Model):
    __tablename__ = "subgroups"

    name: Mapped[str] = mapped_column(sa.String(100))
    contacts: Mapped[list[Contact]] = relationship(
        secondary=contact_subgroup, back_populates="subgroups"
    )


class Deal(Record, Model):
    __tablename__ = "deals"

    title: Mapped[str] = mapped_column(sa.String(200))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), default=Decimal(0))
    stage: Mapped[str] = mapped_column(sa.String(20), default="lead")
    contact_id: Mapped[str | None] = mapped_column(sa.ForeignKey("contacts.id"))
    contact: Mapped[Contact | None] = relationship(back_populates="deals")


class Project(Record, Model):
    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(sa.String(100))
    organization_id: Mapped[str | None] = mapped_column(sa.ForeignKey("organizations.id"))
    sprints: Mapped[list[Sprint]] = relationship(back_populates="project")


class Sprint(Record, Model):
    __tablename__ = "sprints"

    name: Mapped[str] = mapped_column(sa.String(100))
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"))
    starts_on: Mapped[dt.date | None]
    ends_on: Mapped[dt.date | None]
    project: Mapped[Project] = relationship(back_populates="sprints")


#: every model whose records get ids and authors (all but the association table)
RECORD_MODELS: tuple[type[Record], ...] = (
    Company,
    Contact,
    Deal,
    Organization,
    Project,
    Sprint,
    Subgroup,
    User,
)
