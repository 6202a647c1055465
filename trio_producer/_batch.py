"""The batching rules, as plain synchronous code: no Trio, no Kafka (sans-IO).

The worker asks three things of a batch: may one more message come in (``has_room``),
has a trigger fired (``trigger``), and give me what is pending (``take``). Keeping these
rules here lets them be tested exhaustively without an event loop or a broker.
"""

from __future__ import annotations

from typing import Any, TypeAlias

#: One accepted message on its way to librdkafka:
#: ``(topic, value, key, headers, partition, timestamp, tracker)`` where ``partition``
#: is ``-1`` for "let the partitioner choose", ``timestamp`` is ``0`` for "now", and
#: ``tracker`` is ``None`` for a plain fire-and-forget message.
Item: TypeAlias = tuple[str, bytes | None, bytes | None, Any, int, int, Any]

#: Why a batch was handed on; the keys of ``ProducerStatistics.batches``.
TRIGGERS = ("messages", "bytes", "linger", "flush", "drain")


def item_size(item: Item) -> int:
    """The size an item counts for in ``max_bytes``: its value plus its key."""
    value, key = item[1], item[2]
    return (len(value) if value is not None else 0) + (len(key) if key is not None else 0)


class Batch:
    """Pending messages and the rules for when they leave.

    ``items`` and ``nbytes`` are public on purpose: the producer's ``send_nowait`` is
    the hot path and appends to them directly (see ``BatchChannel.send_nowait``).

    Args:
        max_messages: The count trigger.
        max_bytes: The size trigger (keys plus values).
        capacity: How many messages may be pending at once.
    """

    __slots__ = ("capacity", "items", "max_bytes", "max_messages", "nbytes", "taken")

    def __init__(self, max_messages: int, max_bytes: int, capacity: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.capacity = capacity
        self.items: list[Item] = []
        self.nbytes = 0
        #: Messages handed out by ``take`` so far.
        self.taken = 0

    @property
    def count_trigger(self) -> int:
        """The pending count at which a batch leaves: the count limit, or a full queue."""
        return min(self.max_messages, self.capacity)

    def has_room(self) -> bool:
        """Whether one more message may be appended."""
        return len(self.items) < self.capacity

    def append(self, item: Item, size: int) -> bool:
        """Add one message; return whether a trigger has now fired.

        Raises:
            OverflowError: The batch is at capacity (callers check ``has_room`` first).
        """
        if len(self.items) >= self.capacity:
            raise OverflowError(f"batch is at capacity ({self.capacity} messages)")
        self.items.append(item)
        self.nbytes += size
        return self.trigger() is not None

    def trigger(self) -> str | None:
        """``"messages"`` or ``"bytes"`` when a size trigger has fired, else ``None``."""
        if len(self.items) >= self.count_trigger:
            return "messages"
        if self.nbytes >= self.max_bytes:
            return "bytes"
        return None

    def take(self) -> list[Item]:
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
            taken_bytes += item_size(items[i])
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
