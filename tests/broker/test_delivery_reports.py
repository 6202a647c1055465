"""``delivery_reports="errors"``: librdkafka reports failures only, and the promise holds.

A delivery is then known only from its absence: once librdkafka holds nothing, whatever
was produced and not reported failed was delivered. Every test accounts per message:
in the topic once, or handed back once (hook, exception), or not accepted.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_producer import (
    ConfigError,
    DeliveryError,
    Producer,
    UndeliveredMessagesError,
    open_producer,
)
from trio_producer._config import ProducerConfig

from ..harness.accounting import Ledger
from ..harness.faultproxy import proxied_broker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..conftest import ReadBack

pytestmark = [pytest.mark.broker]


async def test_everything_is_delivered_in_order_and_counted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, delivery_reports="errors"
    ) as producer:
        for i in range(3000):
            producer.send_nowait(kafka_topic, b"a-%d" % i, key=b"k" if i % 2 else None)
        await producer.send_many(kafka_topic, (b"b-%d" % i for i in range(3000)))
        for i in range(50):
            await producer.send(kafka_topic, b"c-%d" % i, headers=[("h", b"%d" % i)])
        await producer.flush()
        after_flush = producer.statistics()
        producer.send_nowait(kafka_topic, b"last")
    stats = producer.statistics()
    assert (after_flush.delivered, after_flush.in_flight, after_flush.failed) == (6050, 0, 0)
    assert (stats.delivered, stats.in_flight, stats.failed, stats.queued) == (6051, 0, 0, 0)
    records = await read_back(kafka_topic, expected=6051)
    expected = (
        [b"a-%d" % i for i in range(3000)]
        + [b"b-%d" % i for i in range(3000)]
        + [b"c-%d" % i for i in range(50)]
        + [b"last"]
    )
    assert [r.value for r in records] == expected
    assert [r.key for r in records[:4]] == [None, b"k", None, b"k"]
    assert records[6000].headers == [("h", b"0")]


async def test_failures_while_running_reach_the_hook_and_the_rest_is_delivered(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Messages librdkafka refuses (too large) are failures; their neighbours arrive."""
    failed: list[DeliveryError] = []
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        delivery_reports="errors",
        on_delivery_error=failed.append,
        librdkafka={"message.max.bytes": 2000},
    ) as producer:
        values = [b"big-%04d" % i + b"x" * 3000 if i % 7 == 0 else b"ok-%d" % i for i in range(700)]
        await producer.send_many(kafka_topic, values)
        await producer.flush()
        stats = producer.statistics()
    assert sorted(f.message.value or b"" for f in failed) == [v for v in values if len(v) > 3000]
    assert {f.error.name for f in failed} == {"MSG_SIZE_TOO_LARGE"}
    assert (stats.delivered, stats.failed, stats.in_flight) == (600, 100, 0)
    records = await read_back(kafka_topic, expected=600)
    assert [r.value for r in records] == [v for v in values if len(v) < 3000]


async def test_a_dead_broker_hands_back_every_accepted_message() -> None:
    topic = "eo-dead"
    async with proxied_broker([topic]) as (bootstrap, proxy, _nursery):
        proxy.blackhole()
        with pytest.raises(UndeliveredMessagesError) as raised:
            async with open_producer(
                bootstrap_servers=bootstrap, delivery_reports="errors", close_timeout=0.5
            ) as producer:
                for i in range(500):
                    producer.send_nowait(topic, b"m-%d" % i)
                await producer.send_many(topic, (b"n-%d" % i for i in range(500)))
        stats = producer.statistics()
    handed = sorted(m.value or b"" for m in raised.value.messages)
    assert handed == sorted([b"m-%d" % i for i in range(500)] + [b"n-%d" % i for i in range(500)])
    assert (stats.delivered, stats.failed) == (0, 1000)


@pytest.mark.timeout(60)
async def test_flush_waits_for_what_came_before_while_another_task_keeps_sending(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Without success reports, flush() holds newer messages back until librdkafka holds
    nothing: it returns though another task never stops sending, and what came before
    it is in the topic by then."""
    sent_after = 0
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, delivery_reports="errors"
    ) as producer:

        def later() -> Iterator[bytes]:
            nonlocal sent_after
            for _ in range(200):
                sent_after += 1  # taken by send_many: accepted (even if it is then cancelled)
                yield b"later-%d" % (sent_after - 1)

        async def keep_sending() -> None:
            while True:  # librdkafka is never empty for long
                await producer.send_many(kafka_topic, later())

        async with trio.open_nursery() as nursery:
            for i in range(2000):
                producer.send_nowait(kafka_topic, b"before-%d" % i)
            for _ in range(3):
                nursery.start_soon(keep_sending)
            await trio.sleep(0.2)
            with trio.fail_after(10):
                await producer.flush()
            in_topic = await read_back(kafka_topic, expected=2000)
            nursery.cancel_scope.cancel()
    before = [r.value for r in in_topic if r.value and r.value.startswith(b"before-")]
    assert before == [b"before-%d" % i for i in range(2000)]
    records = await read_back(kafka_topic, expected=2000 + sent_after)
    assert sorted(r.value or b"" for r in records) == sorted(
        [b"before-%d" % i for i in range(2000)] + [b"later-%d" % i for i in range(sent_after)]
    )
    assert sent_after > 0


async def test_send_and_wait_a_spool_and_transactions_are_refused(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Any
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, delivery_reports="errors"
    ) as producer:
        with pytest.raises(ConfigError, match="send_and_wait needs the delivery report"):
            await producer.send_and_wait(kafka_topic, b"refused")
        await producer.send(kafka_topic, b"accepted")
    records = await read_back(kafka_topic, expected=1)
    assert [r.value for r in records] == [b"accepted"]
    with pytest.raises(ConfigError, match="cannot be combined with spool_path"):
        ProducerConfig("x:9092", delivery_reports="errors", spool_path=str(tmp_path))
    with pytest.raises(ConfigError, match="cannot be combined with transactions"):
        ProducerConfig("x:9092", delivery_reports="errors", librdkafka={"transactional.id": "t"})
    with pytest.raises(ConfigError, match="delivery_reports must be 'all' or 'errors', not 'none'"):
        ProducerConfig("x:9092", delivery_reports="none")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="use the delivery_reports field"):
        ProducerConfig("x:9092", librdkafka={"delivery.report.only.error": True})


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "seed", [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2, 3))]
)
async def test_a_cancelled_block_with_a_cut_broker_keeps_the_promise(seed: int) -> None:
    """Senders of every kind, a broker that goes away at a random moment, the block
    cancelled at another: every message is in the topic once, or handed back once, or
    was not accepted."""
    rng = random.Random(seed)
    topic = f"eo-cut-{seed}"
    ledger = Ledger(f"eo{seed}")
    producer: Producer | None = None
    exit_exc: BaseException | None = None
    async with proxied_broker([topic]) as (bootstrap, proxy, _nursery):

        async def sender(kind: str) -> None:
            assert producer is not None
            while True:
                if kind == "nowait":
                    payload = ledger.new_payload()
                    try:
                        producer.send_nowait(topic, payload)
                    except trio.WouldBlock:
                        await trio.sleep(0.001)
                        continue
                    ledger.mark_accepted(payload)
                    await trio.lowlevel.checkpoint()
                elif kind == "send":
                    await ledger.send(producer, topic)
                else:
                    await ledger.send_many(producer, topic, 50)

        try:
            with trio.move_on_after(rng.uniform(0.3, 1.5)):
                async with open_producer(
                    bootstrap_servers=bootstrap,
                    delivery_reports="errors",
                    close_timeout=1.0,
                    queue_capacity=500,
                ) as producer:
                    async with trio.open_nursery() as nursery:
                        for kind in ("nowait", "send", "many"):
                            nursery.start_soon(sender, kind)
                        await trio.sleep(rng.uniform(0.05, 0.6))
                        rng.choice([proxy.cut, proxy.blackhole, proxy.restore])()
                        if rng.random() < 0.5:
                            await producer.flush()
        except BaseException as exc:
            exit_exc = exc
        proxy.cut()
        proxy.restore()
        await ledger.read_topic(bootstrap, topic)
    assert producer is not None
    ledger.collect(exit_exc)
    ledger.collect(producer)
    # A cut can lose the acknowledgement of a request the broker wrote: librdkafka queues
    # it again and the stop purges it. Such a message is handed back marked in doubt
    # (DeliveryError.possibly_delivered), as without this option; it counts once.
    in_doubt = {
        failure.message.value
        for failure in [*getattr(exit_exc, "failures", ()), *producer.undelivered]
        if failure.possibly_delivered
    }
    for payload in [p for p, where in ledger.handed.items() if len(where) == 1]:
        if ledger.in_topic[payload] == 1 and payload in in_doubt:
            del ledger.handed[payload]
    ledger.check()
    assert len(ledger.accepted) > 0


async def test_statistics_add_up_while_librdkafka_has_other_events_queued(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """librdkafka's count of what it holds also counts its queued logs and statistics:
    they are not messages in flight, and ``delivered`` never goes down."""
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        delivery_reports="errors",
        librdkafka={
            "debug": "metadata",
            "topic.metadata.refresh.interval.ms": 100,
            "statistics.interval.ms": 200,
        },
    ) as producer:
        await producer.send_many(kafka_topic, [b"m-%d" % i for i in range(1000)])
        await producer.flush()
        seen = []
        for _ in range(15):
            await trio.sleep(0.1)
            stats = producer.statistics()
            seen.append((stats.queued, stats.in_flight, stats.delivered, stats.failed))
    assert seen == [(0, 0, 1000, 0)] * 15


@pytest.mark.timeout(60)
async def test_flush_returns_while_librdkafka_is_never_empty() -> None:
    """A slow broker (librdkafka's mock cluster, 50 ms per request) and three tasks that
    keep sending: librdkafka never holds nothing on its own, so flush() returns only
    because it holds the newer messages back -- and they go on afterwards."""
    async with open_producer(
        bootstrap_servers="mock:9092",
        delivery_reports="errors",
        librdkafka={"test.mock.num.brokers": 1, "test.mock.broker.rtt": 50},
    ) as producer:

        async def keep_sending() -> None:
            while True:
                await producer.send_many("busy", [b"x" * 100] * 200)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(keep_sending)
            await producer.send("busy", b"warm-up")
            await trio.sleep(0.3)

            def handed_on() -> int:
                stats = producer.statistics()
                return stats.delivered + stats.failed + stats.in_flight

            for _ in range(3):
                with trio.fail_after(10):
                    await producer.flush()
                settled = handed_on()
                for _ in range(1000):  # not held back: the worker goes on (within 10 s)
                    if handed_on() > settled:
                        break
                    await trio.sleep(0.01)
                else:
                    pytest.fail("nothing was handed to librdkafka after flush() returned")
            nursery.cancel_scope.cancel()
    assert producer.statistics().failed == 0
