"""Store and forward: the accepted messages that only the spool holds.

With the batch in memory full (a broker that is away), the spool's intake accepts a
fire-and-forget message into the spool alone: the backlog begins there. While there is
one, new messages go behind it into the spool only, to keep their order; the worker's
source tops the batch up from it (:meth:`Backlog.refill`) as the worker takes batches.
So the memory stays bounded however long the broker is away.

The intake extends the backlog, the worker's source reads it back, the delivery task's
hand-off hook and the exit ask about it: one object that the spool owns, made from the
keeper, and handed to each of them when it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._keeper import pending_from_record

if TYPE_CHECKING:
    from .._batch import Batch, Pending
    from ._keeper import SpoolKeeper


class Backlog:
    """The spooled messages that are not in memory: from :attr:`start` to the newest.

    Attributes:
        start: The seq of the first spooled message that is not in memory, or ``None``
            while every accepted message is in memory (no backlog).
    """

    __slots__ = ("_keeper", "start")

    def __init__(self, keeper: SpoolKeeper) -> None:
        self._keeper = keeper
        self.start: int | None = None

    def begin(self, seq: int) -> None:
        """The message ``seq`` (and everything spooled after it) is in the spool only; a
        backlog that began earlier stays where it is."""
        if self.start is None:
            self.start = seq

    def count(self) -> int:
        """Accepted messages that are only in the spool (not yet in memory)."""
        if self.start is None:
            return 0
        return self._keeper.spool.next_seq - self.start

    def note_handing(self) -> None:
        """Before the worker hands a batch to librdkafka (the delivery task's
        ``before_produce``): no record above the newest in memory can be in it (the
        backlog and later messages are only in the spool)."""
        spool = self._keeper.spool
        start = self.start
        spool.note_handed((start if start is not None else spool.next_seq) - 1)

    def refill(self, batch: Batch) -> None:
        """Top ``batch`` up from the backlog, as far as it has room (the worker's source:
        sync, whenever the batch may have room)."""
        start = self.start
        if start is None:
            return
        room = batch.room()
        if room <= 0:
            return
        keeper = self._keeper
        records = keeper.spool.read_from(start, room)
        for record in records:
            item = pending_from_record(record, keeper.id_header)
            value, key = record.value, record.key
            batch.append(item, (len(value) if value else 0) + (len(key) if key else 0))
        if records:
            start = records[-1].seq + 1
        self.start = None if start >= keeper.spool.next_seq else start

    def take(self) -> list[Pending]:
        """Read every message that is only in the spool back into memory and end the
        backlog (for the exit, when the spool can no longer keep them)."""
        start = self.start
        if start is None:
            return []
        keeper = self._keeper
        records = keeper.spool.read_from(start, keeper.spool.next_seq - start)
        self.start = None
        return [pending_from_record(record, keeper.id_header) for record in records]
