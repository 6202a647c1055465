"""A fake producer for unit tests of application code: no broker, no librdkafka.

:func:`open_fake_producer` yields a :class:`FakeProducer`, a subclass of
:class:`~trio_producer.Producer` with every public method overridden: application code
annotated ``Producer[K, V]`` accepts it unchanged (no protocol to adopt), and a method
added to ``Producer`` later is caught by a test that checks the fake overrides them all.

What is shared with the real producer, so that a test of the application sees what
production would: argument checks (``make_item``, ``check_topic``, ``bulk_item``), the
serializers (:class:`~trio_producer.serialization.Field`), the exit decision
(``_exit.decide``) and how undelivered messages are attached to an exception (so
:func:`trio_producer.undelivered_messages` finds them). What is simulated: delivery
(a background task, at the first checkpoint after the send), offsets, partitions,
failures (``fail=``), an unreachable cluster (:attr:`FakeProducer.unreachable`).
"""

from __future__ import annotations

import zlib
from collections import deque
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs
import trio

from .._args import bulk_item, make_item
from .._batch import message_from_pending
from .._client import check_offsets, kafka_error
from .._config import ProducerConfig
from .._exceptions import ConfigError, DeliveryError, ProducerClosedError, TrioProducerError
from .._exit import Ending, decide
from .._intake import no_spool_to_sync
from .._lifecycle import _check_hook
from .._message import ConsumedRecord, KafkaErrorInfo, Message, ProducerStatistics, RecordMetadata
from .._producer import Producer
from .._serializing import _header_list, _split
from .._topics import check_topic
from .._undelivered import attach
from ..serialization import Field, K, V

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence
    from contextlib import AbstractAsyncContextManager

    from confluent_kafka import TopicPartition

    from .._hooks import KafkaStatistics
    from .._message import Headers
    from ..serialization import Serializer, SerializerHeaders

__all__ = ["FakeProducer", "open_fake_producer"]


@attrs.define(eq=False)
class _Waiter:
    """The outcome a ``send_and_wait`` waits for."""

    event: trio.Event = attrs.Factory(trio.Event)
    metadata: RecordMetadata | None = None
    failure: DeliveryError | None = None
    abandoned: bool = False


@attrs.define(eq=False)
class _Entry:
    message: Message
    waiter: _Waiter | None


class FakeProducer(Producer[K, V]):
    """What :func:`open_fake_producer` yields: the API of :class:`~trio_producer.Producer`,
    without a broker. Do not create it yourself.

    A subclass of ``Producer``, so it goes wherever a ``Producer[K, V]`` is annotated.
    Checkpoints as the real one: the async methods always are, ``send_nowait``,
    ``abort`` and ``statistics`` never block.

    Attributes:
        sent: Every accepted message, in acceptance order (as the application gave it,
            after serialization), whatever became of it.
        delivered: What a consumer would read back: one
            :class:`~trio_producer.testing.ConsumedRecord` per delivered message, with
            its partition and offset, in delivery order.
        failed: One :class:`~trio_producer.DeliveryError` per failed delivery, in order
            (also those handed to ``on_delivery_error`` or raised by ``send_and_wait``).
        undelivered: As :attr:`Producer.undelivered`.
    """

    def __init__(
        self,
        *,
        queue_capacity: int,
        partitions: int,
        fail: Callable[[Message], KafkaErrorInfo | str | None] | None,
        on_delivery_error: Callable[[DeliveryError], object] | None,
        key_field: Field[K] | None,
        value_field: Field[V] | None,
        unreachable: bool,
    ) -> None:
        # Not Producer.__init__: there is no channel, tracker or client behind this one.
        self.undelivered: tuple[DeliveryError, ...] = ()
        self.sent: list[Message] = []
        self.delivered: list[ConsumedRecord] = []
        self.failed: list[DeliveryError] = []
        self._capacity = queue_capacity
        self._partitions = partitions
        self._fail_rule = fail
        self._hook = on_delivery_error
        self._key_field = key_field
        self._value_field = value_field
        self._unreachable = unreachable
        self._queue: deque[_Entry] = deque()
        self._in_flight: deque[_Entry] = deque()
        self._offsets: dict[tuple[str, int], int] = {}
        self._round_robin: dict[str, int] = {}
        self._accepted = 0
        self._settled = 0
        #: How many messages were settled before the close's purge (the rest it purged).
        self._purged_from = 0
        self._work = trio.Event()
        self._room = trio.lowlevel.ParkingLot()
        self._progress = trio.lowlevel.ParkingLot()
        self._closed = False
        self._closed_reason = "the producer is closed"
        self._closed_by_failure = False
        self._stopped = False
        self._failures: list[DeliveryError] = []  # for the exit
        self._failed_by: DeliveryError | None = None
        self._aborted: str | None = None
        self._exit_decided = False
        self._body_scope: trio.CancelScope | None = None
        self._drain_scope: trio.CancelScope | None = None

    # -- what the test controls and reads ------------------------------------------

    @property
    def unreachable(self) -> bool:
        """Set to ``True`` and nothing is delivered: accepted messages stay in flight
        (``send_and_wait`` and ``flush`` wait), and at the exit, after ``close_timeout``,
        they come back in the exception as ``_PURGE_QUEUE`` failures, as the real
        producer's do. Set back to ``False`` and they are delivered."""
        return self._unreachable

    @unreachable.setter
    def unreachable(self, value: bool) -> None:
        self._unreachable = bool(value)
        self._work.set()

    def values(self, topic: str | None = None) -> list[bytes | None]:
        """The values delivered (to ``topic``, or to any topic), in delivery order."""
        return [r.value for r in self.delivered if topic is None or r.topic == topic]

    def keys(self, topic: str | None = None) -> list[bytes | None]:
        """The keys delivered (to ``topic``, or to any topic), in delivery order."""
        return [r.key for r in self.delivered if topic is None or r.topic == topic]

    # -- the Producer API ------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: V | None,
        *,
        key: K | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """As :meth:`Producer.send`."""
        await trio.lowlevel.checkpoint()
        message = await self._message(topic, value, key, headers, partition, timestamp)
        await self._enter(message, None)

    def send_nowait(
        self,
        topic: str,
        value: V | None,
        *,
        key: K | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """As :meth:`Producer.send_nowait`: ``trio.WouldBlock`` when ``queue_capacity``
        messages wait for the delivery task (which runs at the next checkpoint)."""
        fields = (self._key_field, self._value_field)
        if any(f is not None and f.is_async for f in fields):
            which = " and ".join(repr(f) for f in fields if f is not None and f.is_async)
            raise TypeError(
                f"send_nowait cannot await this producer's async serializer ({which}): "
                "use await send()"
            )
        check_topic(topic)
        self._check_open()
        raw_key: object = key
        raw_value: object = value
        pairs: object = headers
        if fields != (None, None):
            serializer_headers = _header_list(headers)
            if key is not None and self._key_field is not None:
                raw_key = self._key_field.call_now(key, topic, serializer_headers)
            if value is not None and self._value_field is not None:
                raw_value = self._value_field.call_now(value, topic, serializer_headers)
            pairs = serializer_headers or None
        item, _ = make_item(topic, raw_value, raw_key, pairs, partition, timestamp, None)
        if len(self._queue) >= self._capacity:
            raise trio.WouldBlock
        self._accept(message_from_pending(item), None)

    async def send_many(
        self, topic: str, messages: Iterable[V | tuple[K | None, V | None] | None]
    ) -> int:
        """As :meth:`Producer.send_many` (each element is checked, serialized and
        accepted in turn; with serializers, headers they add travel with it)."""
        await trio.lowlevel.checkpoint()
        check_topic(topic)
        self._check_open()
        accepted = 0
        serializing = self._key_field is not None or self._value_field is not None
        for element in messages:
            if serializing:
                key, value = _split(element)
                message = await self._message(topic, value, key, None, None, None)
            else:
                item, _ = bulk_item(topic, element)  # the real checks and errors
                message = message_from_pending(item)
            await self._enter(message, None)
            accepted += 1
        return accepted

    async def send_and_wait(
        self,
        topic: str,
        value: V | None,
        *,
        key: K | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> RecordMetadata:
        """As :meth:`Producer.send_and_wait`: returns once the delivery task has
        delivered it (offsets count up from 0 per topic and partition), or raises its
        :class:`~trio_producer.DeliveryError`."""
        await trio.lowlevel.checkpoint()
        message = await self._message(topic, value, key, headers, partition, timestamp)
        waiter = _Waiter()
        await self._enter(message, waiter)
        try:
            if not waiter.event.is_set():
                await waiter.event.wait()
        except BaseException as exc:
            waiter.abandoned = True
            if waiter.event.is_set() and waiter.failure is not None:
                if self._exit_decided:
                    raise waiter.failure from exc
                self._route_failure(waiter.failure)
            raise
        if waiter.failure is not None:
            raise waiter.failure
        assert waiter.metadata is not None
        return waiter.metadata

    async def flush(self) -> None:
        """As :meth:`Producer.flush`: waits until every message accepted before it has an
        outcome (forever, while :attr:`unreachable`; ``trio.fail_after`` bounds it)."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise self._closed_error()
        target = self._accepted
        while self._settled < target:
            if self._stopped:
                raise self._closed_error()
            await self._progress.park()
        if self._stopped and target > self._purged_from:
            # Settled by the close's purge, not delivered: handed back by the exit.
            raise ProducerClosedError(
                "the producer closed before every message sent before flush() was "
                "confirmed; the undelivered ones are handed back by open_producer",
                producer_failed=True,
            )

    def abort(self, reason: str = "Producer.abort() was called") -> None:
        """As :meth:`Producer.abort`: the block is cancelled, what is not delivered yet
        is handed back at once (no grace), the exception says ``reason``."""
        if self._aborted is None:
            self._aborted = reason
        self._fail(None, f"aborted: {reason}")
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Refused as by a producer without ``transactional.id``: the fake has none."""
        await trio.lowlevel.checkpoint()
        raise ConfigError(
            "transaction() needs the librdkafka property 'transactional.id' "
            "(librdkafka={'transactional.id': ...})"
        )
        yield  # pragma: no cover

    async def send_offsets(self, offsets: Sequence[TopicPartition], group_metadata: bytes) -> None:
        """Refused as outside a transaction (the fake runs none)."""
        await trio.lowlevel.checkpoint()
        check_offsets(offsets, group_metadata)
        if self._closed:
            raise self._closed_error()
        raise TrioProducerError(
            "send_offsets() must be called inside producer.transaction(): the offsets "
            "are committed with the transaction"
        )

    def backlog(self) -> int:
        """0: the fake has no spool."""
        return 0

    async def sync(self) -> None:
        """Refused like a real producer's without a spool (the fake has none)."""
        await trio.lowlevel.checkpoint()
        raise no_spool_to_sync()

    @property
    def kafka_statistics(self) -> KafkaStatistics | None:
        """``None``: there is no librdkafka to report statistics."""
        return None

    @property
    def cluster_reachable(self) -> bool:
        """``not`` :attr:`unreachable`."""
        return not self._unreachable

    def statistics(self) -> ProducerStatistics:
        """As :meth:`Producer.statistics` (``batches`` stays empty: nothing is batched)."""
        return ProducerStatistics(
            queued=len(self._queue),
            in_flight=len(self._in_flight),
            delivered=len(self.delivered),
            failed=len(self.failed),
            batches=MappingProxyType({}),
        )

    # -- inside --------------------------------------------------------------------

    def _closed_error(self) -> ProducerClosedError:
        return ProducerClosedError(self._closed_reason, producer_failed=self._closed_by_failure)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _close(self, reason: str | None = None, *, failed: bool = False) -> None:
        if not self._closed:
            if reason is not None:
                self._closed_reason = reason
            self._closed_by_failure = failed
        self._closed = True
        self._room.unpark_all()  # parked senders: not accepted

    async def _message(
        self,
        topic: str,
        value: object,
        key: object,
        headers: Headers | None,
        partition: int | None,
        timestamp: int | None,
    ) -> Message:
        """Check (and serialize) one message as the real send does; raise before accepting."""
        pairs: object = headers
        if self._key_field is not None or self._value_field is not None:
            check_topic(topic)
            self._check_open()
            serializer_headers: SerializerHeaders = _header_list(headers)
            if key is not None and self._key_field is not None:
                key = await self._key_field.serialize(key, topic, serializer_headers)
            if value is not None and self._value_field is not None:
                value = await self._value_field.serialize(value, topic, serializer_headers)
            pairs = serializer_headers or None
        item, _ = make_item(topic, value, key, pairs, partition, timestamp, None)
        return message_from_pending(item)

    async def _enter(self, message: Message, waiter: _Waiter | None) -> None:
        """Accept ``message``, waiting while the queue is full (cancellable: not accepted)."""
        while len(self._queue) >= self._capacity and not self._closed:
            await self._room.park()
        self._check_open()
        self._accept(message, waiter)

    def _accept(self, message: Message, waiter: _Waiter | None) -> None:
        self._queue.append(_Entry(message, waiter))
        self.sent.append(message)
        self._accepted += 1
        self._work.set()

    async def _run(self) -> None:
        """The delivery task: takes what is queued, delivers what is in flight."""
        while True:
            await self._work.wait()
            self._work = trio.Event()
            if self._queue:
                self._in_flight.extend(self._queue)
                self._queue.clear()
                self._room.unpark_all()
            while self._in_flight and not self._unreachable:
                self._deliver(self._in_flight.popleft())
            self._progress.unpark_all()

    def _partition(self, message: Message) -> int:
        if message.partition is not None:
            return message.partition
        if message.key is not None:
            return zlib.crc32(message.key) % self._partitions  # librdkafka's "consistent"
        turn = self._round_robin.get(message.topic, 0)
        self._round_robin[message.topic] = turn + 1
        return turn % self._partitions

    def _deliver(self, entry: _Entry) -> None:
        message = entry.message
        partition = self._partition(message)
        error: KafkaErrorInfo | None = None
        if partition >= self._partitions:
            error = kafka_error("_UNKNOWN_PARTITION")
        elif self._fail_rule is not None:
            outcome = self._fail_rule(message)
            if isinstance(outcome, str):
                error = kafka_error(outcome)
            elif outcome is not None:
                if not isinstance(outcome, KafkaErrorInfo):
                    raise TypeError(
                        "fail= must return None, a librdkafka error name or a "
                        f"KafkaErrorInfo, not {outcome!r:.60}"
                    )
                error = outcome
        self._settled += 1
        if error is not None:
            self._failed(entry, DeliveryError(message, error))
            return
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
        waiter = entry.waiter
        if waiter is not None:
            waiter.metadata = RecordMetadata(message.topic, partition, offset, message.timestamp)
            waiter.event.set()

    def _failed(self, entry: _Entry, failure: DeliveryError) -> None:
        self.failed.append(failure)
        waiter = entry.waiter
        if waiter is not None and not waiter.abandoned:
            waiter.failure = failure
            waiter.event.set()
            return
        self._route_failure(failure)

    def _route_failure(self, failure: DeliveryError) -> None:
        """As the real producer: to ``on_delivery_error``, else the producer fails."""
        if self._stopped:
            self._failures.append(failure)
            return
        if self._hook is not None:
            try:
                self._hook(failure)
            except Exception as exc:
                self._failures.append(failure)
                self._fail(failure, f"on_delivery_error raised {exc!r}")
            return
        self._failures.append(failure)
        if self._failed_by is None:
            self._fail(failure, f"a delivery failed: {failure}")

    def _fail(self, failure: DeliveryError | None, reason: str) -> None:
        if self._failed_by is None and failure is not None:
            self._failed_by = failure
        self._close(f"the producer failed: {reason}", failed=True)
        if self._body_scope is not None:
            self._body_scope.cancel()

    def _purge(self) -> None:
        """After the drain: what is still queued or in flight fails (``_PURGE_QUEUE``)."""
        self._stopped = True
        self._purged_from = self._settled
        left = [*self._in_flight, *self._queue]
        self._in_flight.clear()
        self._queue.clear()
        purged = kafka_error("_PURGE_QUEUE")
        for entry in left:
            failure = DeliveryError(entry.message, purged)
            if self._unreachable:
                failure.cluster_unreachable = (
                    "the Kafka cluster at fake was unreachable (FakeProducer.unreachable)"
                )
            self._settled += 1
            self._failed(entry, failure)
        self._progress.unpark_all()


def open_fake_producer(
    *,
    fail: Callable[[Message], KafkaErrorInfo | str | None] | None = None,
    on_delivery_error: Callable[[DeliveryError], object] | None = None,
    partitions: int = 1,
    queue_capacity: int = 10_000,
    close_timeout: float = 30.0,
    unreachable: bool = False,
    key_serializer: Serializer[K] | None = None,
    value_serializer: Serializer[V] | None = None,
) -> AbstractAsyncContextManager[FakeProducer[K, V]]:
    """Open a fake producer for the duration of an ``async with`` block: no broker.

    It keeps the promise as :func:`~trio_producer.open_producer` does: on leaving the
    block it waits (at most ``close_timeout``, shielded) for what is in flight, and
    what was not delivered leaves in the exception -- :class:`DeliveryError`,
    :class:`UndeliveredMessagesError`, or attached to the body's own exception (the
    same decision, made by the same code). Deliveries happen in a background task, at
    the first checkpoint after the send; under ``autojump_clock`` all of it is
    deterministic and instant.

    Args:
        fail: Called with each message as it is delivered: return ``None`` to deliver
            it, or a librdkafka error name (``"MSG_SIZE_TOO_LARGE"``) or a
            :class:`KafkaErrorInfo` to fail it with.
        on_delivery_error: As for ``open_producer``.
        partitions: Partitions of every topic. Without ``partition=``, a keyed message
            goes to ``crc32(key) % partitions`` (librdkafka's ``consistent``), others in
            turn; ``partition=`` beyond them fails with ``_UNKNOWN_PARTITION``.
        queue_capacity: As for ``open_producer``: how many accepted messages may wait
            for the delivery task (``send`` waits, ``send_nowait`` raises).
        close_timeout: As for ``open_producer``. Only :attr:`FakeProducer.unreachable`
            makes the exit wait for it: use ``autojump_clock`` (or a small value).
        unreachable: The initial :attr:`FakeProducer.unreachable`.
        key_serializer: As for ``open_producer``.
        value_serializer: As for ``open_producer``.

    Raises:
        ConfigError: A bad ``queue_capacity`` or ``close_timeout`` (the real checks).
        ValueError: ``partitions`` is not an int >= 1.
        TypeError: A hook, ``fail`` or a serializer is not a plain callable.
    """
    ProducerConfig(
        bootstrap_servers="fake:9092", queue_capacity=queue_capacity, close_timeout=close_timeout
    )
    if type(partitions) is not int or partitions < 1:
        raise ValueError(f"partitions must be an int >= 1, not {partitions!r}")
    if fail is not None and not callable(fail):
        raise TypeError(f"fail must be a callable or None, not {fail!r:.80}")
    fake = FakeProducer[K, V](
        queue_capacity=queue_capacity,
        partitions=partitions,
        fail=fail,
        on_delivery_error=_check_hook(on_delivery_error),
        key_field=Field[K]("key", key_serializer) if key_serializer is not None else None,
        value_field=Field[V]("value", value_serializer) if value_serializer is not None else None,
        unreachable=unreachable,
    )
    return _running(fake, close_timeout)


@asynccontextmanager
async def _running(
    fake: FakeProducer[K, V], close_timeout: float
) -> AsyncIterator[FakeProducer[K, V]]:
    await trio.lowlevel.checkpoint()
    body: BaseException | None = None
    interrupt: KeyboardInterrupt | None = None
    async with trio.open_nursery() as nursery:
        delivery_scope = trio.CancelScope(shield=True)

        async def deliver() -> None:
            with delivery_scope:
                await fake._run()

        nursery.start_soon(deliver)
        try:
            fake._body_scope = body_scope = trio.CancelScope()
            try:
                with body_scope:
                    yield fake
            except BaseException as exc:
                body = exc
            finally:
                fake._body_scope = None
            fake._close()
            fake._work.set()
            try:
                with trio.move_on_after(close_timeout, shield=True) as drain_scope:
                    fake._drain_scope = drain_scope
                    if fake._aborted is not None:
                        drain_scope.cancel()
                    while fake._settled < fake._accepted:
                        await fake._progress.park()
            except KeyboardInterrupt as ki:
                interrupt = ki
            finally:
                fake._drain_scope = None
        finally:
            delivery_scope.cancel()
    fake._purge()
    verdict = decide(
        Ending(
            body=body,
            interrupt=interrupt,
            failures=tuple(fake._failures),
            failed_by=fake._failed_by,
            cut_short=fake._aborted,
        )
    )
    fake._exit_decided = True
    # As open_producer applies the verdict (_lifecycle._finish), without its logging.
    raise_ = verdict.raise_
    if verdict.undelivered:
        fake.undelivered = verdict.undelivered
        if raise_ is not None:
            attach(raise_, verdict.undelivered)
    if raise_ is not None:
        for note in verdict.notes:
            raise_.add_note(note)
        raise raise_
