"""The promise under faults: accepted means delivered or handed back, with figures.

Every test reads back with a real consumer and asserts exact counts: accepted,
delivered, handed back, lost (must be 0), duplicated (must be 0). The figures are also
printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import gc
import os
import random
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_producer import (
    DeliveryError,
    KafkaErrorInfo,
    KafkaFatalError,
    Producer,
    UndeliveredMessagesError,
    open_producer,
)
from trio_producer.testing import EmbeddedBroker, consume_all, create_topics, free_port

from ..harness.faultproxy import proxied_broker
from ..harness.helpers import rss_mb

pytestmark = [pytest.mark.broker, pytest.mark.faults]

APPS = Path(__file__).resolve().parents[1] / "harness" / "apps"
_case = iter(range(10**9))


def figures(name: str, **counts: object) -> None:
    print(f"[figures] {name}: " + " ".join(f"{k}={v}" for k, v in counts.items()))


# ---- 1. cancellation at a random moment ---------------------------------------------------


def _cancel_cases(n: int, seed: int = 20261127) -> list[tuple[float, int, int, float, bool]]:
    """Seeded random cases: (linger, batch_max_messages, queue_capacity, cancel_after, bulk)."""
    rng = random.Random(seed)
    return [
        (
            rng.choice([0.0, 0.001, 0.005, 0.05, 3600.0]),
            rng.randint(1, 5_000),
            rng.randint(1, 5_000),
            rng.uniform(0.0, 0.3),
            rng.random() < 0.3,
        )
        for _ in range(n)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("linger", "batch_max_messages", "queue_capacity", "cancel_after", "use_send_many"),
    _cancel_cases(50),
)
async def test_cancellation_at_a_random_moment_loses_nothing(
    kafka_bootstrap: str,
    linger: float,
    batch_max_messages: int,
    queue_capacity: int,
    cancel_after: float,
    use_send_many: bool,
) -> None:
    topic = f"cancel-case-{os.getpid()}-{next(_case)}"
    create_topics(kafka_bootstrap, [topic])
    accepted: list[int] = []

    async def body() -> None:
        with trio.move_on_after(cancel_after):
            async with open_producer(
                bootstrap_servers=kafka_bootstrap,
                linger=linger,
                batch_max_messages=batch_max_messages,
                queue_capacity=queue_capacity,
            ) as producer:
                i = 0
                while True:
                    if use_send_many:
                        chunk = iter(range(i, i + 100))
                        try:
                            await producer.send_many(topic, (b"%d" % n for n in chunk))
                        finally:
                            # exactly what it consumed was accepted
                            taken = next(chunk, i + 100) - i
                            accepted.extend(range(i, i + taken))
                            i += taken
                    else:
                        await producer.send(topic, b"%d" % i)
                        accepted.append(i)
                        i += 1

    await body()  # a healthy broker: nothing may be handed back, so nothing raises
    records = await trio.to_thread.run_sync(
        partial(consume_all, kafka_bootstrap, topic, expected=len(accepted) + 1, idle_timeout=0.5)
    )
    values = [int(r.value or b"-1") for r in records]
    assert values == accepted  # none lost, none twice, in order


# ---- 2. signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sigint", pytest.param("sigterm", marks=pytest.mark.slow)])
def test_signal_mid_stream_drains_every_accepted_message(
    kafka_bootstrap: str, kafka_topic: str, mode: str
) -> None:
    from ..harness.children import Child  # SIGINT at its default in the child; always killed

    app = [sys.executable, str(APPS / "produce_until_signal.py"), kafka_bootstrap, kafka_topic]
    with Child([*app, mode]) as child:
        child.wait_for(b"producing\n", stream="out")
        time.sleep(1.0)
        child.signal(signal.SIGINT if mode == "sigint" else signal.SIGTERM)
        code = child.wait(timeout=30)
    assert code == (130 if mode == "sigint" else 0), child.output()
    accepted = int(child.out.decode().strip().rsplit("accepted=", 1)[1])
    assert accepted > 1_000
    records = consume_all(kafka_bootstrap, kafka_topic, expected=accepted + 1, idle_timeout=1.0)
    assert [r.value for r in records] == [b"%d" % i for i in range(accepted)]
    figures(f"signal {mode}", accepted=accepted, delivered=len(records), lost=0, duplicated=0)


# ---- 3. network cut and latency -----------------------------------------------------------


@pytest.mark.slow  # (over 5 s: in CI's -m slow run, out of the README's command)
async def test_network_cut_of_three_seconds_loses_and_duplicates_nothing() -> None:
    topic = "cut"
    async with proxied_broker([topic], partitions=3) as (bootstrap, proxy, nursery):

        async def cut_for(seconds: float) -> None:
            proxy.cut()
            await trio.sleep(seconds)
            proxy.restore()

        count = 30_000
        start = time.monotonic()
        async with open_producer(bootstrap_servers=bootstrap, linger=0.002) as producer:
            for i in range(count):
                if i == 10_000:
                    nursery.start_soon(cut_for, 3.0)
                await producer.send(topic, b"%d" % i, key=b"key-%d" % (i % 10))
        elapsed = time.monotonic() - start
        stats = producer.statistics()
        records = await trio.to_thread.run_sync(
            partial(consume_all, bootstrap, topic, partitions=[0, 1, 2], expected=count + 1)
        )
    values = [int(r.value or b"-1") for r in records]
    assert (stats.delivered, stats.failed) == (count, 0)
    assert sorted(values) == list(range(count))  # 0 lost, 0 duplicated
    per_key: dict[bytes | None, list[int]] = {}
    for r, v in zip(records, values, strict=True):
        per_key.setdefault(r.key, []).append(v)
    assert all(vs == sorted(vs) for vs in per_key.values())  # order per key
    assert len(per_key) == 10
    figures(
        "network cut 3 s",
        accepted=count,
        delivered=len(records),
        handed_back=0,
        lost=count - len(set(values)),
        duplicated=len(values) - len(set(values)),
        seconds=round(elapsed, 2),
        proxy_connections=proxy.connections,
    )


@pytest.mark.slow
async def test_latency_applies_backpressure_and_memory_stays_bounded() -> None:
    async with proxied_broker(["slow"]) as (bootstrap, proxy, _nursery):
        proxy.latency = 0.05
        count = 20_000
        max_queued = max_in_flight = 0
        rss_before = rss_peak = rss_mb()  # current RSS (ru_maxrss never goes down)
        async with open_producer(
            bootstrap_servers=bootstrap,
            queue_capacity=500,
            librdkafka={"queue.buffering.max.messages": 1_000},
        ) as producer:
            start = time.monotonic()
            for i in range(count):
                await producer.send("slow", b"%d" % i + b"." * 1_000)
                if i % 50 == 0:
                    stats = producer.statistics()
                    max_queued = max(max_queued, stats.queued)
                    max_in_flight = max(max_in_flight, stats.in_flight)
                    rss_peak = max(rss_peak, rss_mb())
            send_seconds = time.monotonic() - start
        rss_growth_mb = rss_peak - rss_before
    assert producer.statistics().delivered == count
    # queue_capacity waiting for the worker, plus the one batch in the worker's hand
    assert max_queued <= 500 + 500
    assert max_in_flight <= 1_000
    assert rss_growth_mb < 100
    figures(
        "latency 50 ms per chunk",
        accepted=count,
        delivered=count,
        max_queued=max_queued,
        max_in_flight=max_in_flight,
        send_seconds=round(send_seconds, 2),
        rss_growth_mb=round(rss_growth_mb, 1),
    )


# ---- 4. broker late, broker never ---------------------------------------------------------


@pytest.mark.slow  # (over 5 s: in CI's -m slow run, out of the README's command)
async def test_broker_that_starts_two_seconds_late_gets_everything() -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = EmbeddedBroker(port)
    try:
        async with open_producer(bootstrap_servers=bootstrap) as producer:
            for i in range(1_000):
                await producer.send("late", b"%d" % i)
            await trio.sleep(2)
            await trio.to_thread.run_sync(broker.start)
        records = await trio.to_thread.run_sync(
            partial(consume_all, bootstrap, "late", expected=1_001)  # auto-created: all partitions
        )
    finally:
        broker.stop()
    assert producer.statistics().delivered == 1_000
    assert sorted(int(r.value or b"-1") for r in records) == list(range(1_000))
    figures("broker 2 s late", accepted=1_000, delivered=len(records), lost=0, duplicated=0)


async def test_broker_that_never_starts_hands_everything_back_in_close_timeout() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(UndeliveredMessagesError) as info:
        async with open_producer(bootstrap_servers=bootstrap, close_timeout=2.0) as producer:
            for i in range(5_000):
                await producer.send("never", b"%d" % i)
            start = time.monotonic()
    leave = time.monotonic() - start
    assert 2.0 <= leave < 3.0
    assert sorted(int(m.value or b"-1") for m in info.value.messages) == list(range(5_000))
    figures(
        "broker never starts",
        accepted=5_000,
        delivered=0,
        handed_back=len(info.value.messages),
        lost=0,
        leave_seconds=round(leave, 3),
    )


# ---- 5. bad input -------------------------------------------------------------------------


async def test_bad_input_fails_only_that_message(kafka_bootstrap: str, kafka_topic: str) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap, linger=0) as producer:
        await producer.send(kafka_topic, b"ok-0")
        with pytest.raises(DeliveryError) as too_large:
            await producer.send_and_wait(kafka_topic, b"x" * 5_000_000)
        await producer.send(kafka_topic, b"ok-1")
        with pytest.raises(ValueError, match="is not a valid Kafka topic name"):
            await producer.send("no spaces allowed", b"v")
        await producer.send(kafka_topic, b"ok-2")
        with pytest.raises(DeliveryError) as bad_partition:
            await producer.send_and_wait(kafka_topic, b"v", partition=99)
        await producer.send(kafka_topic, b"ok-3")
        for bad_value in ("é".encode(), "text"):
            await producer.send(kafka_topic, bad_value)  # bytes and str are both fine
        with pytest.raises(TypeError, match=r"^value must be"):
            await producer.send(kafka_topic, 12)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^header 'h' must have a bytes, str or None value"):
            await producer.send(kafka_topic, b"v", headers=[("h", 1)])  # type: ignore[list-item]
        await producer.send(kafka_topic, b"ok-4")
    assert too_large.value.error.name == "MSG_SIZE_TOO_LARGE"
    assert bad_partition.value.error.name == "_UNKNOWN_PARTITION"
    assert bad_partition.value.message.partition == 99
    records = consume_all(kafka_bootstrap, kafka_topic, expected=8)
    assert [r.value for r in records] == [
        b"ok-0",
        b"ok-1",
        b"ok-2",
        b"ok-3",
        "é".encode(),
        b"text",
        b"ok-4",
    ]


# ---- 6. fatal errors ----------------------------------------------------------------------


async def test_fatal_error_fails_the_producer_promptly_and_hands_back() -> None:
    # librdkafka's error_cb reports a fatal error (injected here; a real one, a fenced
    # transactional producer, is in test_transactions.py). The producer must stop at
    # once -- not wait close_timeout -- and hand back what was not delivered.
    bootstrap = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(KafkaFatalError) as info:
        async with open_producer(bootstrap_servers=bootstrap, close_timeout=30) as producer:
            for i in range(100):
                await producer.send("fatal", b"%d" % i)
            _inject_fatal(producer)
            await trio.sleep(30)
    elapsed = time.monotonic() - start
    assert elapsed < 3
    assert info.value.error.name == "_FATAL"
    assert sorted(int(m.value or b"-1") for m in info.value.messages) == list(range(100))
    assert str(info.value) == (
        "fatal Kafka error: _FATAL: injected; 100 accepted message(s) were not delivered"
    )


def _inject_fatal(producer: Producer) -> None:
    """What librdkafka's error_cb does on the poll thread for a fatal error."""
    producer._tracker.client.errors.append(
        KafkaErrorInfo(code=-150, name="_FATAL", reason="injected", fatal=True)
    )


# ---- 7. soak -------------------------------------------------------------------------------


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.slow
async def test_soak_one_million_messages(kafka_bootstrap: str, kafka_topic: str) -> None:
    gc.collect()
    threads_before = threading.active_count()
    os_threads_before = _os_threads()
    root = trio.lowlevel.current_root_task()
    tasks_before = _count_tasks(root)
    count = 1_000_000
    rss: dict[int, float] = {}
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        value = b"x" * 100
        for i in range(count):
            await producer.send(kafka_topic, value)
            if i % 100_000 == 0:
                rss[i] = rss_mb()
    rss[count] = rss_mb()
    assert producer.statistics().delivered == count
    assert _count_tasks(root) == tasks_before
    # Trio keeps idle worker threads cached for ~10 s; librdkafka's threads end with the client.
    with trio.fail_after(20):
        # polling is the point: thread counts have no event to wait on
        while threading.active_count() > threads_before or _os_threads() > os_threads_before:  # noqa: ASYNC110
            await trio.sleep(0.25)
    growth = rss[count] - rss[100_000]
    assert growth < 50, rss
    figures(
        "soak 1,000,000",
        delivered=count,
        rss_mb_at_100k=round(rss[100_000], 1),
        rss_mb_at_1m=round(rss[count], 1),
        rss_growth_mb=round(growth, 1),
        threads_left=threading.active_count() - threads_before,
    )


def _count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_count_tasks(t) for n in task.child_nurseries for t in n.child_tasks)


async def test_black_holed_broker_is_left_in_close_timeout_with_everything_handed_back() -> None:
    """Connections stay open but nothing comes back: in-flight requests never answer.
    Leaving must still take close_timeout (plus little), purging in-flight messages too."""
    async with proxied_broker(["black-hole"]) as (bootstrap, proxy, _nursery):
        with pytest.raises(UndeliveredMessagesError) as info:
            async with open_producer(bootstrap_servers=bootstrap, close_timeout=1.0) as p:
                await p.send_and_wait("black-hole", b"before")
                proxy.blackhole()
                for i in range(1_000):
                    await p.send("black-hole", b"%d" % i)
                await trio.sleep(0.5)  # some of them are now in flight, unanswered
                start = time.monotonic()
        leave = time.monotonic() - start
    assert 1.0 <= leave < 2.0
    assert sorted(int(m.value or b"-1") for m in info.value.messages) == list(range(1_000))
    reasons = {f.error.name for f in info.value.failures}
    assert reasons <= {"_PURGE_INFLIGHT", "_PURGE_QUEUE"}
    figures(
        "black-holed broker",
        accepted=1_001,
        delivered=1,
        handed_back=len(info.value.messages),
        lost=0,
        reasons="+".join(sorted(reasons)),
        leave_seconds=round(leave, 3),
    )
