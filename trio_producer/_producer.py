"""The Producer handle: the send methods, flush, abort, transactions, statistics.

``open_producer`` (in ``_lifecycle``) builds it and owns its tasks and its shutdown."""

from __future__ import annotations

import weakref
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic

import trio

from ._args import make_item
from ._client import TrackedReport
from ._exceptions import (
    ConfigError,
    DeliveryError,
    TransactionError,
    TrioProducerError,
)
from ._message import KafkaErrorInfo, ProducerStatistics
from ._topics import check_topic, valid_topics
from ._transaction import Transactions
from .serialization import K, V

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence

    from confluent_kafka import TopicPartition

    from ._batch import Pending
    from ._delivery import DeliveryTracker
    from ._hooks import KafkaStatistics
    from ._intake import Intake
    from ._message import Headers, RecordMetadata
    from ._serializing import Encoder
    from ._state import ProducerState
    from ._worker import BatchChannel

enable_ki_protection = trio.lowlevel.enable_ki_protection


def outside_transaction(method: str) -> TransactionError:
    """The refusal of a send on a transactional producer with no transaction open."""
    return TransactionError(
        f"{method} outside a transaction",
        KafkaErrorInfo(
            code=-172,  # librdkafka's _STATE, what it would say later, at the exit
            name="_STATE",
            reason=(
                "this producer has a transactional.id, so every message must belong to a "
                f"transaction: call {method}() inside `async with producer.transaction():`, "
                "or drop transactional.id from the config; nothing was accepted"
            ),
        ),
    )


class Producer(Generic[K, V]):
    """The handle yielded by :func:`open_producer`. Do not create it yourself.

    Generic in the key and value types it takes: ``Producer[bytes | str, bytes | str]``
    (what a bare ``Producer`` means) without serializers; with a ``value_serializer``
    of ``T``, ``Producer[..., T]`` (see :mod:`trio_producer.serialization`). With a
    ``spool_path`` it is the same class: each message is written to the durable spool
    before it is accepted (see :meth:`sync`).

    Checkpoints: :meth:`send`, :meth:`send_many`, :meth:`send_and_wait`,
    :meth:`flush`, :meth:`sync` and entering/leaving :meth:`transaction` always are;
    :meth:`send_nowait`, :meth:`abort` and :meth:`statistics` never block.

    The sending methods are protected from ``KeyboardInterrupt`` between accepting a
    message and returning: a Ctrl-C is delivered at their checkpoints, where "it
    raised" still means "not accepted".
    """

    def __init__(
        self,
        channel: BatchChannel,
        tracker: DeliveryTracker,
        state: ProducerState,
        intake: Intake,
        encoder: Encoder | None,
        transaction_timeout: float = 30.0,
        *,
        managed_transactions: bool = False,
    ) -> None:
        self._channel = channel
        self._tracker = tracker
        self._state = state
        #: Accepts the messages: in memory, or in the durable spool.
        self._intake = intake
        #: The serializers, or ``None`` (then values and keys are ``bytes``/``str``).
        self._encoder = encoder
        #: Takes each fire-and-forget message: in memory, the channel itself (its
        #: ``send_nowait`` is then the one call the in-memory fast path makes).
        self._acceptor = intake.acceptor
        #: The producer has a transactional.id and no transaction is open: every send
        #: is refused at the call (one attribute check on the hot path). A copy of
        #: ``self._transactions.state is READY``, kept by its moves alone.
        self._needs_transaction = False
        producer = weakref.ref(self)  # (no cycle: a producer dropped is freed at once)

        def set_needs_transaction(needs: bool) -> None:
            this = producer()
            if this is not None:
                this._needs_transaction = needs

        #: The transaction state and logic (see ``_transaction``).
        self._transactions = Transactions(
            tracker,
            channel,
            state,
            set_needs_transaction,
            transaction_timeout,
            managed=managed_transactions,
        )
        #: One :class:`DeliveryError` per accepted message that was not delivered, set
        #: when the block is left with an exception that is not the producer's own
        #: (the body's exception, or ``KeyboardInterrupt``), which won over the
        #: :class:`UndeliveredMessagesError`.
        self.undelivered: tuple[DeliveryError, ...] = ()

    def _refused_outside_transaction(self, method: str) -> TrioProducerError:
        """Why a send on a transactional producer with no transaction open is refused:
        the producer is closed (what every producer says then), or no transaction is open."""
        if self._channel.closed:
            return self._channel.closed_error()
        return outside_transaction(method)

    @enable_ki_protection
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
        """Accept one message for delivery (fire and forget), waiting while the queue is full.

        Always a checkpoint. If it returns, the message was accepted: it will be
        delivered, or handed back in an exception when the producer closes. If it
        raises (``Cancelled`` and ``KeyboardInterrupt`` included), the message was not
        accepted.

        Args:
            topic: The topic.
            value: The payload; ``str`` is encoded as UTF-8; ``None`` is a tombstone.
            key: The key; ``str`` is encoded as UTF-8.
            headers: A mapping or a list of ``(name, value)`` pairs; ``str`` values are
                encoded as UTF-8 here, at the call.
            partition: An explicit partition, or ``None`` for the partitioner.
            timestamp: Milliseconds since the epoch, or ``None`` for now.

        Raises:
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An argument has a type that is not allowed (nothing accepted).
            ValueError: A bad topic name, or a ``str`` that cannot be encoded as UTF-8
                (nothing accepted).
            TransactionError: The producer has a ``transactional.id`` and no
                :meth:`transaction` is open (nothing accepted).
        """
        if self._needs_transaction:
            await trio.lowlevel.checkpoint()
            raise self._refused_outside_transaction("send")
        if self._encoder is not None:
            key, value, headers = await self._encoder.prepare(topic, key, value, headers)
        if (
            type(value) is bytes
            and headers is None
            and partition is None
            and timestamp is None
            and type(topic) is str
            and topic in valid_topics
            and (key is None or type(key) is bytes)
        ):
            if key is None:
                item: Pending = {"topic": topic, "value": value}
                size = len(value)
            else:
                raw_key: bytes = key  # type: ignore[assignment]  # (a TypeVar: no narrowing)
                item = {"topic": topic, "value": value, "key": raw_key}
                size = len(value) + len(raw_key)
        else:
            item, size = make_item(topic, value, key, headers, partition, timestamp, None)
        await self._acceptor.send(item, size)

    @enable_ki_protection
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
        """Like :meth:`send`, but never waits.

        Raises:
            trio.WouldBlock: ``queue_capacity`` messages are waiting; nothing accepted.
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An argument has a type that is not allowed (nothing accepted).
            ValueError: A bad topic name or an unencodable ``str`` (nothing accepted).
            TransactionError: The producer has a ``transactional.id`` and no
                :meth:`transaction` is open (nothing accepted).
        """
        if self._needs_transaction:
            raise self._refused_outside_transaction("send_nowait")
        if self._encoder is not None:
            key, value, headers = self._encoder.prepare_now(topic, key, value, headers)
        if (
            type(value) is bytes
            and headers is None
            and partition is None
            and timestamp is None
            and type(topic) is str
            and topic in valid_topics
            and (key is None or type(key) is bytes)
        ):
            if key is None:
                self._acceptor.send_nowait({"topic": topic, "value": value}, len(value))
            else:
                raw_key: bytes = key  # type: ignore[assignment]  # (a TypeVar: no narrowing)
                self._acceptor.send_nowait(
                    {"topic": topic, "value": value, "key": raw_key}, len(value) + len(raw_key)
                )
            return
        item, size = make_item(topic, value, key, headers, partition, timestamp, None)
        self._acceptor.send_nowait(item, size)

    @enable_ki_protection
    async def send_many(
        self, topic: str, messages: Iterable[V | tuple[K | None, V | None] | None]
    ) -> int:
        """Accept many messages for one topic with one checkpoint: the fast bulk path.

        Each element is a value (``bytes``, ``str`` or ``None``) or a ``(key, value)``
        pair. Waits while the queue is full. Always a checkpoint.

        Elements are taken from ``messages`` only when there is room for them, and each
        is accepted as it is taken. So if this raises -- cancelled while waiting for
        room, or a bad element -- pass an iterator, and exactly the elements it consumed
        before the failure were accepted. The element the failure is about was consumed
        but not accepted: a bad element, one whose serializer failed, or, with an async
        serializer, the one being serialized when a cancellation or Ctrl-C came (a note
        on the exception says how many were accepted).

        Returns:
            How many messages were accepted.

        Raises:
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An element has a type that is not allowed.
            TransactionError: The producer has a ``transactional.id`` and no
                :meth:`transaction` is open (nothing accepted).
        """
        if self._needs_transaction:
            await trio.lowlevel.checkpoint()
            raise self._refused_outside_transaction("send_many")
        check_topic(topic)
        encoder = self._encoder
        if encoder is not None:
            if encoder.is_async:
                return await encoder.send_many_awaiting(topic, iter(messages), self._acceptor)
            messages = encoder.serialized(topic, iter(messages))
        return await self._intake.accept_many(topic, messages)

    @enable_ki_protection
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
        """Send one message and wait for the broker to confirm it.

        Returns:
            Where it was written.

        Raises:
            DeliveryError: This message could not be delivered (the producer goes on).
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An argument has a type that is not allowed (nothing accepted).
            TransactionError: The producer has a ``transactional.id`` and no
                :meth:`transaction` is open (nothing accepted).

        If cancelled (or interrupted) after the message was accepted, the message is
        still delivered, or handed back like a fire-and-forget one: to
        ``on_delivery_error``, or in the exception leaving ``open_producer``.

        Refused (``ConfigError``, nothing accepted) by a producer opened with
        ``delivery_reports="errors"``: librdkafka then says nothing of a delivery.
        """
        if self._needs_transaction:
            await trio.lowlevel.checkpoint()
            raise self._refused_outside_transaction("send_and_wait")
        if self._encoder is not None:
            key, value, headers = await self._encoder.prepare(topic, key, value, headers)
        if self._tracker.errors_only:
            await trio.lowlevel.checkpoint()
            raise ConfigError(
                "send_and_wait needs the delivery report of its message, and this producer "
                "was opened with delivery_reports='errors' (librdkafka reports failures "
                "only): use send(), or open it with delivery_reports='all'"
            )
        event = trio.Event()
        item, size = make_item(topic, value, key, headers, partition, timestamp, event)
        await self._intake.accept_waiting(item, size, event)
        tracked = item["callback"]  # (the spool gives it one of its own)
        assert isinstance(tracked, TrackedReport)
        return await self._wait_outcome(tracked, event)

    async def _wait_outcome(self, tracked: TrackedReport, event: trio.Event) -> RecordMetadata:
        """Wait for an accepted message's outcome; on cancellation, hand it on (see
        :meth:`send_and_wait`). Not a checkpoint when the outcome is already here."""
        try:
            # Not event.wait(): when the report is already here, its extra checkpoint
            # could raise Cancelled with the outcome in hand (and nobody to give it to).
            if not event.is_set():
                await event.wait()
        except BaseException as exc:
            if not event.is_set():
                # No report yet: the delivery task routes it when it comes.
                tracked.abandoned = True
            elif tracked.failure is not None:
                # The report came while this task was being cancelled: the delivery
                # task left it to us, so we pass it on.
                tracked.abandoned = True
                if not self._state.adopt_failure(tracked.failure):
                    # The producer has ended: we are the last owner.
                    raise tracked.failure from exc
            raise
        if tracked.failure is not None:
            raise tracked.failure
        assert tracked.metadata is not None
        return tracked.metadata

    @enable_ki_protection
    async def flush(self) -> None:
        """Wait until every message accepted before this call has a delivery report.

        Hands the pending batch to librdkafka at once (trigger ``"flush"``). Failed
        deliveries are routed as usual (``on_delivery_error`` or the producer fails).
        Always a checkpoint, even when nothing is pending. With
        ``delivery_reports="errors"`` it waits until librdkafka holds nothing, holding
        newer messages back in the queue meanwhile.

        Raises:
            ProducerClosedError: The producer is closed, or it closed before every
                message sent before this call was confirmed (those are handed back by
                :func:`open_producer`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        channel = self._channel
        if channel.closed:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise channel.closed_error()
        target = await self._intake.flush_target()
        await channel.wait_produced(target)
        await self._tracker.wait_for_earlier()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def abort(self, reason: str = "Producer.abort() was called") -> None:
        """Close now: do not wait for what is still in flight (sync, idempotent).

        New sends raise :class:`ProducerClosedError`; the body of the ``async with``
        block is cancelled; the final drain is cut short (or skipped): messages that
        were not delivered within about a second are purged and handed back in
        :class:`UndeliveredMessagesError` (``reason`` is in its text). This is what a
        second SIGINT/SIGTERM does through :func:`~trio_producer.cancel_on_signals`.
        """
        self._state.abort(reason)

    @asynccontextmanager
    @enable_ki_protection
    async def transaction(self) -> AsyncIterator[None]:
        """A Kafka transaction around the block: commit when it succeeds, abort when it raises.

        Needs the librdkafka property ``transactional.id`` (``init_transactions`` then
        runs when the producer opens). Every message accepted while the block runs --
        from any task -- belongs to the transaction. On success, the pending messages
        are flushed and the transaction committed. If the block raises, is cancelled or
        interrupted -- or the commit step itself is (before librdkafka's commit call
        starts) -- what was sent is flushed and the transaction aborted, shielded and
        bounded by ``transaction_timeout`` (a Ctrl-C cuts the flush short but not the
        abort); the exception that interrupted it propagates, with a note saying the
        transaction was aborted. Either way the producer can run the next transaction.
        Messages of the aborted transaction that the abort refused or purged before they
        were written are failed deliveries: they go to ``on_delivery_error``, or --
        without it -- are handed back with that exception, in its
        ``transaction_undelivered`` attribute (they do not fail the producer).
        Transactions do not nest. Entering and leaving are checkpoints.

        Raises:
            ConfigError: The producer has no ``transactional.id``.
            TransactionError: begin or commit failed (an abortable failure was aborted).
            ProducerClosedError: The producer is closed.
        """
        async with self._transactions.run(self.flush):
            yield

    @enable_ki_protection
    async def send_offsets(self, offsets: Sequence[TopicPartition], group_metadata: bytes) -> None:
        """Add a consumer's positions to the open transaction: consume-transform-produce.

        The offsets are committed for the consumer's group if and only if the
        transaction commits -- together with the messages sent in it -- so that a
        restarted pipeline resumes exactly after the last committed transaction::

            async with producer.transaction():
                for record in batch:
                    await producer.send("out", transform(record.value()))
                await producer.send_offsets(
                    consumer.position(consumer.assignment()),
                    consumer.consumer_group_metadata(),
                )

        Runs librdkafka's ``send_offsets_to_transaction`` in a thread, bounded by
        ``transaction_timeout``, while the delivery task pauses (like commit and abort);
        once started it is not cancellable, so a cancellation is delivered after it
        returns (and then aborts the transaction). Always a checkpoint.

        Args:
            offsets: ``confluent_kafka.TopicPartition`` objects whose ``offset`` is the
                next offset to consume (the last processed one + 1), as
                ``consumer.position()`` returns them. Negative (logical) offsets --
                ``OFFSET_INVALID`` for a partition nothing was consumed from -- are
                skipped, as librdkafka does.
            group_metadata: ``consumer.consumer_group_metadata()`` of the consumer those
                offsets belong to (its group, generation and member id: a zombie
                member is fenced).

        If librdkafka refuses (say, the consumer is no longer a member of its group),
        the :class:`TransactionError` is abortable: ``transaction()`` aborts, and the
        producer goes on. Messages of an aborted transaction that the abort refused or
        purged before they were written go to ``on_delivery_error``; without it they
        are handed back with the exception leaving ``transaction()``, in its
        ``transaction_undelivered`` attribute (a tuple of :class:`DeliveryError`).

        Raises:
            TrioProducerError: No transaction is open on this producer.
            TransactionError: librdkafka refused (``abortable``: ``transaction()`` aborts).
            TypeError: Bad arguments (nothing was sent).
            ValueError: A topic name that is not valid (nothing was sent).
            ProducerClosedError: The producer is closed.
        """
        await self._transactions.send_offsets(offsets, group_metadata)

    def backlog(self) -> int:
        """Accepted messages that are only in the durable spool (0 without one)."""
        return self._intake.backlog()

    @enable_ki_protection
    async def sync(self) -> None:
        """Wait until every message accepted before this call is fsynced in the spool.

        Always a checkpoint. After it returns, those messages survive a power cut too
        (with any sync policy).

        Raises:
            ConfigError: The producer has no durable spool (no ``spool_path``).
            SpoolError: The spool could not be synced.
        """
        await self._intake.sync()

    @property
    def kafka_statistics(self) -> KafkaStatistics | None:
        """librdkafka's latest statistics snapshot, or ``None`` before the first.

        There are statistics when ``on_statistics`` was given, or when
        ``librdkafka={"statistics.interval.ms": ...}`` is set. ``throttle_ms`` shows
        broker quota throttling.
        """
        return self._tracker.hooks.statistics

    @property
    def cluster_reachable(self) -> bool:
        """False from librdkafka's "all brokers are down" until the cluster answers again."""
        return self._tracker.hooks.connectivity.reachable

    def statistics(self) -> ProducerStatistics:
        """A snapshot of the counters (never blocks)."""
        channel = self._channel
        tracker = self._tracker
        stats = ProducerStatistics(
            queued=len(channel.unsent()),
            in_flight=tracker.in_flight,
            delivered=tracker.delivered,
            failed=tracker.failed,
            batches=MappingProxyType(dict(channel.batches)),
        )
        return self._intake.statistics(stats)


#: The producer with a durable spool (``spool_path``) is a :class:`Producer` too: the
#: spool is its intake, not a subclass. Kept as a name for code that annotates with it.
SpooledProducer = Producer
