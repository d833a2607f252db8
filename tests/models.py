"""The schema most tests share: a small CRM, with every kind of relationship dbevents handles."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column, relationship


class Base(sa_orm.DeclarativeBase):
    pass


contact_subgroup = sa.Table(
    "contact_subgroup",
    Base.metadata,
    sa.Column("contact_id", sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("subgroup_id", sa.ForeignKey("subgroups.id"), primary_key=True),
)

#: an association table without a primary key
company_partner = sa.Table(
    "company_partner",
    Base.metadata,
    sa.Column("company_id", sa.ForeignKey("companies.id")),
    sa.Column("partner_id", sa.ForeignKey("companies.id")),
)


class Company(Base):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    rating: Mapped[int] = mapped_column(server_default=sa.text("3"))
    contacts: Mapped[list[Contact]] = relationship(back_populates="company")
    partners: Mapped[list[Company]] = relationship(
        secondary=company_partner,
        primaryjoin=lambda: Company.id == company_partner.c.company_id,
        secondaryjoin=lambda: Company.id == company_partner.c.partner_id,
    )


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(200))
    name: Mapped[str | None] = mapped_column(sa.String(100))
    company_id: Mapped[int | None] = mapped_column(sa.ForeignKey("companies.id"))
    company: Mapped[Company | None] = relationship(back_populates="contacts")
    addresses: Mapped[list[Address]] = relationship(
        back_populates="contact", cascade="all, delete-orphan"
    )
    subgroups: Mapped[list[Subgroup]] = relationship(
        secondary=contact_subgroup, back_populates="contacts"
    )


class Address(Base):
    __tablename__ = "addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"))
    city: Mapped[str] = mapped_column(sa.String(100))
    contact: Mapped[Contact] = relationship(back_populates="addresses")


class Subgroup(Base):
    __tablename__ = "subgroups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    contacts: Mapped[list[Contact]] = relationship(
        secondary=contact_subgroup, back_populates="subgroups"
    )


class Animal(Base):
    __tablename__ = "animals"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(100))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}


class Dog(Animal):
    __tablename__ = "dogs"

    id: Mapped[int] = mapped_column(sa.ForeignKey("animals.id"), primary_key=True)
    bark: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_identity": "dog"}


class Tag(Base):
    """A composite primary key."""

    __tablename__ = "tags"

    namespace: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    label: Mapped[str | None] = mapped_column(sa.String(100))
