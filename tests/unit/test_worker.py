"""The worker loop against a recording sink: triggers, backpressure, the final drain."""

from __future__ import annotations

from types import FunctionType, SimpleNamespace

import pytest
import trio
import trio.testing

from trio_producer import ProducerClosedError
from trio_producer._batch import Batch, Pending
from trio_producer._worker import BatchChannel, run_worker
from trio_producer.testing import RecordingSink

from ..harness.helpers import item

#: The send methods read only whether the client is transactional from the tracker.
NO_TRACKER = SimpleNamespace(client=SimpleNamespace(transactional=False))


def make(
    *,
    linger: float = 3600.0,
    max_messages: int = 10**9,
    max_bytes: int = 10**12,
    capacity: int = 10**6,
) -> BatchChannel:
    return BatchChannel(Batch(max_messages, max_bytes, capacity), linger)


async def test_final_drain_hands_on_everything_when_the_channel_closes() -> None:
    # The seed bug: the drain returned early because a "shutting down" flag was set.
    channel = make()
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        for i in range(25):
            channel.send_nowait(item(i), 1)
        await trio.testing.wait_all_tasks_blocked()
        assert sink.batches == []  # linger is an hour: nothing left yet
        channel.close()
    assert sink.values == [str(i).encode() for i in range(25)]
    assert channel.batches == {"messages": 0, "bytes": 0, "linger": 0, "flush": 0, "drain": 1}


async def test_linger_hands_on_a_batch_after_linger_seconds(autojump_clock: trio.abc.Clock) -> None:
    channel = make(linger=0.5)
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        await channel.send(item(0), 1)
        await channel.send(item(1), 1)
        await trio.sleep(0.49)
        assert sink.batches == []
        await trio.sleep(0.02)
        assert sink.values == [b"0", b"1"]
        channel.close()
    assert channel.batches["linger"] == 1
    assert len(sink.batches) == 1


async def test_count_trigger_wakes_the_worker_before_linger(autojump_clock: trio.abc.Clock) -> None:
    channel = make(linger=3600, max_messages=4)
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        for i in range(10):
            await channel.send(item(i), 1)
        await trio.testing.wait_all_tasks_blocked()
        # two full batches left on the count trigger, two messages wait for linger
        assert [len(b) for b in sink.batches] == [4, 4]
        assert trio.current_time() < 1
        channel.close()
    assert [len(b) for b in sink.batches] == [4, 4, 2]
    assert channel.batches == {"messages": 2, "bytes": 0, "linger": 0, "flush": 0, "drain": 1}


async def test_bytes_trigger(autojump_clock: trio.abc.Clock) -> None:
    channel = make(linger=3600, max_bytes=100)
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        for _i in range(5):
            await channel.send({"topic": "t", "value": b"x" * 40}, 40)
        await trio.testing.wait_all_tasks_blocked()
        assert [len(b) for b in sink.batches] == [3]
        channel.close()
    assert [len(b) for b in sink.batches] == [3, 2]
    assert channel.batches["bytes"] == 1


async def test_flush_request_hands_on_the_pending_batch(autojump_clock: trio.abc.Clock) -> None:
    channel = make(linger=3600)
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        for i in range(3):
            await channel.send(item(i), 1)
        target = channel.request_flush()
        assert target == 3
        await channel.wait_produced(target)
        assert sink.values == [b"0", b"1", b"2"]
        assert trio.current_time() < 1
        channel.close()
    assert channel.batches["flush"] == 1


class KeptElsewhere:
    """A ``Source``: two earlier batches, then a backlog it tops the batch it is given up
    from (as the durable spool does)."""

    def __init__(self) -> None:
        self.handed_at: list[int] = []
        self.backlog = [item(i) for i in range(10, 15)]
        self.topped_up: list[Batch] = []

    def earlier(self) -> list[list[Pending]]:
        return [[item(0), item(1)], [item(2)]]

    def handed(self, pos: int) -> None:
        self.handed_at.append(pos)

    def refill(self, batch: Batch) -> None:
        self.topped_up.append(batch)
        while self.backlog and batch.has_room():
            batch.append(self.backlog.pop(0), 1)


async def test_the_source_given_to_the_channel_goes_first_then_tops_its_batch_up() -> None:
    source = KeptElsewhere()
    channel = BatchChannel(Batch(10**9, 10**12, 2), 3600.0, source=source)
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        await trio.testing.wait_all_tasks_blocked()
        # The earlier batches whole, then the backlog as the batch has room (a full
        # queue leaves at once); the last one waits for the linger.
        assert sink.values == [b"0", b"1", b"2", b"10", b"11", b"12", b"13"]
        assert channel.batch.items == [item(14)]
        channel.close()
    assert [len(b) for b in sink.batches] == [2, 1, 2, 2, 1]
    assert sink.values[-1] == b"14"
    assert source.handed_at == [2, 1]
    assert source.topped_up  # (the channel hands the source its own batch)
    assert all(batch is channel.batch for batch in source.topped_up)


async def test_send_waits_while_full_and_send_nowait_raises_wouldblock() -> None:
    channel = make(capacity=2, max_messages=10**9)
    sink = RecordingSink(capacity=0)  # librdkafka "full": the worker holds its batch
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        channel.send_nowait(item(0), 1)
        channel.send_nowait(item(1), 1)
        with pytest.raises(trio.WouldBlock):
            channel.send_nowait(item(2), 1)
        await trio.testing.wait_all_tasks_blocked()
        # the worker took both (full queue) and waits for the sink to have room
        assert len(channel.batch) == 0
        assert channel.in_hand == [item(0), item(1)]
        channel.send_nowait(item(2), 1)
        channel.send_nowait(item(3), 1)
        accepted = []

        async def sender() -> None:
            await channel.send(item(4), 1)
            accepted.append(4)

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert accepted == []  # backpressure: send waits
        sink.capacity = None
        sink.make_room(0)
        await trio.testing.wait_all_tasks_blocked()
        assert accepted == [4]
        channel.close()
    assert sink.values == [str(i).encode() for i in range(5)]


async def test_send_after_close_raises_and_accepts_nothing() -> None:
    channel = make()
    channel.close("the producer is closed")
    with pytest.raises(ProducerClosedError, match=r"^the producer is closed$"):
        channel.send_nowait(item(0), 1)
    with pytest.raises(ProducerClosedError):
        await channel.send(item(0), 1)
    assert channel.batch.accepted == 0


async def test_cancelled_send_accepts_nothing() -> None:
    channel = make()
    with trio.CancelScope() as scope:
        scope.cancel()
        await channel.send(item(0), 1)
    assert channel.batch.accepted == 0


async def test_blocked_sender_is_released_with_closed_error_on_close() -> None:
    channel = make(capacity=1)
    channel.send_nowait(item(0), 1)
    errors: list[BaseException] = []

    async def sender() -> None:
        try:
            await channel.send(item(1), 1)
        except ProducerClosedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        channel.close()
    assert len(errors) == 1
    assert channel.unsent() == [item(0)]


async def test_parked_sends_are_admitted_in_order_and_a_cancelled_one_is_not() -> None:
    """Sends that find the queue full wait in line with their message; the worker admits
    them oldest first into the room of the batch it takes. One cancelled while it waits
    leaves the line: not accepted, and the ones behind it move up."""
    channel = make(capacity=2)
    sink = RecordingSink(capacity=0)  # the worker holds its first batch
    outcomes: dict[int, str] = {}

    async def sender(i: int, scope: trio.CancelScope) -> None:
        with scope:
            await channel.send(item(i), 1)
            outcomes[i] = "accepted"
        if scope.cancelled_caught:
            outcomes[i] = "cancelled"

    scopes = {i: trio.CancelScope() for i in (4, 5, 6)}
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        for i in range(4):
            await channel.send(item(i), 1)  # 0, 1 are in hand; 2, 3 fill the queue
        for i in (4, 5, 6):
            nursery.start_soon(sender, i, scopes[i])
            await trio.testing.wait_all_tasks_blocked()
        scopes[5].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {5: "cancelled"}
        assert channel.batch.accepted == 4
        sink.capacity = None
        sink.make_room(0)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {4: "accepted", 5: "cancelled", 6: "accepted"}
        channel.close()
    assert sink.values == [b"0", b"1", b"2", b"3", b"4", b"6"]


async def test_a_parked_send_keeps_no_exception_or_closure_alive() -> None:
    """What a parked send holds while it waits is what the garbage collector walks when
    thousands are parked (the tasks sweep at 10,000 tasks): no ``WouldBlock`` being
    handled (with its traceback and the frames it keeps), no closure per send."""
    import gc

    channel = make(capacity=1)
    refused: list[int] = []

    async def sender(i: int) -> None:
        with pytest.raises(ProducerClosedError):
            await channel.send(item(i), 1)
        refused.append(i)

    async with trio.open_nursery() as nursery:
        channel.send_nowait(item(0), 1)  # full; no worker takes it
        for i in range(1, 4):
            nursery.start_soon(sender, i)
        await trio.testing.wait_all_tasks_blocked()
        assert len(channel._parked) == 3
        gc.collect()  # what earlier tests left
        alive = gc.get_objects()
        assert [o for o in alive if isinstance(o, (trio.WouldBlock, OverflowError))] == []
        closures = [o for o in alive if isinstance(o, FunctionType) and o.__closure__]
        assert [f for f in closures if f.__module__ == "trio_producer._worker"] == []
        channel.close()
    assert sorted(refused) == [1, 2, 3]


async def test_send_is_a_checkpoint_and_send_nowait_is_not() -> None:
    channel = make()
    with trio.testing.assert_checkpoints():
        await channel.send(item(0), 1)
    with trio.testing.assert_no_checkpoints():
        channel.send_nowait(item(1), 1)


async def test_send_many_consumes_exactly_what_it_accepted_when_cancelled() -> None:
    from trio_producer._intake import MemoryIntake
    from trio_producer._producer import Producer

    channel = make(capacity=3)
    sink = RecordingSink(capacity=0)  # the worker takes one batch and then waits
    producer = Producer(channel, NO_TRACKER, None, MemoryIntake(channel), None)  # type: ignore[arg-type]
    values = iter([b"%d" % i for i in range(10)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, channel, sink)
        with trio.move_on_after(1) as scope:
            await producer.send_many("t", values)
        assert scope.cancelled_caught
        # three in the worker's hand, three pending; the seventh was never taken
        assert channel.batch.accepted == 6
        assert next(values) == b"6"
        channel.close()
        sink.capacity = None
        sink.make_room(0)
    assert sink.values == [b"%d" % i for i in range(6)]


async def test_send_many_bad_element_is_consumed_not_accepted() -> None:
    from trio_producer._intake import MemoryIntake
    from trio_producer._producer import Producer

    channel = make()
    producer = Producer(channel, NO_TRACKER, None, MemoryIntake(channel), None)  # type: ignore[arg-type]
    values = iter([b"a", ("k", "b"), 3, b"d"])
    with pytest.raises(TypeError, match=r"^value must be bytes, bytearray, memoryview, str"):
        await producer.send_many("t", values)
    assert [(m.get("key"), m["value"]) for m in channel.batch.items] == [
        (None, b"a"),
        (b"k", b"b"),
    ]
    assert next(values) == b"d"
    with pytest.raises(TypeError, match=r"^send_many takes values or \(key, value\) pairs"):
        await producer.send_many("t", [(1, 2, 3)])
