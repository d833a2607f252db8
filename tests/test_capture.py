"""The net merge rules of a change buffer, without a database."""

from __future__ import annotations

import decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbevents.capture import Buffer
from dbevents.changes import Change, Op


class Model:
    pass


def net(*records: tuple[Op, dict[str, Any] | None, dict[str, Any] | None]) -> list[Change]:
    buffer = Buffer()
    for op, old, new in records:
        buffer.add("t", (1,), op, Model, old, new)
    return list(buffer.changes())


def test_insert_then_update_is_an_insert_of_the_final_values() -> None:
    (change,) = net((Op.INSERT, None, {"id": 1, "a": 1, "b": 1}), (Op.UPDATE, {"a": 1}, {"a": 2}))
    assert change.op is Op.INSERT and change.new == {"id": 1, "a": 2, "b": 1}
    assert change.model == "Model"


def test_insert_then_delete_is_nothing() -> None:
    assert net((Op.INSERT, None, {"id": 1}), (Op.DELETE, {"id": 1}, None)) == []


def test_update_then_update_keeps_the_first_old_and_the_last_new() -> None:
    (change,) = net(
        (Op.UPDATE, {"a": 1}, {"a": 2}), (Op.UPDATE, {"a": 2, "b": 5}, {"a": 3, "b": 6})
    )
    assert change.op is Op.UPDATE
    assert change.old == {"a": 1, "b": 5} and change.new == {"a": 3, "b": 6}


def test_update_back_to_the_original_value_is_nothing() -> None:
    assert net((Op.UPDATE, {"a": 1}, {"a": 2}), (Op.UPDATE, {"a": 2}, {"a": 1})) == []


def test_update_back_of_one_column_keeps_the_other() -> None:
    (change,) = net(
        (Op.UPDATE, {"a": 1, "b": 1}, {"a": 2, "b": 2}), (Op.UPDATE, {"a": 2}, {"a": 1})
    )
    assert change.old == {"b": 1} and change.new == {"b": 2}


def test_update_then_delete_is_a_delete_of_the_original_row() -> None:
    (change,) = net((Op.UPDATE, {"a": 1}, {"a": 2}), (Op.DELETE, {"id": 1, "a": 2, "b": 7}, None))
    assert change.op is Op.DELETE and change.old == {"id": 1, "a": 1, "b": 7} and change.new is None


def test_delete_then_insert_of_the_same_key_is_an_update() -> None:
    (change,) = net(
        (Op.DELETE, {"id": 1, "a": 1, "b": 1}, None), (Op.INSERT, None, {"id": 1, "a": 1, "b": 2})
    )
    assert change.op is Op.UPDATE and change.old == {"b": 1} and change.new == {"b": 2}


def test_delete_then_insert_of_fewer_columns_compares_those_only() -> None:
    """A Core DELETE knows the whole row, an ORM insert of a mapper that leaves a column
    out does not: the update tells the columns both know."""
    (change,) = net(
        (Op.DELETE, {"id": 1, "a": 1, "b": 1}, None), (Op.INSERT, None, {"id": 1, "b": 2})
    )
    assert change.op is Op.UPDATE and change.old == {"b": 1} and change.new == {"b": 2}


def test_equal_values_of_other_objects_are_no_change() -> None:
    """Values compare by equality, not identity: Decimal("1.10") read back twice."""
    first, second = decimal.Decimal("1.10"), decimal.Decimal("1.10")
    assert first is not second
    assert net((Op.UPDATE, {"a": first}, {"a": 2}), (Op.UPDATE, {"a": 2}, {"a": second})) == []


def test_a_value_read_back_that_is_unchanged_leaves_the_update() -> None:
    """An onupdate column's new value is read back after the flush: equal to the old one,
    it is no change, and an update of nothing else is dropped."""
    unknown = object()
    buffer = Buffer()
    buffer.add("t", (1,), Op.UPDATE, Model, {"a": 1, "v": 5}, {"a": 2, "v": unknown})
    buffer.add("t", (2,), Op.UPDATE, Model, {"v": 5}, {"v": unknown})
    buffer.complete(("t", 1), {"a": 2, "v": decimal.Decimal(5)}, unknown)
    buffer.complete(("t", 2), {"v": decimal.Decimal(5)}, unknown)
    (change,) = buffer.changes()
    assert change.pk == (1,) and change.old == {"a": 1} and change.new == {"a": 2}


def test_delete_then_insert_as_another_class_is_an_update_of_that_class() -> None:
    class Other:
        pass

    buffer = Buffer()
    buffer.add("t", (1,), Op.DELETE, Model, {"id": 1, "kind": "model"}, None)
    buffer.add("t", (1,), Op.INSERT, Other, None, {"id": 1, "kind": "other"})
    (change,) = buffer.changes()
    assert change.op is Op.UPDATE and change.model == "Other"


def test_delete_then_identical_insert_is_nothing() -> None:
    assert net((Op.DELETE, {"id": 1, "a": 1}, None), (Op.INSERT, None, {"id": 1, "a": 1})) == []


def test_link_then_unlink_is_nothing() -> None:
    assert net((Op.LINK, None, {"a": 1, "b": 1}), (Op.UNLINK, {"a": 1, "b": 1}, None)) == []


@pytest.mark.parametrize("old", [None, {"a": 1, "b": 1}])
def test_unlink_then_link_of_the_same_row_is_nothing(old: dict[str, Any] | None) -> None:
    assert net((Op.UNLINK, old, None), (Op.LINK, None, {"a": 1, "b": 1})) == []


def test_unlink_then_link_with_other_values_of_its_own_is_an_update() -> None:
    """An association table with columns of its own: the row is there before and after."""
    (change,) = net(
        (Op.UNLINK, {"a": 1, "b": 1, "added": 100}, None),
        (Op.LINK, None, {"a": 1, "b": 1, "added": 101}),
    )
    assert change.op is Op.UPDATE and change.old == {"added": 100} and change.new == {"added": 101}


def test_a_link_seen_from_both_sides_counts_once() -> None:
    (change,) = net((Op.LINK, None, {"x": 1}), (Op.LINK, None, {"x": 1}))
    assert change.op is Op.LINK


def test_savepoint_buffer_merges_into_its_parent() -> None:
    parent, child = Buffer(), Buffer()
    parent.add("t", (1,), Op.INSERT, None, None, {"id": 1, "a": 1})
    parent.add("t", (2,), Op.UPDATE, None, {"a": 1}, {"a": 2})
    child.add("t", (1,), Op.UPDATE, None, {"a": 1}, {"a": 5})
    child.add("t", (2,), Op.UPDATE, None, {"a": 2}, {"a": 1})
    child.add("t", (3,), Op.DELETE, None, {"id": 3}, None)
    child.merge_into(parent)
    assert [(c.op, c.pk, c.new) for c in parent.changes()] == [
        (Op.INSERT, (1,), {"id": 1, "a": 5}),
        (Op.DELETE, (3,), None),
    ]


def test_order_is_the_order_rows_were_first_changed() -> None:
    buffer = Buffer()
    for pk in (3, 1, 2):
        buffer.add("t", (pk,), Op.INSERT, None, None, {"id": pk})
    buffer.add("t", (3,), Op.UPDATE, None, {"v": 0}, {"v": 1})
    assert [c.pk for c in buffer.changes()] == [(3,), (1,), (2,)]


def test_changes_are_frozen() -> None:
    (change,) = net(
        (Op.INSERT, None, {"id": 1}),
    )
    with pytest.raises(TypeError):
        change.new["id"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        change.op = Op.DELETE  # type: ignore[misc]


ops = st.sampled_from(list(Op))
values = st.one_of(st.none(), st.fixed_dictionaries({"a": st.integers(0, 2)}))
batches = st.lists(
    st.tuples(ops, st.lists(st.tuples(st.integers(0, 4), values, values), max_size=6)),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(batches=batches, freeze=st.lists(st.integers(0, 4), max_size=2))
def test_a_batch_of_rows_merges_as_its_rows_one_by_one(
    batches: list[tuple[Op, list[tuple[int, Any, Any]]]], freeze: list[int]
) -> None:
    by_row, by_batch = Buffer(), Buffer()
    for op, rows in batches:
        for pk, old, new in rows:
            by_row.add("t", (pk,), op, Model, old, new)
        by_batch.add_rows("t", op, Model, [(pk,) for pk, _, _ in rows], *_columns(rows))
    for pk in freeze:  # a row frozen early (before_commit) and the rest made at the end
        if ("t", pk) in by_batch.ops:
            assert by_batch.change(("t", pk)) == by_row.change(("t", pk))
    assert by_batch.changes() == by_row.changes()
    assert [dict(c.new or {}) for c in by_batch.changes()] == [
        dict(c.new or {}) for c in by_row.changes()
    ]


def _columns(rows: list[tuple[int, Any, Any]]) -> tuple[list[Any] | None, list[Any] | None]:
    """The olds and news of ``rows``, None for a column of None only (as statements pass it)."""
    olds, news = [old for _, old, _ in rows], [new for _, _, new in rows]
    return (None if not any(olds) else olds), (None if not any(news) else news)
