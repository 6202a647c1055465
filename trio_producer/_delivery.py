"""Delivery reports: the poll thread, the shared callback, and their hand-back to Trio.

librdkafka serves delivery reports inside ``poll()``, which blocks, so the delivery task
runs it in a worker thread (``trio.to_thread.run_sync``) with a short timeout; once it
served something while more is in flight, the thread gathers for ``GATHER`` more. The
callbacks served there only count and append to lists -- they never touch a Trio
object. When ``poll`` returns, the delivery task is back on the Trio thread and hands
the whole batch of reports over: it wakes ``send_and_wait`` callers, routes failures,
and retires finished flush epochs.

Fire-and-forget messages share one callback: the current :class:`Epoch` object. A new
epoch starts only when ``flush()`` is called, so ``flush`` can wait for exactly the
messages produced before it without a per-message object.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol

import trio

from ._client import DeliveryReports, KafkaClient, no_run_reports
from ._exceptions import ProducerClosedError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeAlias

    from ._batch import Pending
    from ._client import Failure, RunReports
    from ._hooks import Hooks
    from ._state import ProducerState

    #: ``DeliveryTracker.after_reports``: ``(epoch, failures handed over, stopping)``.
    AfterReports: TypeAlias = Callable[[DeliveryReports, Sequence[Failure], bool], None]
    #: ``DeliveryTracker``'s ``run_reports``: the callback of a run, for its epoch.
    MakeRun: TypeAlias = Callable[[DeliveryReports], RunReports]

logger = logging.getLogger("trio_producer")

#: How long one ``poll`` may block while deliveries are outstanding. Bounds how late the
#: delivery task notices a stop request.
POLL_TIMEOUT = 0.05
#: After a poll that served reports while more are in flight, the poll thread waits
#: this long for more before it hands them to Trio (see ``KafkaClient.poll``): fewer,
#: larger hand-offs when librdkafka serves many small per-partition batches. It adds
#: at most this much to a report's way back (never to a lone ``send_and_wait``).
GATHER = 0.0005
#: An idle producer polls (non-blocking) this often, to serve logs and errors.
IDLE_POLL_INTERVAL = 1.0

#: Errors librdkafka would retry forever, but that only the operator can fix: wrong
#: credentials, an untrusted certificate. They fail the producer at once, like fatal
#: errors, instead of holding every message until ``close_timeout``.
AUTHENTICATION_ERRORS = frozenset({"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "_SSL"})

#: Failures that an unreachable cluster explains: their DeliveryError then says so.
UNREACHABLE_ERRORS = frozenset({"_MSG_TIMED_OUT", "_TIMED_OUT", "_TRANSPORT"})


class PollObserver(Protocol):
    """What watches the delivery task: told after each poll, on the Trio thread."""

    def after_poll(self, tracker: DeliveryTracker) -> None:
        """Count what the reports of this poll changed (must not block)."""


class Epoch(DeliveryReports):
    """The messages produced between two ``flush()`` calls, and their shared callback.

    librdkafka calls it (as a :class:`DeliveryReports`) on the poll thread; the rest of
    its state belongs to the Trio thread.
    """

    __slots__ = ("done", "produced", "routed", "settled_at_stop")

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0
        #: Failures already handed over by ``process``.
        self.routed = 0
        self.done: trio.Event | None = None
        #: Retired (or released) while the producer was stopping (recorded from its
        #: phase): its failures were purged messages, handed back by open_producer
        #: rather than confirmed.
        self.settled_at_stop = False

    @property
    def settled(self) -> int:
        return self.delivered + len(self.failures)


class DeliveryTracker:
    """The real sink of the worker, and the delivery task.

    Args:
        client: The Kafka client.
        state: The producer's state: its ``route_failure`` takes each failed delivery
            that no ``send_and_wait`` caller is waiting for, its ``on_fatal`` a fatal
            librdkafka error (both on the Trio thread); its phase says whether the
            producer is stopping.
        hooks: Statistics, connection state, OAuth expiry: handed over after each poll.
        after_reports: For an intake that needs the outcomes of what it accepted (the
            durable spool): called on the Trio thread after each pass over an epoch's
            reports, with the epoch, the failures this pass handed over, and whether the
            producer is stopping. It takes what is its own (``tickets``, ``runs``) out of
            the epoch; an epoch with ``runs`` left is not retired.
        before_produce: For an intake that needs to know: called before each hand-off
            to librdkafka (the durable spool records that nothing newer was handed over).
        run_reports: For an intake that gives messages the own-run route (the durable
            spool): makes the shared report callback of a run of them, for the epoch it
            counts into (see :class:`~trio_producer._client.RunReports`); passed to
            :meth:`KafkaClient.produce` with each hand-off. Without it, there are none.
    """

    def __init__(
        self,
        client: KafkaClient,
        state: ProducerState,
        hooks: Hooks,
        *,
        after_reports: AfterReports | None = None,
        before_produce: Callable[[], None] | None = None,
        run_reports: MakeRun = no_run_reports,
    ) -> None:
        self.client = client
        self._state = state
        self._route_failure = state.route_failure
        self._on_fatal = state.on_fatal
        self.after_reports = after_reports
        self.before_produce = before_produce
        self.run_reports = run_reports
        self.hooks = hooks
        #: Told after each poll: the telemetry, which observes the finished producer and
        #: so is the one part attached after construction (open_producer sets it).
        self.observer: PollObserver | None = None
        self.epochs: deque[Epoch] = deque([Epoch()])
        #: librdkafka reports failures only: a delivery is known from its absence, once
        #: librdkafka holds nothing any more (see process and wait_for_earlier).
        self.errors_only = client.errors_only
        #: flush() calls holding new messages back (errors-only reports).
        self._holding = 0
        self._retired_produced = 0
        self._retired_delivered = 0
        #: Errors-only reports: a lower bound of the deliveries between the moments
        #: librdkafka holds nothing (its count also holds logs and statistics).
        self._delivered_at_least = 0
        self._retired_failed = 0
        self._activity = trio.lowlevel.ParkingLot()
        self._progress = trio.lowlevel.ParkingLot()
        self._idle = False
        self._paused = 0
        self._polling = False
        self._poll_done = trio.lowlevel.ParkingLot()

    @property
    def stopping(self) -> bool:
        """The producer is stopping (its phase: see ``_state``): reports processed from
        now on are the final ones."""
        return self._state.stopping

    # ---- counts -------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        if self.errors_only:
            # (Not librdkafka's own count, which also holds its queued logs and
            # statistics: the deliveries are known at the moments it holds nothing.)
            produced = self._retired_produced + sum(e.produced for e in self.epochs)
            return produced - self.delivered - self.failed
        return sum(e.produced - e.settled for e in self.epochs)

    @property
    def delivered(self) -> int:
        settled = self._retired_delivered + sum(e.delivered for e in self.epochs)
        return max(settled, self._delivered_at_least)

    @property
    def failed(self) -> int:
        return self._retired_failed + sum(len(e.failures) for e in self.epochs)

    # ---- the sink -----------------------------------------------------------------------

    def produce(self, batch: list[Pending], start: int) -> int:
        if self._holding:  # a flush() waits for what came before (errors-only reports)
            return start
        epoch = self.epochs[-1]
        if self.before_produce is not None:
            self.before_produce()
        pos = self.client.produce(batch, start, epoch, self.run_reports)
        epoch.produced += pos - start
        if self._idle:
            self._activity.unpark_all()
        return pos

    async def wait_for_space(self) -> None:
        """Wait until the delivery task has served some reports (librdkafka was full)."""
        self._activity.unpark_all()
        await self._progress.park()

    # ---- flush --------------------------------------------------------------------------

    async def wait_for_earlier(self) -> None:
        """Start a new epoch and wait until every message produced before it is settled.

        Not a checkpoint when they already are (callers checkpoint themselves).

        Raises:
            ProducerClosedError: The producer stopped first; what was not confirmed is
                handed back by ``open_producer``.
        """
        closing = self.epochs[-1]
        self.epochs.append(Epoch())
        self._retire()
        if closing in self.epochs:
            if closing.done is None:
                closing.done = trio.Event()
            self._activity.unpark_all()
            if not self.errors_only:
                await closing.done.wait()
            else:
                # Without success reports, the epoch is settled only once librdkafka
                # holds nothing: new messages wait in the batch until then.
                self._holding += 1
                try:
                    await closing.done.wait()
                finally:
                    self._holding -= 1
                    if not self._holding:
                        self._progress.unpark_all()  # the worker goes on
        if closing.settled_at_stop and (closing.failures or closing.produced > closing.settled):
            raise ProducerClosedError(
                "the producer closed before every message sent before flush() was "
                "confirmed; the undelivered ones are handed back by open_producer",
                producer_failed=True,
            )

    def stop(self) -> None:
        """The producer has stopped: release every flush() still waiting (sync)."""
        for epoch in self.epochs:
            epoch.settled_at_stop = True
            if epoch.done is not None:
                epoch.done.set()
        self._progress.unpark_all()

    async def wait_settled(self) -> None:
        """Wait until nothing is in flight (or librdkafka reported a fatal error)."""
        while self.in_flight and self._state.fatal is None:
            self._activity.unpark_all()
            await self._progress.park()

    # ---- the delivery task --------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll librdkafka in a worker thread and hand its reports to Trio, forever.

        When nothing is in flight it does not poll in a loop: it sleeps until the worker
        produces something, with a non-blocking poll every ``IDLE_POLL_INTERVAL`` seconds
        to serve librdkafka's logs and errors.
        """
        poll = self.client.poll
        task_status.started()
        while True:
            if self._paused:
                await self._activity.park()
                continue
            if self.in_flight:
                timeout = POLL_TIMEOUT
            else:
                self._idle = True
                with trio.move_on_after(IDLE_POLL_INTERVAL):
                    await self._activity.park()
                self._idle = False
                timeout = 0
                if self._paused:
                    continue
            self._polling = True
            try:
                served = await trio.to_thread.run_sync(poll, timeout, GATHER)
            finally:
                self._polling = False
                self._poll_done.unpark_all()
            self.process()
            if served < 0:  # librdkafka raised (recorded as an error): do not spin
                await trio.sleep(POLL_TIMEOUT)

    async def run_exclusive(
        self, fn: Callable[..., object], *args: object, abandon_on_cancel: bool = False
    ) -> object:
        """Run a blocking librdkafka call in a thread while the delivery task does not poll.

        Transactional calls (commit, abort) serve delivery reports themselves; pausing
        the delivery task keeps the rule that only one thread serves callbacks at a
        time. Not cancellable: ``fn`` must be bounded by its own timeout argument --
        unless ``abandon_on_cancel`` (the exactly-once committer at the exit's deadline:
        the call goes on in its thread, holding the client alive, while the producer
        closes; see ``KafkaClient.leave_transaction_open``).
        """
        self._paused += 1
        try:
            while self._polling:
                await self._poll_done.park()
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)
        finally:
            self._paused -= 1
            self._activity.unpark_all()
            self.process()

    def process(self) -> None:
        """Hand the reports served by the last poll over to Trio (on the Trio thread)."""
        client = self.client
        if client.errors:
            errors, client.errors = client.errors, []
            for error in errors:
                # (a retriable _AUTHENTICATION: an OAuth refresh failed, the token is valid)
                if error.fatal or (error.name in AUTHENTICATION_ERRORS and not error.retriable):
                    if self._state.fatal is None:
                        logger.error("the producer fails: %s", error)
                        self._on_fatal(error)
                else:
                    # Connection errors collapse into one WARNING when the cluster is
                    # unreachable, and one INFO when it is back (see _logging.Connectivity).
                    self.hooks.connectivity.error(error)
        if self.errors_only:
            left = self.client.outstanding()
            if not left:
                # librdkafka holds nothing: every message produced so far was delivered,
                # or its failure was served (in the failures lists).
                for epoch in self.epochs:
                    epoch.delivered = epoch.produced - len(epoch.failures)
            else:
                produced = self._retired_produced + sum(e.produced for e in self.epochs)
                at_least = produced - self.failed - left
                if at_least > self._delivered_at_least:
                    self._delivered_at_least = at_least
        self.hooks.after_poll(self.client.take_statistics(), self.delivered)
        if self.observer is not None:
            self.observer.after_poll(self)
        for epoch in self.epochs:
            if epoch.completed:
                completed, epoch.completed = epoch.completed, []
                for tracked in completed:
                    assert tracked.waiter is not None
                    tracked.waiter.set()
            failures = epoch.failures
            routed = epoch.routed
            while epoch.routed < len(failures):
                failure = failures[epoch.routed]
                epoch.routed += 1
                if failure.error.error.name in UNREACHABLE_ERRORS:
                    # A timeout while no broker answered: say so, not only _MSG_TIMED_OUT.
                    failure.error.cluster_unreachable = self.hooks.connectivity.describe()
                owner = failure.tracked
                if owner is not None and owner.has_waiter:
                    continue  # its send_and_wait caller owns it (see Producer.send_and_wait)
                self._route_failure(failure.error)
            if self.after_reports is not None:
                self.after_reports(epoch, failures[routed : epoch.routed], self.stopping)
        self._retire()
        self._progress.unpark_all()

    def _retire(self) -> None:
        epochs = self.epochs
        while len(epochs) > 1 and epochs[0].produced == epochs[0].settled:
            epoch = epochs[0]
            if epoch.routed < len(epoch.failures) or epoch.completed or epoch.runs:
                break  # process() has not handed these over yet
            epochs.popleft()
            epoch.settled_at_stop = self.stopping
            self._retired_produced += epoch.produced
            self._retired_delivered += epoch.delivered
            self._retired_failed += len(epoch.failures)
            if epoch.done is not None:
                epoch.done.set()
