"""The only module that imports confluent_kafka: produce, poll, purge, close.

Everything librdkafka hands back (errors, delivery reports) is turned into this
library's own types here, so the rest of the package never sees a confluent object.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from ._config import is_secret
from ._exceptions import ConfigError, DeliveryError, TransactionError
from ._message import ConsumedRecord, KafkaErrorInfo, Message, RecordMetadata

if TYPE_CHECKING:
    from ._batch import Item
    from ._delivery import Epoch

logger = logging.getLogger("trio_producer")
librdkafka_logger = logging.getLogger("trio_producer.librdkafka")

#: Error for messages that were accepted but never reached librdkafka.
NOT_PRODUCED = KafkaErrorInfo(
    code=-10_000,
    name="_NOT_PRODUCED",
    reason="accepted, but never handed to librdkafka before the producer closed",
)

_TIMESTAMP_NOT_AVAILABLE = confluent_kafka.TIMESTAMP_NOT_AVAILABLE


def error_info(err: Any) -> KafkaErrorInfo:
    """Copy a confluent ``KafkaError`` into a :class:`KafkaErrorInfo`."""
    if isinstance(err, KafkaErrorInfo):
        return err
    if isinstance(err, KafkaException):
        err = err.args[0]
    if isinstance(err, KafkaError):
        return KafkaErrorInfo(
            code=err.code(),
            name=err.name(),
            reason=err.str(),
            retriable=bool(err.retriable()),
            fatal=bool(err.fatal()),
        )
    return KafkaErrorInfo(code=-1, name=type(err).__name__, reason=str(err))


def normalize_headers(headers: Any) -> list[tuple[str, bytes | None]] | None:
    """Headers as ``(name, bytes-or-None)`` pairs, the shape messages are handed back in."""
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in pairs]


def _timestamp(msg: Any) -> int | None:
    kind, value = msg.timestamp()
    return None if kind == _TIMESTAMP_NOT_AVAILABLE else int(value)


def failure_from_report(err: Any, msg: Any, tracked: Any) -> DeliveryError:
    """Build the DeliveryError for one failed delivery report or failed produce()."""
    headers = normalize_headers(tracked.headers) if tracked is not None else None
    if isinstance(msg, tuple):  # an Item that failed at produce() or never left us
        topic, value, key, _headers, partition, timestamp, _tracked = msg
        message = Message(
            topic=topic,
            value=value,
            key=key,
            headers=headers,
            partition=None if partition < 0 else partition,
            timestamp=timestamp or None,
        )
    else:
        partition = msg.partition()
        message = Message(
            topic=msg.topic(),
            value=msg.value(),
            key=msg.key(),
            headers=headers,
            partition=None if partition is None or partition < 0 else partition,
            timestamp=_timestamp(msg),
        )
    return DeliveryError(message, error_info(err))


def safe_failure(err: Any, msg: Any, tracked: Any) -> DeliveryError:
    """:func:`failure_from_report` that cannot fail: one odd report must never stop the
    delivery task (which would strand every other message)."""
    try:
        return failure_from_report(err, msg, tracked)
    except Exception as exc:  # pragma: no cover - a bug; the message is still handed back
        logger.exception("could not convert a delivery report; handing back what is known")
        fields = msg if isinstance(msg, tuple) else ()
        message = Message(
            topic=str(fields[0]) if fields else "<unknown>",
            value=fields[1] if fields and isinstance(fields[1], bytes) else None,
            key=fields[2] if fields and isinstance(fields[2], bytes) else None,
        )
        info = KafkaErrorInfo(code=-1, name="_INTERNAL", reason=f"{err!r} ({exc!r})")
        return DeliveryError(message, info)


def metadata_from_report(msg: Any) -> RecordMetadata:
    return RecordMetadata(
        topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), timestamp=_timestamp(msg)
    )


class KafkaClient:
    """A thin wrapper of ``confluent_kafka.Producer``.

    Created first and closed last by ``open_producer``. ``produce_batch`` runs on the
    Trio thread; ``poll`` runs in the delivery task's worker thread; the callbacks it
    serves (delivery reports, ``error_cb``, logs) only append to plain lists.
    """

    def __init__(self, props: Mapping[str, Any]) -> None:
        #: Errors reported by librdkafka's error_cb, appended on the poll thread.
        self.errors: list[KafkaErrorInfo] = []
        conf = dict(props)
        conf["error_cb"] = self._on_error
        conf["logger"] = librdkafka_logger
        try:
            self._producer = confluent_kafka.Producer(conf)
        except KafkaException as exc:
            raise ConfigError(
                f"librdkafka rejected the configuration: {_scrub(exc, props)}"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"librdkafka rejected the configuration: {_scrub(exc, props)}"
            ) from None
        self._closed = False
        self._transactional = bool(props.get("transactional.id"))

    def poll(self, timeout: float) -> int:
        """Serve delivery reports, errors and logs (blocks up to ``timeout``; in a thread).

        Returns how many events were served, or -1 when librdkafka raised (it does after
        a fatal error of a transactional producer): the error is recorded like one from
        ``error_cb``, never raised into the delivery task.
        """
        try:
            served: int = self._producer.poll(timeout)
        except KafkaException as exc:
            self.errors.append(error_info(exc))
            return -1
        return served

    def _on_error(self, err: Any) -> None:
        # Runs on the poll thread: record only, never touch Trio.
        self.errors.append(error_info(err))

    def produce_batch(self, batch: list[Item], start: int, epoch: Epoch) -> int:
        """Hand ``batch[start:]`` to librdkafka; return the index of the first item not taken.

        ``BufferError`` (librdkafka's queue is full) stops the loop there: nothing is
        dropped, the caller waits for delivery reports and calls again. A
        ``KafkaException`` for one message (too large, unknown partition, ...) fails
        that message like a failed delivery and the loop goes on.
        """
        produce = self._producer.produce
        n = len(batch)
        i = start
        while i < n:
            try:
                # The common case first: no headers, no timestamp, no tracker.
                for item in batch[i:] if i else batch:
                    topic, value, key, headers, partition, timestamp, tracked = item
                    if tracked is None and not timestamp:
                        produce(topic, value, key, partition, epoch)
                    else:
                        if tracked is not None:
                            tracked.epoch = epoch
                        produce(
                            topic,
                            value,
                            key,
                            partition,
                            tracked if tracked is not None else epoch,
                            timestamp=timestamp,
                            headers=headers,
                        )
                    i += 1
            except BufferError:
                break
            except KafkaException as exc:
                _fail_item(epoch, error_info(exc), batch[i], batch[i][6])
                i += 1
            except (TypeError, ValueError) as exc:
                info = KafkaErrorInfo(code=-1, name="_INVALID_ARG", reason=str(exc))
                _fail_item(epoch, info, batch[i], batch[i][6])
                i += 1
        epoch.produced += i - start
        return i

    # ---- transactions (blocking calls: run them in a thread, bounded by ``timeout``) ----

    @property
    def transactional(self) -> bool:
        return self._transactional

    def _txn(self, operation: str, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except KafkaException as exc:
            err = exc.args[0]
            abortable = bool(getattr(err, "txn_requires_abort", lambda: False)())
            raise TransactionError(operation, error_info(err), abortable=abortable) from None

    def init_transactions(self, timeout: float) -> None:
        self._txn("init_transactions", self._producer.init_transactions, timeout)

    def begin_transaction(self) -> None:
        self._txn("begin_transaction", self._producer.begin_transaction)

    def commit_transaction(self, timeout: float) -> None:
        self._txn("commit_transaction", self._producer.commit_transaction, timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._txn("abort_transaction", self._producer.abort_transaction, timeout)

    def outstanding(self) -> int:
        """Messages (and requests) librdkafka still holds, delivery reports not yet served."""
        return len(self._producer)

    def purge(self, *, in_flight: bool = True) -> None:
        """Purge queued (and in-flight) messages; their reports come with _PURGE_* errors.

        Thread-safe: called on the Trio thread while the poll thread may be polling.
        """
        self._producer.purge(True, in_flight, False)

    def serve_remaining_reports(self, deadline: float) -> None:
        """After a purge: serve delivery reports until none are outstanding or time is up.

        Blocks for at most until ``deadline`` (monotonic); purged reports are normally
        ready at once, so this returns after one non-blocking poll.
        """
        self._producer.poll(0)
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0.01)

    def close(self) -> None:
        """Release librdkafka (nothing is left to flush when this is called)."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._producer, "close", None)
        if close is not None:
            # confluent's close() aborts an open transaction and says so with a
            # RuntimeWarning when that fails (e.g. after being fenced): log, don't raise.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                close()
            for warning in caught:
                logger.warning("closing the Kafka client: %s", warning.message)
        del self._producer


def _fail_item(epoch: Epoch, info: KafkaErrorInfo, item: Item, tracked: Any) -> None:
    """Settle one message that produce() refused, as a failed delivery."""
    epoch.failures.append((info, item, tracked))
    if tracked is not None:
        tracked.err = info
        tracked.msg = item
        if tracked.event is not None:
            epoch.completed.append(tracked)


def _scrub(exc: BaseException, props: Mapping[str, Any]) -> str:
    text = str(exc.args[0].str() if isinstance(exc, KafkaException) else exc)
    for name, value in props.items():
        if is_secret(name) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


# ---- helpers for tests, the CLI and benchmarks (admin and consumer side) -------------


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
                        timestamp=_timestamp(m),
                    )
                )
        return out
    finally:
        consumer.close()
