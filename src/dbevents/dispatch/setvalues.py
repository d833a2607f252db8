"""What a statement writes and which rows, given its parameters, as callbacks see them.

A statement's values come from its ``values()`` and from its one parameter set:
a ``bindparam()`` among the values takes its value there, and SQLAlchemy writes
every column a parameter names, over the statement's own value for it.  The
callbacks see all of them (``fields``), by attribute key, and what they change
is written back where it came from.  The ``bindparam()``s of its WHERE clause
take theirs from the parameters too, in the rows the callbacks get.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, final

import sqlalchemy as sa
from sqlalchemy.sql import visitors

from .._compat import dml_values, with_dml_values
from ..exceptions import ConfigurationError
from ..mapping import MapperSpec
from .stored import Row, equality_criteria

__all__ = ["SetValues", "check_keys", "selected"]


@final
class SetValues:
    """What one statement (with at most one parameter set) writes, by attribute key."""

    __slots__ = (
        "_given_params",
        "_keys",
        "_params",
        "_spec",
        "_stated",
        "fields",
        "given",
        "original",
    )

    def __init__(
        self, spec: MapperSpec, pairs: Iterable[tuple[Any, Any]], params: Any = None
    ) -> None:
        self._spec = spec
        #: the statement's parameters as given: one set, several (an executemany), or none
        self._given_params = params
        #: the parameter set, when there is exactly one
        self._params: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
        #: attribute key -> the statement's own key of its value (a column, a name)
        self._keys: dict[str, Any] = {}
        #: attribute key -> the statement's own value, as written (a bindparam, say)
        self._stated: dict[str, Any] = {}
        #: attribute key -> the parameter that gives its value
        self.given: dict[str, str] = {}
        #: the values, for the callbacks to read and change
        self.fields: Row = {}
        for key, value in pairs:
            name = self._attribute(key)
            self._keys[name] = key
            self._stated[name] = value
            if isinstance(value, sa.BindParameter) and value.key in self._params:
                value = self._params[value.key]  # else its own value, or itself (executemany)
            elif isinstance(value, sa.BindParameter) and not value.required:
                value = value.effective_value
            self.fields[name] = value
        for key, value in self._params.items():
            attribute = spec.attribute_of_param.get(key)
            if attribute is not None:  # SQLAlchemy SETs this column, over values()
                self.given[attribute] = key
                self.fields[attribute] = value
        self.original = dict(self.fields)

    def _attribute(self, key: Any) -> str:
        """The attribute key of a SET target: a string, a column or an attribute."""
        column_keys, of_column = self._spec.column_keys, self._spec.attribute_of_column
        if isinstance(key, str):
            return key if key in column_keys else of_column.get(key, key)
        attribute: str = getattr(key, "key", None) or str(key)
        if attribute not in column_keys:
            return of_column.get(str(getattr(key, "name", "")), attribute)
        return attribute

    @property
    def changed(self) -> bool:
        """Whether the callbacks changed, added or removed a value."""
        return self.fields != self.original

    @classmethod
    def of(cls, spec: MapperSpec, statement: Any, params: Any = None) -> SetValues:
        """The values of a statement's ``values()`` and of its one parameter set."""
        return cls(spec, dml_values(statement) or (), params)

    def pairs(self) -> list[tuple[Any, Any]]:
        """The values the statement itself holds, as :attr:`fields` are now: those no
        callback changed as the statement wrote them (a ``bindparam()`` stays one, and
        takes each parameter set's value)."""
        spec, keys, stated, original = self._spec, self._keys, self._stated, self.original
        return [
            (
                keys.get(name, getattr(spec.model, name)),
                stated[name] if name in stated and value is original.get(name, _UNSET) else value,
            )
            for name, value in self.fields.items()
            if name not in self.given
        ]

    def applied(self, statement: Any) -> tuple[Any, Any]:
        """The statement and parameters that write :attr:`fields` as they are now."""
        check_keys(self._spec, self.fields, self.original)
        params = self._given_params
        if self.given:  # values of the one parameter set
            params = dict(self._params)
            for name, key in self.given.items():
                if name in self.fields:
                    params[key] = self.fields[name]
                else:
                    del params[key]
        return with_dml_values(statement, self.pairs()), params


_UNSET: Any = object()


def check_keys(spec: MapperSpec, fields: Row, given: Collection[str] = ()) -> None:
    """Refuse fields a callback set that are not column attributes of the model.

    :param given: the keys the statement itself gave, which SQLAlchemy resolves as it
        writes (a composite, a synonym): a callback that kept them set nothing new.
    """
    column_keys = spec.column_keys
    unknown = [key for key in fields if key not in column_keys and key not in given]
    if unknown:
        raise ConfigurationError(
            f"{spec.name}: a callback set fields {unknown!r}, which are not column attributes",
            model=spec.model,
        )


def selected(statement: Any, params: Any) -> sa.ColumnElement[bool]:
    """What a statement's WHERE clause selects, its bind parameters given their values; with
    several parameter sets (an executemany), the rows any of them selects."""
    where: sa.ColumnElement[bool] | None = statement.whereclause
    if where is None:
        return sa.true()
    if isinstance(params, Mapping):
        return _bound(where, params)
    if not isinstance(params, Sequence) or not params:
        return where
    table = statement.table
    criteria = equality_criteria(table, where)  # the usual executemany: WHERE key = :param
    if criteria is not None and all(all(k in p for k in criteria.values()) for p in params):
        by = [table.c[name] for name in criteria]
        values = [tuple(p[key] for key in criteria.values()) for p in params]
        if len(by) == 1:
            one_of: sa.ColumnElement[bool] = by[0].in_([value for (value,) in values])
            return one_of
        return sa.tuple_(*by).in_(values)
    return sa.or_(*(_bound(where, p) for p in params))


def _bound(where: sa.ColumnElement[bool], values: Mapping[str, Any]) -> sa.ColumnElement[bool]:
    """``where`` with each bind parameter ``values`` names given its value there."""
    if not values:
        return where  # (the usual case: no copy of the clause to make)

    def bind(element: Any, **kw: Any) -> Any:
        if isinstance(element, sa.BindParameter) and element.key in values:
            return sa.literal(values[element.key], element.type)
        return None

    return visitors.replacement_traverse(where, {}, bind)
