"""What a committed transaction changed: :class:`ChangeSet`, of :class:`~.change.Change` values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import islice, repeat
from operator import itemgetter
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar, cast, final, overload

from . import codec, mapping
from .change import ALL_FIELDS, Change, Fields, Op, change_dict

# Op and Change live in .change; they are imported from here as well
__all__ = ["Buffered", "Change", "ChangeSet", "Op", "each_change", "passed_on", "stored_fields"]

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


def each_change(changeset: ChangeSet) -> Iterator[Change]:
    """Each change of ``changeset``, for callbacks that look at one change at a time.

    Where nobody looked at the change set's ``changes`` yet, each is made as it is
    handed out and kept by nobody: kept for the whole delivery, a big commit's
    changes would live through enough collections to set off a full one.
    """
    changes = changeset.__dict__.get("changes")
    if type(changes) is Buffered:
        return map(_new_change, changes.fields())
    return iter(changeset.changes)


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
    # the key columns its JSON told, by table (see key_columns); None: made in this process,
    # which knows them itself.  No field either: equality is about the changes
    _keys: ClassVar[Mapping[str, tuple[str, ...]] | None] = None

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

    def key_columns(self, table: str) -> tuple[str, ...] | None:
        """The names of ``table``'s key columns, in the order of each change's ``pk``, or None.

        A change set made in this process knows the key of each table that dbevents
        captured writes to, unless tables of that name with other keys were captured too;
        one read from JSON knows what its ``key_columns`` tell.  A table without a
        primary key is keyed by all of its columns.
        """
        if "changes" not in self.__dict__:
            self._decode()  # passed on, not read yet
        told = self._keys
        return mapping.captured_key(table) if told is None else told.get(table)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (tagged values, see :mod:`dbevents.codec`)."""
        return {**self._head(), "changes": [change.to_dict() for change in self.changes]}

    def _head(self) -> dict[str, Any]:
        """The JSON-ready form without the changes.

        With the key columns of its tables where they are known, so that a reader
        without the models (a relay feeding a mirror) never has to guess them.
        """
        head: dict[str, Any] = {
            "id": self.id,
            "committed_at": self.committed_at.isoformat(),
            "actor": self.actor,
        }
        told = self._keys
        keys = mapping.captured_keys(self._tables()) if told is None else told
        if keys:
            head["key_columns"] = {table: list(key) for table, key in keys.items()}
        return head

    def _tables(self) -> Iterator[str]:
        """The names of the tables it changes, each once (a loop in C: a commit may be big)."""
        changes = self.__dict__.get("changes")
        if type(changes) is Buffered:
            return iter(dict.fromkeys(map(_first, changes.ops)))  # keys are (table, *pk)
        return iter(dict.fromkeys(map(_second, self.changes)))  # fields are (op, table, ...)

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
        changeset = cls(
            id=data["id"],
            committed_at=dt.datetime.fromisoformat(data["committed_at"]),
            actor=data.get("actor"),
            changes=tuple([Change.from_dict(item) for item in data["changes"]]),
        )
        object.__setattr__(changeset, "_keys", _told_keys(data))
        return changeset

    @classmethod
    def from_json(cls, data: bytes | str) -> ChangeSet:
        """Parse JSON of a change set: what :meth:`to_json` wrote (a line of it, say).

        :meth:`to_json` of the result returns that text again, without the
        whitespace around it, rather than encoding the change set anew.  Text
        written some other way (indented, say) is written anew as one compact
        line, its values as they came.
        """
        text = (data.decode() if isinstance(data, bytes) else data).strip()
        id, committed_at, actor, keys, changes = _parse(text)
        # the changes are made on first use: a sink may only want the JSON
        changeset = cls(id, committed_at, actor, cast(Any, changes))
        object.__setattr__(changeset, "_keys", keys)
        if not _as_written(id, text):
            # a journal or a stream holds one change set a line: more lines would break it
            # for every reader.  From the values as parsed, still encoded: decoding and
            # encoding again would lose the tag of an enum whose class is not imported here
            head = codec.dumps(changeset._head())
            text = f'{head[:-1]},"changes":{codec.dumps(changes.items)}}}'
        object.__setattr__(changeset, "_json", text.encode())
        return changeset

    def _decode(self) -> None:
        """Decode the fields of a change set :func:`passed_on` as JSON."""
        assert self._json is not None
        _, committed_at, actor, keys, changes = _parse(self._json)
        self.__dict__.update(committed_at=committed_at, actor=actor, _keys=keys, changes=changes)


def _chunks(items: Iterator[_T], size: int) -> Iterator[list[_T]]:
    while chunk := list(islice(items, size)):
        yield chunk


_Parsed = tuple[str, dt.datetime, str | None, Mapping[str, tuple[str, ...]], _Encoded]


def _parse(data: bytes | str) -> _Parsed:
    """The fields of a change set in JSON, its changes as parsed."""
    parsed = codec.loads(data)
    changes = parsed["changes"]
    if type(changes) is not list:
        raise TypeError(f"changes: a list expected, not {type(changes).__name__}")
    committed_at = dt.datetime.fromisoformat(parsed["committed_at"])
    return parsed["id"], committed_at, parsed.get("actor"), _told_keys(parsed), _Encoded(changes)


def _told_keys(data: Mapping[str, Any]) -> Mapping[str, tuple[str, ...]]:
    """The ``key_columns`` of a change set's JSON-ready form (none in one written before them)."""
    told = data.get("key_columns")
    if told is None:
        return {}
    if type(told) is dict:
        keys = {table: tuple(names) for table, names in told.items() if type(names) is list}
        if len(keys) == len(told) and all(type(n) is str for key in keys.values() for n in key):
            return keys
    raise TypeError("key_columns: an object of lists of column names expected")


def _as_written(id: str, text: str) -> bool:
    """Whether ``text`` begins and ends as :meth:`ChangeSet.to_json` writes the change set
    ``id``, on one line.  (Checked on ``str``: on ``bytes`` it takes several times as long.)"""
    return (
        text.startswith(f'{{"id":"{id}",')
        and text.endswith("]}")
        and "\n" not in text
        and "\r" not in text
    )


def passed_on(id: str, text: str) -> ChangeSet | None:
    """The change set :meth:`ChangeSet.to_json` wrote as ``text`` for ``id``, decoded on first use.

    ``None`` when ``text`` does not begin and end as that method writes a change
    set with this id, on one line (one written some other way, or cut short):
    parse it then, with :meth:`ChangeSet.from_json`, which tells what is wrong
    with it or writes it anew.
    """
    if not _as_written(id, text):
        return None
    changeset = ChangeSet.__new__(ChangeSet)
    changeset.__dict__.update(id=id, _json=text.encode())
    return changeset


_first, _second = itemgetter(0), itemgetter(1)
