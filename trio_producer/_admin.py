"""Admin and consumer helpers: the CLI (``consume``, ``demo``), tests and benchmarks.

Not part of the producer: they create and delete topics and read a topic back with a
real consumer (explicit partition assignment, so no consumer-group join is needed).
Beside ``_client.py``, the one module that imports ``confluent_kafka``; it converts
what it reads into our own records. ``trio_producer.testing`` re-exports the helpers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import attrs
import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from ._client import librdkafka_logger, normalize_headers, record_timestamp
from ._message import ConsumedRecord

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

logger = logging.getLogger("trio_producer")


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


def _record(m: Any, topic: str) -> ConsumedRecord:
    return ConsumedRecord(
        topic=m.topic() or topic,
        partition=m.partition() or 0,
        offset=m.offset() or 0,
        key=m.key(),
        value=m.value(),
        headers=normalize_headers(m.headers()),
        timestamp=record_timestamp(m),
    )


#: librdkafka's RD_KAFKA_OFFSET_TAIL_BASE: an offset of ``base - N`` is N before the end.
_OFFSET_TAIL_BASE = -2000


class ConsumeError(RuntimeError):
    """The consumer could not read: librdkafka's error (an unknown topic or partition,
    an authorization failure, ...)."""


@attrs.frozen
class PartitionEnd:
    """The consumer reached the end of a partition (``enable.partition.eof``)."""

    topic: str
    partition: int
    offset: int


#: Where a partition is read from: ``"beginning"``, ``"end"``, an offset ``N >= 0``, or
#: ``-N``: N records before the end (as kcat's ``-o``).
StartAt = Literal["beginning", "end"] | int


class PartitionConsumer:
    """A consumer with explicit partition assignment (no group join, no commits), for
    ``trio-producer consume``. Every method blocks: call them from one worker thread.

    Args:
        bootstrap_servers: The cluster.
        properties: Other librdkafka properties (``-X``), applied last.
        isolation_level: ``read_uncommitted`` or ``read_committed``.
        partition_eof: Report the end of each partition (:class:`PartitionEnd`).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        properties: Mapping[str, str],
        *,
        isolation_level: str = "read_uncommitted",
        partition_eof: bool = False,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "trio-producer-consume",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": isolation_level,
            "enable.partition.eof": partition_eof,
            "logger": librdkafka_logger,
        }
        conf.update(properties)
        try:
            self._consumer = confluent_kafka.Consumer(conf)
        except KafkaException as exc:
            raise ConsumeError(
                f"librdkafka rejected the configuration: {exc.args[0].str()}"
            ) from None

    def assign(
        self, topic: str, partition: int | None, start: StartAt, *, timeout: float = 30.0
    ) -> list[int]:
        """Read ``topic`` (one partition, or all when ``None``) from ``start``; return
        the partitions assigned."""
        metadata = self._consumer.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            raise ConsumeError(f"topic {topic!r}: {metadata.error.str()}")
        partitions = sorted(metadata.partitions)
        if partition is not None:
            if partition not in metadata.partitions:
                raise ConsumeError(
                    f"topic {topic!r} has no partition {partition} (it has {len(partitions)})"
                )
            partitions = [partition]
        assignment = [
            confluent_kafka.TopicPartition(topic, p, self._offset(topic, p, start, timeout))
            for p in partitions
        ]
        self._consumer.assign(assignment)
        return partitions

    def _offset(self, topic: str, partition: int, start: StartAt, timeout: float) -> int:
        if start == "beginning":
            return confluent_kafka.OFFSET_BEGINNING
        if start == "end":
            return confluent_kafka.OFFSET_END
        if start >= 0:
            return start
        # librdkafka's "N before the end" (RD_KAFKA_OFFSET_TAIL), as kcat's -o -N
        return _OFFSET_TAIL_BASE + start

    def poll(
        self, max_records: int, timeout: float, *, keep_going: bool = False
    ) -> list[ConsumedRecord | PartitionEnd]:
        """What arrived within ``timeout`` seconds (at most ``max_records``), in order.

        An error raises :class:`ConsumeError`; with ``keep_going`` only a fatal one does
        (the others are logged), like kcat's ``-E``."""
        out: list[ConsumedRecord | PartitionEnd] = []
        for m in self._consumer.consume(max_records, timeout):
            error = m.error()
            if error is None:
                out.append(_record(m, ""))
            elif error.code() == KafkaError._PARTITION_EOF:
                out.append(PartitionEnd(m.topic() or "", m.partition() or 0, m.offset() or 0))
            elif error.fatal() or not keep_going:
                raise ConsumeError(f"{error.name()}: {error.str()}")
            else:
                logger.warning("consumer error: %s: %s", error.name(), error.str())
        return out

    def close(self) -> None:
        self._consumer.close()


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
                out.append(_record(m, topic))
        return out
    finally:
        consumer.close()


# ---- the exactly-once spool's progress topic (used by the producer itself) ----------------


def ensure_compacted_topic(conf: Mapping[str, Any], topic: str, *, timeout: float) -> None:
    """Create ``topic`` with one partition and ``cleanup.policy=compact`` unless it exists
    (its replication factor: the number of brokers, at most 3). Blocking.

    ``conf``: the client properties to connect with (the producer's, without its
    producer-only ones).
    """
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({**conf, "logger": librdkafka_logger})  # type: ignore[dict-item]
    metadata = admin.list_topics(timeout=timeout)
    if topic in metadata.topics and metadata.topics[topic].error is None:
        return
    replicas = max(1, min(3, len(metadata.brokers)))
    new = NewTopic(
        topic, num_partitions=1, replication_factor=replicas, config={"cleanup.policy": "compact"}
    )
    future = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[topic]
    try:
        future.result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise ConsumeError(
                f"could not create the progress topic {topic!r}: {exc.args[0].str()}"
            ) from None


#: After this long, a read of the progress topic that waits for other producers' open
#: transactions says so (a WARNING).
SLOW_READ = 2.0


def read_last_committed(
    conf: Mapping[str, Any], topic: str, key: bytes, *, timeout: float
) -> bytes | None:
    """The value of the newest committed record with ``key`` in partition 0 of ``topic``,
    or ``None`` when there is none. Blocking, bounded by ``timeout``.

    Reads with ``isolation.level=read_committed`` up to the end the partition had when
    the call began -- its high watermark, which a read_uncommitted consumer reports (a
    read_committed one reports the last stable offset, which stops before the first
    open transaction). Records of other producers' transactions still open hold the read
    back until those end: commit, abort, or ``transaction.timeout.ms`` (after which the
    broker aborts the transaction of a producer that is gone).

    Raises:
        ConsumeError: librdkafka's error, or the end was not reached within ``timeout``.
    """
    partition = confluent_kafka.TopicPartition(topic, 0)
    watermarks = confluent_kafka.Consumer(
        {
            **conf,
            "group.id": "trio-producer-exactly-once",
            # (librdkafka's default is read_committed, whose end is the last stable offset)
            "isolation.level": "read_uncommitted",
            "logger": librdkafka_logger,
        }
    )
    try:
        low, high = watermarks.get_watermark_offsets(partition, timeout=timeout)
    finally:
        watermarks.close()
    if high <= low:
        return None
    consumer = confluent_kafka.Consumer(
        {
            **conf,
            "group.id": "trio-producer-exactly-once",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
            "logger": librdkafka_logger,
        }
    )
    try:
        started = time.monotonic()
        deadline = started + timeout
        said = False
        partition.offset = low
        consumer.assign([partition])
        last: bytes | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise ConsumeError(
                    f"the progress topic {topic!r} was not read to its end (offset {high}) "
                    f"within {timeout:.0f} s: a transaction of another producer holds it"
                )
            if not said and now - started > SLOW_READ:
                said = True
                logger.warning(
                    "reading the progress topic %r: waiting for an open transaction of "
                    "another producer to end (up to its transaction.timeout.ms, when that "
                    "producer is gone)",
                    topic,
                )
            for m in consumer.consume(1000, min(deadline - now, 0.05)):
                error = m.error()
                if error is None:
                    if m.key() == key:
                        last = m.value()
                elif error.code() == KafkaError._PARTITION_EOF:
                    if (m.offset() or 0) >= high:
                        return last
                else:
                    raise ConsumeError(f"reading the progress topic {topic!r}: {error.str()}")
    finally:
        consumer.close()
