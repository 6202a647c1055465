"""``exactly_once=True`` as an application sees it: sends, ``send_and_wait``, ``flush``,
statistics, a second run on the same spool, what is refused, the CLI.

These run on the embedded Tansu broker (which runs the transactions but does not
implement read_committed) and on Apache Kafka, where the read-back is read_committed.
The crash tests (kill -9 at random and at every step of the commit protocol) are in
test_exactly_once_spool.py, on Apache Kafka.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio

from trio_producer import ConfigError, open_producer
from trio_producer.testing import consume_all

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.broker

BROKER_KIND = os.environ.get("TRIO_PRODUCER_TEST_BROKER_KIND", "tansu")
CLI = [sys.executable, "-m", "trio_producer"]


def txn_id(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"


async def read(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes]]:
    records = await trio.to_thread.run_sync(
        partial(
            consume_all,
            bootstrap,
            topic,
            expected=expected,
            idle_timeout=2.0,
            isolation_level="read_committed",
        )
    )
    return [(r.key, r.value or b"") for r in records]


def per_key(records: list[tuple[bytes | None, bytes]]) -> dict[bytes | None, list[bytes]]:
    out: dict[bytes | None, list[bytes]] = defaultdict(list)
    for key, value in records:
        out[key].append(value)
    return dict(out)


async def test_every_send_kind_is_committed_once_in_order(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    tid = txn_id("eo-api")
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        spool_path=str(tmp_path),
        exactly_once=True,
        commit_interval=0.05,
        librdkafka={"transactional.id": tid},
    ) as producer:
        for i in range(300):
            await producer.send(kafka_topic, b"s%d" % i, key=b"k%d" % (i % 3))
        for i in range(50):
            producer.send_nowait(kafka_topic, b"n%d" % i, key=b"k0")
        accepted = await producer.send_many(kafka_topic, [(b"k1", b"m%d" % i) for i in range(500)])
        metadata = await producer.send_and_wait(kafka_topic, b"w", key=b"k2")
        await producer.flush()
        stats = producer.statistics()
    assert accepted == 500
    assert metadata.topic == kafka_topic
    assert metadata.offset >= 0
    assert (stats.delivered, stats.failed, stats.queued, stats.in_flight) == (851, 0, 0, 0)
    assert stats.spooled == 0  # committed: out of the spool
    records = await read(kafka_bootstrap, kafka_topic, 851)
    assert len(records) == 851
    keys = per_key(records)
    assert keys[b"k0"] == [b"s%d" % i for i in range(0, 300, 3)] + [b"n%d" % i for i in range(50)]
    assert keys[b"k1"] == [b"s%d" % i for i in range(1, 300, 3)] + [b"m%d" % i for i in range(500)]
    assert keys[b"k2"] == [b"s%d" % i for i in range(2, 300, 3)] + [b"w"]


async def test_a_second_run_on_the_spool_sends_only_what_is_new(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    tid = txn_id("eo-rerun")
    for run in range(2):
        async with open_producer(
            bootstrap_servers=kafka_bootstrap,
            spool_path=str(tmp_path),
            exactly_once=True,
            librdkafka={"transactional.id": tid},
        ) as producer:
            for i in range(100):
                await producer.send(kafka_topic, b"r%d-%d" % (run, i))
            await producer.flush()
            stats = producer.statistics()
        assert (stats.recovered, stats.delivered) == (0, 100)
    values = [value for _, value in await read(kafka_bootstrap, kafka_topic, 200)]
    assert values == [b"r0-%d" % i for i in range(100)] + [b"r1-%d" % i for i in range(100)]
    assert (tmp_path / "ORIGIN").exists()


async def test_transaction_and_send_offsets_are_refused(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        spool_path=str(tmp_path),
        exactly_once=True,
        librdkafka={"transactional.id": txn_id("eo-refused")},
    ) as producer:
        with pytest.raises(ConfigError, match=r"^transaction\(\) is not available with "):
            async with producer.transaction():
                pass
        import confluent_kafka

        with pytest.raises(ConfigError, match=r"^send_offsets\(\) is not available with "):
            await producer.send_offsets([confluent_kafka.TopicPartition("t", 0, 1)], b"meta")
        await producer.send(kafka_topic, b"still fine")
    assert [v for _, v in await read(kafka_bootstrap, kafka_topic, 1)] == [b"still fine"]


async def test_a_spool_with_your_own_transactions_points_to_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="set exactly_once=True"):
        async with open_producer(
            bootstrap_servers=kafka_bootstrap,
            spool_path=str(tmp_path),
            librdkafka={"transactional.id": txn_id("eo-own")},
        ):
            pass


def test_the_cli_delivers_exactly_once_with_a_spool(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    tid = txn_id("eo-cli")
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--spool", str(tmp_path)]
    lines = b"".join(b"line %d\n" % i for i in range(1000))
    proc = subprocess.run(
        [*CLI, *args, "--exactly-once", "-X", f"transactional.id={tid}"],
        input=lines,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().splitlines()[-1] == (
        "sent=1000 delivered=1000 rejected=0 failed=0 undelivered=0"
    )
    records = consume_all(
        kafka_bootstrap, kafka_topic, expected=1000, isolation_level="read_committed"
    )
    assert [r.value for r in records] == [b"line %d" % i for i in range(1000)]
    refused = subprocess.run(
        [
            *CLI,
            "produce",
            "-b",
            kafka_bootstrap,
            "-t",
            kafka_topic,
            "--exactly-once",
            "-X",
            f"transactional.id={tid}",
        ],
        input=b"x\n",
        capture_output=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.decode().splitlines()[-1] == (
        "trio-producer: error: --exactly-once needs --spool DIR: the spool's positions are "
        "what each transaction commits"
    )
