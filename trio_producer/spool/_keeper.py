"""The spool's keeper: confirmations, and the blocking fsync/maintenance in a thread.

A delivery report confirms a message in the spool (the rules: :mod:`._reports`); what
was not confirmed is sent again, first, by the next producer that opens the directory
(:func:`recovered_batches`). Without a spool none of this code runs: the in-memory
intake keeps its speed.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING

import trio

from .._batch import Route, route_for
from .._client import TrackedReport
from ._engine import Spool, SpoolError
from ._format import HEADER_OVERHEAD, RECORD_OVERHEAD, SpoolRecord

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._batch import Pending

logger = logging.getLogger("trio_producer")

enable_ki_protection = trio.lowlevel.enable_ki_protection


#: With no room on the disk for the spare segment, the keeper tries again after this
#: many seconds, doubling up to SPARE_RETRY_MAX (and at once after it deleted a segment).
SPARE_RETRY_MIN = 1.0
SPARE_RETRY_MAX = 60.0


def encoded_size(item: Pending) -> int:
    """What a message takes in the spool (what ``Spool.has_room`` asks about)."""
    value = item["value"]
    size = RECORD_OVERHEAD + len(item["topic"].encode()) + len(item.get("key") or b"")
    size += len(value) if value is not None else 0
    for name, header in item.get("headers") or ():
        size += HEADER_OVERHEAD + len(name.encode()) + (len(header) if header else 0)
    return size


class SpoolKeeper:
    """Owns the spool: confirmations, and the blocking fsync/maintenance in a thread.

    Runs as a background task of the producer (until the producer stops). Appends and
    confirmations happen on the Trio thread; ``sync``/``maintain`` in a worker thread, as
    the spool's threading rule allows.
    """

    def __init__(self, spool: Spool, id_header: str | None) -> None:
        self.spool = spool
        self.id_header = id_header
        self.recovered = len(spool.recovered)
        self._wake = trio.lowlevel.ParkingLot()
        self._synced = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._sync_wanted = False
        self._uninterruptible: list[trio.lowlevel.Task] = []
        self._stopped = False
        #: Set once the recovered messages have all been handed to librdkafka (or the
        #: producer stopped): flush() waits for it, then for their reports.
        self.recovery_done = trio.Event()
        self.error: BaseException | None = None
        #: The recovered messages not yet handed to librdkafka: what is left of the chunk
        #: the worker holds, then ``spool.recovered`` from ``recovered_next`` on.
        self.recovered_chunk: list[Pending] = []
        self.recovered_pos = 0
        self.recovered_next = 0

    # ---- on the Trio thread ---------------------------------------------------------------

    def recovered_handed(self, pos: int) -> None:
        """The worker handed the current recovered chunk up to ``pos`` to librdkafka."""
        self.recovered_pos = pos

    def take_unhanded_recovered(self) -> list[Pending]:
        """The recovered messages never handed to librdkafka, in order, for the exit when
        the spool can no longer keep them (its directory is gone); forgotten here."""
        records = self.spool.recovered[self.recovered_next :]
        rest = self.recovered_chunk[self.recovered_pos :]
        rest += [pending_from_record(r, self.id_header) for r in records]
        self.recovered_chunk = []
        self.spool.recovered.clear()
        return rest

    def spool_item(self, item: Pending, waiter: trio.Event | None) -> int:
        """Write ``item`` to the spool and make it carry its id and seq; return the seq.

        Raises:
            SpoolFullError: No room: nothing was written.
        """
        spool = self.spool
        if "route" not in item and "key" not in item:  # a topic and a value: a shorter call
            headers = None
            seq = spool.append(item["topic"], item["value"])
        else:
            headers = item.get("headers")
            seq = spool.append(
                item["topic"],
                item["value"],
                item.get("key"),
                headers,
                item.get("partition", -1),
                item.get("timestamp", 0),
            )
        if self.id_header is not None:
            headers = [*(headers or ()), (self.id_header, spool.id_of(seq))]
            item["headers"] = headers
        item["route"] = route = route_for(item, own_callback=waiter is not None, own_run=True)
        if route is Route.OWN_RUN:
            item["ticket"] = seq  # confirmed by its run's shared report callback (SpooledRun)
        else:
            item["callback"] = TrackedReport(headers, waiter, seq)
        if not seq & 255 and spool.maintenance_due:  # a rotation: prepare the next spare
            self._wake.unpark_all()
        return seq

    def spool_many(
        self, topic: str, values: list[bytes | None], keys: list[bytes | None] | None
    ) -> int:
        """Write a chunk of ``send_many`` with one ``append_values``; return the seq of
        its first message (the rest follow).

        Raises:
            SpoolFullError: No room: nothing was written.
        """
        spool = self.spool
        first = spool.append_values(topic, values, keys)
        if spool.maintenance_due:  # a rotation: prepare the next spare
            self._wake.unpark_all()
        return first

    def confirm(self, seqs: list[int]) -> None:
        """Record deliveries (one write to the spool's ack log)."""
        self.spool.confirm_many(seqs)
        if self.spool.maintenance_due:
            self._wake.unpark_all()
        elif self._room.statistics().tasks_waiting:
            # Room may have appeared without maintenance (a segment still active).
            self._room.unpark_all()

    def has_room(self, item: Pending, size: int) -> bool:
        """Room in the spool for ``item`` (``size``: its value and key bytes)."""
        if "headers" in item:
            return self.spool.has_room(encoded_size(item))
        return self.spool.has_room(RECORD_OVERHEAD + len(item["topic"]) + size)

    async def wait_for_room(self) -> None:
        """Park until maintenance (after confirmations) may have freed room (a checkpoint).

        The keeper is asked to maintain only when there is something to do; it wakes the
        waiters after work that can free room, never on an empty round (a full spool
        during an outage must not turn into a busy loop).
        """
        if self.spool.maintenance_due:
            self._wake.unpark_all()
        await self._room.park()

    def check_can_sync(self) -> None:
        """Refuse a message that ``spool_sync="always"`` must fsync when an fsync failed.

        Raises:
            SpoolError: It cannot be made durable (nothing was accepted).
        """
        if self.error is not None and self.spool.sync_policy == "always":
            raise SpoolError(
                f"spool {str(self.spool.path)!r}: an fsync failed ({self.error}): with "
                "spool_sync='always' no new message is accepted"
            ) from self.error

    async def wait_synced(self, seq: int) -> None:
        """Return once ``seq`` is fsynced (group commit: one fsync serves every waiter).

        Cancellable and interruptible (``Producer.sync``): nothing depends on it.
        """
        while self.spool.synced_seq < seq:
            if self.error is not None:
                raise SpoolError(f"the spool could not be synced: {self.error!r}")
            self._sync_wanted = True
            self._wake.unpark_all()
            await self._synced.park()

    async def wait_synced_uninterruptibly(self, seq: int) -> None:
        """:meth:`wait_synced` for a message already accepted: neither a cancellation nor
        a ``KeyboardInterrupt`` can end this wait (a shield stops only the first), so that
        "the call raised" keeps meaning "not accepted"; both arrive at the caller's next
        checkpoint instead. Bounded by the disk (one fsync)."""
        while self.spool.synced_seq < seq and self.error is None and not self._stopped:
            self._sync_wanted = True
            self._wake.unpark_all()
            self._uninterruptible.append(trio.lowlevel.current_task())
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def _release_synced(self) -> None:
        self._synced.unpark_all()
        waiting, self._uninterruptible = self._uninterruptible, []
        for task in waiting:
            trio.lowlevel.reschedule(task)

    # ---- the background task ------------------------------------------------------------

    def _sync_failed(self, exc: OSError) -> None:
        """The disk refused an fsync (or the directory is gone): not a bug of this
        library, and not a reason to stop delivering. Every sync waiter fails from now
        on (``Producer.sync`` raises, ``spool_sync="always"`` refuses new messages);
        accepted messages stay in memory and librdkafka, and are delivered or handed
        back as usual. Logged at ERROR once."""
        if self.error is None:
            logger.error(
                "spool %r: the disk failed under an fsync or maintenance (%s): messages "
                "are still delivered, but the spool no longer promises that they survive "
                "a power loss",
                str(self.spool.path),
                exc,
            )
            self.error = exc

    @enable_ki_protection
    async def run(self) -> None:
        """fsync on the policy's schedule, and maintain (rotate, delete) when due."""
        spool = self.spool
        interval = spool.sync_interval if spool.sync_policy == "interval" else None
        backoff = SPARE_RETRY_MIN
        retry_at = math.inf
        try:
            while True:
                if not spool.spare_failed:
                    backoff, retry_at = SPARE_RETRY_MIN, math.inf
                elif retry_at == math.inf:  # no room for the spare: try again later
                    retry_at = trio.current_time() + backoff
                    backoff = min(2 * backoff, SPARE_RETRY_MAX)
                if not (self._sync_wanted or spool.maintenance_due):
                    wait = interval if interval is not None and self.error is None else 3600
                    with trio.move_on_at(min(trio.current_time() + wait, retry_at)):
                        await self._wake.park()
                if spool.spare_failed and trio.current_time() >= retry_at:
                    spool.retry_spare()
                    retry_at = math.inf
                want_sync = self.error is None and (
                    self._sync_wanted
                    or (interval is not None and spool.next_seq - 1 > spool.synced_seq)
                )
                self._sync_wanted = False
                if want_sync:
                    try:
                        await trio.to_thread.run_sync(spool.sync)
                    except OSError as exc:
                        self._sync_failed(exc)
                    self._release_synced()
                    self._room.unpark_all()
                elif spool.maintenance_due:
                    try:
                        await trio.to_thread.run_sync(spool.maintain)
                    except OSError as exc:
                        self._sync_failed(exc)
                    self._room.unpark_all()
        finally:
            # Stopped (the producer closes) or failed: no send waits for an fsync that
            # will not come. The spool's close() fsyncs what is left (unless "never").
            self._stopped = True
            self.recovery_done.set()
            self._release_synced()
            self._room.unpark_all()

    async def aclose(self) -> None:
        """Close the spool (fsync, unlock) in a thread; bounded by the disk. A shield
        stops a cancellation but not a Ctrl-C: if one arrives before the thread ran,
        close here, synchronously (idempotent), then let it go on -- never leave the
        spool locked."""
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.spool.close)
        except KeyboardInterrupt:
            self.spool.close()
            raise


async def open_keeper(
    path: str, max_bytes: int, sync: str, sync_interval: float, id_header: str | None
) -> SpoolKeeper:
    """Open (lock, recover) the spool in a thread; log what recovery found."""
    spool = await trio.to_thread.run_sync(
        functools.partial(
            Spool.open,
            path,
            max_bytes=max_bytes,
            sync=sync,  # type: ignore[arg-type]
            sync_interval=sync_interval,
        )
    )
    found = spool.recovery
    if found.recovered or found.torn_tails or found.corrupt_records:
        logger.info(
            "spool %r: %d unconfirmed message(s) recovered (sent first); %d torn tail(s) "
            "cut (%d bytes); %d corrupt record(s) skipped",
            path,
            found.recovered,
            found.torn_tails,
            found.torn_tail_bytes,
            found.corrupt_records,
        )
    return SpoolKeeper(spool, id_header)


def pending_from_record(record: SpoolRecord, id_header: str | None) -> Pending:
    """A spooled record as a message for the worker, with its id header and seq."""
    item: Pending = {"topic": record.topic, "value": record.value}
    if record.key is not None:
        item["key"] = record.key
    if record.partition >= 0:
        item["partition"] = record.partition
    if record.timestamp > 0:
        item["timestamp"] = record.timestamp
    headers = list(record.headers or ())
    if id_header is not None:
        headers.append((id_header, record.id))
    if headers:
        item["headers"] = headers
    item["route"] = route = route_for(item, own_callback=False, own_run=True)
    if route is Route.OWN_RUN:
        item["ticket"] = record.seq
    else:
        item["callback"] = TrackedReport(headers or None, None, record.seq)
    return item


def recovered_batches(keeper: SpoolKeeper, size: int = 1000) -> Iterator[list[Pending]]:
    """The recovered records as messages for the worker, in their order, in chunks."""
    records = keeper.spool.recovered
    id_header = keeper.id_header
    for start in range(0, len(records), size):
        chunk = [pending_from_record(r, id_header) for r in records[start : start + size]]
        # What take_unhanded_recovered() hands back: the worker says how much of the
        # chunk it handed to librdkafka (recovered_handed).
        keeper.recovered_chunk = chunk
        keeper.recovered_pos = 0
        keeper.recovered_next = start + size
        yield chunk
    records.clear()  # handed to librdkafka: the spool keeps them until confirmed
    keeper.recovered_next = 0
    keeper.recovery_done.set()
