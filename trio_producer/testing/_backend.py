"""A fake of ``confluent_kafka.Producer`` over a fake cluster, for the real producer to run on.

``KafkaClient(props, producer_class=...)`` takes it instead of librdkafka
(:func:`~trio_producer.testing.open_fake_producer` passes it down), so that everything
above it -- the producer, the batch channel, the worker, the delivery task, the exit --
is the code ``open_producer`` runs. It keeps librdkafka's contract for the calls the
client makes:

* ``produce`` and ``produce_batch`` take messages (``BufferError``, or ``_error`` set to
  ``_QUEUE_FULL`` on the rest of a batch, beyond ``queue.buffering.max.messages``). On
  the caller's thread (the worker, on the Trio thread) each message is written to the
  fake cluster at once -- a partition, an offset, or the failure ``fail`` chooses -- and
  its delivery report is ready; while the cluster is unreachable it waits in the queue.
* ``poll`` (the delivery task's worker thread) serves what is ready: the errors (to
  ``error_cb``) and the delivery reports (to each message's callback), with message
  objects shaped like confluent's.
* ``purge`` fails what waits in the queue with ``_PURGE_QUEUE`` (nothing written is in
  flight: its outcome is known); ``len()`` counts what is queued or not yet served;
  ``flush`` polls until nothing is left.
* Transactions are not simulated: a ``transactional.id`` is refused, and the
  transactional calls raise ``_NOT_CONFIGURED``, as librdkafka's do without one.

The queue and what is ready to serve are shared with the poll thread under one lock;
the cluster's records (``sent``, ``delivered``, offsets) are written on the caller's
thread only, and never by ``poll``.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from .._client import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    librdkafka_error,
    librdkafka_exception,
    normalize_headers,
)
from .._message import ConsumedRecord, KafkaErrorInfo, Message

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    #: What a delivery report is served to: ``callback(err, msg)``.
    Callback = Callable[[object, "FakeMessage"], object]

__all__ = ["FakeConfluentProducer", "FakeMessage"]

logger = logging.getLogger("trio_producer.testing")

#: librdkafka's "no partition yet" and "no offset" (a failed message's report).
PARTITION_UA = -1
OFFSET_INVALID = -1001

#: librdkafka's default ``queue.buffering.max.messages``.
DEFAULT_MAX_MESSAGES = 100_000


class FakeMessage:
    """A delivery report's message, shaped like confluent's ``Message`` (the methods the
    report callbacks read). ``headers()`` is ``None``, as in confluent's reports."""

    __slots__ = ("_error", "_message", "_offset", "_partition")

    def __init__(self, message: Message, partition: int, offset: int, error: object) -> None:
        self._message = message
        self._partition = partition
        self._offset = offset
        self._error = error

    def topic(self) -> str:
        return self._message.topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._message.key

    def value(self) -> bytes | None:
        return self._message.value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        stamp = self._message.timestamp
        if stamp is None:
            return (TIMESTAMP_NOT_AVAILABLE, 0)
        return (TIMESTAMP_CREATE_TIME, stamp)

    def error(self) -> object:
        return self._error


class _Queued(NamedTuple):
    """A message taken while the cluster is unreachable, and who gets its report."""

    message: Message
    callback: Callback | None


class _Report(NamedTuple):
    callback: Callback | None
    error: object
    message: FakeMessage


class FakeConfluentProducer:
    """A stand-in for ``confluent_kafka.Producer`` (see the module's docstring).

    Args:
        conf: The configuration ``KafkaClient`` builds: ``bootstrap.servers`` names the
            fake cluster, ``queue.buffering.max.messages`` bounds the queue, and
            ``error_cb`` is served the errors.
        partitions: Partitions of every topic. Without a partition, a keyed message goes
            to ``crc32(key) % partitions`` (librdkafka's ``consistent``), others in turn;
            a partition beyond them fails with ``_UNKNOWN_PARTITION``.
        fail: Called (on the caller's thread) with each message as it is written:
            ``None`` writes it; a librdkafka error name or a :class:`KafkaErrorInfo`
            fails it with that error. If it raises or returns anything else, the message
            fails with ``_INVALID_ARG`` saying so (and what it raised is logged).
        unreachable: The initial :attr:`unreachable`.

    Raises:
        ValueError: ``conf`` has a ``transactional.id``.

    Attributes:
        sent: Every message taken, in order, whatever became of it.
        delivered: What was written, as a consumer would read it back, in order.
        on_work: Called (on the caller's thread) after messages were taken, written,
            purged, or the cluster came or went. ``None``: nobody is told.
    """

    def __init__(
        self,
        conf: Mapping[str, Any],
        *,
        partitions: int = 1,
        fail: Callable[[Message], KafkaErrorInfo | str | None] | None = None,
        unreachable: bool = False,
    ) -> None:
        if conf.get("transactional.id"):
            raise ValueError("the fake cluster runs no transactions: no transactional.id")
        self.bootstrap_servers = str(conf.get("bootstrap.servers", "fake:9092"))
        self._error_cb: Callable[[object], object] | None = conf.get("error_cb")
        self._max_messages = int(conf.get("queue.buffering.max.messages", DEFAULT_MAX_MESSAGES))
        self._partitions = partitions
        self._fail = fail
        self.sent: list[Message] = []
        self.delivered: list[ConsumedRecord] = []
        self.on_work: Callable[[], None] | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        self._round_robin: dict[str, int] = {}
        self._unreachable = False
        self._closed = False
        # Shared with the poll thread, under the lock:
        self._lock = threading.Condition()
        self._queue: deque[_Queued] = deque()
        self._reports: deque[_Report] = deque()
        self._errors: deque[object] = deque()
        #: How many reports and errors were made ready, and served, so far.
        self.reports_made = 0
        self.reports_served = 0
        self.errors_made = 0
        self.errors_served = 0
        self.unreachable = unreachable

    # ---- the cluster ---------------------------------------------------------------

    @property
    def unreachable(self) -> bool:
        """``True``: nothing is written; messages wait in the queue (until ``purge``),
        and the next ``poll`` serves the errors of a cluster that went away
        (``_TRANSPORT``, ``_ALL_BROKERS_DOWN``). Back to ``False``: what waits is written,
        in order. Set it on the caller's thread."""
        return self._unreachable

    @unreachable.setter
    def unreachable(self, value: bool) -> None:
        value = bool(value)
        if value == self._unreachable:
            return
        self._unreachable = value
        if value:
            address = self.bootstrap_servers
            errors = [
                librdkafka_error(
                    "_TRANSPORT",
                    f"{address}/bootstrap: Connect to {address} failed: the fake cluster "
                    "is unreachable (FakeProducer.unreachable)",
                ),
                librdkafka_error("_ALL_BROKERS_DOWN", "1/1 brokers are down"),
            ]
            with self._lock:
                self._errors.extend(errors)
                self.errors_made += len(errors)
                self._lock.notify_all()
        else:
            with self._lock:
                waiting = list(self._queue)
            reports = [self._write(queued) for queued in waiting]
            with self._lock:
                for _ in waiting:
                    self._queue.popleft()
                self._add_reports(reports)
        self._tell()

    @property
    def queued(self) -> int:
        """Messages waiting for an unreachable cluster."""
        with self._lock:
            return len(self._queue)

    def _partition(self, message: Message) -> int:
        if message.partition is not None:
            return message.partition
        if message.key is not None:
            return zlib.crc32(message.key) % self._partitions  # librdkafka's "consistent"
        turn = self._round_robin.get(message.topic, 0)
        self._round_robin[message.topic] = turn + 1
        return turn % self._partitions

    def _write(self, queued: _Queued) -> _Report:
        """Write one message to the cluster (or fail it); return its delivery report."""
        message, callback = queued
        partition = self._partition(message)
        error: object = None
        if partition >= self._partitions:
            error = librdkafka_error("_UNKNOWN_PARTITION")
        elif self._fail is not None:
            error = self._fail_error(message)
        if error is not None:
            return _Report(
                callback, error, FakeMessage(message, _bound(message), OFFSET_INVALID, error)
            )
        offset = self._offsets.get((message.topic, partition), 0)
        self._offsets[(message.topic, partition)] = offset + 1
        self.delivered.append(
            ConsumedRecord(
                topic=message.topic,
                partition=partition,
                offset=offset,
                key=message.key,
                value=message.value,
                headers=message.headers,
                timestamp=message.timestamp,
            )
        )
        return _Report(callback, None, FakeMessage(message, partition, offset, None))

    def _fail_error(self, message: Message) -> object:
        """What ``fail`` says about ``message``: ``None``, or the error to fail it with."""
        assert self._fail is not None
        try:
            outcome = self._fail(message)
        except Exception as exc:
            logger.exception("fail= raised for %r", message)
            return librdkafka_error("_INVALID_ARG", f"fail= raised {exc!r}")
        if outcome is None or isinstance(outcome, KafkaErrorInfo):
            return outcome
        if isinstance(outcome, str):
            try:
                return librdkafka_error(outcome)
            except ValueError as exc:
                return librdkafka_error("_INVALID_ARG", f"fail= returned {exc}")
        return librdkafka_error(
            "_INVALID_ARG",
            "fail= must return None, a librdkafka error name or a KafkaErrorInfo, "
            f"not {outcome!r:.60}",
        )

    # ---- what KafkaClient calls --------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        partition: int = PARTITION_UA,
        on_delivery: Callback | None = None,
        timestamp: int = 0,
        headers: object = None,
        *,
        callback: Callback | None = None,
    ) -> None:
        """Take one message.

        Raises:
            BufferError: ``queue.buffering.max.messages`` are not served yet.
            RuntimeError: Closed.
        """
        self._check_open()
        if self._messages() >= self._max_messages:
            raise BufferError("Local: Queue full")
        message = _message(topic, value, key, partition, timestamp, normalize_headers(headers))
        self._take([_Queued(message, on_delivery or callback)])

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = PARTITION_UA,
        on_delivery: Callback | None = None,
    ) -> int:
        """Take the messages (dicts with ``value``, ``key``, ``partition``,
        ``timestamp``, ``callback``) until the queue is full; mark the rest with
        ``_error`` (``_QUEUE_FULL``). Return how many were taken.

        Raises:
            TypeError: ``messages`` is not a list.
            RuntimeError: Closed.
        """
        self._check_open()
        if not isinstance(messages, list):
            raise TypeError(f"messages must be a list, not {type(messages).__name__}")
        room = max(0, self._max_messages - self._messages())
        taken: list[_Queued] = []
        for item in messages[:room]:
            message = _message(
                topic,
                item.get("value"),
                item.get("key"),
                item.get("partition", partition),
                item.get("timestamp", 0),
                None,  # (the batch call carries no headers)
            )
            taken.append(_Queued(message, item.get("callback", on_delivery)))
        for item in messages[room:]:
            item["_error"] = librdkafka_error("_QUEUE_FULL")
        self._take(taken)
        return len(taken)

    def _take(self, taken: list[_Queued]) -> None:
        if not taken:
            return
        self.sent.extend(queued.message for queued in taken)
        if self._unreachable:
            with self._lock:
                self._queue.extend(taken)
        else:
            reports = [self._write(queued) for queued in taken]
            with self._lock:
                self._add_reports(reports)
        self._tell()

    def _add_reports(self, reports: list[_Report]) -> None:
        # (under the lock)
        self._reports.extend(reports)
        self.reports_made += len(reports)
        self._lock.notify_all()

    def _tell(self) -> None:
        if self.on_work is not None:
            self.on_work()

    def poll(self, timeout: float | None = -1) -> int:
        """Serve the errors and delivery reports that are ready, waiting up to
        ``timeout`` seconds (``None`` or negative: forever) for the first; return how
        many callbacks were served."""
        with self._lock:
            if not (self._reports or self._errors) and timeout != 0:
                wait = None if timeout is None or timeout < 0 else timeout
                self._lock.wait_for(lambda: bool(self._reports or self._errors), wait)
            errors = list(self._errors)
            self._errors.clear()
            reports = list(self._reports)
            self._reports.clear()
        error_cb = self._error_cb
        try:
            for error in errors:
                if error_cb is not None:
                    error_cb(error)
            for callback, err, msg in reports:
                if callback is not None:
                    callback(err, msg)
        finally:
            with self._lock:
                self.errors_served += len(errors)
                self.reports_served += len(reports)
        return len(errors) + len(reports)

    def flush(self, timeout: float | None = -1) -> int:
        """Poll until nothing is queued or unserved, or ``timeout`` seconds passed;
        return how many are left."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while len(self):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.poll(0.1 if left is None else min(0.1, left))
        return len(self)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        """Fail what waits in the queue (``in_queue``) with ``_PURGE_QUEUE``; its
        reports are served by the next poll. Nothing written is in flight."""
        if not in_queue:
            return
        with self._lock:
            waiting = list(self._queue)
            self._queue.clear()
            error = librdkafka_error("_PURGE_QUEUE")
            self._add_reports(
                [
                    _Report(
                        callback,
                        error,
                        FakeMessage(message, _bound(message), OFFSET_INVALID, error),
                    )
                    for message, callback in waiting
                ]
            )
        if waiting:
            self._tell()

    def _messages(self) -> int:
        """Messages queued or with a report not yet served (what the bound counts)."""
        with self._lock:
            return len(self._queue) + len(self._reports)

    def __len__(self) -> int:
        """Messages queued or with a report not yet served, and errors not yet served."""
        with self._lock:
            return len(self._queue) + len(self._reports) + len(self._errors)

    def init_transactions(self, timeout: float | None = None) -> None:
        self._no_transactions()

    def begin_transaction(self) -> None:
        self._no_transactions()

    def commit_transaction(self, timeout: float | None = None) -> None:
        self._no_transactions()

    def abort_transaction(self, timeout: float | None = None) -> None:
        self._no_transactions()

    def send_offsets_to_transaction(
        self, positions: object, group_metadata: object, timeout: float | None = None
    ) -> None:
        self._no_transactions()

    def _no_transactions(self) -> None:
        self._check_open()
        raise librdkafka_exception(
            librdkafka_error(
                "_NOT_CONFIGURED",
                "The Transactional API requires transactional.id to be configured",
            )
        )

    def close(self) -> None:
        """Nothing to release; later calls raise ``RuntimeError``."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Producer has been closed")


def _bound(message: Message) -> int:
    return PARTITION_UA if message.partition is None else message.partition


def _message(
    topic: str,
    value: bytes | str | None,
    key: bytes | str | None,
    partition: int,
    timestamp: int,
    headers: list[tuple[str, bytes | None]] | None,
) -> Message:
    return Message(
        topic=topic,
        value=value.encode() if isinstance(value, str) else value,
        key=key.encode() if isinstance(key, str) else key,
        headers=headers,
        partition=None if partition < 0 else partition,
        timestamp=timestamp or None,
    )
