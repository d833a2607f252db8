"""Change, ChangeSet and their JSON form: lossless round trips, ids, accessors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import pickle
import threading
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbevents import Change, ChangeSet, Op
from dbevents.changes import passed_on
from dbevents.ids import new_id


class Stage(enum.Enum):
    OPEN = "open"
    WON = "won"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.binary(),
    st.sampled_from(Stage),
)
# JSON column values: nested, with keys that look like the codec's own tags
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["a", "$date", "$dict", "$bytes", "$float"]), inner, max_size=2
        ),
    ),
    max_leaves=6,
)
rows = st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(scalars, json_values), max_size=6)


def changeset(*changes: Change) -> ChangeSet:
    return ChangeSet(new_id(), dt.datetime.now(dt.UTC), "ada", changes)


@given(old=rows, new=rows, pk=st.tuples(st.one_of(st.integers(), st.uuids(), st.text())))
def test_json_round_trip_is_lossless(old: dict[str, Any], new: dict[str, Any], pk: Any) -> None:
    original = changeset(
        Change(Op.UPDATE, "deals", "Deal", pk, MappingProxyType(old), MappingProxyType(new))
    )
    restored = ChangeSet.from_json(original.to_json())
    assert restored == original
    for key, value in new.items():  # types too, not only equality (1 == True, 1 == 1.0)
        assert type(restored.changes[0].new[key]) is type(value)  # type: ignore[index]


def test_json_is_readable_text() -> None:
    cs = changeset(
        Change(Op.INSERT, "deals", "Deal", (1,), None, {"amount": decimal.Decimal("1.10")})
    )
    text = cs.to_json().decode()
    assert '"$decimal":"1.10"' in text and "\n" not in text


def test_json_of_nan_and_infinity_is_standard_json() -> None:
    values = {"ratio": math.nan, "limit": math.inf, "floor": -math.inf, "doc": [1.5, math.nan]}
    cs = changeset(Change(Op.INSERT, "deals", "Deal", (1,), None, values))

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    parsed = json.loads(cs.to_json(), parse_constant=refuse)  # what any strict parser reads
    assert parsed["changes"][0]["new"]["limit"] == {"$float": "Infinity"}
    new = ChangeSet.from_json(cs.to_json()).changes[0].new
    assert new is not None
    assert math.isnan(new["ratio"]) and new["limit"] == math.inf and new["floor"] == -math.inf
    assert new["doc"][0] == 1.5 and math.isnan(new["doc"][1])


def test_json_is_made_once_and_never_outlives_its_values() -> None:
    cs = changeset(Change(Op.INSERT, "deals", "Deal", (1,), None, {"stage": Stage.WON}))
    text = cs.to_json()
    assert cs.to_json() is text  # every sink of a commit shares one encoding
    restored = ChangeSet.from_json(text.decode())
    assert restored.to_json() == text and restored == cs
    # a journal line keeps its newline; what is passed on (tail --json, a relay) does not
    assert ChangeSet.from_json(text + b"\n").to_json() == text
    # a copy with other values is encoded afresh, and equality ignores the cached text
    other = dataclasses.replace(restored, actor="bob")
    assert ChangeSet.from_json(other.to_json()).actor == "bob"
    assert other != cs and dataclasses.replace(other, actor="ada") == cs
    fields = [f.name for f in dataclasses.fields(restored)]
    assert fields == ["id", "committed_at", "actor", "changes"]  # the cached text is none


def test_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 for i in ids)
    from_threads: list[str] = []

    def make() -> None:
        from_threads.extend(new_id() for _ in range(1000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(from_threads)) == 4000
    assert max(ids) < min(from_threads)  # made later: sorts later


def test_accessors_filter_by_operation_table_and_model() -> None:
    cs = changeset(
        Change(Op.INSERT, "deals", "Deal", (1,), None, {"id": 1}),
        Change(Op.UPDATE, "deals", "Deal", (2,), {"x": 1}, {"x": 2}),
        Change(Op.DELETE, "contacts", "Contact", (3,), {"id": 3}, None),
        Change(Op.LINK, "contact_groups", None, (3, 1), None, {"contact_id": 3, "group_id": 1}),
        Change(Op.UNLINK, "contact_groups", None, (3, 2), {"contact_id": 3, "group_id": 2}, None),
    )
    assert [c.pk for c in cs.created] == [(1,)]
    assert [c.pk for c in cs.updated] == [(2,)]
    assert [c.pk for c in cs.deleted] == [(3,)]
    assert [c.pk for c in cs.linked] == [(3, 1)]
    assert [c.pk for c in cs.unlinked] == [(3, 2)]
    assert [c.pk for c in cs.for_model("Deal")] == [(1,), (2,)]
    assert [c.pk for c in cs.for_table("contact_groups")] == [(3, 1), (3, 2)]
    assert len(cs) == 5 and list(cs) == list(cs.changes)
    assert cs.changes[1].values == {"x": 2}
    assert cs.changes[2].values == {"id": 3}


def test_zoned_datetimes_keep_their_zone_in_a_gap_and_a_fold() -> None:
    import zoneinfo

    paris = zoneinfo.ZoneInfo("Europe/Paris")
    values = {
        "gap": dt.datetime(2024, 3, 31, 2, 30, tzinfo=paris),  # clocks jump 02:00 -> 03:00
        "fold": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris),  # 02:30 happens twice
        "plain": dt.datetime(2024, 6, 1, 12, 0, tzinfo=paris),
    }
    original = changeset(Change(Op.INSERT, "deals", "Deal", (1,), None, MappingProxyType(values)))
    restored = ChangeSet.from_json(original.to_json()).changes[0].new
    assert restored == values
    for key, value in values.items():
        assert restored[key].tzinfo is paris
        assert restored[key].fold == value.fold


def test_a_change_cannot_be_changed_through_its_rows() -> None:
    given_new = {"stage": "won"}
    change = Change(Op.UPDATE, "deals", "Deal", (1,), {"stage": "lead"}, given_new)
    given_new["stage"] = "lost"  # the caller's dict is not the change's
    unpacked = list(change)
    replaced = change._replace(table="deals_archive")
    copied = pickle.loads(pickle.dumps(replaced))
    for rows in (change, unpacked[4:], replaced, copied):
        old, new = rows if isinstance(rows, list) else (rows.old, rows.new)
        with pytest.raises(TypeError):
            new["stage"] = "lost"  # type: ignore[index]
        with pytest.raises(TypeError):
            old["stage"] = "lost"  # type: ignore[index]
    assert change.new == replaced.new == copied.new == {"stage": "won"}
    assert copied == replaced and copied.table == "deals_archive"


def test_a_change_set_read_from_json_is_the_one_written() -> None:
    cs = changeset(
        Change(Op.INSERT, "deals", "Deal", (1,), None, {"id": 1, "stage": "lead"}),
        Change(Op.UPDATE, "deals", "Deal", (1,), {"stage": "lead"}, {"stage": "won"}),
    )
    restored = ChangeSet.from_json(b"  " + cs.to_json() + b"\n")
    copied = pickle.loads(pickle.dumps(restored))  # before its changes were ever looked at
    assert copied == restored == cs and len(copied) == 2
    assert restored.updated[0].old == {"stage": "lead"} and list(copied)[0].new["id"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        restored.changes = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"id": "A", "committed_at": "2026-01-01T00:00:00+00:00", "changes": {}}',
        '{"id": "A", "committed_at": "2026-01-01T00:00:00+00:00", "changes": []} {}',
        '{"id": "A", "changes": []}',
    ],
)
def test_from_json_refuses_what_is_not_one_change_set(text: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        ChangeSet.from_json(text)


def test_a_change_set_passed_on_as_json_is_decoded_when_looked_into() -> None:
    cs = changeset(Change(Op.UPDATE, "deals", "Deal", (1,), {"stage": "lead"}, {"stage": "won"}))
    text = cs.to_json().decode()
    relayed = passed_on(cs.id, text)
    assert relayed is not None and relayed.id == cs.id and relayed.to_json() == cs.to_json()
    copied = pickle.loads(pickle.dumps(relayed))
    assert relayed == cs == copied and relayed.actor == "ada"
    assert relayed.committed_at == cs.committed_at and relayed.changes[0].new == {"stage": "won"}
    assert repr(copied) == repr(cs)
    # another change set's text, or one cut short or written otherwise: parse it instead
    assert passed_on(new_id(), text) is None
    assert passed_on(cs.id, text[:-1]) is None
    assert passed_on(cs.id, text + "\n") is None


def test_a_big_change_set_is_one_json_document_in_order() -> None:
    cs = changeset(
        *[
            Change(Op.INSERT, "deals", "Deal", (i,), None, {"id": i, "on": dt.date(2026, 1, 1)})
            for i in range(250)  # more than one encoder call's worth
        ]
    )
    text = cs.to_json()
    assert json.loads(text) == cs.to_dict()
    assert ChangeSet.from_json(text) == cs
