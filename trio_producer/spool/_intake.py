"""The spool's intake: accepted means written to the spool first.

With ``spool_path`` set, :func:`open_producer` gives the producer a :class:`SpoolIntake`
(see :mod:`trio_producer._intake` for the protocol): every message is written to the
spool in the same synchronous step that accepts it, so when ``send`` returns the message
survives ``kill -9`` of the process; the sync policy decides when it also survives a
power cut. With the batch full (a broker that is away), the spool alone keeps what is
accepted (store and forward: :mod:`._backlog`) and the worker's source tops the batch up
from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from .._args import bulk_item
from .._batch import Route, route_for
from .._client import TrackedReport
from .._exceptions import ProducerClosedError
from ._engine import SpoolError
from ._format import RECORD_OVERHEAD

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from .._batch import Pending
    from .._message import ProducerStatistics
    from .._worker import BatchChannel
    from ._backlog import Backlog
    from ._keeper import SpoolKeeper

enable_ki_protection = trio.lowlevel.enable_ki_protection

#: send_many waits until a record of this size fits before it takes the next element.
SEND_MANY_ROOM = 64 * 1024
#: send_many spools and accepts its elements in chunks of at most this many: one
#: ``Spool.append_values`` and one extension of the batch per chunk.
SEND_MANY_CHUNK = 1024
#: With the batch full (and no backlog), send_many waits for the worker while it makes
#: progress; after this long without any, it spools the next chunks alone (store and
#: forward). A broker that is merely slower than the sender is backpressure, as without a
#: spool, and costs no read-back from the spool; one that is away does not stop the call.
SPILL_AFTER = 0.5
_END = object()
OWN_RUN = Route.OWN_RUN


def _as_is(topic: str, pair: object) -> tuple[Pending, int]:
    """``BatchChannel.extend_nowait``'s converter for a chunk built already."""
    return pair  # type: ignore[return-value]


class SpoolIntake:
    """The intake when ``spool_path`` is set (see :class:`~trio_producer._intake.Intake`).

    Each message is written to the spool before it is accepted; a full spool is
    backpressure like a full queue. :meth:`sync` waits until everything accepted before
    it is fsynced. With the batch full it accepts into the spool alone: it extends the
    ``backlog`` (:class:`~._backlog.Backlog`), which the worker's source reads back.

    Args:
        channel: The batch channel (the batch in memory, and whether it is closed).
        keeper: The spool's keeper.
        backlog: The spool's store-and-forward backlog, shared with the worker's source.
    """

    def __init__(self, channel: BatchChannel, keeper: SpoolKeeper, backlog: Backlog) -> None:
        self._channel = channel
        self._keeper = keeper
        #: Store and forward: while there is a backlog, new messages go to the spool only
        #: (to keep their order); the worker's source tops the batch up from it.
        self._backlog = backlog

    def backlog(self) -> int:
        """Accepted messages that are only in the spool (not yet in memory)."""
        return self._backlog.count()

    def _accept_nowait(self, item: Pending, size: int, waiter: trio.Event | None) -> int:
        """Spool and accept one message, or raise (nothing spooled, nothing accepted).

        With room in memory (and no backlog) the message goes to the spool and the batch;
        else, for a fire-and-forget message, to the spool only (store and forward: the
        memory stays bounded however long the broker is away). A ``send_and_wait`` waits
        for room in memory (its waiter lives there).
        """
        channel = self._channel
        if channel.closed:
            raise channel.closed_error()
        keeper = self._keeper
        if not keeper.has_room(item, size):
            raise trio.WouldBlock
        backlog = self._backlog
        if backlog.start is None and channel.batch.has_room():
            seq = keeper.spool_item(item, waiter)
            channel.send_nowait(item, size)  # cannot fail now: open, and room checked
            return seq
        if waiter is not None:
            raise trio.WouldBlock
        seq = keeper.spool_item(item, None)
        backlog.begin(seq)
        return seq

    @property
    def acceptor(self) -> SpoolIntake:
        """It takes each message itself (:meth:`send`, :meth:`send_nowait`)."""
        return self

    async def send(self, item: Pending, size: int, waiter: trio.Event | None = None) -> None:
        """Spool and accept one message, waiting for room (see :meth:`_accept_nowait`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._keeper.check_can_sync()
        channel = self._channel
        while True:
            try:
                seq = self._accept_nowait(item, size, waiter)
            except trio.WouldBlock:
                if not self._keeper.has_room(item, size):
                    await self._keeper.wait_for_room()
                else:  # a send_and_wait waiting for room in memory
                    await channel.wait_for_room()
                await trio.lowlevel.checkpoint_if_cancelled()
                continue
            except (ProducerClosedError, SpoolError):  # (SpoolError: nothing accepted)
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise
            break
        if self._keeper.spool.sync_policy == "always":
            # Accepted: the wait for the fsync must not turn into "not accepted".
            await self._keeper.wait_synced_uninterruptibly(seq)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, item: Pending, size: int) -> None:
        if self._keeper.spool.sync_policy == "always":
            raise TypeError(
                "send_nowait cannot wait for the fsync that spool_sync='always' promises; "
                "use await send(), or spool_sync='interval'"
            )
        self._accept_nowait(item, size, None)

    async def accept_waiting(self, item: Pending, size: int, waiter: trio.Event) -> None:
        await self.send(item, size, waiter)

    async def accept_many(self, topic: str, messages: Iterable[object]) -> int:
        """See :meth:`Producer.send_many`. With a spool, it waits for room *before* it
        takes the next element (room for a record of up to ``SEND_MANY_ROOM`` bytes); a
        larger element that then does not fit is held while waiting, and if the call is
        cancelled in that wait, that element was consumed but not accepted.

        The elements are spooled and accepted in chunks (one write to the spool each),
        each in one synchronous step, so the rule holds: what the call consumed before it
        raised is accepted, except the bad (or held) element. With the queue in memory
        full it waits for the worker as long as the worker makes progress (a slow broker
        is backpressure); after ``SPILL_AFTER`` seconds without any, it goes on into the
        spool alone (store and forward), letting other tasks run between chunks.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        keeper = self._keeper
        keeper.check_can_sync()
        spool = keeper.spool
        it = iter(messages)
        first_seq = spool.next_seq
        try:
            accepted, last = await self._send_many_chunks(topic, it)
        except BaseException:
            if spool.sync_policy == "always" and spool.next_seq > first_seq:
                # What was accepted before the failure was promised an fsync, too.
                await keeper.wait_synced_uninterruptibly(spool.next_seq - 1)
            raise
        if last >= 0 and spool.sync_policy == "always":
            await keeper.wait_synced_uninterruptibly(last)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return accepted

    async def _send_many_chunks(self, topic: str, it: Iterator[object]) -> tuple[int, int]:
        channel = self._channel
        batch = channel.batch
        keeper = self._keeper
        spool = keeper.spool
        accepted = 0
        last = -1
        spill = False
        while True:
            if channel.closed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise channel.closed_error()
            if not spool.has_room(SEND_MANY_ROOM):
                await keeper.wait_for_room()
                await trio.lowlevel.checkpoint_if_cancelled()
                continue
            room = 0
            if self._backlog.start is None:
                room = batch.room()
                if room > 0:
                    spill = False
                elif not spill:
                    # The batch is full: wait for the worker while it makes progress.
                    progress = channel.produced + channel.in_hand_pos
                    with trio.move_on_after(SPILL_AFTER) as waited:
                        await channel.wait_for_room()
                    await trio.lowlevel.checkpoint_if_cancelled()
                    stalled = channel.produced + channel.in_hand_pos == progress
                    spill = waited.cancelled_caught and stalled
                    continue
            count, seq, over, done = self._accept_chunk(topic, it, room)
            accepted += count
            if count:
                last = seq
            if over is not None:
                item, size = over
                try:
                    while True:  # an element that does not fit in this segment: alone
                        try:
                            last = self._accept_nowait(item, size, None)
                        except trio.WouldBlock:  # a large element: hold it and wait
                            await keeper.wait_for_room()
                            await trio.lowlevel.checkpoint_if_cancelled()
                            continue
                        break
                except BaseException as exc:
                    exc.add_note(
                        f"trio_producer: send_many accepted {accepted} elements; the next "
                        "one it took (too large for the room in the spool, held while "
                        "waiting) was not accepted"
                    )
                    raise
                accepted += 1
            if done:
                break
            if room <= 0:
                # Into the spool alone: let the worker and the delivery task run.
                await trio.lowlevel.checkpoint()
        return accepted, last

    def _accept_chunk(
        self, topic: str, it: Iterator[object], room: int
    ) -> tuple[int, int, tuple[Pending, int] | None, bool]:
        """Take elements from ``it`` while they fit in the spool's active segment (up to
        ``SEND_MANY_CHUNK``, and to ``room`` when that is > 0), spool them with one
        write and accept them: into the batch when ``room`` > 0, else into the spool
        alone (the backlog). Synchronous, and all of them or none: the caller has
        checked that the channel is open and that the spool has room for a first element.

        Returns:
            ``(count, last, over, done)``: how many were accepted; the seq of the last;
            an element taken that does not fit in the segment, as ``(item, size)``, to
            accept alone (or ``None``); whether ``it`` is exhausted.

        Raises:
            Whatever the iterator or a bad element raises: the elements taken before it
            are accepted, the bad one is not.
        """
        free = self._keeper.spool.segment_room
        budget = free - SEND_MANY_ROOM  # take another element only while used <= budget
        overhead = RECORD_OVERHEAD + len(topic)  # a valid topic name is ASCII
        limit = min(room, SEND_MANY_CHUNK) if room > 0 else SEND_MANY_CHUNK
        values: list[bytes | None] = []
        keys: list[bytes | None] | None = None
        sizes: list[int] = []
        n = used = 0
        over: tuple[Pending, int] | None = None
        done = False
        try:
            while n < limit and (used <= budget or not n):
                element = next(it, _END)
                if element is _END:
                    done = True
                    break
                if type(element) is bytes:
                    size = len(element)
                    if used + overhead + size > free:
                        over = ({"topic": topic, "value": element}, size)
                        break
                    values.append(element)
                    if keys is not None:
                        keys.append(None)
                else:
                    item, size = bulk_item(topic, element)
                    if used + overhead + size > free:
                        over = (item, size)
                        break
                    values.append(item["value"])
                    key = item.get("key")
                    if keys is not None:
                        keys.append(key)
                    elif key is not None:
                        keys = [None] * n
                        keys.append(key)
                used += overhead + size
                sizes.append(size)
                n += 1
        finally:
            last = -1
            if n:
                first = self._spool_chunk(topic, values, keys, sizes, room > 0)
                last = first + n - 1
        return n, last, over, done

    def _spool_chunk(
        self,
        topic: str,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        sizes: list[int],
        to_memory: bool,
    ) -> int:
        """Spool a chunk (one write) and accept it into the batch, or into the spool
        alone; return the seq of its first message."""
        keeper = self._keeper
        first = keeper.spool_many(topic, values, keys)
        backlog = self._backlog
        if not to_memory or backlog.start is not None:
            # (A backlog may have begun while the chunk was taken: behind it, in order.)
            backlog.begin(first)
            return first
        seqs = range(first, first + len(values))
        id_header = keeper.id_header
        items: list[Pending]
        if keys is None and id_header is None:
            items = [
                {"topic": topic, "value": value, "ticket": seq, "route": OWN_RUN}
                for value, seq in zip(values, seqs, strict=True)
            ]
        else:
            items = []
            id_of = keeper.spool.id_of
            for i, seq in enumerate(seqs):
                item: Pending = {"topic": topic, "value": values[i]}
                key = keys[i] if keys is not None else None
                if key is not None:
                    item["key"] = key
                if id_header is not None:
                    item["headers"] = [(id_header, id_of(seq))]
                item["route"] = route = route_for(item, own_callback=False, own_run=True)
                if route is OWN_RUN:
                    item["ticket"] = seq
                else:
                    item["callback"] = TrackedReport(item.get("headers"), None, seq)
                items.append(item)
        taken = self._channel.extend_nowait(topic, zip(items, sizes, strict=True), _as_is)
        if taken < len(items):
            # Less room than measured: the caller's iterator sent on this producer while
            # the chunk was taken. The rest of the chunk is the newest in the spool: it
            # becomes the backlog (read back in order), never a message left behind.
            backlog.begin(first + taken)
        return first

    async def flush_target(self) -> int:
        """See :meth:`Producer.flush`; also waits for what is only in the spool, and for
        the messages an earlier process left in it (recovered at open)."""
        channel = self._channel
        if not self._keeper.recovery_done.is_set():
            await self._keeper.recovery_done.wait()
            if channel.closed:
                raise channel.closed_error()
        return channel.request_flush() + self.backlog()

    def statistics(self, stats: ProducerStatistics) -> ProducerStatistics:
        """See :meth:`Producer.statistics`; ``queued`` counts what is only in the spool."""
        keeper = self._keeper
        spool = keeper.spool
        error = spool.disk_error
        if keeper.error is not None:
            error = f"the disk failed under an fsync ({str(spool.path)!r}): {keeper.error}"
        return attrs.evolve(
            stats,
            queued=stats.queued + self.backlog(),
            spooled=spool.pending,
            recovered=keeper.recovered,
            spool_error=error,
            spool_unrecorded=spool.unrecorded_confirmations,
        )

    async def sync(self) -> None:
        """See :meth:`Producer.sync`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        target = self._keeper.spool.next_seq - 1
        with trio.CancelScope(shield=True):
            await self._keeper.wait_synced(target)
        await trio.lowlevel.cancel_shielded_checkpoint()
