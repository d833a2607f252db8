"""Writes dbevents cannot see (``text()``, driver SQL) are detected and reported."""

from __future__ import annotations

import warnings

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import dbevents
from dbevents.exceptions import DbEventsWarning, UncapturedWriteError
from dbevents.testing import capture
from tests.models import Company

WRITE = "UPDATE companies SET rating = 1"
READ = "SELECT count(*) FROM companies"


def session_for(tables: sa.Engine, raw_sql: str) -> sa_orm.Session:
    events = dbevents.Events(raw_sql=raw_sql)  # type: ignore[arg-type]
    return events.install(sa_orm.sessionmaker(tables))()


def test_warn_is_the_default_and_names_the_statement(tables: sa.Engine) -> None:
    with dbevents.Events().install(sa_orm.sessionmaker(tables))() as session:
        with pytest.warns(DbEventsWarning, match="cannot see what this SQL writes"):
            session.execute(sa.text(WRITE))
        with pytest.warns(DbEventsWarning, match="UPDATE companies"):
            session.connection().exec_driver_sql(WRITE)
        session.rollback()


def test_raise_stops_the_write(tables: sa.Engine) -> None:
    with session_for(tables, "raise") as session:
        with pytest.raises(UncapturedWriteError):
            session.execute(sa.text(WRITE))
        session.rollback()


def test_ignore_and_reads_are_silent(tables: sa.Engine) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with session_for(tables, "ignore") as session:
            session.execute(sa.text(WRITE))
            session.rollback()
        with session_for(tables, "raise") as session:
            assert session.execute(sa.text(READ)).scalar() == 0
            session.rollback()


def test_bad_policy_is_a_configuration_error() -> None:
    with pytest.raises(dbevents.ConfigurationError, match="raw_sql"):
        dbevents.Events(raw_sql="sometimes")  # type: ignore[arg-type]


def test_an_insert_from_select_is_reported_as_uncaptured(tables: sa.Engine) -> None:
    # SQLAlchemy gives an INSERT ... FROM SELECT no RETURNING for dbevents to read its rows by
    copy = sa.insert(Company).from_select(["name"], sa.select(sa.literal("copy")))
    with dbevents.Events().install(sa_orm.sessionmaker(tables))() as session:
        with pytest.warns(DbEventsWarning, match="INSERT ... FROM SELECT adds to 'companies'"):
            session.execute(copy)
        session.rollback()
    with session_for(tables, "raise") as session:
        with pytest.raises(UncapturedWriteError, match="missing from the change set"):
            session.execute(copy)
        session.rollback()


def test_a_core_insert_returning_without_its_key_is_reported_as_uncaptured(
    tables: sa.Engine,
) -> None:
    # the caller's RETURNING leaves no room for dbevents', and no key was sent
    companies: sa.Table = Company.__table__  # type: ignore[assignment]
    insert = sa.insert(companies).values(name="acme").returning(companies.c.id)
    with dbevents.Events().install(sa_orm.sessionmaker(tables))() as session:
        with pytest.warns(DbEventsWarning, match="INSERT ... RETURNING adds to 'companies'"):
            assert session.scalar(insert) is not None
        session.rollback()


@pytest.mark.parametrize("form", ["values", "parameter set"])
def test_an_orm_insert_returning_without_its_key_is_captured(tables: sa.Engine, form: str) -> None:
    insert = sa.insert(Company).returning(Company.id, Company.name)
    events = dbevents.Events()
    with warnings.catch_warnings(), capture(events) as changesets:
        warnings.simplefilter("error")
        with events.install(sa_orm.sessionmaker(tables))() as session:
            if form == "values":  # run as the one parameter set it is
                result = session.execute(insert.values(name="acme"))
            else:
                result = session.execute(insert, [{"name": "acme"}])
            ((company_id, name),) = result.all()
            session.commit()
    assert name == "acme"
    assert [(c.op, c.pk, (c.new or {}).get("name")) for c in changesets[0].changes] == [
        (dbevents.Op.INSERT, (company_id,), "acme")
    ]
