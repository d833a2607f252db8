"""What a committed transaction changed: :class:`ChangeSet`, of :class:`~.change.Change` values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import islice, repeat
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar, cast, final, overload

from . import codec
from .change import ALL_FIELDS, Change, Fields, Op, change_dict

# Op and Change live in .change; they are imported from here as well
__all__ = ["Buffered", "Change", "ChangeSet", "Op", "passed_on", "stored_fields"]

_T = TypeVar("_T")

#: changes encoded to JSON per call of the encoder
_ENCODE_CHUNK = 100


def stored_fields(changeset: ChangeSet) -> Iterator[Fields]:
    """Each change's fields as stored, rows rather than read-only views.

    For code of this package that reads every change of a big commit: a view
    made per change costs as much as the rest of such a loop, and the changes
    of a change set not looked into yet are never made at all.
    """
    changes = changeset.__dict__.get("changes")
    if type(changes) is Buffered:
        return changes.fields()
    return cast(Iterator[Fields], map(tuple.__getitem__, changeset.changes, repeat(ALL_FIELDS)))


_Key = tuple[Any, ...]  # (table, *primary key)


@final
class Buffered:
    """The changes of a commit as its buffer kept them, made into :class:`Change` values
    only when someone looks at them.

    Sinks that only serialize (the outbox, a mirror, Redis Streams) or only read
    rows (a :class:`~dbevents.MemorySink`) need no ``Change`` per row, and each
    one made for a big commit is one more object for the garbage collector.
    The four dicts are keyed by ``(table, *primary key)`` and list the rows in
    the same order.
    """

    __slots__ = ("models", "news", "olds", "ops")

    def __init__(
        self,
        ops: Mapping[_Key, Op],
        models: Mapping[_Key, type[Any] | None],
        olds: Mapping[_Key, Mapping[str, Any] | None],
        news: Mapping[_Key, Mapping[str, Any] | None],
    ) -> None:
        self.ops, self.models, self.olds, self.news = ops, models, olds, news

    def fields(self) -> Iterator[Fields]:
        """The fields of each change, in order."""
        models = self.models
        names = {m: None if m is None else m.__name__ for m in set(models.values())}
        for (key, op), model, old, new in zip(
            self.ops.items(), models.values(), self.olds.values(), self.news.values(), strict=True
        ):
            yield op, key[0], names[model], key[1:], old, new

    def changes(self) -> tuple[Change, ...]:
        """Make the :class:`Change` values (through ``tuple.__new__``: no call per change)."""
        return tuple(map(_new_change, self.fields()))


_new_change = partial(tuple.__new__, Change)


class _Encoded(NamedTuple):
    """The changes of a change set read from JSON, as parsed: not made into :class:`Change` yet."""

    items: list[Mapping[str, Any]]


class _Decoded(Generic[_T]):
    """A field of :class:`ChangeSet` that a change set read as JSON decodes on first use.

    A relay hands the change sets it reads from the outbox to its sinks, and a
    sink that passes their JSON on (Redis Streams) needs no more than the id:
    decoding would be most of what such a relay costs per change set.
    """

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, changeset: None, owner: type[Any]) -> _Decoded[_T]: ...
    @overload
    def __get__(self, changeset: ChangeSet, owner: type[Any]) -> _T: ...
    def __get__(self, changeset: ChangeSet | None, owner: type[Any]) -> Any:
        if changeset is None:
            raise AttributeError(self.name)  # no default: dataclass makes the field required
        values = changeset.__dict__
        if self.name not in values:
            changeset._decode()
        value = values[self.name]
        if type(value) is _Encoded:
            value = values[self.name] = tuple([Change.from_dict(item) for item in value.items])
        elif type(value) is Buffered:
            value = values[self.name] = value.changes()
        return value

    def __set__(self, changeset: ChangeSet, value: _T) -> None:
        changeset.__dict__[self.name] = value


@dataclass(frozen=True)
class ChangeSet:
    """Every net row change of one committed root transaction, in the order first made.

    :ivar id: unique and sortable by time (not by commit order across processes).
    :ivar committed_at: when the commit returned, timezone-aware UTC.
    :ivar actor: who made the change (see :func:`dbevents.acting_as`), or ``None``.
    :ivar changes: the :class:`Change` of each changed row, in the order first changed.
    """

    id: str
    committed_at: _Decoded[dt.datetime] = _Decoded()
    actor: _Decoded[str | None] = _Decoded()
    changes: _Decoded[tuple[Change, ...]] = _Decoded()
    # the JSON form, made once: every sink that serializes (outbox, mirror, Redis) and a
    # relay passing on what it read share it instead of encoding the change set again;
    # set on the instance, and no field (dataclasses.asdict and replace leave it out)
    _json: ClassVar[bytes | None] = None

    def __len__(self) -> int:
        changes = self.__dict__.get("changes")
        return len(changes.ops if type(changes) is Buffered else self.changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def _with_op(self, op: Op) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.op is op)

    @property
    def created(self) -> tuple[Change, ...]:
        """The INSERT changes."""
        return self._with_op(Op.INSERT)

    @property
    def updated(self) -> tuple[Change, ...]:
        """The UPDATE changes."""
        return self._with_op(Op.UPDATE)

    @property
    def deleted(self) -> tuple[Change, ...]:
        """The DELETE changes."""
        return self._with_op(Op.DELETE)

    @property
    def linked(self) -> tuple[Change, ...]:
        """The LINK changes (rows added to a many-to-many association)."""
        return self._with_op(Op.LINK)

    @property
    def unlinked(self) -> tuple[Change, ...]:
        """The UNLINK changes (rows removed from a many-to-many association)."""
        return self._with_op(Op.UNLINK)

    def for_model(self, model: type[Any] | str) -> tuple[Change, ...]:
        """The changes of one model: a class (its mapped subclasses included) or a class name."""
        if isinstance(model, str):
            names = {model}
        else:
            names = {model.__name__}
            stack = list(model.__subclasses__())
            while stack:
                sub = stack.pop()
                names.add(sub.__name__)
                stack.extend(sub.__subclasses__())
        return tuple(change for change in self.changes if change.model in names)

    def for_table(self, table: str) -> tuple[Change, ...]:
        """The changes of one table, by its full name."""
        return tuple(change for change in self.changes if change.table == table)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (tagged values, see :mod:`dbevents.codec`)."""
        return {**self._head(), "changes": [change.to_dict() for change in self.changes]}

    def _head(self) -> dict[str, Any]:
        """The JSON-ready form without the changes."""
        return {"id": self.id, "committed_at": self.committed_at.isoformat(), "actor": self.actor}

    def to_json(self) -> bytes:
        """Serialize to compact UTF-8 JSON that :meth:`from_json` restores exactly."""
        text = self._json
        if text is None:
            # a chunk of changes at a time: one call of the encoder for many changes, and
            # few JSON-ready dicts alive at once, where a whole to_dict() of a big commit
            # would set off the garbage collector
            dumps = codec.dumps
            items = (change_dict(*fields) for fields in stored_fields(self))
            body = ",".join([dumps(chunk)[1:-1] for chunk in _chunks(items, _ENCODE_CHUNK)])
            text = f'{dumps(self._head())[:-1]},"changes":[{body}]}}'.encode()
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeSet:
        """Restore a change set from :meth:`to_dict` output."""
        return cls(
            id=data["id"],
            committed_at=dt.datetime.fromisoformat(data["committed_at"]),
            actor=data.get("actor"),
            changes=tuple([Change.from_dict(item) for item in data["changes"]]),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> ChangeSet:
        """Parse what :meth:`to_json` wrote (a line of it, say).

        :meth:`to_json` of the result returns that text again, without the
        whitespace around it, rather than encoding the change set anew.
        """
        id, committed_at, actor, changes = _parse(data)
        # the changes are made on first use: a sink may only want the JSON
        changeset = cls(id, committed_at, actor, cast(Any, changes))
        text = data.strip()
        object.__setattr__(changeset, "_json", text.encode() if isinstance(text, str) else text)
        return changeset

    def _decode(self) -> None:
        """Decode the fields of a change set :func:`passed_on` as JSON."""
        assert self._json is not None
        _, committed_at, actor, changes = _parse(self._json)
        self.__dict__.update(committed_at=committed_at, actor=actor, changes=changes)


def _chunks(items: Iterator[_T], size: int) -> Iterator[list[_T]]:
    while chunk := list(islice(items, size)):
        yield chunk


def _parse(data: bytes | str) -> tuple[str, dt.datetime, str | None, _Encoded]:
    """The fields of a change set in JSON, its changes as parsed."""
    parsed = codec.loads(data)
    changes = parsed["changes"]
    if type(changes) is not list:
        raise TypeError(f"changes: a list expected, not {type(changes).__name__}")
    committed_at = dt.datetime.fromisoformat(parsed["committed_at"])
    return parsed["id"], committed_at, parsed.get("actor"), _Encoded(changes)


def passed_on(id: str, text: str) -> ChangeSet | None:
    """The change set :meth:`ChangeSet.to_json` wrote as ``text`` for ``id``, decoded on first use.

    ``None`` when ``text`` does not begin and end as that method writes a change
    set with this id (one written some other way, or cut short): parse it then,
    with :meth:`ChangeSet.from_json`, which tells what is wrong with it.
    """
    if not (text.startswith(f'{{"id":"{id}",') and text.endswith("]}")):
        return None
    changeset = ChangeSet.__new__(ChangeSet)
    changeset.__dict__.update(id=id, _json=text.encode())
    return changeset
