"""The batching rules, as plain synchronous code: no Trio, no Kafka (sans-IO).

:class:`Batch` is the one owner of the pending messages and their byte count: every
append -- one message from ``send``, or many from ``send_many`` -- goes through it, and so
does every take. It also says when the receiver (the worker) must be woken, so the
channel only acts on its answers. Keeping these rules here lets them be tested
exhaustively, on exactly the code production runs, without an event loop or a broker.
"""

from __future__ import annotations

import enum
import math
from itertools import islice
from typing import TYPE_CHECKING, NotRequired, Protocol, TypedDict

from ._message import Message

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class ReportCallback(Protocol):
    """What librdkafka calls with a delivery report (on the poll thread)."""

    def __call__(self, err: object, msg: object, /) -> None: ...


class Route(enum.IntEnum):
    """How a message goes to librdkafka: decided once, when it is accepted, and carried
    in its ``route`` key (absent for the common case, :attr:`SHARED`).

    The worker's client (``_client.KafkaClient.produce``) only reads this key; it never
    infers a route from which other keys a message has. So a field added to messages
    later changes no route, and the routing is unit-tested without a broker.
    """

    #: A plain message (topic, value, maybe a key): librdkafka's batch call, counted by
    #: the epoch's shared report callback. Never written: the absence of ``route``.
    SHARED = 0
    #: A plain message with its own report callback (a ``send_and_wait`` waiter):
    #: the batch call too, in a run with the shared ones; the callback is its own.
    TRACKED = 1
    #: A plain message carrying a ``ticket`` from the intake that accepted it: the
    #: batch call, in a run of such messages whose shared report callback the intake
    #: makes (the delivery task's ``run_reports``, passed to ``KafkaClient.produce``;
    #: the durable spool's confirms them in it).
    OWN_RUN = 2
    #: Headers, a partition or a timestamp (the batch call drops the first and ignores
    #: or refuses the others): ``produce()``, one by one, in order.
    SINGLE = 3


class Pending(TypedDict):
    """One accepted message on its way to librdkafka.

    Shaped the way ``confluent_kafka.Producer.produce_batch`` takes a message, so that
    the worker hands runs of them over without building anything per message. Absent
    keys mean the defaults: no key, the partitioner's choice, the time of producing.
    ``route`` (a :class:`Route`; absent means :attr:`Route.SHARED`) says how it goes to
    librdkafka; it is set where the message is built, by whoever adds what decides it
    (``partition``, ``timestamp``, ``headers``, a ``callback``, a ``ticket``). The
    batch call ignores the keys it does not know (``route``, ``ticket``): ``ticket``,
    what the intake that accepted the message needs back once it is settled (the
    durable spool: its place in the spool), rides along, opaque to everyone else; the
    run's shared report callback, or the message's own ``TrackedReport``, hands it back.
    """

    topic: str
    value: bytes | None
    key: NotRequired[bytes]
    partition: NotRequired[int]
    timestamp: NotRequired[int]
    headers: NotRequired[list[tuple[str, bytes | None]]]
    callback: NotRequired[ReportCallback]
    ticket: NotRequired[int]
    route: NotRequired[Route]


def route_for(item: Pending, *, own_callback: bool, own_run: bool = False) -> Route:
    """The route of a message being built: the one place the rule is written.

    librdkafka's batch call cannot carry headers, a per-message partition or a timestamp
    (it drops, ignores or refuses them): such a message is :attr:`Route.SINGLE`. Else
    one with its own report callback is :attr:`Route.TRACKED`, one of a run with its own
    shared callback (``own_run``: the spool's) :attr:`Route.OWN_RUN`, the rest
    :attr:`Route.SHARED`. Called where the message is built, once; nothing later looks at
    its fields to route it.
    """
    if "headers" in item or "partition" in item or "timestamp" in item:
        return Route.SINGLE
    if own_callback:
        return Route.TRACKED
    return Route.OWN_RUN if own_run else Route.SHARED


#: Why a batch was handed on; the keys of ``ProducerStatistics.batches``.
TRIGGERS = ("messages", "bytes", "linger", "flush", "drain")


def pending_size(item: Pending) -> int:
    """The size a message counts for in ``max_bytes``: its value plus its key."""
    value = item["value"]
    key = item.get("key")
    return (len(value) if value is not None else 0) + (len(key) if key is not None else 0)


def message_from_pending(item: Pending) -> Message:
    """The :class:`~trio_producer.Message` to hand back for a pending message."""
    return Message(
        topic=item["topic"],
        value=item["value"],
        key=item.get("key"),
        headers=item.get("headers"),
        partition=item.get("partition"),
        timestamp=item.get("timestamp"),
    )


class Batch:
    """Pending messages, the rules for when they leave, and when to wake the receiver.

    Args:
        max_messages: The count trigger.
        max_bytes: The size trigger (keys plus values).
        capacity: How many messages may be pending at once.
    """

    __slots__ = (
        "capacity",
        "items",
        "max_bytes",
        "max_messages",
        "nbytes",
        "taken",
        "wake_bytes",
        "wake_count",
    )

    def __init__(self, max_messages: int, max_bytes: int, capacity: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.capacity = capacity
        self.items: list[Pending] = []
        self.nbytes = 0
        #: Messages handed out by ``take`` so far.
        self.taken = 0
        # The receiver wants to be woken when the pending count or bytes reach these;
        # infinite while it is busy (so appends do not ask for wake-ups per message).
        self.wake_count: float = math.inf
        self.wake_bytes: float = math.inf

    @property
    def count_trigger(self) -> int:
        """The pending count at which a batch leaves: the count limit, or a full queue."""
        return min(self.max_messages, self.capacity)

    def has_room(self) -> bool:
        """Whether one more message may be appended."""
        return len(self.items) < self.capacity

    def room(self) -> int:
        """How many more messages may be appended now."""
        return self.capacity - len(self.items)

    def append(self, item: Pending, size: int) -> bool:
        """Add one message; return whether the receiver must be woken now.

        Raises:
            OverflowError: The batch is at capacity (check ``has_room`` first).
        """
        items = self.items
        count = len(items) + 1
        if count > self.capacity:
            raise OverflowError(f"batch is at capacity ({self.capacity} messages)")
        items.append(item)
        self.nbytes = nbytes = self.nbytes + size
        return count >= self.wake_count or nbytes >= self.wake_bytes

    def extend(
        self,
        topic: str,
        elements: Iterator[object],
        convert: Callable[[str, object], tuple[Pending, int]],
    ) -> int:
        """Append up to ``room()`` elements taken from ``elements`` (the bulk path).

        ``bytes`` elements become plain messages here; others go through ``convert``,
        which builds the message or raises (a bad element is consumed, not appended).
        Whatever was appended before an exception stays appended and counted.

        Returns:
            How many elements were taken from the iterator. Ask :meth:`wants_wake`
            afterwards (also after an exception) whether to wake the receiver.
        """
        items = self.items
        append = items.append
        before = len(items)
        nbytes = 0
        try:
            for element in islice(elements, self.capacity - before):
                if type(element) is bytes:
                    append({"topic": topic, "value": element})
                    nbytes += len(element)
                else:
                    item, size = convert(topic, element)
                    append(item)
                    nbytes += size
        finally:
            self.nbytes += nbytes
        return len(items) - before

    def wants_wake(self) -> bool:
        """Whether the receiver asked to be woken at the current count or bytes."""
        return len(self.items) >= self.wake_count or self.nbytes >= self.wake_bytes

    def want_first(self) -> None:
        """The receiver waits for a first message: wake it on the next append."""
        self.wake_count = 1
        self.wake_bytes = math.inf

    def want_trigger(self) -> None:
        """The receiver lingers: wake it when a size trigger fires."""
        self.wake_count = self.count_trigger
        self.wake_bytes = self.max_bytes

    def want_nothing(self) -> None:
        """The receiver is busy, or already woken: appends need not wake it."""
        self.wake_count = math.inf
        self.wake_bytes = math.inf

    def trigger(self) -> str | None:
        """``"messages"`` or ``"bytes"`` when a size trigger has fired, else ``None``."""
        if len(self.items) >= self.count_trigger:
            return "messages"
        if self.nbytes >= self.max_bytes:
            return "bytes"
        return None

    def take(self) -> list[Pending]:
        """Hand out the oldest pending messages: at most ``max_messages`` of them, and
        no more than it takes to reach ``max_bytes`` (always at least one).

        The common case -- everything pending is within both limits -- is O(1).
        """
        items = self.items
        if len(items) <= self.max_messages and self.nbytes <= self.max_bytes:
            self.items = []
            self.nbytes = 0
            self.taken += len(items)
            return items
        cut = min(len(items), self.max_messages)
        taken_bytes = 0
        for i in range(cut):
            taken_bytes += pending_size(items[i])
            if taken_bytes >= self.max_bytes:
                cut = i + 1
                break
        out = items[:cut]
        del items[:cut]
        self.nbytes -= taken_bytes
        self.taken += cut
        return out

    @property
    def accepted(self) -> int:
        """Messages accepted so far: taken plus pending."""
        return self.taken + len(self.items)

    def __len__(self) -> int:
        return len(self.items)
