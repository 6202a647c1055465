"""open_producer against a real broker, read back with a real consumer."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from trio_producer import (
    DeliveryError,
    Producer,
    ProducerClosedError,
    RecordMetadata,
    UndeliveredMessagesError,
    open_producer,
)
from trio_producer.testing import create_topics, free_port

if TYPE_CHECKING:
    from ..conftest import ReadBack

pytestmark = pytest.mark.broker

#: Messages can leave only through the final drain: no linger, no size trigger.
ONLY_DRAIN = {
    "linger": 3600.0,
    "batch_max_messages": 10**9,
    "batch_max_bytes": 10**12,
    "queue_capacity": 10**6,
}


@pytest.mark.parametrize("count", [25, 20_000])
async def test_final_drain_delivers_every_message(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, count: int
) -> None:
    """The regression test of the seed bug: a graceful exit must not drop the last batch."""
    async with open_producer(bootstrap_servers=kafka_bootstrap, **ONLY_DRAIN) as producer:
        for i in range(count):
            await producer.send(kafka_topic, b"m%d" % i)
        assert producer.statistics().delivered == 0  # all of it still in the batch
    stats = producer.statistics()
    assert (stats.queued, stats.in_flight, stats.delivered, stats.failed) == (0, 0, count, 0)
    assert dict(stats.batches) == {"messages": 0, "bytes": 0, "linger": 0, "flush": 0, "drain": 1}
    records = await read_back(kafka_topic, expected=count)
    assert [r.value for r in records] == [b"m%d" % i for i in range(count)]
    assert [r.offset for r in records] == list(range(count))


async def test_send_and_wait_offsets_match_consumed_offsets(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap, linger=0) as producer:
        metas = [await producer.send_and_wait(kafka_topic, b"v%d" % i, key=b"k") for i in range(5)]
    assert [(m.topic, m.partition, m.offset) for m in metas] == [
        (kafka_topic, 0, i) for i in range(5)
    ]
    assert all(isinstance(m, RecordMetadata) and m.timestamp for m in metas)
    records = await read_back(kafka_topic, expected=5)
    assert [(r.offset, r.key, r.value) for r in records] == [
        (i, b"k", b"v%d" % i) for i in range(5)
    ]


async def test_headers_keys_timestamps_and_str_values_round_trip(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        await producer.send(kafka_topic, b"a", key=b"k1", headers={"trace": b"abc", "n": "é"})
        await producer.send(
            kafka_topic, "text", headers=[("x", None), ("x", b"2")], timestamp=1_700_000_000_123
        )
        await producer.send(kafka_topic, None, key="tomb")
    records = await read_back(kafka_topic, expected=3)
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"k1", b"a", [("trace", b"abc"), ("n", "é".encode())]),
        (None, b"text", [("x", None), ("x", b"2")]),
        (b"tomb", None, None),
    ]
    assert records[1].timestamp == 1_700_000_000_123


async def test_send_after_close_raises_producer_closed(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        await producer.send(kafka_topic, b"x")
    with pytest.raises(ProducerClosedError, match=r"^the producer is closed$"):
        await producer.send(kafka_topic, b"y")
    with pytest.raises(ProducerClosedError):
        producer.send_nowait(kafka_topic, b"y")
    with pytest.raises(ProducerClosedError):
        await producer.send_and_wait(kafka_topic, b"y")
    with pytest.raises(ProducerClosedError):
        await producer.flush()


async def test_body_exception_wins_and_messages_are_still_delivered(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    with pytest.raises(KeyError, match="boom"):
        async with open_producer(bootstrap_servers=kafka_bootstrap, **ONLY_DRAIN) as producer:
            for i in range(100):
                await producer.send(kafka_topic, b"%d" % i)
            raise KeyError("boom")
    assert producer.undelivered == ()
    records = await read_back(kafka_topic, expected=100)
    assert [r.value for r in records] == [b"%d" % i for i in range(100)]


async def test_cancelling_the_surrounding_scope_still_delivers_everything(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    accepted = 0
    with trio.CancelScope() as scope:
        async with open_producer(
            bootstrap_servers=kafka_bootstrap, linger=3600, queue_capacity=10**6
        ) as p:
            for i in range(10_000):
                await p.send(kafka_topic, b"%d" % i)
                accepted += 1
                if i == 4_999:
                    scope.cancel()
    assert scope.cancelled_caught
    assert accepted == 5_000  # the send after the cancel raised Cancelled: not accepted
    records = await read_back(kafka_topic, expected=accepted)
    assert [r.value for r in records] == [b"%d" % i for i in range(accepted)]
    await trio.sleep(0.5)
    assert len(await read_back(kafka_topic, idle_timeout=0.5)) == accepted


async def test_unreachable_broker_hands_back_every_message_after_close_timeout() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(UndeliveredMessagesError) as info:
        async with open_producer(bootstrap_servers=bootstrap, close_timeout=2) as producer:
            for i in range(1_000):
                await producer.send("nowhere", b"%d" % i, key=b"k")
            await producer.send("nowhere", b"with-headers", headers={"h": b"1"})
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < 4.0
    error = info.value
    assert len(error.messages) == 1_001
    assert sorted(m.value for m in error.messages) == sorted(
        [b"%d" % i for i in range(1_000)] + [b"with-headers"]
    )
    assert {f.error.name for f in error.failures} <= {"_PURGE_QUEUE", "_PURGE_INFLIGHT"}
    with_headers = [m for m in error.messages if m.value == b"with-headers"]
    assert with_headers[0].headers == [("h", b"1")]
    assert all(m.topic == "nowhere" for m in error.messages)
    assert str(error).startswith("1001 accepted message(s) were not delivered: _PURGE_QUEUE x")
    stats = producer.statistics()
    assert (stats.delivered, stats.in_flight) == (0, 0)


async def test_body_exception_wins_over_undelivered_messages_which_are_attached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="mine") as info:
        async with open_producer(bootstrap_servers=bootstrap, close_timeout=0.5) as producer:
            for i in range(10):
                await producer.send("t", b"%d" % i)
            raise RuntimeError("mine")
    assert sorted(f.message.value for f in producer.undelivered) == [b"%d" % i for i in range(10)]
    assert info.value.__notes__ == [
        "trio_producer: 10 accepted message(s) were not delivered; they are in Producer.undelivered"
    ]
    assert any(
        r.levelno == logging.ERROR and "10 accepted message(s) were not delivered" in r.getMessage()
        for r in caplog.records
    )


async def test_send_nowait_raises_wouldblock_when_the_queue_is_full(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, queue_capacity=3, linger=3600
    ) as producer:
        for i in range(3):
            producer.send_nowait(kafka_topic, b"%d" % i)
        with pytest.raises(trio.WouldBlock):
            producer.send_nowait(kafka_topic, b"3")
        assert producer.statistics().queued == 3
        await producer.flush()
        producer.send_nowait(kafka_topic, b"3")
    records = await read_back(kafka_topic, expected=4)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3"]


async def test_a_waiting_send_and_wait_is_not_overtaken_while_others_keep_the_queue_full(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Twenty tasks keep a queue of 4 full with ``send_nowait`` (retrying every half
    millisecond) and three with ``await send()``; a ``send_and_wait`` that finds it full
    must get in within a bounded number of batches. Before, a parked send was only woken
    to retry, so the retrying tasks took the room first: it waited for seconds or for
    ever. Now parked sends are admitted in order into the room a batch leaves, before
    anyone else can take it: at most the three parked ``send``\\s go first."""
    capacity, spinners, parkers = 4, 20, 3
    accepted = 0
    stop = False

    async def spin(producer: Producer, name: int) -> None:
        nonlocal accepted
        i = 0
        while not stop:
            try:
                producer.send_nowait(kafka_topic, b"s%d-%d" % (name, i))
            except trio.WouldBlock:
                # Retry soon, but let the Trio thread rest: tasks that retry at every
                # bare checkpoint never let it block, and librdkafka's delivery reports
                # (one GIL hand-off each) then crawl (docs/guarantees.rst).
                await trio.sleep(0.0005)
            else:
                accepted += 1
                i += 1
                await trio.lowlevel.checkpoint()

    async def park(producer: Producer, name: int) -> None:
        nonlocal accepted
        i = 0
        while not stop:
            await producer.send(kafka_topic, b"p%d-%d" % (name, i))
            accepted += 1
            i += 1

    async with open_producer(
        bootstrap_servers=kafka_bootstrap, queue_capacity=capacity, linger=0
    ) as producer:
        async with trio.open_nursery() as nursery:
            for n in range(spinners):
                nursery.start_soon(spin, producer, n)
            for n in range(parkers):
                nursery.start_soon(park, producer, n)
            while True:  # until the queue is full
                try:
                    producer.send_nowait(kafka_topic, b"probe")
                except trio.WouldBlock:
                    break
                accepted += 1
                await trio.lowlevel.checkpoint()
            before = accepted  # (no checkpoint between the full queue and the call)
            with trio.fail_after(10):
                meta = await producer.send_and_wait(kafka_topic, b"waiter")
            stop = True
    assert before <= meta.offset <= before + parkers, (before, meta.offset)
    records = await read_back(kafka_topic, expected=accepted + 1)
    assert len(records) == accepted + 1
    assert records[meta.offset].value == b"waiter"
    assert [r.value for r in records].count(b"waiter") == 1


async def test_flush_waits_for_everything_sent_before_it(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, linger=3600, queue_capacity=10**5
    ) as p:
        for i in range(5_000):
            p.send_nowait(kafka_topic, b"%d" % i)
        await p.flush()
        stats = p.statistics()
        assert (stats.queued, stats.in_flight, stats.delivered) == (0, 0, 5_000)
        assert stats.batches["flush"] == 1


async def test_async_methods_checkpoint_and_send_nowait_does_not(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        with trio.testing.assert_checkpoints():
            await producer.send(kafka_topic, b"a")
        with trio.testing.assert_no_checkpoints():
            producer.send_nowait(kafka_topic, b"b")
            producer.statistics()
        with trio.testing.assert_checkpoints():
            await producer.flush()
        with trio.testing.assert_checkpoints():
            await producer.send_and_wait(kafka_topic, b"c")


async def test_leaving_an_idle_producer_is_fast(kafka_bootstrap: str) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap):
        await trio.sleep(0.2)
        start = time.monotonic()
    assert time.monotonic() - start < 0.1


async def test_send_and_wait_raises_delivery_error_for_that_message_only(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        await producer.send(kafka_topic, b"before")
        with pytest.raises(DeliveryError) as info:
            await producer.send_and_wait(kafka_topic, b"x" * 2_000_000)
        await producer.send(kafka_topic, b"after")
    assert info.value.error.name == "MSG_SIZE_TOO_LARGE"
    assert info.value.message.topic == kafka_topic
    assert info.value.message.value == b"x" * 2_000_000
    assert str(info.value).startswith(f"delivery to {kafka_topic!r} failed: MSG_SIZE_TOO_LARGE: ")
    records = await read_back(kafka_topic, expected=2)
    assert [r.value for r in records] == [b"before", b"after"]


async def test_failed_fire_and_forget_goes_to_the_hook(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    seen: list[DeliveryError] = []
    async with open_producer(bootstrap_servers=kafka_bootstrap, on_delivery_error=seen.append) as p:
        await p.send(kafka_topic, b"ok-1")
        await p.send(kafka_topic, b"bad", partition=7)
        await p.send(kafka_topic, b"ok-2")
    assert [(e.message.value, e.message.partition, e.error.name) for e in seen] == [
        (b"bad", 7, "_UNKNOWN_PARTITION")
    ]
    assert [r.value for r in await read_back(kafka_topic, expected=2)] == [b"ok-1", b"ok-2"]
    assert producer_failed_count(seen) == 1


def producer_failed_count(seen: list[DeliveryError]) -> int:
    return len(seen)


async def test_failed_fire_and_forget_without_hook_fails_the_producer(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    reached_end = False
    with pytest.raises(DeliveryError) as info:
        async with open_producer(bootstrap_servers=kafka_bootstrap, linger=0) as producer:
            await producer.send(kafka_topic, b"ok-1")
            await producer.send(kafka_topic, b"bad", partition=7)
            await trio.sleep(30)  # the failure cancels the block
            reached_end = True
    assert not reached_end
    assert info.value.error.name == "_UNKNOWN_PARTITION"
    assert info.value.message.value == b"bad"
    assert [r.value for r in await read_back(kafka_topic, expected=1)] == [b"ok-1"]
    with pytest.raises(ProducerClosedError, match=r"^the producer failed: a delivery failed: "):
        producer.send_nowait(kafka_topic, b"late")


async def test_wrong_argument_types_raise_typeerror_and_accept_nothing(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        with pytest.raises(
            TypeError,
            match=r"^value must be bytes, bytearray, memoryview, str .encoded as UTF-8. or None, "
            r"not int 5$",
        ):
            await producer.send(kafka_topic, 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^key must be bytes"):
            producer.send_nowait(kafka_topic, b"v", key=3.5)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=r"^header 'h' must have a bytes, str or None value, not int$"
        ):
            await producer.send(kafka_topic, b"v", headers={"h": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match=r"^topic must be a non-empty str, not bytes"):
            await producer.send(b"t", b"v")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^topic must be a non-empty str, not ''$"):
            await producer.send("", b"v")
        with pytest.raises(TypeError, match=r"^partition must be an int >= 0 or None, not -1$"):
            await producer.send(kafka_topic, b"v", partition=-1)
        with pytest.raises(
            ValueError,
            match=r"^topic 'bad topic!' is not a valid Kafka topic name: use 1 to 249 of the "
            r"characters a-z A-Z 0-9 \. _ - \(and not '\.' or '\.\.'\)$",
        ):
            producer.send_nowait("bad topic!", b"v")
        with pytest.raises(ValueError, match=r"^topic 'xxxxx"):
            await producer.send_many("x" * 250, [b"v"])
        with pytest.raises(TypeError, match=r"^topic must be a non-empty str, not list"):
            producer.send_nowait(["t"], b"v")  # type: ignore[arg-type]
        await producer.send(kafka_topic, bytearray(b"ok"))
        assert producer.statistics().queued + producer.statistics().delivered <= 1
    assert [r.value for r in await read_back(kafka_topic, expected=1)] == [b"ok"]


async def test_librdkafka_logs_go_to_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_producer")
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(UndeliveredMessagesError):
        async with open_producer(bootstrap_servers=bootstrap, close_timeout=1.5) as producer:
            await producer.send("t", b"x")
    names = {r.name for r in caplog.records}
    assert "trio_producer.librdkafka" in names
    assert any("Connection refused" in r.getMessage() for r in caplog.records)


async def test_multi_partition_keys_keep_order_per_key(
    kafka_bootstrap: str, read_back: ReadBack
) -> None:
    topic = "ordered-keys"
    create_topics(kafka_bootstrap, [topic], partitions=3)
    async with open_producer(bootstrap_servers=kafka_bootstrap, linger=0.002) as producer:
        for i in range(3_000):
            await producer.send(topic, b"%d" % i, key=b"key-%d" % (i % 7))
    records = await read_back(topic, expected=3_000, partitions=[0, 1, 2])
    assert len(records) == 3_000
    per_key: dict[bytes, list[int]] = {}
    for r in records:
        assert r.key is not None
        assert r.value is not None
        per_key.setdefault(r.key, []).append(int(r.value))
    assert {k: v for k, v in per_key.items()} == {
        b"key-%d" % k: list(range(k, 3_000, 7)) for k in range(7)
    }


async def test_send_many_delivers_values_and_pairs_in_order(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap, queue_capacity=1_000) as producer:
        with trio.testing.assert_checkpoints():
            n = await producer.send_many(kafka_topic, (b"v%d" % i for i in range(20_000)))
        assert n == 20_000
        assert await producer.send_many(kafka_topic, [(b"k", b"pair"), "text", None]) == 3
    records = await read_back(kafka_topic, expected=20_003)
    assert [r.value for r in records[:20_000]] == [b"v%d" % i for i in range(20_000)]
    assert [(r.key, r.value) for r in records[20_000:]] == [
        (b"k", b"pair"),
        (None, b"text"),
        (None, None),
    ]
