"""One benchmark measurement per process: ``python -m benchmarks.clients NAME JSON-ARGS``.

Prints one JSON object on stdout. Every client produces ``count`` messages of ``size``
bytes to ``topic`` with the same librdkafka settings (``PROPS``) and counts the time from
the first send until every message is confirmed.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

#: The same for every librdkafka-based client. Idempotence is off because aiokafka's
#: idempotent producer cannot initialise against Tansu; acks=1 and 5 ms linger for all.
PROPS: dict[str, Any] = {"enable.idempotence": False, "acks": 1, "linger.ms": 5}


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def result(count: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "count": count,
        "seconds": seconds,
        "rate": count / seconds,
        "rss_peak_mb": rss_peak_mb(),
        **extra,
    }


# ---- peers --------------------------------------------------------------------------------


def raw(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """The baseline: a plain confluent_kafka.Producer loop, no callbacks, one flush."""
    import confluent_kafka

    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, **PROPS})
    value = b"x" * size
    produce = producer.produce
    start = time.perf_counter()
    for _ in range(count):
        while True:
            try:
                produce(topic, value)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(60)
    seconds = time.perf_counter() - start
    assert left == 0, left
    return result(count, seconds)


class Counter:
    """A delivery callback that counts (the raw loops with callbacks, here and in the
    sweeps)."""

    __slots__ = ("delivered", "failed")

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0

    def __call__(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1


def raw_dr(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """Raw loop that also learns the fate of every message: a delivery callback per
    message, served by a poll thread. The floor for any producer that keeps the
    "delivered or handed back" promise."""
    import threading

    import confluent_kafka

    counter = Counter()
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, **PROPS})
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    thread = threading.Thread(target=poller)
    thread.start()
    value = b"x" * size
    produce = producer.produce
    try:
        start = time.perf_counter()
        for _ in range(count):
            while True:
                try:
                    produce(topic, value, None, -1, counter)
                    break
                except BufferError:  # the poll thread makes room
                    time.sleep(0.0005)
        while counter.delivered + counter.failed < count:
            time.sleep(0.0005)
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        thread.join()
    assert counter.failed == 0
    return result(count, seconds)


def _raw_buffered(
    bootstrap: str, topic: str, count: int, size: int, on_delivery: Any
) -> dict[str, Any]:
    """Raw: produce `count` messages (buffered by librdkafka), then flush()."""
    import confluent_kafka

    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            **PROPS,
            "queue.buffering.max.messages": count * 2,
        }
    )
    producer.list_topics(topic, timeout=10)  # metadata first: not part of the measurement
    value = b"x" * size
    produce = producer.produce
    start = time.perf_counter()
    if on_delivery is None:
        for _ in range(count):
            produce(topic, value)
    else:
        for _ in range(count):
            produce(topic, value, None, -1, on_delivery)
    mid = time.perf_counter()
    left = producer.flush(60)
    end = time.perf_counter()
    assert left == 0, left
    return {
        "count": count,
        "accept_seconds": mid - start,
        "drain_seconds": end - mid,
        "total_seconds": end - start,
        "rss_peak_mb": rss_peak_mb(),
    }


def raw_flush(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """Raw produce loop, no callbacks, then flush()."""
    return _raw_buffered(bootstrap, topic, count, size, None)


def raw_dr_flush(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """Raw produce loop with a delivery callback per message (served by flush())."""
    delivered = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered[0] += 1

    out = _raw_buffered(bootstrap, topic, count, size, on_delivery)
    assert delivered[0] == count, delivered
    return out


def aio(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """confluent_kafka.aio.AIOProducer: await produce() per message, then flush."""
    from confluent_kafka.aio import AIOProducer

    async def main() -> dict[str, Any]:
        producer = AIOProducer({"bootstrap.servers": bootstrap, **PROPS})
        value = b"x" * size
        start = time.perf_counter()
        futures = [await producer.produce(topic, value) for _ in range(count)]
        await producer.flush()
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - start
        await producer.close()
        return result(count, seconds)

    return asyncio.run(main())


def aiokafka(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """aiokafka: await send() per message (returns a future), then flush and stop."""
    from aiokafka import AIOKafkaProducer

    async def main() -> dict[str, Any]:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=5, enable_idempotence=False
        )
        await producer.start()
        value = b"x" * size
        start = time.perf_counter()
        futures = [await producer.send(topic, value) for _ in range(count)]
        await producer.flush()
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - start
        await producer.stop()
        return result(count, seconds)

    return asyncio.run(main())


# ---- trio_producer ----------------------------------------------------------------------------


def trio_send(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`await producer.send()` per message; the clock stops when the block has exited."""
    import trio

    from trio_producer import open_producer

    value = b"x" * size
    marks: dict[int, float] = {}

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(bootstrap_servers=bootstrap, librdkafka=PROPS) as producer:
            send = producer.send
            for i in range(count):
                await send(topic, value)
                if i % 100_000 == 0:
                    marks[i] = rss_now_mb()
        return time.perf_counter() - start

    seconds = trio.run(main)
    return result(count, seconds, rss_marks_mb=marks)


def trio_nowait(
    bootstrap: str,
    topic: str,
    count: int,
    size: int,
    delivery_reports: Literal["all", "errors"] = "all",
) -> dict[str, Any]:
    """The bulk path: `send_nowait` in a loop, `await send()` only when the queue is full."""
    import trio

    from trio_producer import open_producer

    value = b"x" * size

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap,
            librdkafka=PROPS,
            delivery_reports=delivery_reports,
        ) as producer:
            send_nowait = producer.send_nowait
            for _ in range(count):
                try:
                    send_nowait(topic, value)
                except trio.WouldBlock:
                    await producer.send(topic, value)
        return time.perf_counter() - start

    return result(count, trio.run(main))


def trio_many(
    bootstrap: str,
    topic: str,
    count: int,
    size: int,
    delivery_reports: Literal["all", "errors"] = "all",
) -> dict[str, Any]:
    """The async bulk path: one `await send_many()` for all of it."""
    import itertools

    import trio

    from trio_producer import open_producer

    value = b"x" * size

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap,
            librdkafka=PROPS,
            delivery_reports=delivery_reports,
        ) as producer:
            await producer.send_many(topic, itertools.repeat(value, count))
        return time.perf_counter() - start

    return result(count, trio.run(main))


def trio_nowait_errors(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`trio_nowait` with `delivery_reports="errors"` (no callback per delivered message)."""
    return trio_nowait(bootstrap, topic, count, size, "errors")


def trio_many_errors(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`trio_many` with `delivery_reports="errors"` (no callback per delivered message)."""
    return trio_many(bootstrap, topic, count, size, "errors")


def trio_send_and_wait(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """Latency: sequential `send_and_wait`, linger 0 (no batching to wait for)."""
    import trio

    from trio_producer import open_producer

    value = b"x" * size
    n = min(count, 2_000)

    async def main() -> list[float]:
        lat = []
        async with open_producer(
            bootstrap_servers=bootstrap, linger=0, librdkafka={**PROPS, "linger.ms": 0}
        ) as producer:
            for _ in range(n):
                t = time.perf_counter()
                await producer.send_and_wait(topic, value)
                lat.append(time.perf_counter() - t)
        return lat

    lat = sorted(trio.run(main))
    return {
        "count": n,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "rate": n / sum(lat),
        "rss_peak_mb": rss_peak_mb(),
    }


def trio_drain(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`count` send_nowait() calls (buffered: they all wait in our queue), then leave the block."""
    import trio

    from trio_producer import open_producer

    value = b"x" * size

    async def main() -> tuple[float, float, float]:
        async with open_producer(
            bootstrap_servers=bootstrap, queue_capacity=count + 1, librdkafka=PROPS
        ) as producer:
            await producer.send(topic, b"warm-up")  # metadata first, like raw_flush
            await producer.flush()
            start = time.perf_counter()
            for _ in range(count):
                producer.send_nowait(topic, value)
            mid = time.perf_counter()
        end = time.perf_counter()
        return start, mid, end

    start, mid, end = trio.run(main)
    return {
        "count": count,
        "accept_seconds": mid - start,
        "drain_seconds": end - mid,
        "total_seconds": end - start,
        "rss_peak_mb": rss_peak_mb(),
    }


def trio_idle(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """CPU used by an open, idle producer over a few seconds (percent of one core)."""
    import trio

    from trio_producer import open_producer

    seconds = 5.0

    async def main() -> float:
        async with open_producer(bootstrap_servers=bootstrap, librdkafka=PROPS) as producer:
            await producer.send_and_wait(topic, b"warm-up")
            cpu = time.process_time()
            await trio.sleep(seconds)
            return time.process_time() - cpu

    cpu = trio.run(main)
    return {"idle_cpu_percent": 100 * cpu / seconds, "rss_peak_mb": rss_peak_mb()}


# ---- the durable spool --------------------------------------------------------------------


def _spool_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="trio-producer-bench-spool-")


def trio_send_spool(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`await send()` per message with the durable spool on (no fsync in the send path)."""
    import shutil

    import trio

    from trio_producer import open_producer

    value = b"x" * size
    spool = _spool_dir()

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap, librdkafka=PROPS, spool_path=spool, spool_sync="never"
        ) as producer:
            send = producer.send
            for _ in range(count):
                await send(topic, value)
        return time.perf_counter() - start

    try:
        return result(count, trio.run(main))
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def trio_many_spool(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """One `await send_many()` with the durable spool on (no fsync in the send path)."""
    import itertools
    import shutil

    import trio

    from trio_producer import open_producer

    value = b"x" * size
    spool = _spool_dir()

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap, librdkafka=PROPS, spool_path=spool, spool_sync="never"
        ) as producer:
            await producer.send_many(topic, itertools.repeat(value, count))
        return time.perf_counter() - start

    try:
        return result(count, trio.run(main))
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def trio_send_spool_always(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """spool_sync="always": 100 tasks `await send()` (group commit: one fsync serves every
    send waiting at that moment); msg/s and the p99 latency of one send."""
    import shutil

    import trio

    from trio_producer import open_producer

    value = b"x" * size
    spool = _spool_dir()
    n = min(count, 20_000)
    each = n // FAN_IN_TASKS
    latencies: list[float] = []

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap, librdkafka=PROPS, spool_path=spool, spool_sync="always"
        ) as producer:

            async def task() -> None:
                for _ in range(each):
                    t = time.perf_counter()
                    await producer.send(topic, value)
                    latencies.append(time.perf_counter() - t)

            async with trio.open_nursery() as nursery:
                for _ in range(FAN_IN_TASKS):
                    nursery.start_soon(task)
        return time.perf_counter() - start

    try:
        seconds = trio.run(main)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    lat = sorted(latencies)
    return result(
        each * FAN_IN_TASKS,
        seconds,
        p50_ms=lat[len(lat) // 2] * 1000,
        p99_ms=lat[int(len(lat) * 0.99)] * 1000,
    )


def trio_spool_recovery(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """Recovery: `count` messages left in a spool by a producer that could not reach its
    broker; a new producer opens the spool and sends them: messages re-produced per
    second (open to everything confirmed)."""
    import shutil
    import socket

    import trio

    from trio_producer import UndeliveredMessagesError, open_producer

    value = b"x" * size
    spool = _spool_dir()

    async def leave() -> None:
        with socket.socket() as dead:
            dead.bind(("127.0.0.1", 0))
            dead.listen(16)
            try:
                async with open_producer(
                    bootstrap_servers=f"127.0.0.1:{dead.getsockname()[1]}",
                    spool_path=spool,
                    spool_sync="never",
                    close_timeout=0,
                ) as producer:
                    await producer.send_many(topic, [value] * count)
            except UndeliveredMessagesError:
                pass  # kept in the spool: that is the point

    async def recover() -> float:
        start = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap, librdkafka=PROPS, spool_path=spool
        ) as producer:
            await producer.flush()
            assert producer.statistics().recovered == count
        return time.perf_counter() - start

    try:
        trio.run(leave)
        return result(count, trio.run(recover))
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# ---- exactly once (#25): the spool's position committed with its messages ----------------

#: Exactly once needs an idempotent producer, and librdkafka allows idempotence only with
#: ``acks=all``: the exactly-once cases, and the at-least-once spool measured beside them
#: with the same settings (``*_spool_idem``), use ``PROPS`` with both. On the one Tansu
#: broker ``acks=all`` waits for the same one write as ``acks=1``.
EO_PROPS: dict[str, Any] = {**PROPS, "enable.idempotence": True, "acks": "all"}
#: The commit interval of the exactly-once cases of the headline run (the default).
COMMIT_INTERVAL = 0.1


def spool_fields(topic: str, commit_interval: float | None) -> dict[str, Any]:
    """``open_producer`` fields of a spool with ``EO_PROPS`` (no fsync in the send path):
    at least once (``commit_interval`` None), or exactly once with that commit interval
    and a ``transactional.id`` of its own (one per topic: every run starts fresh)."""
    fields: dict[str, Any] = {"spool_sync": "never", "librdkafka": EO_PROPS}
    if commit_interval is not None:
        fields |= {
            "exactly_once": True,
            "commit_interval": commit_interval,
            "librdkafka": {**EO_PROPS, "transactional.id": f"bench-{topic}"},
        }
    return fields


def transactions_of(producer: Any) -> int | None:
    """Transactions the exactly-once committer committed (an internal counter; None
    where there is none)."""
    committer = getattr(getattr(producer, "_intake", None), "_committer", None)
    count = getattr(committer, "transactions", None)
    return count if isinstance(count, int) else None


def _spool_run(
    bootstrap: str,
    topic: str,
    count: int,
    size: int,
    commit_interval: float | None,
    many: bool,
) -> dict[str, Any]:
    """``count`` messages through a spool (``spool_fields``): ``await send()`` per
    message, or one ``send_many``, then ``flush()`` (the last commit). The clock starts
    after the open and one confirmed warm-up message, as in the sweeps: an idempotent
    producer's first message waits about 1 s on Tansu for its producer id, and the
    exactly-once open (the progress topic, ``init_transactions``, the position read
    back) is a cost per producer, not per message: ``open_seconds`` has both."""
    import itertools
    import shutil

    import trio

    from trio_producer import open_producer

    value = b"x" * size
    spool = _spool_dir()
    fields = spool_fields(topic, commit_interval)
    figures: dict[str, Any] = {}

    async def main() -> float:
        opened = time.perf_counter()
        async with open_producer(
            bootstrap_servers=bootstrap, spool_path=spool, **fields
        ) as producer:
            await producer.send_and_wait(topic, b"warm-up")
            before = transactions_of(producer)
            start = time.perf_counter()
            figures["open_seconds"] = start - opened
            if many:
                await producer.send_many(topic, itertools.repeat(value, count))
            else:
                send = producer.send
                for _ in range(count):
                    await send(topic, value)
            await producer.flush()
            seconds = time.perf_counter() - start
            after = transactions_of(producer)
            if before is not None and after is not None:
                figures["transactions"] = after - before
        return seconds

    try:
        seconds = trio.run(main)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return result(count, seconds, commit_interval=commit_interval, **figures)


def trio_send_eo(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`await send()` per message, ``exactly_once=True`` (``COMMIT_INTERVAL``)."""
    return _spool_run(bootstrap, topic, count, size, COMMIT_INTERVAL, many=False)


def trio_many_eo(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """One `await send_many()`, ``exactly_once=True`` (``COMMIT_INTERVAL``)."""
    return _spool_run(bootstrap, topic, count, size, COMMIT_INTERVAL, many=True)


def trio_send_spool_idem(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`trio_send_spool` with ``EO_PROPS`` (idempotent, acks=all): the at-least-once
    spool with the exactly-once cases' settings."""
    return _spool_run(bootstrap, topic, count, size, None, many=False)


def trio_many_spool_idem(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """`trio_many_spool` with ``EO_PROPS`` (idempotent, acks=all)."""
    return _spool_run(bootstrap, topic, count, size, None, many=True)


# ---- fan-in: many tasks sending at once ---------------------------------------------------

FAN_IN_TASKS = 100


def trio_fanin(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """100 Trio tasks, each `await producer.send()` count/100 messages."""
    import trio

    from trio_producer import open_producer

    value = b"x" * size
    each = count // FAN_IN_TASKS

    async def main() -> float:
        start = time.perf_counter()
        async with open_producer(bootstrap_servers=bootstrap, librdkafka=PROPS) as producer:
            send = producer.send

            async def task() -> None:
                for _ in range(each):
                    await send(topic, value)

            async with trio.open_nursery() as nursery:
                for _ in range(FAN_IN_TASKS):
                    nursery.start_soon(task)
        return time.perf_counter() - start

    return result(each * FAN_IN_TASKS, trio.run(main))


def aio_fanin(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """100 asyncio tasks on one confluent AIOProducer, each awaiting produce()."""
    from confluent_kafka.aio import AIOProducer

    each = count // FAN_IN_TASKS

    async def main() -> dict[str, Any]:
        producer = AIOProducer({"bootstrap.servers": bootstrap, **PROPS})
        value = b"x" * size
        start = time.perf_counter()

        async def task() -> list[Any]:
            return [await producer.produce(topic, value) for _ in range(each)]

        batches = await asyncio.gather(*(task() for _ in range(FAN_IN_TASKS)))
        await producer.flush()
        await asyncio.gather(*(f for batch in batches for f in batch))
        seconds = time.perf_counter() - start
        await producer.close()
        return result(each * FAN_IN_TASKS, seconds)

    return asyncio.run(main())


def aiokafka_fanin(bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    """100 asyncio tasks on one aiokafka producer, each awaiting send()."""
    from aiokafka import AIOKafkaProducer

    each = count // FAN_IN_TASKS

    async def main() -> dict[str, Any]:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=5, enable_idempotence=False
        )
        await producer.start()
        value = b"x" * size
        start = time.perf_counter()

        async def task() -> list[Any]:
            return [await producer.send(topic, value) for _ in range(each)]

        batches = await asyncio.gather(*(task() for _ in range(FAN_IN_TASKS)))
        await producer.flush()
        await asyncio.gather(*(f for batch in batches for f in batch))
        seconds = time.perf_counter() - start
        await producer.stop()
        return result(each * FAN_IN_TASKS, seconds)

    return asyncio.run(main())


CLIENTS: dict[str, Callable[[str, str, int, int], dict[str, Any]]] = {
    "trio_send_spool": trio_send_spool,
    "trio_many_spool": trio_many_spool,
    "trio_send_spool_always": trio_send_spool_always,
    "trio_spool_recovery": trio_spool_recovery,
    "trio_send_eo": trio_send_eo,
    "trio_many_eo": trio_many_eo,
    "trio_send_spool_idem": trio_send_spool_idem,
    "trio_many_spool_idem": trio_many_spool_idem,
    "trio_fanin": trio_fanin,
    "aio_fanin": aio_fanin,
    "aiokafka_fanin": aiokafka_fanin,
    "raw": raw,
    "raw_dr": raw_dr,
    "trio_many": trio_many,
    "aio": aio,
    "aiokafka": aiokafka,
    "trio_send": trio_send,
    "trio_nowait": trio_nowait,
    "trio_nowait_errors": trio_nowait_errors,
    "trio_many_errors": trio_many_errors,
    "trio_send_and_wait": trio_send_and_wait,
    "trio_drain": trio_drain,
    "raw_flush": raw_flush,
    "raw_dr_flush": raw_dr_flush,
    "trio_idle": trio_idle,
}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    out = CLIENTS[name](args["bootstrap"], args["topic"], args["count"], args["size"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
