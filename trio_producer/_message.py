"""Records that cross the public API: what was sent, and where it landed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import attrs

#: What ``headers=`` accepts: a mapping or a sequence of ``(name, value)`` pairs.
#: Names are ``str``; values are ``bytes``, ``str`` (encoded as UTF-8) or ``None``.
HeaderValue: TypeAlias = bytes | str | None
Headers: TypeAlias = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]]


@attrs.frozen
class Message:
    """A message as the application gave it to :meth:`Producer.send`.

    Handed back in :class:`~trio_producer.DeliveryError` and
    :class:`~trio_producer.UndeliveredMessagesError` so that the application can
    persist or resend it.

    Attributes:
        topic: The topic it was sent to.
        value: The payload (``str`` values were encoded to UTF-8 bytes at ``send``).
        key: The key, or ``None``.
        headers: ``(name, value)`` pairs, or ``None`` when the message had none.
        partition: The partition it was bound for, or ``None`` when the partitioner
            had not chosen one yet.
        timestamp: Its timestamp in milliseconds since the epoch, or ``None``.
    """

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] | None = None
    partition: int | None = None
    timestamp: int | None = None


@attrs.frozen
class RecordMetadata:
    """Where a message was written, as confirmed by the broker.

    Attributes:
        topic: The topic.
        partition: The partition.
        offset: The offset of the record in that partition.
        timestamp: The record timestamp in milliseconds since the epoch, or ``None``
            when the broker reported none.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int | None


@attrs.frozen
class KafkaErrorInfo:
    """A librdkafka error, copied out of the client so it can outlive it.

    Attributes:
        code: librdkafka's numeric error code (negative codes are local errors).
        name: Its symbolic name, e.g. ``"MSG_SIZE_TOO_LARGE"`` or ``"_PURGE_QUEUE"``.
        reason: librdkafka's human-readable description.
        retriable: Whether librdkafka considers the error retriable.
        fatal: Whether the error is fatal for the producer instance.
    """

    code: int
    name: str
    reason: str
    retriable: bool = False
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@attrs.frozen
class ConsumedRecord:
    """A record read back from Kafka (used by the test helpers and the CLI demo).

    Attributes:
        topic: The topic.
        partition: The partition.
        offset: The offset in that partition.
        key: The key, or ``None``.
        value: The value, or ``None``.
        headers: ``(name, value)`` pairs, or ``None``.
        timestamp: The record timestamp in milliseconds, or ``None``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    timestamp: int | None


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
        spooled: With a durable spool: messages in it that are not confirmed yet.
        recovered: With a durable spool: unconfirmed messages an earlier process left
            in it, found when this producer opened it (sent before anything new).
        spool_error: With a durable spool: the disk condition it is in, or ``None``
            (no room for a new segment: new messages are refused with
            ``SpoolDiskFullError``; no room for the ack log; an ``fsync`` failed).
        spool_unrecorded: With a durable spool: confirmations a full disk keeps out of
            the ack log (in memory; if the process ends before they are written, those
            messages are sent again by the next run).
    """

    queued: int
    in_flight: int
    delivered: int
    failed: int
    batches: Mapping[str, int]
    spooled: int = 0
    recovered: int = 0
    spool_error: str | None = None
    spool_unrecorded: int = 0
