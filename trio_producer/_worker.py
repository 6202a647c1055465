"""The batch channel between ``send`` and the worker, and the worker's receive loop.

Why not ``trio.open_memory_channel``? A memory channel hands over one item per
``receive()``: a worker waiting on it is rescheduled for every message, and each item
costs a ``send_nowait`` *and* a ``receive_nowait``. At several hundred thousand
messages a second that is most of the budget. ``BatchChannel`` keeps the memory
channel's semantics where they matter --

* ``close()`` is synchronous; after it, new sends raise ``ProducerClosedError``;
* the receiver sees the end of the stream only after every message that was accepted
  before the close has been handed out -- the end comes from the channel being closed
  *and empty*, never from a flag checked on its own;

-- and hands the worker the whole pending batch in O(1), waking it once per batch
(count/bytes trigger, linger deadline, flush request, or close).

Fairness under backpressure: a ``send`` that finds the queue full parks *with its
message*, in order. When the worker takes a batch it admits the parked messages, oldest
first, into the room it just made, before any other task runs: so a send that arrives
later (``send_nowait`` retried at every checkpoint, say) cannot take that room first,
and a parked send gets in within the batches that free room for it and for the sends
parked before it. The hot path pays nothing for it: while sends are parked the queue is
full (room appears only where the worker takes a batch, and there it goes to them), so
``send_nowait`` needs no extra check. ``send_many`` and the durable spool wait for room
the old way (woken to retry after the parked sends were admitted).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import outcome
import trio

from ._batch import TRIGGERS, Batch, Pending
from ._exceptions import ProducerClosedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator


class Sink(Protocol):
    """Where the worker puts batches: librdkafka in production, a recorder in tests."""

    def produce(self, batch: list[Pending], start: int) -> int:
        """Hand ``batch[start:]`` on; return the index of the first item not taken.

        Returning less than ``len(batch)`` means "my queue is full": the worker then
        awaits :meth:`wait_for_space` and calls again from the returned index.
        """

    async def wait_for_space(self) -> None:
        """Return when ``produce`` may take more (a checkpoint)."""


class Source(Protocol):
    """Where the worker's messages come from besides what is accepted into the channel's
    batch: kept elsewhere (the durable spool: what an earlier process left, and what it
    alone keeps while the batch is full -- store and forward).

    A constructor argument of :class:`BatchChannel`, so it is made before the channel and
    knows nothing of it: what it tops up is passed to :meth:`refill`.
    """

    def earlier(self) -> Iterable[list[Pending]]:
        """Batches to hand to the sink before anything the channel holds, in order. Each
        is handed on whole, never cut (librdkafka's reports refer to it)."""

    def handed(self, pos: int) -> None:
        """The current :meth:`earlier` batch was handed to the sink up to ``pos``."""

    def refill(self, batch: Batch) -> None:
        """Top the channel's ``batch`` up (sync; called whenever it may have room)."""


class _Parked:
    """A send waiting in line with its message."""

    __slots__ = ("item", "line", "size", "task")

    def __init__(
        self,
        line: OrderedDict[trio.lowlevel.Task, _Parked],
        task: trio.lowlevel.Task,
        item: Pending,
        size: int,
    ) -> None:
        self.line = line
        self.task = task
        self.item = item
        self.size = size

    def abort(self, _: object) -> trio.lowlevel.Abort:
        del self.line[self.task]
        return trio.lowlevel.Abort.SUCCEEDED


class BatchChannel:
    """A closeable, bounded, batching channel with one receiver (the worker).

    Args:
        batch: The pending messages (the sans-IO part: triggers, room, capacity).
        linger: How long the worker waits for a batch to fill (seconds).
        source: Where messages kept elsewhere come from (see :class:`Source`): the
            durable spool's; ``None`` without.
    """

    def __init__(self, batch: Batch, linger: float, *, source: Source | None = None) -> None:
        self.batch = batch
        self.linger = linger
        self.closed = False
        self.closed_reason = "the producer is closed"
        self.source = source
        #: The channel was closed because the producer failed (see ProducerClosedError).
        self.closed_by_failure = False
        #: The worker has stopped for good: waiters for progress are released.
        self.stopped = False
        self._worker_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._progress_lot = trio.lowlevel.ParkingLot()
        #: Sends parked with their message while the queue is full, oldest first.
        self._parked: OrderedDict[trio.lowlevel.Task, _Parked] = OrderedDict()
        self._flush_requested = False
        #: Messages the worker has fully handed to the sink.
        self.produced = 0
        #: The batch the worker is handing on, and how far it got.
        self.in_hand: list[Pending] = []
        self.in_hand_pos = 0
        self.batches = dict.fromkeys(TRIGGERS, 0)

    # ---- sending side ---------------------------------------------------------------

    def send_nowait(self, item: Pending, size: int) -> None:
        """Accept one message or raise; never blocks.

        Raises:
            ProducerClosedError: The channel is closed.
            trio.WouldBlock: ``capacity`` messages are already pending.
        """
        if self.closed:
            raise self.closed_error()
        try:
            wake = self.batch.append(item, size)
        except OverflowError:  # at capacity: nothing appended
            raise trio.WouldBlock from None
        if wake:
            self._wake_worker()

    async def wait_for_room(self) -> None:
        """Park until the worker takes a batch (or the channel closes). A checkpoint."""
        await self._space_lot.park()

    def extend_nowait(
        self,
        topic: str,
        elements: Iterator[object],
        convert: Callable[[str, object], tuple[Pending, int]],
    ) -> int:
        """Accept up to the free room of elements from ``elements``; return how many
        were taken from it (see :meth:`Batch.extend`). Never blocks.

        Raises:
            ProducerClosedError: The channel is closed (nothing taken).
        """
        if self.closed:
            raise self.closed_error()
        try:
            return self.batch.extend(topic, elements, convert)
        finally:
            # Also after a bad element: what was appended before it is accepted.
            if self.batch.wants_wake():
                self._wake_worker()

    async def send(self, item: Pending, size: int) -> None:
        """Accept one message, waiting while the channel is full (parked in order, see
        the module's docstring).

        Always a checkpoint. If it raises (``Cancelled`` included), the message was
        not accepted; if it returns, it was.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.closed:
            await trio.lowlevel.cancel_shielded_checkpoint()  # a checkpoint on every path
            raise self.closed_error()
        batch = self.batch
        if batch.has_room():
            if batch.append(item, size):
                self._wake_worker()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # Full: wait in line with the message until the worker admits it (then it is
        # accepted) or the channel closes (it is not). Cancelled while waiting: taken
        # out of the line, not accepted. What a parked send keeps alive is kept small
        # (no exception being handled, no closure): with thousands of sends parked at
        # once, that is what the garbage collector walks (docs/benchmarks.rst).
        ticket = _Parked(self._parked, trio.lowlevel.current_task(), item, size)
        self._parked[ticket.task] = ticket
        if not await trio.lowlevel.wait_task_rescheduled(ticket.abort):
            # Closed. If the caller was cancelled meanwhile (the producer failed and
            # cancelled the block), that cancellation -- not a secondary
            # ProducerClosedError -- is the answer.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise self.closed_error()

    def _admit_parked(self) -> None:
        """Append parked messages, oldest first, while there is room (the worker, right
        after it took a batch); each one's send then returns: accepted."""
        parked = self._parked
        batch = self.batch
        while parked and batch.has_room():
            _, ticket = parked.popitem(last=False)
            batch.append(ticket.item, ticket.size)
            trio.lowlevel.reschedule(ticket.task, outcome.Value(True))

    @trio.lowlevel.enable_ki_protection  # (a parked send popped must be rescheduled)
    def close(self, reason: str | None = None, *, failed: bool = False) -> None:
        """Stop accepting messages (sync, idempotent). Pending ones are still handed out.

        ``failed``: the producer is closing because it failed; sends refused from now
        on say so (``ProducerClosedError.producer_failed``).
        """
        if not self.closed:
            if reason is not None:
                self.closed_reason = reason
            self.closed_by_failure = failed
        self.closed = True
        while self._parked:  # not accepted
            task, _ = self._parked.popitem(last=False)
            trio.lowlevel.reschedule(task, outcome.Value(False))
        self._worker_lot.unpark_all()
        self._space_lot.unpark_all()

    def closed_error(self) -> ProducerClosedError:
        return ProducerClosedError(self.closed_reason, producer_failed=self.closed_by_failure)

    def stop(self) -> None:
        """The worker is gone for good: release everyone waiting for its progress."""
        self.stopped = True
        self._progress_lot.unpark_all()

    def request_flush(self) -> int:
        """Ask the worker to hand on what is pending now; return the accepted count."""
        self._flush_requested = True
        if self.batch.items:
            self._wake_worker()
        return self.batch.accepted

    async def wait_produced(self, target: int) -> None:
        """Return once the worker has handed ``target`` messages to the sink.

        Raises:
            ProducerClosedError: The worker stopped before it got that far.
        """
        while self.produced < target:
            if self.stopped:
                raise self.closed_error()
            await self._progress_lot.park()

    def _wake_worker(self) -> None:
        self.batch.want_nothing()
        self._worker_lot.unpark_all()

    # ---- receiving side (the worker) --------------------------------------------------

    async def receive_batch(self) -> tuple[list[Pending], str] | None:
        """Wait for the next batch and why it leaves; ``None`` once closed *and* empty."""
        batch = self.batch
        refill = self.source.refill if self.source is not None else None
        while not batch.items:
            if refill is not None:
                refill(batch)
                if batch.items:
                    break
            if self.closed:
                return None
            batch.want_first()
            await self._worker_lot.park()
        reason = self._reason()
        if reason is None and self.linger > 0:
            batch.want_trigger()
            with trio.move_on_after(self.linger):
                await self._worker_lot.park()
            reason = self._reason()
        batch.want_nothing()
        self._flush_requested = False
        reason = reason or "linger"
        self.batches[reason] += 1
        items = batch.take()
        if self._parked:
            self._admit_parked()
        if refill is not None:
            refill(batch)
        self._space_lot.unpark_all()
        return items, reason

    def _reason(self) -> str | None:
        if self.closed:
            return "drain"
        if self._flush_requested:
            return "flush"
        return self.batch.trigger()

    def mark_produced(self, count: int) -> None:
        self.produced += count
        self._progress_lot.unpark_all()

    def unsent(self) -> list[Pending]:
        """What was accepted but never reached the sink: the rest of the batch in hand,
        then the pending messages (in acceptance order)."""
        rest = self.in_hand[self.in_hand_pos :]
        return rest + self.batch.items


@trio.lowlevel.enable_ki_protection
async def run_worker(
    channel: BatchChannel,
    sink: Sink,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The receive loop: batch → sink, until the channel is closed and empty.

    KeyboardInterrupt-protected: a Ctrl-C never lands between handing messages to the
    sink and recording how far it got (it is delivered to the main task at a checkpoint).

    There is no "shutting down" flag here. The loop ends only when ``receive_batch``
    reports the end of the stream, which happens after the last accepted message has
    been handed out; the final batch (the drain) goes through the same code as every
    other batch.
    """
    task_status.started()
    if channel.source is not None:
        await _produce_earlier(channel.source, sink)
    while True:
        got = await channel.receive_batch()
        if got is None:
            return
        items, _reason = got
        channel.in_hand = items
        channel.in_hand_pos = 0
        while True:
            pos = sink.produce(items, channel.in_hand_pos)
            channel.in_hand_pos = pos
            if pos >= len(items):
                break
            await sink.wait_for_space()
        channel.in_hand = []
        channel.in_hand_pos = 0
        channel.mark_produced(len(items))


@trio.lowlevel.enable_ki_protection
async def _produce_earlier(source: Source, sink: Sink) -> None:
    """Messages kept elsewhere (an earlier process left them in the durable spool):
    before anything new. The source learns how far each batch got (what is not produced
    when the producer stops is the source's to keep, or to hand back)."""
    for items in source.earlier():
        pos = 0
        while True:
            pos = sink.produce(items, pos)
            source.handed(pos)
            if pos >= len(items):
                break
            await sink.wait_for_space()
