"""Admin and consumer helpers: the CLI (``consume``, ``demo``), tests and benchmarks.

Not part of the producer: they create and delete topics and read a topic back with a
real consumer (explicit partition assignment, so no consumer-group join is needed).
Beside ``_client.py``, the one module that imports ``confluent_kafka``; it converts
what it reads into our own records. ``trio_producer.testing`` re-exports the helpers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from ._client import librdkafka_logger, normalize_headers, record_timestamp
from ._message import ConsumedRecord

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


def create_topics(
    bootstrap_servers: str, topics: Iterable[str], *, partitions: int = 1, timeout: float = 30.0
) -> None:
    """Create topics (an existing topic is fine)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for future in futures.values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def delete_topics(bootstrap_servers: str, topics: Iterable[str], *, timeout: float = 30.0) -> None:
    """Delete topics (a missing topic is fine)."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": librdkafka_logger}
    admin = AdminClient(conf)
    for future in admin.delete_topics(list(topics), operation_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def consume_all(
    bootstrap_servers: str,
    topic: str,
    *,
    partitions: Sequence[int] | None = None,
    expected: int | None = None,
    idle_timeout: float = 2.0,
    timeout: float = 60.0,
    isolation_level: str = "read_uncommitted",
) -> list[ConsumedRecord]:
    """Read a topic from the beginning by assigning partitions explicitly
    (all of its partitions when ``partitions`` is ``None``).

    Stops once ``expected`` records were read, or when nothing arrives for
    ``idle_timeout`` seconds, or after ``timeout`` seconds in all. Records come in
    the order they were read (offset order within each partition).
    """
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "trio-producer-readback",
            "enable.auto.commit": False,
            "isolation.level": isolation_level,
            "logger": librdkafka_logger,
        }
    )
    try:
        if partitions is None:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            partitions = sorted(metadata.partitions)
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in partitions
            ]
        )
        out: list[ConsumedRecord] = []
        start = last = time.monotonic()
        while time.monotonic() - start < timeout:
            if expected is not None and len(out) >= expected:
                break
            batch = consumer.consume(10_000, 0.2)
            now = time.monotonic()
            if not batch:
                if now - last > idle_timeout:
                    break
                continue
            last = now
            for m in batch:
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                out.append(
                    ConsumedRecord(
                        topic=m.topic() or topic,
                        partition=m.partition() or 0,
                        offset=m.offset() or 0,
                        key=m.key(),
                        value=m.value(),
                        headers=normalize_headers(m.headers()),
                        timestamp=record_timestamp(m),
                    )
                )
        return out
    finally:
        consumer.close()
