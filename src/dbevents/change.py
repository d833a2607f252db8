"""One row's change: :class:`Op` and :class:`Change`."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, cast

from . import codec

__all__ = ["ALL_FIELDS", "Change", "Fields", "Op", "change_dict"]


class Op(enum.Enum):
    """The kind of a row change."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    LINK = "link"
    UNLINK = "unlink"


#: Op by value, for decoding (``Op(value)`` goes through the enum machinery each time)
_OPS: Mapping[str, Op] = MappingProxyType({op.value: op for op in Op})


class _ChangeFields(NamedTuple):
    op: Op
    table: str
    model: str | None
    pk: tuple[Any, ...]
    old: Mapping[str, Any] | None = None
    new: Mapping[str, Any] | None = None


class Change(_ChangeFields):
    """The net change of one table row within one committed transaction.

    ``old`` and ``new`` are keyed by column name.  INSERT and LINK carry the
    whole row in ``new``; UPDATE carries the changed columns before (``old``) and
    after (``new``); DELETE and UNLINK carry the row as it was in ``old``.  At the
    ``"keys"`` capture level both are ``None``; at ``"new"``, ``old`` is.

    Immutable: ``old`` and ``new`` are read-only views, made when asked for.  A
    named tuple rather than a frozen dataclass, and plain rows under the views: a
    commit builds one change per changed row, and each object more per change is
    one more for the garbage collector to walk, which for a big commit means one
    more full collection.
    """

    __slots__ = ()

    def __new__(
        cls,
        op: Op,
        table: str,
        model: str | None,
        pk: tuple[Any, ...],
        old: Mapping[str, Any] | None = None,
        new: Mapping[str, Any] | None = None,
    ) -> Change:
        # rows of its own, so that nobody can change them under the views
        return tuple.__new__(
            cls,
            (op, table, model, pk, _copy(old), _copy(new)),
        )

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Change:  # type: ignore[override]
        return cls(*iterable)  # through __new__ (_replace uses it): rows, never views

    @property
    def old(self) -> Mapping[str, Any] | None:
        """The row (DELETE, UNLINK) or the changed columns (UPDATE) before the change."""
        row = super().old
        return None if row is None else MappingProxyType(row)

    @property
    def new(self) -> Mapping[str, Any] | None:
        """The row (INSERT, LINK) or the changed columns (UPDATE) after the change."""
        row = super().new
        return None if row is None else MappingProxyType(row)

    def __iter__(self) -> Iterator[Any]:
        # unpacking gives the read-only views too, never the rows under them
        return iter((self.op, self.table, self.model, self.pk, self.old, self.new))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple.__getitem__(self, slice(None))  # the rows, not their views: pickle these

    @property
    def values(self) -> Mapping[str, Any]:
        """The row values this change tells, old overlaid with new."""
        old, new = _rows(self)
        return MappingProxyType({**(old or {}), **(new or {})})

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form used by :meth:`ChangeSet.to_json`."""
        return change_dict(*cast(Fields, tuple.__getitem__(self, ALL_FIELDS)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        """Restore a change from :meth:`to_dict` output."""
        old, new = data.get("old"), data.get("new")
        # tuple.__new__: a relay or a tail decodes every change it reads, and the
        # named tuple's keyword constructor is several times slower
        return tuple.__new__(
            cls,
            (
                _OPS[data["op"]],
                data["table"],
                data.get("model"),
                tuple(codec.decode_values(data["pk"])),
                None if old is None else codec.decode_row(old),
                None if new is None else codec.decode_row(new),
            ),
        )


def _copy(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)


def _rows(change: Change) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The stored old and new rows of a change, without views."""
    return cast(_Rows, tuple.__getitem__(change, slice(4, 6)))


_Rows = tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]
Fields = tuple[
    Op, str, str | None, tuple[Any, ...], Mapping[str, Any] | None, Mapping[str, Any] | None
]


#: all the fields of a change, as stored: ``tuple.__getitem__(change, ALL_FIELDS)``
ALL_FIELDS = slice(None)


def change_dict(
    op: Op,
    table: str,
    model: str | None,
    pk: tuple[Any, ...],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The JSON-ready form of a change (:meth:`Change.to_dict`), from its fields."""
    return {
        "op": op._value_,  # (.value is a property, and this runs for every change)
        "table": table,
        "model": model,
        "pk": codec.encode_values(pk),
        "old": None if old is None else codec.encode_row(old),
        "new": None if new is None else codec.encode_row(new),
    }
