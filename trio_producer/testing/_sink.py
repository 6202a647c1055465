"""A recording sink: a fake of the Kafka client for unit tests of the batching loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .._batch import Pending


class RecordingSink:
    """Records every batch the worker hands on, in order.

    Args:
        capacity: How many messages it takes before it reports "full" (like
            librdkafka's queue); ``None`` for unbounded. Call :meth:`make_room` to
            let a waiting worker go on.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.batches: list[list[Pending]] = []
        self.capacity = capacity
        self.held = 0
        self._room = trio.lowlevel.ParkingLot()
        self._last_input: list[Pending] | None = None

    @property
    def messages(self) -> list[Pending]:
        return [item for batch in self.batches for item in batch]

    @property
    def values(self) -> list[bytes | None]:
        return [item["value"] for item in self.messages]

    def produce(self, batch: list[Pending], start: int) -> int:
        end = len(batch)
        if self.capacity is not None:
            end = min(end, start + max(0, self.capacity - self.held))
        if end > start:
            if start > 0 and batch is self._last_input:
                self.batches[-1].extend(batch[start:end])  # the rest of a batch held up
            else:
                self.batches.append(batch[start:end])
            self._last_input = batch
            self.held += end - start
        return end

    async def wait_for_space(self) -> None:
        await self._room.park()

    def make_room(self, count: int) -> None:
        """Pretend ``count`` messages were delivered, and wake a waiting worker."""
        self.held = max(0, self.held - count)
        self._room.unpark_all()
