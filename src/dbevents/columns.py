"""What a column accepts and when two of its values are the same, decided by its SQLAlchemy type.

``load`` checks every value in Python, because SQLite stores a string in an
INTEGER column without complaint; ``verify`` compares through the type, because
SQLite returns a datetime without its zone and REAL keeps fewer digits.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Any, final

import sqlalchemy as sa

__all__ = ["ColumnRule"]


@final
class ColumnRule:
    """The Python values a column accepts, and how to compare two of them.

    :ivar types: the exact types accepted, or ``None`` for any (JSON, custom types).
    """

    __slots__ = ("column", "enum_class", "labels", "length", "name", "nullable", "types")

    def __init__(self, column: sa.Column[Any]) -> None:
        self.column = column
        self.name = column.name
        self.nullable = bool(column.nullable)
        self.length: int | None = None
        self.labels: frozenset[str] | None = None
        self.enum_class: type[enum.Enum] | None = None
        self.types = self._types(column.type)

    def _types(self, kind: Any) -> tuple[type, ...] | None:
        if isinstance(kind, sa.TypeDecorator | sa.JSON | sa.PickleType):
            return None
        if isinstance(kind, sa.Boolean):
            return (bool,)
        if isinstance(kind, sa.Enum):
            self.enum_class = kind.enum_class
            self.labels = frozenset(kind.enums)
            return (str,) if kind.enum_class is None else (str, kind.enum_class)
        if isinstance(kind, sa.Integer):
            return (int,)
        if isinstance(kind, sa.Float):
            return (float, int) if not kind.asdecimal else (decimal.Decimal, float, int)
        if isinstance(kind, sa.Numeric):
            return (decimal.Decimal, int) if kind.asdecimal else (float, int, decimal.Decimal)
        if isinstance(kind, sa.DateTime):
            return (dt.datetime,)
        if isinstance(kind, sa.Date):
            return (dt.date,)
        if isinstance(kind, sa.Time):
            return (dt.time,)
        if isinstance(kind, sa.Interval):
            return (dt.timedelta,)
        if isinstance(kind, sa.String):
            self.length = kind.length
            return (str,)
        if isinstance(kind, sa.LargeBinary):
            return (bytes,)
        if isinstance(kind, sa.Uuid):
            return (uuid.UUID,) if kind.as_uuid else (str,)
        if isinstance(kind, sa.ARRAY):
            return (list,)
        try:
            return (kind.python_type,)
        except NotImplementedError:
            return None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot go into this column, or ``None`` when it can."""
        if value is None:
            return None if self.nullable else "NULL in a NOT NULL column"
        types = self.types
        if types is None:
            return None
        kind = type(value)
        if kind not in types and not (
            self.enum_class is not None and isinstance(value, self.enum_class)
        ):
            expected = " or ".join(t.__name__ for t in types)
            return f"expected {expected}, got {kind.__name__} {value!r:.40}"
        if self.length is not None and len(value) > self.length:
            return f"{len(value)} characters, longer than {self.length}"
        labels = self.labels
        if labels is None or kind is not str or value in labels or self.member(value) is not None:
            return None
        return f"{value!r} is not one of {sorted(labels)}"

    def member(self, name: str) -> enum.Enum | None:
        """The member of the column's Enum class called ``name``, when ``name`` is no label.

        A tagged value names its class by module, and a class defined in a script run as
        ``__main__`` is found under that name in no other process: the codec gives the
        member's name then, and a mirror compacted there keeps the name alone.
        """
        if self.enum_class is None or (self.labels is not None and name in self.labels):
            return None
        return self.enum_class.__members__.get(name)

    def same(self, expected: Any, actual: Any) -> bool:
        """Whether a mirror's value and the database's are equal as this column stores them."""
        if expected == actual:
            return True
        if expected is None or actual is None:
            return False
        if isinstance(expected, enum.Enum) or isinstance(actual, enum.Enum):
            return bool(_label(expected) == _label(actual))
        if isinstance(expected, dt.datetime) and isinstance(actual, dt.datetime):
            # SQLite keeps no zone: an aware value comes back naive, with the same wall time
            if (expected.tzinfo is None) != (actual.tzinfo is None):
                return expected.replace(tzinfo=None) == actual.replace(tzinfo=None)
            return False
        if isinstance(expected, float | decimal.Decimal | int) and isinstance(
            actual, float | decimal.Decimal | int
        ):
            if _is_nan(expected) or _is_nan(actual):  # NaN equals nothing, not even NaN
                return _is_nan(expected) and _is_nan(actual)
            if isinstance(self.column.type, sa.Float) or float in (type(expected), type(actual)):
                return math.isclose(float(expected), float(actual), rel_tol=1e-6)
            scale = getattr(self.column.type, "scale", None)
            if scale is not None:
                quantum = decimal.Decimal(1).scaleb(-scale)
                return bool(
                    decimal.Decimal(expected).quantize(quantum)
                    == decimal.Decimal(actual).quantize(quantum)
                )
            return False
        if isinstance(expected, bytes | memoryview) and isinstance(actual, bytes | memoryview):
            return bytes(expected) == bytes(actual)
        if isinstance(self.column.type, sa.Uuid):
            return str(expected).replace("-", "") == str(actual).replace("-", "")
        return False


def _is_nan(value: float | decimal.Decimal | int) -> bool:
    if isinstance(value, decimal.Decimal):
        return value.is_nan()
    return isinstance(value, float) and math.isnan(value)


def _label(value: Any) -> Any:
    return value.name if isinstance(value, enum.Enum) else value
