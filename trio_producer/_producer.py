"""open_producer and the Producer handle: the nursery, the channel, the shutdown order."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from itertools import islice
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
import trio

from ._batch import Batch, Item
from ._client import NOT_PRODUCED, KafkaClient, failure_from_report, metadata_from_report
from ._config import ProducerConfig, make_config
from ._delivery import DeliveryTracker, Tracked
from ._exceptions import (
    ConfigError,
    DeliveryError,
    KafkaFatalError,
    ProducerClosedError,
    TransactionError,
    TrioProducerError,
    UndeliveredMessagesError,
)
from ._worker import BatchChannel, run_worker

if TYPE_CHECKING:
    from ._message import Headers, KafkaErrorInfo, RecordMetadata

logger = logging.getLogger("trio_producer")

#: Grace after ``close_timeout`` for the background tasks to notice they are stopped
#: (one poll timeout) and for purged delivery reports to be served.
_STOP_GRACE = 2.0


@attrs.frozen
class ProducerStatistics:
    """A snapshot of a producer's counters.

    Attributes:
        queued: Accepted messages not yet handed to librdkafka.
        in_flight: Messages handed to librdkafka whose delivery report has not come.
        delivered: Messages the broker confirmed.
        failed: Messages whose delivery failed (including purged ones).
        batches: Batches handed to librdkafka, by trigger: ``"messages"`` (count or
            full queue), ``"bytes"``, ``"linger"``, ``"flush"``, ``"drain"`` (the final
            drain when the channel closed).
    """

    queued: int
    in_flight: int
    delivered: int
    failed: int
    batches: Mapping[str, int]


def _bytes_arg(name: str, value: object, *, allow_none: bool = True) -> bytes | None:
    """The slow path of argument coercion: str is encoded, bytes-likes are copied."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    allowed = "bytes, bytearray, memoryview, str (encoded as UTF-8) or None"
    raise TypeError(f"{name} must be {allowed}, not {type(value).__name__} {value!r:.50}")


def _check_headers(headers: object) -> Any:
    if isinstance(headers, Mapping):
        pairs = list(headers.items())
    elif isinstance(headers, list | tuple):
        pairs = list(headers)
    else:
        raise TypeError(
            "headers must be a mapping or a list of (name, value) pairs, "
            f"not {type(headers).__name__}"
        )
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"each header must be a (name, value) pair, not {pair!r:.50}")
        name, value = pair
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__} {name!r:.50}")
        if value is not None and not isinstance(value, bytes | str):
            raise TypeError(
                f"header {name!r} must have a bytes, str or None value, not {type(value).__name__}"
            )
    return pairs


#: What ``send_many`` takes: a value, or a ``(key, value)`` pair.
BulkMessage: TypeAlias = bytes | str | tuple[bytes | str | None, bytes | str | None] | None


def _bulk_item(topic: str, element: object) -> tuple[Item, int]:
    if isinstance(element, tuple):
        if len(element) != 2:
            raise TypeError(
                f"send_many takes values or (key, value) pairs, not a {len(element)}-tuple"
            )
        key = _bytes_arg("key", element[0])
        value = _bytes_arg("value", element[1])
    else:
        key = None
        value = _bytes_arg("value", element)
    size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
    return (topic, value, key, None, -1, 0, None), size


_TOPIC_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
#: Topic names already checked (the check is a regex; the hot path is a set lookup).
_valid_topics: set[str] = set()
_VALID_TOPICS_MAX = 10_000


def _bad_topic(topic: object) -> TypeError | ValueError:
    if not isinstance(topic, str):
        return TypeError(f"topic must be a non-empty str, not {type(topic).__name__} {topic!r:.50}")
    if not topic:
        return ValueError(f"topic must be a non-empty str, not {topic!r}")
    return ValueError(
        f"topic {topic!r:.80} is not a valid Kafka topic name: use 1 to 249 of "
        "the characters a-z A-Z 0-9 . _ - (and not '.' or '..')"
    )


def _check_topic(topic: object) -> None:
    """Raise unless ``topic`` is a legal Kafka topic name; remember the good ones."""
    if type(topic) is str and topic in _valid_topics:
        return
    if type(topic) is not str or topic in (".", "..") or not _TOPIC_RE.fullmatch(topic):
        raise _bad_topic(topic)
    if len(_valid_topics) < _VALID_TOPICS_MAX:
        _valid_topics.add(topic)


def _item(
    topic: str,
    value: object,
    key: object,
    headers: object,
    partition: int | None,
    timestamp: int | None,
    event: trio.Event | None,
) -> tuple[Item, int]:
    """Validate one message and build its queue item and size. Raises before accepting."""
    _check_topic(topic)
    if type(value) is not bytes:
        value = _bytes_arg("value", value)
    if key is not None and type(key) is not bytes:
        key = _bytes_arg("key", key)
    size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
    if partition is None:
        part = -1
    elif type(partition) is int and partition >= 0:
        part = partition
    else:
        raise TypeError(f"partition must be an int >= 0 or None, not {partition!r}")
    if timestamp is None:
        ts = 0
    elif type(timestamp) is int and timestamp > 0:
        ts = timestamp
    else:
        raise TypeError(
            "timestamp must be an int of milliseconds since the epoch > 0 or None, "
            f"not {timestamp!r}"
        )
    tracked = None
    if headers is not None:
        headers = _check_headers(headers)
        tracked = Tracked(headers, event)
    elif event is not None:
        tracked = Tracked(None, event)
    return (topic, value, key, headers, part, ts, tracked), size


class Producer:
    """The handle yielded by :func:`open_producer`. Do not create it yourself.

    Checkpoints: :meth:`send`, :meth:`send_many`, :meth:`send_and_wait`,
    :meth:`flush` and entering/leaving :meth:`transaction` always are;
    :meth:`send_nowait` and :meth:`statistics` never block.
    """

    def __init__(
        self, channel: BatchChannel, tracker: DeliveryTracker, close_timeout: float = 30.0
    ) -> None:
        self._channel = channel
        self._tracker = tracker
        self._close_timeout = close_timeout
        self._in_transaction = False
        #: One :class:`DeliveryError` per accepted message that was not delivered, set
        #: when the block is left with an exception of its own (which won over the
        #: :class:`UndeliveredMessagesError`).
        self.undelivered: tuple[DeliveryError, ...] = ()

    async def send(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Accept one message for delivery (fire and forget), waiting while the queue is full.

        Always a checkpoint. If it returns, the message was accepted: it will be
        delivered, or handed back in an exception when the producer closes. If it
        raises (``Cancelled`` included), the message was not accepted.

        Args:
            topic: The topic.
            value: The payload; ``str`` is encoded as UTF-8; ``None`` is a tombstone.
            key: The key; ``str`` is encoded as UTF-8.
            headers: A mapping or a list of ``(name, value)`` pairs.
            partition: An explicit partition, or ``None`` for the partitioner.
            timestamp: Milliseconds since the epoch, or ``None`` for now.

        Raises:
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An argument has a type that is not allowed (nothing accepted).
        """
        if (
            type(value) is bytes
            and headers is None
            and partition is None
            and timestamp is None
            and type(topic) is str
            and topic in _valid_topics
            and (key is None or type(key) is bytes)
        ):
            item: Item = (topic, value, key, None, -1, 0, None)
            size = len(value) + len(key) if key is not None else len(value)
        else:
            item, size = _item(topic, value, key, headers, partition, timestamp, None)
        await self._channel.send(item, size)

    def send_nowait(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Like :meth:`send`, but never waits.

        Raises:
            trio.WouldBlock: ``queue_capacity`` messages are waiting; nothing accepted.
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An argument has a type that is not allowed (nothing accepted).
        """
        if (
            type(value) is bytes
            and headers is None
            and partition is None
            and timestamp is None
            and type(topic) is str
            and topic in _valid_topics
            and (key is None or type(key) is bytes)
        ):
            size = len(value) + len(key) if key is not None else len(value)
            self._channel.send_nowait((topic, value, key, None, -1, 0, None), size)
            return
        item, size = _item(topic, value, key, headers, partition, timestamp, None)
        self._channel.send_nowait(item, size)

    async def send_many(self, topic: str, messages: Iterable[BulkMessage]) -> int:
        """Accept many messages for one topic with one checkpoint: the fast bulk path.

        Each element is a value (``bytes``, ``str`` or ``None``) or a ``(key, value)``
        pair. Waits while the queue is full. Always a checkpoint.

        Elements are taken from ``messages`` only when there is room for them, and each
        is accepted as it is taken. So if this raises -- cancelled while waiting for
        room, or a bad element -- pass an iterator, and exactly the elements it consumed
        before the failure were accepted (a bad element is consumed but not accepted).

        Returns:
            How many messages were accepted.

        Raises:
            ProducerClosedError: The producer no longer accepts messages.
            TypeError: An element has a type that is not allowed.
        """
        _check_topic(topic)
        await trio.lowlevel.checkpoint_if_cancelled()
        channel = self._channel
        batch = channel.batch
        it = iter(messages)
        accepted = 0
        while True:
            if channel.closed:
                raise ProducerClosedError(channel.closed_reason)
            room = batch.capacity - len(batch.items)
            if room <= 0:
                await channel.wait_for_room()
                continue
            items = batch.items
            before = len(items)
            nbytes = 0
            taken = 0
            try:
                for element in islice(it, room):
                    taken += 1
                    if type(element) is bytes:
                        items.append((topic, element, None, None, -1, 0, None))
                        nbytes += len(element)
                    else:
                        item, size = _bulk_item(topic, element)
                        items.append(item)
                        nbytes += size
            finally:
                batch.nbytes += nbytes
                accepted += len(items) - before
                channel.after_bulk_append()
            if taken < room:
                break
        await trio.lowlevel.cancel_shielded_checkpoint()
        return accepted

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
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

        If cancelled after the message was accepted, the message is still delivered
        (or handed back at close), like a fire-and-forget one.
        """
        event = trio.Event()
        item, size = _item(topic, value, key, headers, partition, timestamp, event)
        await self._channel.send(item, size)
        tracked: Tracked = item[6]
        try:
            await event.wait()
        except BaseException:
            if not event.is_set():
                tracked.abandoned = True
            raise
        if tracked.err is not None:
            raise failure_from_report(tracked.err, tracked.msg, tracked)
        return metadata_from_report(tracked.msg)

    async def flush(self) -> None:
        """Wait until every message accepted before this call has a delivery report.

        Hands the pending batch to librdkafka at once (trigger ``"flush"``). Failed
        deliveries are routed as usual (``on_delivery_error`` or the producer fails).

        Raises:
            ProducerClosedError: The producer is closed.
        """
        channel = self._channel
        if channel.closed:
            await trio.lowlevel.checkpoint()
            raise ProducerClosedError(channel.closed_reason)
        target = channel.request_flush()
        await channel.wait_produced(target)
        await self._tracker.wait_for_earlier()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A Kafka transaction around the block: commit when it succeeds, abort when it raises.

        Needs the librdkafka property ``transactional.id`` (``init_transactions`` then
        runs when the producer opens). Every message accepted while the block runs --
        from any task -- belongs to the transaction. On success, the pending messages
        are flushed and the transaction committed; on an exception (cancellation
        included) what was sent is flushed and the transaction aborted, shielded and
        bounded by ``close_timeout``, and the exception propagates. Transactions do not
        nest. Entering and leaving are checkpoints.

        Raises:
            ConfigError: The producer has no ``transactional.id``.
            TransactionError: begin or commit failed (an abortable failure was aborted).
            ProducerClosedError: The producer is closed.
        """
        tracker = self._tracker
        client = tracker.client
        await trio.lowlevel.checkpoint()
        if not client.transactional:
            raise ConfigError(
                "transaction() needs the librdkafka property 'transactional.id' "
                "(librdkafka={'transactional.id': ...})"
            )
        if self._in_transaction:
            raise TrioProducerError("a transaction is already open on this producer")
        if self._channel.closed:
            raise ProducerClosedError(self._channel.closed_reason)
        self._in_transaction = True
        try:
            client.begin_transaction()
            try:
                yield
            except BaseException as exc:
                with trio.move_on_after(self._close_timeout, shield=True):
                    try:
                        await self._settle_quietly()
                        await tracker.run_exclusive(client.abort_transaction, self._close_timeout)
                    except TrioProducerError as abort_error:
                        # The block's exception (or the cancellation) is what the caller
                        # must see; the failed abort is logged and noted on it.
                        logger.error("aborting the transaction failed: %s", abort_error)
                        exc.add_note(
                            f"trio_producer: aborting the transaction failed: {abort_error}"
                        )
                raise
            await self.flush()
            try:
                await tracker.run_exclusive(client.commit_transaction, self._close_timeout)
            except TransactionError as exc:
                if exc.abortable:
                    with trio.move_on_after(self._close_timeout, shield=True):
                        await tracker.run_exclusive(client.abort_transaction, self._close_timeout)
                raise
        finally:
            self._in_transaction = False

    async def _settle_quietly(self) -> None:
        """Deliver what was sent (so that an abort purges nothing we would hand back)."""
        channel = self._channel
        await channel.wait_produced(channel.request_flush())
        await self._tracker.wait_for_earlier()

    def statistics(self) -> ProducerStatistics:
        """A snapshot of the counters (never blocks)."""
        channel = self._channel
        tracker = self._tracker
        return ProducerStatistics(
            queued=len(channel.unsent()),
            in_flight=tracker.in_flight,
            delivered=tracker.delivered,
            failed=tracker.failed,
            batches=MappingProxyType(dict(channel.batches)),
        )


@attrs.define(eq=False)
class _Shutdown:
    """What happened while the producer was open: decides what leaves the block."""

    on_delivery_error: Callable[[DeliveryError], object] | None
    failures: list[DeliveryError] = attrs.Factory(list)
    failed_by: TrioProducerError | None = None
    fatal: KafkaErrorInfo | None = None
    body_scope: trio.CancelScope | None = None
    channel: BatchChannel | None = None
    closed: bool = False

    def route_failure(self, failure: DeliveryError) -> None:
        if self.closed:
            # Reports served after the tasks stopped (purged at the deadline): these are
            # always handed back in the exception, never only to the hook.
            self.failures.append(failure)
            return
        hook = self.on_delivery_error
        if hook is not None and self.fatal is None:
            try:
                hook(failure)
            except Exception as exc:
                logger.exception("on_delivery_error raised; the producer fails")
                self.failures.append(failure)
                self._fail(failure, f"on_delivery_error raised {exc!r}")
            return
        self.failures.append(failure)
        if self.failed_by is None:
            logger.error("delivery failed, the producer fails: %s", failure)
            self._fail(failure, f"a delivery failed: {failure}")

    def on_fatal(self, error: KafkaErrorInfo) -> None:
        self.fatal = error
        self._fail(None, f"fatal Kafka error: {error}")

    def _fail(self, failure: DeliveryError | None, reason: str) -> None:
        if self.failed_by is None and failure is not None:
            self.failed_by = failure
        if self.channel is not None:
            self.channel.close(f"the producer failed: {reason}")
        if self.body_scope is not None:
            self.body_scope.cancel(reason=f"trio_producer: {reason}")


@asynccontextmanager
async def open_producer(
    config: ProducerConfig | None = None,
    /,
    *,
    on_delivery_error: Callable[[DeliveryError], object] | None = None,
    **fields: Any,
) -> AsyncIterator[Producer]:
    """Open a Kafka producer for the duration of an ``async with`` block.

    Either pass a :class:`ProducerConfig`, or its fields as keywords::

        async with open_producer(bootstrap_servers="localhost:9092", linger=0.01) as p:
            await p.send("events", b"hello")

    On leaving the block -- normally, by an exception, by cancellation or by
    ``KeyboardInterrupt`` -- the producer stops accepting messages, hands its last batch
    to librdkafka (the final drain) and waits for every delivery report, for at most
    ``close_timeout`` seconds, shielded from cancellation. What was not confirmed by
    then is purged and raised as :class:`UndeliveredMessagesError`. The block's own
    exception wins; the undelivered messages are then attached to it as a note, logged
    at ERROR and kept in :attr:`Producer.undelivered`.

    Args:
        config: The configuration.
        on_delivery_error: Called (on the Trio thread, must not block) with each failed
            fire-and-forget delivery. Without it, the first failure fails the
            producer: the block is cancelled and leaves with :class:`DeliveryError`
            (or :class:`UndeliveredMessagesError` when several messages failed).
        **fields: :class:`ProducerConfig` fields, instead of ``config``.

    Raises:
        ConfigError: A bad field, or a property librdkafka rejects (before any task starts).
        UndeliveredMessagesError: Accepted messages were not delivered.
        DeliveryError: A fire-and-forget delivery failed and no hook was given.
        KafkaFatalError: librdkafka reported a fatal error.
    """
    cfg = make_config(config, fields)
    client = KafkaClient(cfg.librdkafka_config())
    try:
        state = _Shutdown(on_delivery_error)
        channel = BatchChannel(
            Batch(cfg.batch_max_messages, cfg.batch_max_bytes, cfg.queue_capacity), cfg.linger
        )
        state.channel = channel
        tracker = DeliveryTracker(client, state.route_failure, state.on_fatal)
        producer = Producer(channel, tracker, cfg.close_timeout)
        if client.transactional:
            # Blocking and not cancellable: bounded by its own timeout.
            await trio.to_thread.run_sync(client.init_transactions, cfg.close_timeout)
        body_exc: BaseException | None = None
        internal: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                # The background tasks are shielded from the block's cancellation: they stop
                # when the shutdown below cancels their scopes, and not before.
                worker_scope = trio.CancelScope(shield=True)
                delivery_scope = trio.CancelScope(shield=True)
                worker_done = trio.Event()
                delivery_done = trio.Event()
                await nursery.start(_in_scope, delivery_scope, delivery_done, tracker.run)
                await nursery.start(
                    _in_scope, worker_scope, worker_done, partial(run_worker, channel, tracker)
                )
                with trio.CancelScope() as body_scope:
                    state.body_scope = body_scope
                    try:
                        yield producer
                    except BaseException as exc:
                        body_exc = exc
                state.body_scope = None
                if (
                    isinstance(body_exc, trio.Cancelled)
                    and body_scope.cancel_called
                    and (state.failed_by is not None or state.fatal is not None)
                ):
                    body_exc = None  # we cancelled the block because the producer failed
                # 1. Close the send side (sync): new sends raise ProducerClosedError.
                channel.close()
                deadline = trio.current_time() + cfg.close_timeout
                with trio.CancelScope(deadline=deadline + _STOP_GRACE, shield=True):
                    # 2-3. The worker drains (the channel's end, not a flag, ends its loop);
                    # then every delivery report, bounded by close_timeout.
                    with trio.move_on_at(deadline):
                        await worker_done.wait()
                        await tracker.wait_settled()
                    # 4. Stop the tasks and let them finish (within one poll timeout).
                    worker_scope.cancel(reason="trio_producer: producer closed")
                    delivery_scope.cancel(reason="trio_producer: producer closed")
                    await worker_done.wait()
                    await delivery_done.wait()
        except BaseException as exc:  # a bug in a background task, or KeyboardInterrupt
            internal = exc
        # 5. Only now, with no task left that uses it: purge, collect, close.
        state.closed = True
        client.purge()
        client.serve_remaining_reports(time.monotonic() + _STOP_GRACE)
        tracker.process()
        for item in channel.unsent():
            state.failures.append(failure_from_report(NOT_PRODUCED, item, item[6]))
        if internal is not None:
            _raise_internal(state, producer, internal)
        _raise_outcome(state, producer, body_exc, tracker.in_flight)
    finally:
        client.close()


async def _in_scope(
    scope: trio.CancelScope,
    done: trio.Event,
    fn: Callable[..., Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        with scope:
            await fn(task_status=task_status)
    finally:
        done.set()


def _raise_internal(state: _Shutdown, producer: Producer, exc: BaseException) -> None:
    if state.failures:
        producer.undelivered = tuple(state.failures)
        exc.add_note(
            f"trio_producer: {len(state.failures)} accepted message(s) were not delivered; "
            "they are in Producer.undelivered"
        )
    if isinstance(exc, KeyboardInterrupt | trio.Cancelled):
        raise exc
    error = UndeliveredMessagesError(
        state.failures, "internal error in trio_producer, please report it"
    )
    raise error from exc


def _raise_outcome(
    state: _Shutdown, producer: Producer, body_exc: BaseException | None, unknown: int
) -> None:
    failures: Sequence[DeliveryError] = state.failures
    if unknown:
        logger.error("%d message(s) have an unknown delivery status after the purge", unknown)
    error: TrioProducerError | None = None
    if state.fatal is not None:
        error = KafkaFatalError(state.fatal, failures)
    elif len(failures) == 1 and state.failed_by is failures[0] and not unknown:
        error = failures[0]
    elif failures or unknown:
        # librdkafka normally reports every purged message at once; if some never came
        # back, their content is gone, but their number is still raised, not only logged.
        reason = f"and {unknown} more with no delivery report after the purge" if unknown else ""
        error = UndeliveredMessagesError(failures, reason)
        if state.failed_by is not None:
            error.__cause__ = state.failed_by
    if body_exc is None or isinstance(body_exc, trio.Cancelled):
        if error is not None:
            raise error
        if body_exc is not None:
            raise body_exc
        return
    # The block's own exception wins; what was not delivered is never hidden.
    if unknown:
        body_exc.add_note(
            f"trio_producer: {unknown} accepted message(s) got no delivery report after the purge"
        )
    if failures:
        producer.undelivered = tuple(failures)
        body_exc.add_note(
            f"trio_producer: {len(failures)} accepted message(s) were not delivered; "
            "they are in Producer.undelivered"
        )
        logger.error(
            "%d accepted message(s) were not delivered (the block raised %r)",
            len(failures),
            body_exc,
            exc_info=error,
        )
    raise body_exc
