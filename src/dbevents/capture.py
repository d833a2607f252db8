"""Net change buffers: one per root transaction or SAVEPOINT, merged per row.

Records are plain values taken at flush (or statement) time.  A buffer belongs to
the innermost root or SAVEPOINT :class:`~sqlalchemy.orm.SessionTransaction`; a
released savepoint merges its buffer into the enclosing one, a rolled-back one
discards it, and only the root's buffer is ever delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any, Final, Literal, final

from .changes import Buffered, Change, Op

__all__ = ["LEVELS", "Buffer", "CaptureLevel", "same"]

CaptureLevel = Literal["off", "keys", "new", "old+new"]
LEVELS: Final = ("off", "keys", "new", "old+new")

Row = dict[str, Any]
#: (table, *primary key): flat, because the garbage collector stops tracking a tuple of
#: plain values the first time it looks at it, while one holding the key tuple stays
#: tracked until that inner tuple is untracked first, which for the keys of a batch of
#: rows often comes too late: they would count towards a full collection
Key = tuple[Any, ...]


@final
class Entry:
    """The net change of one row so far, while a later change is merged into it."""

    __slots__ = ("model", "new", "old", "op")

    def __init__(self, op: Op, model: type[Any] | None, old: Row | None, new: Row | None) -> None:
        self.op = op
        self.model = model
        self.old = old
        self.new = new


@final
class Buffer:
    """Net changes keyed by (table, *primary key), in the order rows were first changed.

    A change is kept across four dicts rather than as one object per row: a flush
    of many rows would otherwise leave as many objects for the garbage collector
    to walk, and their count alone makes it run its full collections.  A key is
    added to and removed from all four at once, so they list the rows in the same
    order.
    """

    __slots__ = ("committed", "models", "news", "olds", "ops", "version")

    def __init__(self) -> None:
        #: the net operation of each row, in the order rows were first changed
        self.ops: dict[Key, Op] = {}
        self.models: dict[Key, type[Any] | None] = {}
        self.olds: dict[Key, Row | None] = {}
        self.news: dict[Key, Row | None] = {}
        #: set when SQLAlchemy reports this transaction committed (or released)
        self.committed = False
        #: bumped on every change, so a change set built early can be checked
        self.version = 0

    def __bool__(self) -> bool:
        return bool(self.ops)

    def add(
        self,
        table: str,
        pk: tuple[Any, ...],
        op: Op,
        model: type[Any] | None,
        old: Row | None,
        new: Row | None,
    ) -> None:
        """Fold one row change into the net result (rules in DESIGN §4)."""
        self.version += 1
        key = (table, *pk)
        ops = self.ops
        first = ops.get(key)
        if first is None:
            ops[key] = op
            self.models[key] = model
            self.olds[key] = old
            self.news[key] = new
            return
        entry = Entry(first, self.models[key], self.olds[key], self.news[key])
        if _merge(entry, op, old, new):
            ops[key], self.olds[key], self.news[key] = entry.op, entry.old, entry.new
            if first is Op.DELETE and model is not None:
                self.models[key] = model  # inserted again, maybe as another class: its owner now
        else:
            del ops[key], self.models[key], self.olds[key], self.news[key]

    def add_rows(
        self,
        table: str,
        op: Op,
        model: type[Any] | None,
        pks: Sequence[tuple[Any, ...]],
        olds: Sequence[Row | None] | None,
        news: Sequence[Row | None] | None,
    ) -> None:
        """Fold the changes of many rows of one table in: :meth:`add` for each.

        ``olds`` and ``news`` line up with ``pks`` (None: none kept).  Rows new to
        this buffer, the usual case for a statement, are stored without a Python
        call per row.
        """
        head = (table,)
        keys = [head + pk for pk in pks]
        ops = self.ops
        if ops.keys().isdisjoint(keys):
            size = len(ops)
            ops.update(zip(keys, repeat(op)))
            if len(ops) == size + len(keys):
                self.version += 1
                self.models.update(zip(keys, repeat(model)))
                self.olds.update(zip(keys, repeat(None) if olds is None else olds, strict=False))
                self.news.update(zip(keys, repeat(None) if news is None else news, strict=False))
                return
            for key in keys:  # a row twice in the batch: undo, and merge row by row
                ops.pop(key, None)
        add = self.add
        for pk, old, new in zip(
            pks,
            repeat(None) if olds is None else olds,
            repeat(None) if news is None else news,
            strict=False,
        ):
            add(table, pk, op, model, old, new)

    def complete(self, key: Key, stored: Row, unknown: object) -> None:
        """Put the stored values in for the ``unknown`` ones of ``key``'s new row.

        For values read back after a flush.  The row may have been merged with
        another change since it was recorded, so it is looked up by key; an update
        loses the columns that turn out unchanged, and is dropped if none is left.
        """
        new = self.news.get(key)
        if not new:
            return  # netted away, or deleted since
        self.version += 1
        new = {name: stored.get(name) if value is unknown else value for name, value in new.items()}
        entry = Entry(self.ops[key], self.models[key], self.olds[key], new)
        if entry.op is not Op.UPDATE or _drop_unchanged(entry):
            self.olds[key], self.news[key] = entry.old, entry.new
        else:
            del self.ops[key], self.models[key], self.olds[key], self.news[key]

    def merge_into(self, parent: Buffer) -> None:
        """Fold this (released savepoint's) buffer into its parent."""
        models, olds, news = self.models, self.olds, self.news
        for key, op in self.ops.items():
            parent.add(key[0], key[1:], op, models[key], olds[key], news[key])

    def changes(self) -> tuple[Change, ...]:
        """Freeze the net result into :class:`Change` values."""
        return Buffered(self.ops, self.models, self.olds, self.news).changes()

    def snapshot(self) -> Buffered:
        """The net result, for a change set: the rows to make its :class:`Change` values of
        when first looked at (a copy: this buffer may change on)."""
        return Buffered(dict(self.ops), dict(self.models), dict(self.olds), dict(self.news))

    def change(self, key: Key) -> Change:
        """The net change of one row as it stands, for a callback.

        Made anew on each call and kept by nobody: a commit of many rows whose
        ``before_commit`` callbacks each got a Change kept until delivery would
        hold one object per row that lives through several collections, and
        enough of those make the garbage collector run a full collection.
        """
        model = self.models[key]
        # through tuple.__new__: Change's own __new__ costs a Python call per row
        return _new_tuple(
            Change,
            (
                self.ops[key],
                key[0],
                None if model is None else model.__name__,
                key[1:],
                self.olds[key],
                self.news[key],
            ),
        )


_new_tuple = tuple.__new__


def _merge(entry: Entry, op: Op, old: Row | None, new: Row | None) -> bool:
    """Apply a later change to ``entry``; return False when nothing net remains."""
    first = entry.op
    if first is Op.INSERT:
        if op is Op.DELETE:
            return False  # insert + delete: never existed as far as anyone can see
        if op is Op.UPDATE and entry.new is not None and new is not None:
            entry.new = {**entry.new, **new}  # insert + update: insert of the final values
        elif op is Op.INSERT:
            entry.new = new
        return True
    if first is Op.UPDATE:
        if op is Op.UPDATE:
            entry.old = _overlay(old, entry.old)  # the first old value of each column wins
            entry.new = _overlay(entry.new, new)
            return _drop_unchanged(entry)
        if op is Op.DELETE:
            entry.op, entry.old, entry.new = Op.DELETE, _overlay(old, entry.old), None
        return True
    if first is Op.DELETE:
        if op is Op.INSERT:  # the row exists before and after: an update, if anything
            entry.op, entry.new = Op.UPDATE, new
            if entry.old is not None and new is not None:
                entry.old = {k: v for k, v in entry.old.items() if k in new}
            return _drop_unchanged(entry)
        return True
    if first is Op.UNLINK and op is Op.LINK and entry.old is not None and new is not None:
        # linked again: the association row exists before and after, and its columns of
        # its own (a default, a timestamp) may hold other values now; an update of those
        entry.op, entry.new = Op.UPDATE, new
        entry.old = {k: v for k, v in entry.old.items() if k in new}
        return _drop_unchanged(entry)
    # LINK / UNLINK: the association row either exists or not; a repeat is a duplicate
    # (both sides of a backref report the same row)
    return op is first or op not in (Op.LINK, Op.UNLINK)


def _overlay(base: Row | None, top: Row | None) -> Row | None:
    if base is None or top is None:
        return top if base is None else base
    return {**base, **top}


def _drop_unchanged(entry: Entry) -> bool:
    """Remove columns whose value ends where it started; False if none is left."""
    old, new = entry.old, entry.new
    if old is None or new is None:
        return True
    unchanged = [key for key, value in new.items() if key in old and same(old[key], value)]
    if not unchanged:
        return True
    entry.old = {k: v for k, v in old.items() if k not in unchanged}
    entry.new = {k: v for k, v in new.items() if k not in unchanged}
    return bool(entry.new)


def same(a: Any, b: Any) -> bool:
    """Whether two column values are equal as a row holds them; values that can't tell
    count as different.

    A NaN (float or Decimal) is the same as a NaN: a row rewritten with it did not
    change, though NaN equals nothing, and the database, like ``verify``, says so.
    """
    if a is b:
        return True
    try:
        return bool(a == b) or bool(a != a and b != b)  # (only a NaN is unequal to itself)
    except Exception:  # values whose __eq__ fails or is ambiguous: treat as changed
        return False
