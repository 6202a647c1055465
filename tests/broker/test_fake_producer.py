"""The fake producer (trio_producer.testing.open_fake_producer): application tests, no broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trio_producer import (
    DeliveryError,
    KafkaErrorInfo,
    Message,
    Producer,
    ProducerClosedError,
    RecordMetadata,
    UndeliveredMessagesError,
    open_producer,
    undelivered_messages,
)
from trio_producer._client import KafkaClient
from trio_producer._delivery import DeliveryTracker
from trio_producer._worker import BatchChannel
from trio_producer.serialization import json_serializer, string_serializer
from trio_producer.testing import ConsumedRecord, FakeProducer, free_port, open_fake_producer
from trio_producer.testing._backend import FakeConfluentProducer

from ..harness.typecheck import mypy_strict

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path


# -- an application, typed against the real Producer --------------------------------


async def publish_orders(producer: Producer[str, object], orders: list[dict[str, Any]]) -> None:
    """What an application does: one message per order, keyed by customer."""
    for order in orders:
        await producer.send("orders", order, key=order["customer"])


ORDERS = [
    {"id": 1, "customer": "ann", "total": 10},
    {"id": 2, "customer": "bob", "total": 2_000_000},
    {"id": 3, "customer": "ann", "total": 5},
]


def json_fake(**options: Any) -> Any:
    return open_fake_producer(
        key_serializer=string_serializer, value_serializer=json_serializer, **options
    )


def too_big(message: Message) -> str | None:
    assert message.value is not None
    return "MSG_SIZE_TOO_LARGE" if b'"total":2000000' in message.value else None


async def test_records_what_the_application_sent() -> None:
    async with json_fake() as fake:
        await publish_orders(fake, ORDERS)
    assert fake.sent == [
        Message("orders", b'{"id":1,"customer":"ann","total":10}', key=b"ann"),
        Message("orders", b'{"id":2,"customer":"bob","total":2000000}', key=b"bob"),
        Message("orders", b'{"id":3,"customer":"ann","total":5}', key=b"ann"),
    ]
    assert fake.delivered == [
        ConsumedRecord("orders", 0, i, m.key, m.value, None, None) for i, m in enumerate(fake.sent)
    ]
    assert fake.values("orders") == [m.value for m in fake.sent]
    assert fake.keys() == [b"ann", b"bob", b"ann"]
    assert fake.values("other") == []
    stats = fake.statistics()
    assert (stats.queued, stats.in_flight, stats.delivered, stats.failed) == (0, 0, 3, 0)


async def test_a_failed_message_fails_the_producer_with_that_message() -> None:
    reached_end = False
    with pytest.raises(DeliveryError) as info:
        async with json_fake(fail=too_big) as fake:
            await publish_orders(fake, ORDERS[:2])
            await trio.sleep(30)  # the failure cancels the block, as the real one does
            reached_end = True
    assert not reached_end
    bad = fake.sent[1]
    assert info.value.message == bad
    assert str(info.value) == (
        "delivery to 'orders' failed: MSG_SIZE_TOO_LARGE: Broker: Message size too large"
    )
    assert info.value.possibly_delivered is False
    assert undelivered_messages(info.value) == (bad,)
    assert fake.sent == [
        Message("orders", b'{"id":1,"customer":"ann","total":10}', key=b"ann"),
        bad,
    ]
    assert fake.values() == [fake.sent[0].value]
    with pytest.raises(
        ProducerClosedError,
        match=r"^the producer failed: a delivery failed: delivery to 'orders' failed: MSG_SIZE",
    ):
        fake.send_nowait("orders", {}, key="late")


async def test_failures_go_to_on_delivery_error_and_the_producer_goes_on() -> None:
    seen: list[DeliveryError] = []
    error = KafkaErrorInfo(code=29, name="TOPIC_AUTHORIZATION_FAILED", reason="denied")

    def deny_bob(message: Message) -> KafkaErrorInfo | None:
        return error if message.key == b"bob" else None

    async with json_fake(fail=deny_bob, on_delivery_error=seen.append) as fake:
        await publish_orders(fake, ORDERS)
        await publish_orders(fake, ORDERS[:2])
    assert [(e.message, e.error) for e in seen] == [(fake.sent[1], error), (fake.sent[4], error)]
    assert fake.failed == seen
    assert fake.keys("orders") == [b"ann", b"ann", b"ann"]
    assert fake.statistics().failed == 2


async def test_unreachable_hands_back_exactly_the_undelivered_messages(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    start = trio.current_time()
    with pytest.raises(UndeliveredMessagesError) as info:
        async with open_fake_producer(close_timeout=5.0) as fake:
            await fake.send("t", b"before")
            await fake.flush()
            fake.unreachable = True
            await fake.send("t", b"lost-1")
            fake.send_nowait("t", b"lost-2", key=b"k", headers={"h": "v"})
            await trio.sleep(1)
            assert fake.statistics().in_flight == 2
            assert not fake.cluster_reachable
    assert trio.current_time() - start == pytest.approx(6.0)  # 1 s + close_timeout
    lost = [Message("t", b"lost-1"), Message("t", b"lost-2", key=b"k", headers=[("h", b"v")])]
    assert list(info.value.messages) == lost
    assert undelivered_messages(info.value) == tuple(lost)
    # As the real producer: purged messages do not name the cluster; the drain's
    # WARNING does, at once (the producer knew the cluster was gone).
    assert str(info.value) == "2 accepted message(s) were not delivered: _PURGE_QUEUE x2"
    unreachable = (
        "the Kafka cluster at fake:9092 is unreachable (fake:9092/bootstrap: Connect to "
        "fake:9092 failed: the fake cluster is unreachable (FakeProducer.unreachable))"
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"{unreachable}; librdkafka keeps trying, messages wait for at most "
            "the delivery timeout",
        ),
        (
            "WARNING",
            "leaving the producer: waiting up to 5.0 s more (close_timeout) for 2 "
            f"message(s) to be delivered; {unreachable}; what is not delivered by then is "
            "handed back",
        ),
    ]
    assert fake.values() == [b"before"]
    assert fake.failed == list(info.value.failures)


async def test_reachable_again_delivers_what_waited(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_producer(unreachable=True) as fake, trio.open_nursery() as nursery:
        nursery.start_soon(fake.send_and_wait, "t", b"waits")
        await trio.sleep(10)
        assert fake.delivered == []
        fake.unreachable = False
        await fake.flush()
        assert fake.values() == [b"waits"]


async def test_the_body_exception_wins_with_the_undelivered_attached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ValueError, match=r"^the application failed") as info:
        async with open_fake_producer(close_timeout=1.0) as fake:
            fake.unreachable = True
            await fake.send("t", b"lost")
            raise ValueError("the application failed")
    assert undelivered_messages(info.value) == (Message("t", b"lost"),)
    assert [f.message for f in fake.undelivered] == [Message("t", b"lost")]
    assert info.value.__notes__ == [
        "trio_producer: 1 accepted message(s) were not delivered; they are in Producer.undelivered"
    ]


async def test_send_and_wait_returns_offsets_per_topic_partition() -> None:
    async with open_fake_producer(
        partitions=2, fail=lambda m: "_MSG_TIMED_OUT" if m.value == b"x" else None
    ) as fake:
        metas = [
            await fake.send_and_wait("a", b"1", key=b"k1"),
            await fake.send_and_wait("a", b"2", key=b"k4"),
            await fake.send_and_wait("a", b"3", key=b"k1"),
            await fake.send_and_wait("b", b"4", partition=1, timestamp=1_700_000_000_000),
        ]
        with pytest.raises(DeliveryError) as info:
            await fake.send_and_wait("a", b"x", key=b"k1")
        assert info.value.possibly_delivered is True
        after = await fake.send_and_wait("a", b"5", key=b"k1")
    # crc32(b"k1") % 2 == 1, crc32(b"k4") % 2 == 0
    assert metas == [
        RecordMetadata("a", 1, 0, None),
        RecordMetadata("a", 0, 0, None),
        RecordMetadata("a", 1, 1, None),
        RecordMetadata("b", 1, 0, 1_700_000_000_000),
    ]
    assert after == RecordMetadata("a", 1, 2, None)  # a failure takes no offset


async def test_send_nowait_raises_wouldblock_at_capacity() -> None:
    async with open_fake_producer(queue_capacity=2) as fake:
        fake.send_nowait("t", b"1")
        fake.send_nowait("t", b"2")
        with pytest.raises(trio.WouldBlock):
            fake.send_nowait("t", b"3")
        assert fake.statistics().queued == 2
        await trio.testing.wait_all_tasks_blocked()  # the delivery task takes them
        assert fake.statistics().queued == 0
        fake.send_nowait("t", b"3")
        assert await fake.send_many("t", [b"4", (b"k", "5"), None]) == 3
    assert fake.values() == [b"1", b"2", b"3", b"4", b"5", None]
    assert fake.keys() == [None, None, None, None, b"k", None]


async def test_send_waits_for_room_and_cancelled_means_not_accepted() -> None:
    async with open_fake_producer(queue_capacity=1) as fake:
        fake.send_nowait("t", b"1")
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await fake.send("t", b"never")
        await fake.send("t", b"2")  # waits for the delivery task
    assert fake.values() == [b"1", b"2"]


async def test_same_argument_errors_as_the_real_producer() -> None:
    async with open_fake_producer() as fake:
        with pytest.raises(ValueError, match=r"^topic 'a b' is not a valid Kafka topic name"):
            await fake.send("a b", b"v")
        with pytest.raises(TypeError, match=r"^value must be bytes, bytearray, memoryview, str"):
            fake.send_nowait("t", 7)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^partition must be an int >= 0 or None, not -1$"):
            await fake.send_and_wait("t", b"v", partition=-1)
        with pytest.raises(TypeError, match=r"^send_many takes values or \(key, value\) pairs"):
            await fake.send_many("t", [(b"a", b"b", b"c")])  # type: ignore[list-item]
    assert fake.sent == []


async def test_serializer_errors_accept_nothing() -> None:
    from trio_producer import SerializationError

    async with json_fake() as fake:
        with pytest.raises(SerializationError, match=r"^value_serializer failed for a message"):
            await fake.send("orders", {1j}, key="k")
        with pytest.raises(SerializationError, match=r"^key_serializer failed"):
            fake.send_nowait("orders", {}, key=7)  # type: ignore[arg-type]
    assert fake.sent == []


async def test_async_methods_always_checkpoint() -> None:
    async with open_fake_producer() as fake:
        with trio.testing.assert_checkpoints():
            await fake.send("t", b"1")
        with trio.testing.assert_checkpoints():
            await fake.send_many("t", [])
        with trio.testing.assert_checkpoints():
            await fake.send_and_wait("t", b"2")
        with trio.testing.assert_checkpoints():
            await fake.flush()
        with trio.testing.assert_no_checkpoints():
            fake.send_nowait("t", b"3")
            fake.statistics()


async def test_abort_hands_back_what_is_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(UndeliveredMessagesError) as info:
        async with open_fake_producer(unreachable=True) as fake:
            await fake.send("t", b"lost")
            fake.abort("enough")
            await trio.sleep(30)
    assert trio.current_time() == pytest.approx(0.0)  # no close_timeout wait
    assert str(info.value) == (
        "1 accepted message(s) were not delivered (the drain was cut short: enough): "
        "_PURGE_QUEUE x1"
    )


def test_the_fake_adds_what_a_test_inspects_and_overrides_nothing() -> None:
    """Every method of the fake is the real producer's: there is no second implementation
    of sending, flushing or closing to keep in line."""
    public = {name for name in dir(Producer) if not name.startswith("_")}
    added = {name for name in vars(FakeProducer) if not name.startswith("_")}
    assert added == {"delivered", "keys", "sent", "unreachable", "values"}
    assert sorted(n for n in public if getattr(FakeProducer, n) is not getattr(Producer, n)) == []


async def test_the_fake_is_the_real_producer_over_a_fake_cluster() -> None:
    async with open_fake_producer() as fake:
        assert isinstance(fake, Producer)
        # open_producer's own parts; only what stands in for librdkafka is fake
        assert type(fake._channel) is BatchChannel
        assert type(fake._tracker) is DeliveryTracker
        assert type(fake._tracker.client) is KafkaClient
        assert type(fake._tracker.client._producer) is FakeConfluentProducer
        await fake.send("t", b"v")
    assert sum(fake.statistics().batches.values()) == 1  # the real worker's batches


def test_application_code_typed_against_producer_accepts_the_fake(tmp_path: Path) -> None:
    source = """
from trio_producer import Producer
from trio_producer.serialization import json_serializer, string_serializer
from trio_producer.testing import open_fake_producer

async def publish(producer: Producer[str, object]) -> None:
    await producer.send("orders", {"id": 1}, key="ann")

async def raw(producer: Producer) -> None:
    await producer.send("t", b"v")

async def test() -> None:
    async with open_fake_producer(
        key_serializer=string_serializer, value_serializer=json_serializer
    ) as fake:
        await publish(fake)
        reveal_type(fake)
    async with open_fake_producer() as plain:
        await raw(plain)
        await publish(plain)
"""
    proc = mypy_strict(source, tmp_path)
    out = proc.stdout
    assert 'Revealed type is "trio_producer.testing._fake.FakeProducer[str, object]"' in out, out
    # a raw producer is not a Producer[str, object]: the fake is typed like the real one
    assert (
        'Argument 1 to "publish" has incompatible type "FakeProducer[bytes | str, bytes | str]"'
        in out
    ), out
    assert "Found 1 error in 1 file" in out, out


async def test_deliveries_take_no_virtual_time_under_autojump(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The delivery task polls the fake cluster in a thread: while it has reports to hand
    over, the clock must not jump to the next deadline (here, a sleeping task's)."""
    async with open_fake_producer(partitions=3) as fake, trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 1000)
        metas = [await fake.send_and_wait("t", b"%d" % i, key=b"k") for i in range(20)]
        for i in range(20):
            await fake.send("t", b"more-%d" % i)
        await fake.flush()
        assert trio.current_time() == 0.0
        assert [m.offset for m in metas] == list(range(20))
        assert len(fake.delivered) == 40
        nursery.cancel_scope.cancel()
    assert trio.current_time() == 0.0
    assert autojump_clock.autojump_threshold == 0  # as the test set it


async def test_sent_holds_what_the_worker_has_not_handed_over_yet() -> None:
    async with open_fake_producer() as fake:
        fake.send_nowait("t", b"1", key=b"k")
        fake.send_nowait("t", b"2", headers={"h": b"v"})
        sent = [Message("t", b"1", key=b"k"), Message("t", b"2", headers=[("h", b"v")])]
        assert fake.sent == sent
        assert fake.delivered == []  # (not even handed to the fake cluster yet)
        await fake.flush()
        assert fake.values() == [b"1", b"2"]
    assert fake.sent == sent
    assert fake.delivered[1].headers == [("h", b"v")]


async def test_a_fail_rule_that_raises_or_answers_nonsense_fails_the_message_saying_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def rule(message: Message) -> Any:
        if message.value == b"raise":
            raise KeyError("oops")
        return {b"bad-name": "NO_SUCH_ERROR", b"bad-type": 42}.get(message.value or b"")

    seen: list[DeliveryError] = []
    async with open_fake_producer(fail=rule, on_delivery_error=seen.append) as fake:
        for value in (b"raise", b"bad-name", b"bad-type", b"fine"):
            await fake.send("t", value)
    assert [str(e) for e in seen] == [
        "delivery to 't' failed: _INVALID_ARG: fail= raised KeyError('oops')",
        "delivery to 't' failed: _INVALID_ARG: fail= returned 'NO_SUCH_ERROR' is not a "
        "librdkafka error name (e.g. 'MSG_SIZE_TOO_LARGE', '_MSG_TIMED_OUT', "
        "'NOT_ENOUGH_REPLICAS'): see confluent_kafka.KafkaError",
        "delivery to 't' failed: _INVALID_ARG: fail= must return None, a librdkafka error "
        "name or a KafkaErrorInfo, not 42",
    ]
    assert fake.values() == [b"fine"]
    [record] = [r for r in caplog.records if r.name == "trio_producer.testing"]
    assert (
        record.getMessage() == "fail= raised for Message(topic='t', value=b'raise', "
        "key=None, headers=None, partition=None, timestamp=None)"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


async def test_cluster_reachable_follows_the_fake_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_producer() as fake:
        fake.unreachable = True
        fake.send_nowait("t", b"waits")
        await trio.sleep(0.1)  # the delivery task polls while it waits
        assert not fake.cluster_reachable
        assert fake.statistics().in_flight == 1
        fake.unreachable = False
        await fake.flush()
        assert fake.cluster_reachable  # the delivery was a sign of life
        assert fake.values() == [b"waits"]


# -- the same scenario against the fake and against the real producer ---------------


async def unknown_partition_scenario(producer: Producer, topic: str) -> None:
    await producer.send(topic, b"ok-1")
    await producer.send(topic, b"bad", partition=7)
    await trio.sleep(30)  # the failure cancels the block
    raise AssertionError("not cancelled")


@pytest.mark.broker
async def test_parity_with_the_real_producer(kafka_bootstrap: str, kafka_topic: str) -> None:
    outcomes = []
    for opening in (
        open_fake_producer(),
        open_producer(bootstrap_servers=kafka_bootstrap, linger=0),
    ):
        with pytest.raises(DeliveryError) as info:
            async with opening as producer:
                await unknown_partition_scenario(producer, kafka_topic)
        with pytest.raises(ProducerClosedError) as closed:
            producer.send_nowait(kafka_topic, b"late")
        # librdkafka words it two ways: "Local: Unknown partition" in a delivery report,
        # "Unable to produce message: Local: Unknown partition" when produce() already
        # knew the topic's partitions. The fake says the first.
        text = str(info.value).replace("Unable to produce message: ", "")
        outcomes.append(
            (
                type(info.value),
                text,
                (info.value.error.code, info.value.error.name),
                info.value.message,
                undelivered_messages(info.value),
                str(closed.value).replace("Unable to produce message: ", ""),
                closed.value.producer_failed,
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == (
        f"delivery to '{kafka_topic}[7]' failed: _UNKNOWN_PARTITION: Local: Unknown partition"
    )


async def test_a_cancelled_block_still_hands_back_what_was_not_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.move_on_after(1):
        with pytest.raises(UndeliveredMessagesError) as info:
            async with open_fake_producer(unreachable=True, close_timeout=2.0) as fake:
                await fake.send("t", b"lost")
                waiter = trio.CancelScope()
                with waiter:
                    await fake.send_and_wait("t", b"abandoned")
    assert trio.current_time() == pytest.approx(3.0)  # cancelled at 1 s, drain of 2 s
    assert info.value.messages == (Message("t", b"lost"), Message("t", b"abandoned"))
    assert isinstance(info.value.__context__, trio.Cancelled)


@pytest.mark.parametrize("which", ["fake", "real"])
async def test_a_flush_waiting_in_another_task_raises_when_the_close_hands_back_its_messages(
    which: str,
) -> None:
    """Found by an attack: the fake's flush returned although the message sent before it
    was handed back by the exit; the real one raises ProducerClosedError."""

    def opener() -> AbstractAsyncContextManager[Producer[Any, Any]]:
        if which == "fake":
            return open_fake_producer(unreachable=True, close_timeout=0.5)
        return open_producer(bootstrap_servers=f"127.0.0.1:{free_port()}", close_timeout=0.5)

    ready = trio.Event()
    holder: list[Producer[Any, Any]] = []
    outcome: dict[str, object] = {}

    async def owner() -> None:
        with pytest.raises(UndeliveredMessagesError) as info:
            async with opener() as producer:
                holder.append(producer)
                producer.send_nowait("t", b"a")
                ready.set()
                await trio.sleep(0.3)
        outcome["handed back"] = [m.value for m in undelivered_messages(info.value)]

    async def flusher() -> None:
        await ready.wait()
        with pytest.raises(ProducerClosedError) as info:
            await holder[0].flush()
        outcome["flush"] = str(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
        nursery.start_soon(flusher)
    assert outcome == {
        "handed back": [b"a"],
        "flush": "the producer closed before every message sent before flush() was "
        "confirmed; the undelivered ones are handed back by open_producer",
    }
