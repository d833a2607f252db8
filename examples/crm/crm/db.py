"""The extensions the app factory and the models share: Flask-SQLAlchemy and dbevents."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy.orm as sa_orm
from flask_sqlalchemy import SQLAlchemy

from dbevents.flask import DBEvents


class Base(sa_orm.DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
dbevents_ext = DBEvents(db=db)
#: where crm.events registers its callbacks and listeners
events = dbevents_ext.events

if TYPE_CHECKING:  # db.Model is built at run time; type checkers see the declarative base
    Model = Base
else:
    Model = db.Model
