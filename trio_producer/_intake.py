"""The intake: how the one :class:`~trio_producer.Producer` accepts a message.

The producer validates a message and builds its queue item; the intake decides what
"accepted" means. :class:`Intake` is that narrow interface, and there are two of it:

* :class:`MemoryIntake` -- accepted means in the batch channel (in memory). Its
  :attr:`~Intake.acceptor`, which takes each message, *is* the channel: the in-memory
  send is one method call into the channel (``producer._acceptor.send_nowait``: the
  call the producer made before there was an intake, and as fast).
* :class:`~trio_producer.spool._intake.SpoolIntake` -- accepted means written to the durable
  spool (and, with room, to the channel too). It is its own acceptor.

``open_producer`` chooses one; nothing else in the producer knows which it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ._args import bulk_item
from ._exceptions import ConfigError, ProducerClosedError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._batch import Pending
    from ._message import ProducerStatistics
    from ._worker import BatchChannel


class Acceptor(Protocol):
    """What takes one fire-and-forget message: the batch channel's own two methods.

    Each follows the send methods' rule: if it returns, the message was accepted (it
    will be delivered or handed back); if it raises, it was not.
    """

    async def send(self, item: Pending, size: int) -> None:
        """Accept a message, waiting for room. Always a checkpoint."""

    def send_nowait(self, item: Pending, size: int) -> None:
        """Accept a message or raise (``trio.WouldBlock`` when full)."""


class Intake(Protocol):
    """Where a producer's send methods put a message they accept.

    Each accepting method follows the send methods' rule: if it returns, the message
    was accepted (it will be delivered or handed back); if it raises, it was not.
    """

    @property
    def acceptor(self) -> Acceptor:
        """Takes each fire-and-forget message (``send``, ``send_nowait``)."""

    async def accept_waiting(self, item: Pending, size: int, waiter: trio.Event) -> None:
        """Accept a ``send_and_wait`` message, whose delivery report sets ``waiter``.

        ``item`` comes with its :class:`~trio_producer._client.TrackedReport`; the
        intake may replace it (the spool's carries a ticket): the caller reads
        ``item["callback"]`` after this returns. Always a checkpoint."""

    async def accept_many(self, topic: str, messages: Iterable[object]) -> int:
        """``send_many`` after its topic was checked: take and accept elements of
        ``messages`` (values or ``(key, value)`` pairs); return how many were accepted.
        Always a checkpoint."""

    async def flush_target(self) -> int:
        """Ask the worker to hand on what is pending; return how many messages it must
        have handed on for everything accepted before the call (the channel is open)."""

    def backlog(self) -> int:
        """Accepted messages that are not in memory yet (only in the spool)."""

    def statistics(self, stats: ProducerStatistics) -> ProducerStatistics:
        """The producer's counters, with what this intake adds to them."""

    async def sync(self) -> None:
        """Wait until everything accepted before the call is fsynced. A checkpoint."""


class MemoryIntake:
    """The intake without a spool: the batch channel (see :class:`Intake`)."""

    def __init__(self, channel: BatchChannel) -> None:
        self._channel = channel
        #: The channel itself: the in-memory send is one call into the channel.
        self.acceptor: Acceptor = channel

    async def accept_waiting(self, item: Pending, size: int, waiter: trio.Event) -> None:
        await self._channel.send(item, size)

    async def accept_many(self, topic: str, messages: Iterable[object]) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        channel = self._channel
        batch = channel.batch
        it = iter(messages)
        accepted = 0
        while True:
            room = batch.room()
            if room <= 0 and not channel.closed:
                await channel.wait_for_room()
                await trio.lowlevel.checkpoint_if_cancelled()
                continue
            before = batch.accepted
            try:
                taken = channel.extend_nowait(topic, it, bulk_item)
            except ProducerClosedError:
                await trio.lowlevel.cancel_shielded_checkpoint()  # a checkpoint on every path
                raise
            finally:
                accepted += batch.accepted - before
            if taken < room:
                break
        await trio.lowlevel.cancel_shielded_checkpoint()
        return accepted

    async def flush_target(self) -> int:
        return self._channel.request_flush()

    def backlog(self) -> int:
        return 0

    def statistics(self, stats: ProducerStatistics) -> ProducerStatistics:
        return stats

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()
        raise no_spool_to_sync()


def no_spool_to_sync() -> ConfigError:
    """What ``sync()`` raises on a producer without a durable spool."""
    return ConfigError(
        "sync() waits for the durable spool, and this producer has none: open it "
        "with spool_path=... (accepted messages are then written to disk)"
    )
