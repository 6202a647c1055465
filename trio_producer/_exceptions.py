"""The exception family of trio_producer."""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._message import KafkaErrorInfo, Message


class TrioProducerError(Exception):
    """Base class of every exception trio_producer raises on purpose."""


class ConfigError(TrioProducerError, ValueError):
    """A configuration value is not allowed.

    The message names the field, the value and what is allowed. librdkafka's own
    words are kept for properties that librdkafka rejects.
    """


class ProducerClosedError(TrioProducerError):
    """``send`` (or ``flush``) was called on a producer that no longer accepts messages.

    Nothing was accepted: the message passed to the failing call is not in flight.

    Attributes:
        producer_failed: The producer was closed because it failed (a delivery failed
            with no hook, a fatal error, or :meth:`~trio_producer.Producer.abort`). The
            block then leaves with that root cause, not with this secondary error.
    """

    def __init__(self, reason: str = "the producer is closed", *, producer_failed: bool = False):
        super().__init__(reason)
        self.producer_failed = producer_failed


#: Errors after which the broker may have written the message all the same: librdkafka
#: had sent it, or may have (a message queued again for a retry is purged as
#: ``_PURGE_QUEUE`` too), when its outcome was decided. Kafka cannot tell the client.
IN_DOUBT_ERRORS = frozenset(
    {
        "_PURGE_INFLIGHT",
        "_PURGE_QUEUE",
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "REQUEST_TIMED_OUT",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    }
)


class DeliveryError(TrioProducerError):
    """One message could not be delivered.

    Attributes:
        message: The :class:`~trio_producer.Message` that was not delivered.
        error: The Kafka error, as a :class:`~trio_producer.KafkaErrorInfo`.
        cluster_unreachable: When the delivery failed while the producer saw the
            cluster as unreachable (say, ``_MSG_TIMED_OUT`` because no broker
            answered): ``"the Kafka cluster at HOST:PORT was unreachable (<the last
            connection error>)"``, also in the text of the exception; else ``None``.
    """

    #: (see Attributes; set on the Trio thread when the failure is handed over)
    cluster_unreachable: str | None = None

    @property
    def possibly_delivered(self) -> bool:
        """Whether the broker may have written it after all (the outcome is in doubt).

        True for purges, timeouts and ``NOT_ENOUGH_REPLICAS_AFTER_APPEND``: a message that
        librdkafka had sent (or queued again for a retry) may be in the log, and becomes
        visible once enough replicas are back. Resending it may duplicate it. False for
        ``_NOT_PRODUCED`` (it never left this process) and for definite rejections (too
        large, unknown partition, authorization).
        """
        return self.error.name in IN_DOUBT_ERRORS

    def __init__(self, message: Message, error: KafkaErrorInfo) -> None:
        super().__init__(message, error)
        self.message = message
        self.error = error

    def __str__(self) -> str:
        where = self.message.topic
        if self.message.partition is not None:
            where = f"{where}[{self.message.partition}]"
        text = f"delivery to {where!r} failed: {self.error}"
        if self.cluster_unreachable is not None:
            text = f"{text}; {self.cluster_unreachable}"
        return text


def _summary(failures: Sequence[DeliveryError]) -> str:
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure.error.name] = counts.get(failure.error.name, 0) + 1
    return ", ".join(f"{name} x{count}" for name, count in counts.items())


def _unreachable(failures: Sequence[DeliveryError]) -> str | None:
    """The last "cluster unreachable" explanation among ``failures``, if any."""
    for failure in reversed(failures):
        if failure.cluster_unreachable is not None:
            return failure.cluster_unreachable
    return None


class UndeliveredMessagesError(TrioProducerError):
    """Accepted messages that were not delivered, handed back to the application.

    Raised when the producer closes (or fails) with messages that the broker did not
    confirm: the wait for delivery reports hit ``close_timeout``, they were purged
    from librdkafka, or they failed. Nothing is lost silently: persist ``messages``
    or send them again.

    Attributes:
        failures: One :class:`DeliveryError` per message, each with the message and
            the reason it was not delivered (``_PURGE_QUEUE`` / ``_PURGE_INFLIGHT``
            for messages purged at the deadline, ``_NOT_PRODUCED`` for messages that
            never reached librdkafka).
    """

    def __init__(
        self, failures: Sequence[DeliveryError], reason: str = "", *, spool_path: str | None = None
    ) -> None:
        self.failures: tuple[DeliveryError, ...] = tuple(failures)
        self.reason = reason
        #: With a durable spool: the directory that still holds the purged and never-sent
        #: ones among these messages (errors ``_PURGE_QUEUE``, ``_PURGE_INFLIGHT``,
        #: ``_NOT_PRODUCED``): the next producer that opens it sends them first, so do not
        #: send those again yourself. Messages that failed for another reason (e.g.
        #: ``_MSG_TIMED_OUT`` before the stop, a broker's refusal) left the spool when they
        #: were handed back: they are yours to persist or resend.
        self.spool_path = spool_path
        super().__init__(str(self))

    @property
    def messages(self) -> tuple[Message, ...]:
        """The undelivered messages, in the order they were collected."""
        return tuple(failure.message for failure in self.failures)

    def __str__(self) -> str:
        head = f"{len(self.failures)} accepted message(s) were not delivered"
        if self.reason:
            head = f"{head} ({self.reason})"
        if self.failures:
            head = f"{head}: {_summary(self.failures)}"
            unreachable = _unreachable(self.failures)
            if unreachable is not None:
                head = f"{head}; {unreachable}"
        return head


class KafkaFatalError(TrioProducerError):
    """librdkafka reported a fatal error: this producer instance cannot go on.

    Attributes:
        error: The fatal Kafka error.
        failures: One :class:`DeliveryError` per accepted message that was not
            delivered (see :class:`UndeliveredMessagesError`).
    """

    def __init__(self, error: KafkaErrorInfo, failures: Sequence[DeliveryError] = ()) -> None:
        self.error = error
        self.failures: tuple[DeliveryError, ...] = tuple(failures)
        super().__init__(str(self))

    @property
    def messages(self) -> tuple[Message, ...]:
        """The accepted messages that were not delivered."""
        return tuple(failure.message for failure in self.failures)

    def __str__(self) -> str:
        text = f"fatal Kafka error: {self.error}"
        if self.failures:
            text = f"{text}; {len(self.failures)} accepted message(s) were not delivered"
        return text


class TransactionError(TrioProducerError):
    """A transactional operation (init, begin, commit, abort) failed.

    Attributes:
        error: The Kafka error.
        abortable: The transaction must be aborted (``transaction()`` has done so).
        retriable: The operation may succeed if tried again.
        fatal: The producer cannot go on (it fails with :class:`KafkaFatalError` too).
    """

    def __init__(self, operation: str, error: KafkaErrorInfo, *, abortable: bool = False) -> None:
        self.operation = operation
        self.error = error
        self.abortable = abortable
        self.retriable = error.retriable
        self.fatal = error.fatal
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.operation} failed: {self.error}"


class SerializationError(TrioProducerError):
    """A key or value serializer raised, or returned something that is not bytes or None.

    Raised by the send method at the call: the message was **not** accepted. The
    serializer's own exception is the ``__cause__``.

    Attributes:
        field: ``"key"`` or ``"value"``.
        topic: The topic of the message.
        obj: The key or value that could not be serialized.
        index: For :meth:`Producer.send_many`: the position of the element in the
            iterable (counting from 0), else ``None``.
    """

    def __init__(
        self, field: str, topic: str, obj: object, error: BaseException, index: int | None = None
    ) -> None:
        self.field = field
        self.topic = topic
        self.obj = obj
        self.error = error
        self.index = index
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (send_many element {self.index})" if self.index is not None else ""
        return (
            f"{self.field}_serializer failed for a message to topic {self.topic!r}{where}: "
            f"{type(self.error).__name__}: {self.error} ({self.field} was "
            f"{type(self.obj).__name__} {_short_repr(self.obj)}); nothing was accepted"
        )


def _short_repr(obj: object) -> str:
    """A bounded repr (a huge object is not rendered whole); never raises."""
    try:
        return _REPR.repr(obj)
    except Exception as exc:
        return f"<{type(obj).__name__}: repr() raised {type(exc).__name__}>"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
