"""The sans-IO batching rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_producer._batch import Batch, Item


def item(i: int) -> Item:
    return ("t", str(i).encode(), None, None, -1, 0, None)


def test_count_trigger_fires_at_max_messages() -> None:
    batch = Batch(max_messages=3, max_bytes=10**9, capacity=10)
    assert [batch.append(item(i), 1) for i in range(3)] == [False, False, True]
    assert batch.trigger() == "messages"


def test_bytes_trigger_fires_at_max_bytes() -> None:
    batch = Batch(max_messages=100, max_bytes=10, capacity=100)
    assert batch.append(item(0), 4) is False
    assert batch.append(item(1), 5) is False
    assert batch.append(item(2), 1) is True
    assert batch.trigger() == "bytes"


def test_full_queue_is_a_count_trigger_when_capacity_is_smaller() -> None:
    batch = Batch(max_messages=100, max_bytes=10**9, capacity=2)
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
    assert [m[1] for m in taken] == [b"0", b"1", b"2", b"3", b"4"]
    assert (len(batch), batch.nbytes, batch.taken, batch.accepted) == (0, 0, 5, 5)
    assert batch.trigger() is None


def test_take_cuts_at_max_messages_and_keeps_the_rest() -> None:
    batch = Batch(max_messages=3, max_bytes=10**9, capacity=10)
    for i in range(7):
        batch.append(item(i), 1)
    assert [m[1] for m in batch.take()] == [b"0", b"1", b"2"]
    assert (len(batch), batch.nbytes, batch.trigger()) == (4, 4, "messages")
    assert [m[1] for m in batch.take()] == [b"3", b"4", b"5"]
    assert [m[1] for m in batch.take()] == [b"6"]
    assert batch.taken == 7


def test_take_cuts_at_max_bytes() -> None:
    batch = Batch(max_messages=100, max_bytes=4, capacity=100)
    for i in range(6):  # values b"0".. b"5": one byte each
        batch.append(item(i), 1)
    assert [m[1] for m in batch.take()] == [b"0", b"1", b"2", b"3"]
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
    batch = Batch(max_messages, max_bytes, capacity=1000)
    out: list[Item] = []
    for i, size in enumerate(sizes):
        fired = batch.append(("t", b"x" * size, None, None, -1, 0, i), size)
        assert fired == (len(batch) >= max_messages or batch.nbytes >= max_bytes)
        if fired or i in takes:
            taken = batch.take()
            assert 1 <= len(taken) <= max_messages
            assert sum(len(m[1]) for m in taken[:-1]) < max_bytes
            out.extend(taken)
    while len(batch):
        out.extend(batch.take())
    assert batch.nbytes == 0
    assert [m[6] for m in out] == list(range(len(sizes)))
    assert batch.taken == len(sizes)
