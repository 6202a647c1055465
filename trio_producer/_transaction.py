"""A producer's transactions: everything about its transaction state lives here.

One object per producer, :class:`Transactions`, owns :attr:`~Transactions.state`; it
moves only through :meth:`Transactions._move`, only along the table below (after
aiokafka's ``TransactionState.is_transition_valid``); any other move raises
``IllegalTransition`` at once (an internal error).

Transitions (from → the states it may move to)::

    NONE            → (none)
    MANAGED         → (none)
    READY           → IN_TRANSACTION
    IN_TRANSACTION  → COMMITTING, ABORTING
    COMMITTING      → READY, ABORTING
    ABORTING        → READY

What each state means:

``NONE``
    No ``transactional.id``: sends are accepted; ``transaction()`` raises
    ``ConfigError``; ``send_offsets()`` is refused (no transaction is open).
``MANAGED``
    ``exactly_once``: the durable spool runs the transactions itself (see
    ``spool._exactly_once``), from its own task. Sends are accepted at any time (into
    the spool); ``transaction()`` and ``send_offsets()`` are refused with
    ``ConfigError``: the application's own transactions could not be made atomic with
    the spool's position.
``READY``
    Between transactions: every send is refused with ``TransactionError`` (nothing is
    accepted); ``transaction()`` begins one; ``send_offsets()`` is refused.
``IN_TRANSACTION``
    librdkafka's ``begin_transaction`` succeeded and the block runs: every message
    accepted now, from any task, belongs to the transaction; ``send_offsets()`` joins
    it; another ``transaction()`` is refused (they do not nest).
``COMMITTING``
    The block succeeded: flush, then librdkafka's commit. Sends are still accepted (they
    belong to the transaction); ``send_offsets()`` is refused ("too late"). → READY when
    the commit returns or fails for good, → ABORTING when it fails abortably or is
    cancelled or interrupted before librdkafka's commit call starts.
``ABORTING``
    The block raised (or the commit could not go on): flush quietly, then librdkafka's
    abort, shielded and bounded by ``transaction_timeout``. Without ``on_delivery_error``
    the failed deliveries of its messages are kept (``ProducerState.transaction_failures``,
    a list exactly while the state is ABORTING, set by the moves), to be handed back with
    the exception that leaves ``transaction()`` rather than failing the producer --
    unless the producer is stopping (its phase: ``_state``) or failed fatally.
    ``send_offsets()`` is refused.

Who moves it: :meth:`Transactions.run` (the body of ``Producer.transaction``) and
:meth:`Transactions._abort`. Who reads it: the send methods, through
``Producer._needs_transaction`` -- the hot path's copy of ``state is READY``, kept by
:meth:`_move` alone (through the callback the producer gives), so that the check costs
one attribute read; ``ProducerState.route_failure`` (through ``transaction_failures``);
:meth:`send_offsets`. Nothing here refers back to the producer (no reference cycle).
"""

from __future__ import annotations

import enum
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from ._client import check_offsets
from ._exceptions import ConfigError, TransactionError, TrioProducerError
from ._state import STOP_GRACE, check_transition

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from confluent_kafka import TopicPartition

    from ._delivery import DeliveryTracker
    from ._exceptions import DeliveryError
    from ._state import ProducerState
    from ._worker import BatchChannel

logger = logging.getLogger("trio_producer")

enable_ki_protection = trio.lowlevel.enable_ki_protection


class TransactionState(enum.Enum):
    """A producer's transaction state (see the module's docstring)."""

    NONE = "no transactional.id"
    MANAGED = "managed by the exactly-once spool"
    READY = "ready"
    IN_TRANSACTION = "in a transaction"
    COMMITTING = "committing"
    ABORTING = "aborting"


#: The allowed moves: the module's table, as data.
TRANSACTION_TRANSITIONS: Mapping[TransactionState, frozenset[TransactionState]] = {
    TransactionState.NONE: frozenset(),
    TransactionState.MANAGED: frozenset(),
    TransactionState.READY: frozenset({TransactionState.IN_TRANSACTION}),
    TransactionState.IN_TRANSACTION: frozenset(
        {TransactionState.COMMITTING, TransactionState.ABORTING}
    ),
    TransactionState.COMMITTING: frozenset({TransactionState.READY, TransactionState.ABORTING}),
    TransactionState.ABORTING: frozenset({TransactionState.READY}),
}

#: States in which a transaction is open (begun, not yet committed or aborted).
_OPEN = frozenset(
    {TransactionState.IN_TRANSACTION, TransactionState.COMMITTING, TransactionState.ABORTING}
)


class Transactions:
    """A producer's transactions: the state, librdkafka's transactional calls, the abort.

    Args:
        tracker: The delivery tracker (its client, its exclusive runs).
        channel: The batch channel (whether the producer is closed).
        state: The producer's state (where a failure goes when not absorbed).
        needs_transaction: Called with ``state is READY`` at each move (the producer
            keeps it for the one-attribute check of its send methods).
        timeout: ``transaction_timeout``, in seconds.
        managed: The exactly-once spool runs the transactions (state ``MANAGED``).
    """

    def __init__(
        self,
        tracker: DeliveryTracker,
        channel: BatchChannel,
        state: ProducerState,
        needs_transaction: Callable[[bool], None],
        timeout: float,
        *,
        managed: bool = False,
    ) -> None:
        self._tracker = tracker
        self._channel = channel
        self._producer_state = state
        self._needs_transaction = needs_transaction
        self._timeout = timeout
        transactional = tracker.client.transactional and not managed
        if managed:
            self.state = TransactionState.MANAGED
        else:
            self.state = TransactionState.READY if transactional else TransactionState.NONE
        needs_transaction(transactional)
        #: librdkafka runs one transactional call at a time (another one fails with
        #: _CONFLICT or _PREV_IN_PROGRESS and wedges the transaction): this orders them.
        self._lock = trio.Lock()

    def _move(self, new: TransactionState) -> None:
        check_transition(TRANSACTION_TRANSITIONS, "transaction state", self.state, new)
        self.state = new
        self._needs_transaction(new is TransactionState.READY)
        # Where the producer's state puts the failures of an aborting transaction.
        self._producer_state.transaction_failures = [] if new is TransactionState.ABORTING else None

    @asynccontextmanager
    @enable_ki_protection
    async def run(self, flush: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """``Producer.transaction``: begin; commit (after ``flush``, the producer's) when
        the block succeeds, else abort."""
        client = self._tracker.client
        await trio.lowlevel.checkpoint()
        if self.state is TransactionState.MANAGED:
            raise _managed("transaction()")
        if self.state is TransactionState.NONE:
            raise ConfigError(
                "transaction() needs the librdkafka property 'transactional.id' "
                "(librdkafka={'transactional.id': ...})"
            )
        if self.state in _OPEN:
            raise TrioProducerError("a transaction is already open on this producer")
        if self._channel.closed:
            raise self._channel.closed_error()
        client.begin_transaction()
        self._move(TransactionState.IN_TRANSACTION)
        try:
            yield
        except BaseException as exc:
            raise await self._abort(exc) from None
        self._move(TransactionState.COMMITTING)
        try:
            await flush()
            async with self._lock:
                await self._tracker.run_exclusive(client.commit_transaction, self._timeout)
        except TransactionError as exc:
            if exc.abortable:
                raise await self._abort(exc) from None
            self._move(TransactionState.READY)
            raise
        except BaseException as exc:
            # Cancelled, interrupted or closed before librdkafka's commit started.
            raise await self._abort(exc) from None
        self._move(TransactionState.READY)

    @enable_ki_protection
    async def send_offsets(self, offsets: Sequence[TopicPartition], group_metadata: bytes) -> None:
        """``Producer.send_offsets``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        checked = check_offsets(offsets, group_metadata)
        if self.state is TransactionState.MANAGED:
            raise _managed("send_offsets()")
        if self._channel.closed:
            raise self._channel.closed_error()
        self._check_joinable()
        if not checked:
            return  # only logical offsets: nothing to commit
        client = self._tracker.client
        async with self._lock:  # (one transactional call at a time)
            self._check_joinable()
            await self._tracker.run_exclusive(
                client.send_offsets_to_transaction,
                checked,
                group_metadata,
                self._timeout,
            )
        await trio.lowlevel.checkpoint_if_cancelled()

    def _check_joinable(self) -> None:
        if self.state is not TransactionState.IN_TRANSACTION:
            if self.state in _OPEN:
                raise TrioProducerError(
                    "send_offsets() came too late: the transaction is already committing or "
                    "aborting (call it inside the transaction block, before it ends)"
                )
            raise TrioProducerError(
                "send_offsets() must be called inside producer.transaction(): the offsets "
                "are committed with the transaction"
            )

    async def _abort(self, exc: BaseException) -> BaseException:
        """Abort the open transaction after ``exc``: shielded, bounded, and not skipped by
        a Ctrl-C. Returns what the caller must see: ``exc`` with a note saying how the
        transaction ended, or a ``KeyboardInterrupt`` that arrived meanwhile. Leaves the
        state READY."""
        deadline = trio.current_time() + self._timeout
        self._move(TransactionState.ABORTING)
        try:
            outcome, interrupt = await self._run_abort(deadline)
        except BaseException:
            absorbed = self._end_abort()
            for failure in absorbed:  # not handed back here after all: route them
                self._producer_state.route_failure(failure)
            raise
        absorbed = self._end_abort()
        note = f"trio_producer: the transaction was {outcome}"
        if absorbed:
            # The abort discards the transaction's messages anyway: those it refused or
            # purged before they were written are handed back here, not as a failure of
            # the whole producer.
            note += (
                f"; {len(absorbed)} of its messages were not written before the abort and "
                "are handed back in this exception's `transaction_undelivered`"
            )
        target: BaseException = interrupt if interrupt is not None else exc
        if interrupt is not None:
            interrupt.__context__ = exc
        target.add_note(note)
        if absorbed:
            target.transaction_undelivered = tuple(absorbed)  # type: ignore[attr-defined]
        return target

    def _end_abort(self) -> list[DeliveryError]:
        """ABORTING → READY; return the failures absorbed meanwhile."""
        absorbed = self._producer_state.transaction_failures
        assert absorbed is not None
        self._move(TransactionState.READY)
        return absorbed

    async def _run_abort(self, deadline: float) -> tuple[str, KeyboardInterrupt | None]:
        client = self._tracker.client
        interrupt: KeyboardInterrupt | None = None
        with trio.CancelScope(deadline=deadline, shield=True):
            try:
                # Deliver what was sent, so that the abort purges nothing we would
                # have to hand back.
                await self._settle_quietly()
            except KeyboardInterrupt as ki:
                interrupt = ki  # stop waiting, but still abort
            except TrioProducerError:
                pass  # the producer is closing: the abort purges what is left
        outcome = "aborted"
        while True:
            try:
                with trio.CancelScope(deadline=deadline + STOP_GRACE, shield=True) as scope:
                    async with self._lock:  # after a send_offsets still running
                        remaining = max(0.1, deadline - trio.current_time())
                        await self._tracker.run_exclusive(client.abort_transaction, remaining)
                if scope.cancelled_caught:
                    outcome = "left open: the abort did not finish within transaction_timeout"
                break
            except KeyboardInterrupt as ki:
                interrupt = interrupt or ki  # the abort must still run
            except TrioProducerError as abort_error:
                outcome = f"not aborted: aborting failed: {abort_error}"
                logger.error("aborting the transaction failed: %s", abort_error)
                break
        return outcome, interrupt

    async def _settle_quietly(self) -> None:
        channel = self._channel
        await channel.wait_produced(channel.request_flush())
        await self._tracker.wait_for_earlier()


def _managed(call: str) -> ConfigError:
    return ConfigError(
        f"{call} is not available with exactly_once=True: the spool runs the transactions "
        "itself (each commits its messages with the spool's position); send without "
        "transaction(). For consume-transform-produce with send_offsets(), open a "
        "producer without a spool: its transactions are exactly once already"
    )
