"""The sans-IO batching rules."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_producer._batch import Batch, Pending, Route, route_for

from ..harness.helpers import item


def lingering(max_messages: int, max_bytes: int, capacity: int) -> Batch:
    """A batch whose receiver lingers: append says when a size trigger fires."""
    batch = Batch(max_messages, max_bytes, capacity)
    batch.want_trigger()
    return batch


def test_count_trigger_fires_at_max_messages() -> None:
    batch = lingering(max_messages=3, max_bytes=10**9, capacity=10)
    assert [batch.append(item(i), 1) for i in range(3)] == [False, False, True]
    assert batch.trigger() == "messages"


def test_bytes_trigger_fires_at_max_bytes() -> None:
    batch = lingering(max_messages=100, max_bytes=10, capacity=100)
    assert batch.append(item(0), 4) is False
    assert batch.append(item(1), 5) is False
    assert batch.append(item(2), 1) is True
    assert batch.trigger() == "bytes"


def test_full_queue_is_a_count_trigger_when_capacity_is_smaller() -> None:
    batch = lingering(max_messages=100, max_bytes=10**9, capacity=2)
    assert batch.count_trigger == 2
    batch.append(item(0), 1)
    assert batch.append(item(1), 1) is True
    assert batch.has_room() is False
    with pytest.raises(OverflowError, match=r"batch is at capacity \(2 messages\)"):
        batch.append(item(2), 1)


def test_take_hands_out_everything_in_order_and_resets() -> None:
    batch = Batch(max_messages=10, max_bytes=100, capacity=10)
    for i in range(5):
        batch.append(item(i), 3)
    assert batch.nbytes == 15
    taken = batch.take()
    assert [m["value"] for m in taken] == [b"0", b"1", b"2", b"3", b"4"]
    assert (len(batch), batch.nbytes, batch.taken, batch.accepted) == (0, 0, 5, 5)
    assert batch.trigger() is None


def test_take_cuts_at_max_messages_and_keeps_the_rest() -> None:
    batch = Batch(max_messages=3, max_bytes=10**9, capacity=10)
    for i in range(7):
        batch.append(item(i), 1)
    assert [m["value"] for m in batch.take()] == [b"0", b"1", b"2"]
    assert (len(batch), batch.nbytes, batch.trigger()) == (4, 4, "messages")
    assert [m["value"] for m in batch.take()] == [b"3", b"4", b"5"]
    assert [m["value"] for m in batch.take()] == [b"6"]
    assert batch.taken == 7


def test_take_cuts_at_max_bytes() -> None:
    batch = Batch(max_messages=100, max_bytes=4, capacity=100)
    for i in range(6):  # values b"0".. b"5": one byte each
        batch.append(item(i), 1)
    assert [m["value"] for m in batch.take()] == [b"0", b"1", b"2", b"3"]
    assert batch.nbytes == 2


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=50), max_size=200),
    max_messages=st.integers(min_value=1, max_value=50),
    max_bytes=st.integers(min_value=1, max_value=500),
    takes=st.sets(st.integers(min_value=0, max_value=199)),
)
def test_nothing_is_lost_or_reordered(
    sizes: list[int], max_messages: int, max_bytes: int, takes: set[int]
) -> None:
    batch = lingering(max_messages, max_bytes, capacity=1000)
    out: list[Pending] = []
    for i, size in enumerate(sizes):
        fired = batch.append({"topic": "t", "value": b"x" * size, "partition": i}, size)
        assert fired == (len(batch) >= max_messages or batch.nbytes >= max_bytes)
        if fired or i in takes:
            taken = batch.take()
            assert 1 <= len(taken) <= max_messages
            assert sum(len(m["value"] or b"") for m in taken[:-1]) < max_bytes
            assert batch.nbytes == sum(len(m["value"] or b"") for m in batch.items)
            out.extend(taken)
    while len(batch):
        out.extend(batch.take())
    assert batch.nbytes == 0
    assert [m.get("partition") for m in out] == list(range(len(sizes)))
    assert batch.taken == len(sizes)


@given(
    elements=st.lists(
        st.one_of(
            st.binary(max_size=20),
            st.text(max_size=5),
            st.tuples(st.binary(max_size=5), st.binary(max_size=5)),
            st.integers(),
        ),
        max_size=60,
    ),
    capacity=st.integers(min_value=1, max_value=70),
)
def test_extend_appends_exactly_what_it_took(elements: list[object], capacity: int) -> None:
    """The bulk path: bytes directly, the rest through convert; a bad element is consumed
    and not appended; everything appended before it stays, counted."""
    from trio_producer._args import bulk_item

    batch = Batch(max_messages=10, max_bytes=10**9, capacity=capacity)
    it = iter(elements)
    try:
        taken = batch.extend("t", it, bulk_item)
    except TypeError:
        bad = next(i for i, e in enumerate(elements) if type(e) is int)
        assert len(batch) == bad
        assert list(it) == elements[bad + 1 :]
    else:
        assert taken == min(capacity, len(elements)) == len(batch)
        assert list(it) == elements[taken:]
    expected = []
    for e in elements[: len(batch)]:
        key, value = e if isinstance(e, tuple) else (None, e)
        expected.append((key, value.encode() if isinstance(value, str) else value))
    assert [(m.get("key"), m["value"]) for m in batch.items] == expected
    assert batch.nbytes == sum(len(v or b"") + len(k or b"") for k, v in expected)


@pytest.mark.parametrize(
    ("fields", "own_callback", "own_run", "route"),
    [
        ({}, False, False, Route.SHARED),
        ({"key": b"k"}, False, False, Route.SHARED),
        ({"key": b"k"}, True, False, Route.TRACKED),
        ({}, False, True, Route.OWN_RUN),
        ({}, True, True, Route.TRACKED),
        ({"headers": [("h", b"1")]}, False, True, Route.SINGLE),
        ({"partition": 0}, True, False, Route.SINGLE),
        ({"timestamp": 1}, False, False, Route.SINGLE),
        ({"trace": b"x"}, False, False, Route.SHARED),  # a field the batch call carries
    ],
)
def test_route_for_is_the_one_rule(
    fields: dict[str, object], own_callback: bool, own_run: bool, route: Route
) -> None:
    item = cast("Pending", {"topic": "t", "value": b"v", **fields})
    assert route_for(item, own_callback=own_callback, own_run=own_run) is route
