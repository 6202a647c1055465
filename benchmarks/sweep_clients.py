"""One point of a sweep in its own process: ``python benchmarks/sweep_clients.py CLIENT JSON``.

Prints one JSON object on stdout. ``JSON`` is the point: ``bootstrap``, ``topic``, ``mode``
(``throughput``, ``memory``, ``latency``, ``soak`` or ``exactly_once``), ``count``,
``size``, ``tasks``, ``keyed``, ``compression`` and, for ``latency``, ``seconds`` per load
level; for ``exactly_once``, ``commit_interval``, ``wait_seconds`` and ``load_rate``.

With ``tasks``, the senders are long-lived: every task is started and waiting before the
clock starts, then each sends its share (``count / tasks``). ``spawn`` (true) is the older
measure: the tasks are started inside the clock, so spawning them is measured too.

Every client produces the same values (``payload(size)``: letters from a 16-letter
alphabet, so compression has something to do) with the same settings (``PROPS`` of
``clients.py``: no idempotence, ``acks=1``, 5 ms linger), and warms up with one confirmed
message before the clock starts: the connection and the metadata are not measured.

The clients: ``trio`` (``await producer.send()`` per message), ``trio_many`` (one
``await producer.send_many()``), ``aio`` (confluent's ``AIOProducer``, ``await produce()``),
``aiokafka`` (``await send()``), ``raw`` (a bare ``confluent_kafka.Producer`` loop and one
``flush()``) and ``raw_dr`` (the same with a delivery callback per message, served by a
poll thread).

The ``commit_interval`` sweep (mode ``exactly_once``) has clients of its own, each with a
spool and ``clients.EO_PROPS`` (idempotent, ``acks=all``): ``eo_send`` (``await send()``
per message), ``eo_many`` (one ``send_many``) and ``eo_wait`` (the latency of one
``send_and_wait`` at a time, alone and under a paced load); the point's
``commit_interval`` is None for the at-least-once spool (the reference).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import random
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from clients import PROPS, Counter, rss_now_mb, rss_peak_mb, spool_fields, transactions_of

if TYPE_CHECKING:
    from collections.abc import Callable

#: Keys for the keyed points: as many distinct keys as spread over 96 partitions evenly.
KEYS = [b"key-%05d" % i for i in range(4096)]
#: Latency: the load levels, as fractions of the client's own maximum rate.
LOAD_LEVELS = (0.1, 0.5, 0.9)


def payload(size: int) -> bytes:
    """``size`` bytes of letters from a 16-letter alphabet (about 2:1 compressible)."""
    return bytes(random.Random(size).choices(b"abcdefghijklmnop", k=size))


def librdkafka_props(p: dict[str, Any]) -> dict[str, Any]:
    props = {**PROPS, "compression.type": p["compression"]}
    if p["size"] > 500_000:  # librdkafka's default message.max.bytes is 1,000,000
        props["message.max.bytes"] = 2 * p["size"] + 65_536
    return props


def aiokafka_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    compression = None if p["compression"] == "none" else p["compression"]
    return {
        "bootstrap_servers": p["bootstrap"],
        "acks": 1,
        "linger_ms": 5,
        "enable_idempotence": False,
        "compression_type": compression,
        "max_request_size": max(1_048_576, 2 * p["size"] + 65_536),
    }


def keys_for(p: dict[str, Any], count: int) -> list[bytes | None]:
    """The key of each message: ``None`` unless the point is keyed."""
    if not p["keyed"]:
        return [None] * count
    return [KEYS[i % len(KEYS)] for i in range(count)]


def split(count: int, tasks: int) -> list[int]:
    """``count`` messages over ``tasks`` senders (as even as it goes)."""
    each, extra = divmod(count, tasks)
    return [each + (1 if i < extra else 0) for i in range(tasks)]


def figures(p: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    count = p["count"]
    return {
        "count": count,
        "seconds": seconds,
        "rate": count / seconds,
        "mb_per_s": count * p["size"] / seconds / 1e6,
        "rss_peak_mb": rss_peak_mb(),
        **extra,
    }


class Marks:
    """RSS every tenth of the run (the soak)."""

    def __init__(self, count: int) -> None:
        self.every = max(1, count // 10)
        self.mb: dict[str, float] = {}

    def __call__(self, i: int) -> None:
        if i % self.every == 0:
            self.mb[str(i)] = rss_now_mb()


# ---- throughput (and soak): count messages, clock from the first send to the last report ----


def trio_throughput(p: dict[str, Any], many: bool = False) -> dict[str, Any]:
    import trio

    from trio_producer import open_producer

    value = payload(p["size"])
    keys = keys_for(p, p["count"])
    topic = p["topic"]
    marks = Marks(p["count"])
    soak = p["mode"] == "soak"

    async def main() -> float:
        async with open_producer(
            bootstrap_servers=p["bootstrap"], librdkafka=librdkafka_props(p)
        ) as producer:
            await producer.send_and_wait(topic, b"warm-up")
            start = time.perf_counter()
            if many:
                if p["keyed"]:
                    await producer.send_many(topic, zip(keys, itertools.repeat(value)))
                else:
                    await producer.send_many(topic, itertools.repeat(value, p["count"]))
            elif p["tasks"] == 1:
                send = producer.send
                for i, key in enumerate(keys):
                    await send(topic, value, key=key)
                    if soak:
                        marks(i)
            else:
                send = producer.send
                gate, ready = trio.Event(), trio.Event()
                waiting = [0]

                async def task(first: int, n: int) -> None:
                    if not p.get("spawn"):
                        waiting[0] += 1
                        if waiting[0] == p["tasks"]:
                            ready.set()
                        await gate.wait()
                    for key in keys[first : first + n]:
                        await send(topic, value, key=key)

                async with trio.open_nursery() as nursery:
                    first = 0
                    for n in split(p["count"], p["tasks"]):
                        nursery.start_soon(task, first, n)
                        first += n
                    if not p.get("spawn"):  # every task started and waiting: go
                        await ready.wait()
                        start = time.perf_counter()
                        gate.set()
        return time.perf_counter() - start

    return figures(p, trio.run(main), rss_marks_mb=marks.mb)


def trio_many_throughput(p: dict[str, Any]) -> dict[str, Any]:
    return trio_throughput(p, many=True)


async def _asyncio_fan_out(
    p: dict[str, Any], keys: list[bytes | None], send: Callable[..., Any], start: float
) -> tuple[float, list[Any]]:
    """The asyncio peers' senders: ``keys`` split over ``p["tasks"]`` tasks, each awaiting
    ``send(key=key)`` per key. Long-lived tasks (not ``p["spawn"]``) all start and wait on
    one gate, and the clock restarts when they are let go. Returns the clock's start and
    what each ``send`` returned (the delivery futures), in order."""
    gate, ready = asyncio.Event(), asyncio.Event()
    waiting = [0]

    async def task(first: int, n: int) -> list[Any]:
        if not p.get("spawn"):
            waiting[0] += 1
            if waiting[0] == p["tasks"]:
                ready.set()
            await gate.wait()
        return [await send(key=key) for key in keys[first : first + n]]

    starts = list(itertools.accumulate(split(p["count"], p["tasks"]), initial=0))
    tasks = [asyncio.ensure_future(task(a, b - a)) for a, b in itertools.pairwise(starts)]
    if not p.get("spawn"):  # every task started and waiting: go
        await ready.wait()
        start = time.perf_counter()
        gate.set()
    batches = await asyncio.gather(*tasks)
    return start, [f for batch in batches for f in batch]


def aio_throughput(p: dict[str, Any]) -> dict[str, Any]:
    from confluent_kafka.aio import AIOProducer

    value = payload(p["size"])
    keys = keys_for(p, p["count"])
    topic = p["topic"]
    marks = Marks(p["count"])
    soak = p["mode"] == "soak"

    async def main() -> float:
        producer = AIOProducer({"bootstrap.servers": p["bootstrap"], **librdkafka_props(p)})
        warm_up = await producer.produce(topic, b"warm-up")
        await producer.flush()  # not its 1 s buffer_timeout
        await warm_up
        start = time.perf_counter()
        if soak:  # fire and forget: keep no futures
            for i, key in enumerate(keys):
                await producer.produce(topic, value, key=key)
                marks(i)
            await producer.flush()
        else:
            send = functools.partial(producer.produce, topic, value)
            start, futures = await _asyncio_fan_out(p, keys, send, start)
            await producer.flush()
            await asyncio.gather(*futures)
        seconds = time.perf_counter() - start
        await producer.close()
        return seconds

    return figures(p, asyncio.run(main()), rss_marks_mb=marks.mb)


def aiokafka_throughput(p: dict[str, Any]) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    value = payload(p["size"])
    keys = keys_for(p, p["count"])
    topic = p["topic"]
    marks = Marks(p["count"])
    soak = p["mode"] == "soak"

    async def main() -> float:
        producer = AIOKafkaProducer(**aiokafka_kwargs(p))
        await producer.start()
        await producer.send_and_wait(topic, b"warm-up")
        start = time.perf_counter()
        if soak:  # fire and forget: keep no futures
            for i, key in enumerate(keys):
                await producer.send(topic, value, key=key)
                marks(i)
            await producer.flush()
        else:
            send = functools.partial(producer.send, topic, value)
            start, futures = await _asyncio_fan_out(p, keys, send, start)
            await producer.flush()
            await asyncio.gather(*futures)
        seconds = time.perf_counter() - start
        await producer.stop()
        return seconds

    return figures(p, asyncio.run(main()), rss_marks_mb=marks.mb)


def _raw_producer(p: dict[str, Any], **extra: Any) -> Any:
    import confluent_kafka

    producer = confluent_kafka.Producer(
        {"bootstrap.servers": p["bootstrap"], **librdkafka_props(p), **extra}
    )
    producer.produce(p["topic"], b"warm-up")
    assert producer.flush(30) == 0
    return producer


def raw_throughput(p: dict[str, Any]) -> dict[str, Any]:
    producer = _raw_producer(p)
    value = payload(p["size"])
    keys = keys_for(p, p["count"])
    topic = p["topic"]
    marks = Marks(p["count"])
    soak = p["mode"] == "soak"
    produce = producer.produce
    start = time.perf_counter()
    for i, key in enumerate(keys):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
        if soak:
            marks(i)
    left = producer.flush(120)
    seconds = time.perf_counter() - start
    assert left == 0, left
    return figures(p, seconds, rss_marks_mb=marks.mb)


class Poller:
    """The poll thread of raw_dr: serves the delivery callbacks."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.producer.poll(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def raw_dr_throughput(p: dict[str, Any]) -> dict[str, Any]:
    producer = _raw_producer(p)
    counter = Counter()
    value = payload(p["size"])
    keys = keys_for(p, p["count"])
    topic = p["topic"]
    marks = Marks(p["count"])
    soak = p["mode"] == "soak"
    produce = producer.produce
    poller = Poller(producer)
    try:
        start = time.perf_counter()
        for i, key in enumerate(keys):
            while True:
                try:
                    produce(topic, value, key, -1, counter)
                    break
                except BufferError:  # the poll thread makes room
                    time.sleep(0.0005)
            if soak:
                marks(i)
        while counter.delivered + counter.failed < p["count"]:
            time.sleep(0.0005)
        seconds = time.perf_counter() - start
    finally:
        poller.close()
    assert counter.failed == 0
    return figures(p, seconds, rss_marks_mb=marks.mb)


# ---- memory: RSS per pending message, the broker unreachable --------------------------------


def dead_address() -> tuple[socket.socket, str]:
    """A listening socket that never answers: a broker that does not reply."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(16)
    return dead, f"127.0.0.1:{dead.getsockname()[1]}"


def distinct_values(p: dict[str, Any]) -> list[bytes]:
    """One value object per message, made before the first RSS reading: an application's
    messages each have their own value, which a client may keep (ours, AIOProducer) or
    copy (librdkafka)."""
    value = payload(p["size"])
    return [value[:-4] + i.to_bytes(4, "big") for i in range(p["count"])]


def memory_figures(count: int, before: float, after: float) -> dict[str, Any]:
    return {
        "count": count,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "bytes_per_message": (after - before) * 2**20 / count,
        "rss_peak_mb": rss_peak_mb(),
    }


def trio_memory(p: dict[str, Any]) -> dict[str, Any]:
    """Default limits except queue_capacity, raised to hold every message."""
    import trio

    from trio_producer import UndeliveredMessagesError, open_producer

    values = distinct_values(p)
    dead, address = dead_address()
    count = p["count"]
    out: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with open_producer(
                bootstrap_servers=address,
                queue_capacity=count + 1,
                close_timeout=0,
                librdkafka=librdkafka_props(p),
            ) as producer:
                await trio.sleep(p["settle"] / 2)
                before = rss_now_mb()
                send_nowait = producer.send_nowait
                topic = p["topic"]
                for value in values:
                    send_nowait(topic, value)
                await trio.sleep(p["settle"])  # the worker hands what it can to librdkafka
                out.update(memory_figures(count, before, rss_now_mb()))
        except UndeliveredMessagesError as exc:
            out["handed_back"] = len(exc.messages)

    with dead:
        trio.run(main)
    assert out["handed_back"] == count, out
    return out


def _raw_memory(p: dict[str, Any], on_delivery: Callable[..., None] | None) -> dict[str, Any]:
    import confluent_kafka

    dead, address = dead_address()
    count = p["count"]
    with dead:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": address,
                **librdkafka_props(p),
                "queue.buffering.max.messages": count + 1,
                "queue.buffering.max.kbytes": 2**31 - 1,
            }
        )
        values = distinct_values(p)
        topic = p["topic"]
        time.sleep(p["settle"] / 2)
        before = rss_now_mb()
        produce = producer.produce
        if on_delivery is None:
            for value in values:
                produce(topic, value)
        else:
            for value in values:
                produce(topic, value, None, -1, on_delivery)
        time.sleep(p["settle"])
        out = memory_figures(count, before, rss_now_mb())
        out["handed_back"] = len(producer)
        producer.purge()
        producer.flush(0)
    return out


def raw_memory(p: dict[str, Any]) -> dict[str, Any]:
    """queue.buffering.max.messages raised to hold every message."""
    return _raw_memory(p, None)


def raw_dr_memory(p: dict[str, Any]) -> dict[str, Any]:
    """As raw_memory, with a delivery callback per message."""
    return _raw_memory(p, Counter())


def aio_memory(p: dict[str, Any]) -> dict[str, Any]:
    """AIOProducer with queue.buffering.max.messages raised to hold every message."""
    from confluent_kafka.aio import AIOProducer

    dead, address = dead_address()
    count = p["count"]
    values = distinct_values(p)

    async def main() -> dict[str, Any]:
        producer = AIOProducer(
            {
                "bootstrap.servers": address,
                **librdkafka_props(p),
                "queue.buffering.max.messages": count + 1,
                "queue.buffering.max.kbytes": 2**31 - 1,
            }
        )
        await asyncio.sleep(p["settle"] / 2)
        before = rss_now_mb()
        topic = p["topic"]
        futures = [await producer.produce(topic, value) for value in values]
        await asyncio.sleep(p["settle"])
        out = memory_figures(count, before, rss_now_mb())
        out["handed_back"] = len(futures)
        return out

    with dead:
        out = asyncio.run(main())
    return out


# ---- latency under load: send_and_wait while a paced load runs -------------------------------


def latency_figures(
    levels: list[tuple[float, float, int, float, list[float]]], max_rate: float
) -> dict[str, Any]:
    out = []
    for fraction, target, sent, seconds, lat in levels:
        lat.sort()
        out.append(
            {
                "fraction": fraction,
                "target_rate": target,
                "rate": sent / seconds,
                "probes": len(lat),
                "p50_ms": lat[len(lat) // 2] * 1000,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
            }
        )
    return {"max_rate": max_rate, "levels": out, "rss_peak_mb": rss_peak_mb()}


def trio_latency(p: dict[str, Any]) -> dict[str, Any]:
    """The library's defaults (5 ms linger of ours, librdkafka's linger.ms 1) but acks=1."""
    import trio

    from trio_producer import open_producer

    value = payload(p["size"])
    topic = p["topic"]
    props = {**librdkafka_props(p)}
    del props["linger.ms"]

    async def main() -> tuple[float, list[Any]]:
        async with open_producer(bootstrap_servers=p["bootstrap"], librdkafka=props) as producer:
            send = producer.send
            await producer.send_and_wait(topic, b"warm-up")
            start = time.perf_counter()
            for _ in range(p["count"]):
                await send(topic, value)
            await producer.flush()
            max_rate = p["count"] / (time.perf_counter() - start)
            levels = []
            for fraction in LOAD_LEVELS:
                target = fraction * max_rate
                total = int(target * p["seconds"])
                lat: list[float] = []
                stop = [False]

                async def probe(lat: list[float] = lat, stop: list[bool] = stop) -> None:
                    while not stop[0]:
                        t = time.perf_counter()
                        await producer.send_and_wait(topic, value)
                        lat.append(time.perf_counter() - t)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(probe)
                    begin = time.perf_counter()
                    sent = 0
                    while sent < total:
                        due = min(total, int((time.perf_counter() - begin) * target) + 1)
                        while sent < due:
                            await send(topic, value)
                            sent += 1
                        ahead = sent / target - (time.perf_counter() - begin)
                        await trio.sleep(max(ahead, 0.0005))
                    seconds = time.perf_counter() - begin
                    stop[0] = True
                await producer.flush()
                levels.append((fraction, target, sent + len(lat), seconds, lat))
            return max_rate, levels

    max_rate, levels = trio.run(main)
    return latency_figures(levels, max_rate)


async def _asyncio_latency(
    p: dict[str, Any],
    send: Callable[[bytes], Any],
    send_and_wait: Callable[[bytes], Any],
    flush: Callable[[], Any],
) -> tuple[float, list[Any]]:
    value = payload(p["size"])
    await send_and_wait(b"warm-up")
    start = time.perf_counter()
    for _ in range(p["count"]):
        await send(value)
    await flush()
    max_rate = p["count"] / (time.perf_counter() - start)
    levels = []
    for fraction in LOAD_LEVELS:
        target = fraction * max_rate
        total = int(target * p["seconds"])
        lat: list[float] = []
        stop = [False]

        async def probe(lat: list[float] = lat, stop: list[bool] = stop) -> None:
            while not stop[0]:
                t = time.perf_counter()
                await send_and_wait(value)
                lat.append(time.perf_counter() - t)

        prober = asyncio.create_task(probe())
        begin = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - begin) * target) + 1)
            while sent < due:
                await send(value)
                sent += 1
            ahead = sent / target - (time.perf_counter() - begin)
            await asyncio.sleep(max(ahead, 0.0005))
        seconds = time.perf_counter() - begin
        stop[0] = True
        await prober
        await flush()
        levels.append((fraction, target, sent + len(lat), seconds, lat))
    return max_rate, levels


def aio_latency(p: dict[str, Any]) -> dict[str, Any]:
    from confluent_kafka.aio import AIOProducer

    topic = p["topic"]

    async def main() -> tuple[float, list[Any]]:
        producer = AIOProducer({"bootstrap.servers": p["bootstrap"], **librdkafka_props(p)})

        async def send(value: bytes) -> None:
            await producer.produce(topic, value)

        async def send_and_wait(value: bytes) -> None:
            await (await producer.produce(topic, value))

        try:
            return await _asyncio_latency(p, send, send_and_wait, producer.flush)
        finally:
            await producer.close()

    max_rate, levels = asyncio.run(main())
    return latency_figures(levels, max_rate)


def aiokafka_latency(p: dict[str, Any]) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    topic = p["topic"]

    async def main() -> tuple[float, list[Any]]:
        producer = AIOKafkaProducer(**aiokafka_kwargs(p))
        await producer.start()

        async def send(value: bytes) -> None:
            await producer.send(topic, value)

        async def send_and_wait(value: bytes) -> None:
            await producer.send_and_wait(topic, value)

        try:
            return await _asyncio_latency(p, send, send_and_wait, producer.flush)
        finally:
            await producer.stop()

    max_rate, levels = asyncio.run(main())
    return latency_figures(levels, max_rate)


def raw_dr_latency(p: dict[str, Any]) -> dict[str, Any]:
    """A paced produce loop with a counting callback; a probe thread produces one message
    at a time and waits for its callback (the poll thread serves both)."""
    producer = _raw_producer(p)
    counter = Counter()
    value = payload(p["size"])
    topic = p["topic"]
    produce = producer.produce
    poller = Poller(producer)

    def put(on_delivery: Any) -> None:
        while True:
            try:
                produce(topic, value, None, -1, on_delivery)
                return
            except BufferError:
                time.sleep(0.0005)

    def settle(expected: int) -> None:
        while counter.delivered + counter.failed < expected:
            time.sleep(0.0005)

    try:
        start = time.perf_counter()
        for _ in range(p["count"]):
            put(counter)
        settle(p["count"])
        max_rate = p["count"] / (time.perf_counter() - start)
        levels = []
        for fraction in LOAD_LEVELS:
            target = fraction * max_rate
            total = int(target * p["seconds"])
            lat: list[float] = []
            done = threading.Event()

            def probe(lat: list[float] = lat, done: threading.Event = done) -> None:
                while not done.is_set():
                    delivered = threading.Event()
                    t = time.perf_counter()
                    put(lambda err, msg, d=delivered: d.set())
                    delivered.wait()
                    lat.append(time.perf_counter() - t)

            prober = threading.Thread(target=probe)
            base = counter.delivered + counter.failed
            prober.start()
            begin = time.perf_counter()
            sent = 0
            while sent < total:
                due = min(total, int((time.perf_counter() - begin) * target) + 1)
                while sent < due:
                    put(counter)
                    sent += 1
                ahead = sent / target - (time.perf_counter() - begin)
                time.sleep(max(ahead, 0.0005))
            seconds = time.perf_counter() - begin
            done.set()
            prober.join()
            settle(base + total)
            levels.append((fraction, target, sent + len(lat), seconds, lat))
    finally:
        poller.close()
    assert counter.failed == 0
    return latency_figures(levels, max_rate)


# ---- exactly once: the commit interval ----------------------------------------------------
#
# The point's ``commit_interval``: None for the at-least-once spool (the reference),
# else ``exactly_once=True`` with it; both with ``clients.EO_PROPS`` (idempotent,
# acks=all) and a spool without fsync in the send path (``clients.spool_fields``).


def _eo_producer(p: dict[str, Any], spool: str) -> Any:
    from trio_producer import open_producer

    fields = spool_fields(p["topic"], p["commit_interval"])
    return open_producer(bootstrap_servers=p["bootstrap"], spool_path=spool, **fields)


def _eo_throughput(p: dict[str, Any], many: bool) -> dict[str, Any]:
    """Warm up (one ``send_and_wait``), then ``count`` messages (``await send()`` each,
    or one ``send_many``) and a ``flush()``: the clock stops when the last commit is in."""
    import shutil
    import tempfile

    import trio

    value = payload(p["size"])
    topic = p["topic"]
    spool = tempfile.mkdtemp(prefix="trio-producer-bench-spool-")
    transactions: list[int | None] = []

    async def main() -> float:
        async with _eo_producer(p, spool) as producer:
            await producer.send_and_wait(topic, b"warm-up")
            before = transactions_of(producer)
            start = time.perf_counter()
            if many:
                await producer.send_many(topic, itertools.repeat(value, p["count"]))
            else:
                send = producer.send
                for _ in range(p["count"]):
                    await send(topic, value)
            await producer.flush()
            seconds = time.perf_counter() - start
            after = transactions_of(producer)
            transactions.append(None if before is None or after is None else after - before)
        return seconds

    try:
        seconds = trio.run(main)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    extra = {} if transactions[0] is None else {"transactions": transactions[0]}
    return figures(p, seconds, **extra)


def eo_send(p: dict[str, Any]) -> dict[str, Any]:
    return _eo_throughput(p, many=False)


def eo_many(p: dict[str, Any]) -> dict[str, Any]:
    return _eo_throughput(p, many=True)


def eo_wait(p: dict[str, Any]) -> dict[str, Any]:
    """The latency of one ``send_and_wait``: sequential, alone for ``wait_seconds``;
    then the same while a task sends ``load_rate`` msg/s (paced ``await send()``)."""
    import shutil
    import tempfile

    import trio

    value = payload(p["size"])
    topic = p["topic"]
    spool = tempfile.mkdtemp(prefix="trio-producer-bench-spool-")

    async def probe(producer: Any, lat: list[float]) -> None:
        deadline = time.perf_counter() + p["wait_seconds"]
        while time.perf_counter() < deadline or len(lat) < 5:
            t = time.perf_counter()
            await producer.send_and_wait(topic, value)
            lat.append(time.perf_counter() - t)

    async def load(producer: Any) -> None:
        rate, tick = p["load_rate"], 0.01
        begin, sent = time.perf_counter(), 0
        while True:
            due = int((time.perf_counter() - begin) * rate) + 1
            while sent < due:
                await producer.send(topic, value)
                sent += 1
            await trio.sleep(tick)

    async def main() -> tuple[list[float], list[float]]:
        alone: list[float] = []
        loaded: list[float] = []
        async with _eo_producer(p, spool) as producer:
            await producer.send_and_wait(topic, b"warm-up")
            await probe(producer, alone)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load, producer)
                await trio.sleep(0.2)  # the load is on
                await probe(producer, loaded)
                nursery.cancel_scope.cancel()
        return alone, loaded

    try:
        alone, loaded = trio.run(main)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    out: dict[str, Any] = {"rss_peak_mb": rss_peak_mb(), "load_rate": p["load_rate"]}
    for name, lat in (("alone", alone), ("loaded", loaded)):
        lat.sort()
        out[f"{name}_probes"] = len(lat)
        out[f"{name}_p50_ms"] = lat[len(lat) // 2] * 1000
        out[f"{name}_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    return out


CLIENTS: dict[str, dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "trio": {
        "throughput": trio_throughput,
        "soak": trio_throughput,
        "memory": trio_memory,
        "latency": trio_latency,
    },
    "trio_many": {"throughput": trio_many_throughput},
    "aio": {
        "throughput": aio_throughput,
        "soak": aio_throughput,
        "memory": aio_memory,
        "latency": aio_latency,
    },
    "aiokafka": {
        "throughput": aiokafka_throughput,
        "soak": aiokafka_throughput,
        "latency": aiokafka_latency,
    },
    "raw": {"throughput": raw_throughput, "soak": raw_throughput, "memory": raw_memory},
    "raw_dr": {
        "throughput": raw_dr_throughput,
        "soak": raw_dr_throughput,
        "memory": raw_dr_memory,
        "latency": raw_dr_latency,
    },
    "eo_send": {"exactly_once": eo_send},
    "eo_many": {"exactly_once": eo_many},
    "eo_wait": {"exactly_once": eo_wait},
}


def main() -> None:
    name, point = sys.argv[1], json.loads(sys.argv[2])
    out = CLIENTS[name][point["mode"]](point)
    print(json.dumps(out), flush=True)
    # Some peers take long to close against an unreachable broker: the figures are out.
    os._exit(0)


if __name__ == "__main__":
    main()
