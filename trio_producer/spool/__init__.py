"""The durable spool (``spool_path``): accepted means written to disk.

A subpackage behind one entry point. :func:`open_producer` calls :func:`open_spooled`
and gets the spool's parts for the core (the worker's source, the delivery task's report
hooks, the intake made from the channel); nothing outside this package knows the spool's
sequence numbers, its runs or its confirmation rules.

Every part is complete when constructed; nothing is set on the core's objects afterwards.
The parts come in the order the core builds its objects: the keeper, the store-and-forward
backlog and the worker's source first (the batch channel takes the source as it is
built), then the intake from the channel (it writes into the channel's batch and extends
the backlog, which the source reads back: the backlog is theirs in common, so neither
needs the other).

Modules:

* ``_format``: the on-disk format (records, segment headers and seals, ack logs, the
  hand-off mark): encoded and parsed there and nowhere else.
* ``_engine``: ``Spool``, the storage engine (sans-Trio): segments in shared file
  mappings, appends, confirmations, sync and maintenance; ``_segment`` holds one
  segment's state.
* ``_recovery``: what opening a spool directory finds (``Spool``'s base class): torn
  tails, corruption, lost records, the recovered ones.
* ``_keeper``: the keeper task (confirmations, fsync and maintenance in a thread) and
  the recovered messages.
* ``_intake``: the intake that writes a message to the spool before accepting it.
* ``_backlog``: store and forward, what only the spool holds while the batch is full.
* ``_reports``: the confirmation rules (which reports take a message out of the spool)
  and the shared report callback of a run of spooled messages.
* ``_exactly_once``: ``exactly_once=True``: the committer (transactions that carry the
  spool's position), its intake, and the recovery that reads the position back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._client import no_run_reports
from .._exceptions import ConfigError
from ._backlog import Backlog
from ._engine import SpoolDiskFullError as SpoolDiskFullError
from ._engine import SpoolError as SpoolError
from ._engine import SpoolLockedError as SpoolLockedError
from ._exactly_once import Committer, ExactlyOnceIntake, open_exactly_once
from ._intake import SpoolIntake
from ._keeper import SpoolKeeper, open_keeper, recovered_batches
from ._reports import Confirmations, SpooledRun

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from .._batch import Batch, Pending
    from .._client import KafkaClient
    from .._config import ProducerConfig
    from .._delivery import AfterReports, MakeRun
    from .._state import ProducerState
    from .._worker import BatchChannel

__all__ = ["SpoolDiskFullError", "SpoolError", "SpoolLockedError", "SpoolParts", "open_spooled"]

logger = logging.getLogger("trio_producer")


async def open_spooled(cfg: ProducerConfig, client: KafkaClient) -> SpoolParts:
    """Open (lock, recover) the spool at ``cfg.spool_path``, before the core's objects that
    take its parts are built: the batch channel takes :attr:`SpoolParts.source` (the
    recovered messages, store and forward), the delivery task its hooks and run
    callbacks (``after_reports``, ``before_produce``, ``run_reports``), and
    :meth:`SpoolParts.make_intake` makes the intake from the channel. The caller runs
    :meth:`SpoolParts.run` as a background task, asks :meth:`SpoolParts.at_exit` at the
    exit, and always awaits :meth:`SpoolParts.aclose`. ``client`` is asked whether it is
    transactional (and, with ``exactly_once``, runs the recovery's ``init_transactions``).

    With ``exactly_once``, the recovery also fences a crashed producer with the same
    ``transactional.id`` and reads the committed position back (see
    :mod:`._exactly_once`): the intake then spools only, and the committer task
    (in :meth:`SpoolParts.run`) sends in transactions.

    Raises:
        ConfigError: The client is transactional (without ``exactly_once``).
        SpoolLockedError: Another producer holds the directory.
        SpoolError: The spool cannot be opened (or, with ``exactly_once``, its committed
            position cannot be read).
        TransactionError: With ``exactly_once``: ``init_transactions`` failed.
    """
    assert cfg.spool_path is not None
    if client.transactional and not cfg.exactly_once:
        raise ConfigError(
            "spool_path cannot be combined with your own transactions (transactional.id): "
            "messages the spool sends again after a crash would not belong to any "
            "transaction; for exactly once across crashes, set exactly_once=True (the "
            "spool then runs the transactions)"
        )
    keeper = await open_keeper(
        cfg.spool_path,
        cfg.spool_max_bytes,
        cfg.spool_sync,
        cfg.spool_sync_interval,
        cfg.spool_id_header,
    )
    if cfg.exactly_once:
        try:
            committer = await open_exactly_once(cfg, client, keeper)
        except BaseException:
            with trio.CancelScope(shield=True):
                await keeper.aclose()
            raise
        return SpoolParts(keeper, committer)
    return SpoolParts(keeper)


class SpoolParts:
    """The opened spool, as the producer's core sees it.

    Attributes:
        source: The worker's source (a :class:`~trio_producer._worker.Source`), for the
            batch channel's constructor.
        path: The spool directory.
        after_reports: The delivery task's hook after each pass over a report batch.
        before_produce: The delivery task's hook before each hand-off to librdkafka.
        run_reports: Makes the delivery task's report callback of a run of spooled
            messages.
    """

    def __init__(self, keeper: SpoolKeeper, committer: Committer | None = None) -> None:
        self._keeper = keeper
        self._committer = committer
        self._backlog = backlog = Backlog(keeper)
        self.path = keeper.spool.path.as_posix()
        self.source: _SpoolSource | None = None
        #: The delivery task's constructor arguments (see ``DeliveryTracker``): the
        #: confirmation rules, the hand-off mark written before each hand-off to
        #: librdkafka, and the callback of a run of spooled messages. With
        #: ``exactly_once`` none of them: nothing goes through the worker, the committer
        #: sends and confirms.
        self.after_reports: AfterReports | None = None
        self.before_produce: Callable[[], None] | None = None
        self.run_reports: MakeRun = no_run_reports
        if committer is None:
            self.source = _SpoolSource(keeper, backlog)
            self.after_reports = Confirmations(keeper.confirm).after_reports
            self.before_produce = backlog.note_handing
            self.run_reports = SpooledRun

    def make_intake(self, channel: BatchChannel) -> SpoolIntake:
        """The producer's intake (an :class:`~trio_producer._intake.Intake`), on the
        batch channel built with :attr:`source`. Called once."""
        if self._committer is not None:
            return ExactlyOnceIntake(channel, self._keeper, self._committer)
        return SpoolIntake(channel, self._keeper, self._backlog)

    async def run(
        self, run_exclusive: Callable[..., Awaitable[object]], state: ProducerState
    ) -> None:
        """The keeper: confirmations to disk, fsync and maintenance; with
        ``exactly_once``, the committer too (``run_exclusive``: the delivery task's, for
        its transactional calls; ``state``: where the committer's failures go).
        Background tasks, until the producer stops."""
        committer = self._committer
        if committer is None:
            await self._keeper.run()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keeper.run)
            nursery.start_soon(committer.run, run_exclusive, state)

    async def drain(self, deadline: float) -> None:
        """At the exit, once the worker drained: with ``exactly_once``, wait until what
        was accepted is committed (the caller bounds the wait by ``deadline``, Trio
        time; the committer's own calls too)."""
        if self._committer is not None:
            await self._committer.drain(deadline)

    def cut_short(self, deadline: float) -> None:
        """The exit was cut short: the committer's calls wait no longer than
        ``deadline`` (Trio time)."""
        if self._committer is not None:
            self._committer.hurry(deadline)

    def at_exit(self, hand_back: Callable[[Pending], None], failed: int) -> str | None:
        """At the exit, once every report was served: the directory that keeps what was
        not delivered for the next producer -- or, when it was removed (or replaced)
        while the producer ran, ``None``, after handing back (``hand_back``) every
        message it held that never reached librdkafka, read from the mappings that
        outlive the files. ``failed``: the undelivered ones handed back already."""
        if self._keeper.spool.directory_intact():
            return self.path
        rest = self._backlog.take() if self._committer is None else self._committer.take_all()
        backlog = self._keeper.take_unhanded_recovered() + rest
        logger.error(
            "the spool directory %r was removed while the producer ran: the %d "
            "undelivered message(s) it held are handed back, not kept",
            self.path,
            len(backlog) + failed,
        )
        for item in backlog:
            hand_back(item)
        return None

    async def aclose(self) -> None:
        """Close the spool (fsync, unlock); see :meth:`SpoolKeeper.aclose`."""
        await self._keeper.aclose()


class _SpoolSource:
    """The worker's :class:`~trio_producer._worker.Source` with a spool: the recovered
    messages first, then the store and forward backlog as the batch has room."""

    __slots__ = ("_backlog", "_keeper")

    def __init__(self, keeper: SpoolKeeper, backlog: Backlog) -> None:
        self._keeper = keeper
        self._backlog = backlog

    def earlier(self) -> Iterable[list[Pending]]:
        return recovered_batches(self._keeper)

    def handed(self, pos: int) -> None:
        self._keeper.recovered_handed(pos)

    def refill(self, batch: Batch) -> None:
        self._backlog.refill(batch)
