"""A set of rows of one model, the ``rows`` argument of set-level callbacks (Emmett's dbset)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, final

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

__all__ = ["RowSet"]

M = TypeVar("M")


@final
class RowSet(Generic[M]):
    """The rows a write touches: named by primary key, by a SQL criterion, or both.

    On the unit of work a RowSet names exactly the flushed objects; on a statement
    it names the rows its WHERE clause selects.

    :ivar model: the mapped class.
    :ivar session: the session the write runs in.
    """

    __slots__ = ("_objects", "_pks", "_where", "_where_of", "model", "session")

    def __init__(
        self,
        model: type[M],
        session: sa_orm.Session,
        *,
        where: sa.ColumnElement[bool] | None = None,
        pks: Sequence[tuple[Any, ...]] | None = None,
        objects: Sequence[M] | None = None,
    ) -> None:
        self.model = model
        self.session = session
        self._where = where
        self._where_of: Callable[[], sa.ColumnElement[bool]] | None = None
        self._pks = tuple(pks) if pks is not None else None
        self._objects = tuple(objects) if objects is not None else None

    @classmethod
    def _selecting(
        cls, model: type[M], session: sa_orm.Session, where_of: Callable[[], sa.ColumnElement[bool]]
    ) -> RowSet[M]:
        """The rows a statement's WHERE clause selects, made into a criterion of their own
        by ``where_of`` if a callback asks: most never do, and it costs as much as a small
        statement's other work does."""
        rows = cls(model, session)
        rows._where_of = where_of
        return rows

    @classmethod
    def _flushed(
        cls, model: type[M], session: sa_orm.Session, obj: M, pk: tuple[Any, ...] | None = None
    ) -> RowSet[M]:
        """The RowSet of one object the unit of work writes, and its key if known.

        A flush makes one or two per row: built without the keyword arguments and
        copies of the constructor, which cost as much as a no-op callback does.
        """
        rows = object.__new__(cls)
        rows.model, rows.session = model, session
        rows._where = rows._where_of = None
        rows._pks = None if pk is None else (pk,)
        rows._objects = (obj,)
        return rows

    @property
    def pks(self) -> tuple[tuple[Any, ...], ...] | None:
        """Primary keys of the rows, as tuples, when known.

        Always on the unit of work; on a statement when the model's rows are
        captured, ``None`` when it is named by its WHERE clause alone.
        """
        if self._pks is None and self._objects is not None:
            self._pks = tuple(
                sa.inspect(obj).identity or ()
                for obj in self._objects  # type: ignore[misc, unused-ignore]
            )
        return self._pks

    @property
    def where(self) -> sa.ColumnElement[bool]:
        """A SQL criterion selecting these rows."""
        if self._where is not None:
            return self._where
        if self._where_of is not None:
            self._where = self._where_of()
            return self._where
        columns = sa.inspect(self.model).primary_key
        pks = self.pks or ()
        if len(columns) == 1:
            self._where = columns[0].in_([pk[0] for pk in pks])
        else:
            self._where = sa.tuple_(*columns).in_(pks)
        return self._where

    def select(self) -> list[M]:
        """Load the matching objects with a query (without autoflush)."""
        with self.session.no_autoflush:
            return list(self.session.scalars(sa.select(self.model).where(self.where)))

    def count(self) -> int:
        """Count the matching rows with a query."""
        query = sa.select(sa.func.count()).select_from(self.model).where(self.where)
        with self.session.no_autoflush:
            return int(self.session.scalar(query) or 0)

    def update_naive(self, **values: Any) -> int:
        """Update the rows without running callbacks (the change is still captured).

        :returns: the number of rows updated.
        """
        stmt = sa.update(self.model).where(self.where).values(**values)
        result = self.session.execute(
            stmt, execution_options={"skip_callbacks": True, "synchronize_session": False}
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def delete_naive(self) -> int:
        """Delete the rows without running callbacks (the change is still captured).

        :returns: the number of rows deleted.
        """
        stmt = sa.delete(self.model).where(self.where)
        result = self.session.execute(
            stmt, execution_options={"skip_callbacks": True, "synchronize_session": False}
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[M]:
        """The objects: those flushed on the unit of work, else the result of :meth:`select`."""
        return iter(self._objects if self._objects is not None else self.select())

    def __repr__(self) -> str:
        if self._objects is not None:
            return f"<RowSet {self.model.__name__} pks={self.pks!r}>"
        return f"<RowSet {self.model.__name__} ({self.where})>"
