"""The producer's state: everything that affects the producer's shutdown lives here.

One object, :class:`ProducerState`, owns the shutdown. Its :attr:`~ProducerState.phase`
moves only through its own methods, only along the table below; a move the table does
not allow raises :class:`IllegalTransition` at once (an internal error, never expected).
Every other object reads the phase; none keeps a flag of its own about it.

Transitions (from → the phases it may move to)::

    OPEN       → DRAINING, STOPPED
    DRAINING   → CUT_SHORT, STOPPED
    CUT_SHORT  → STOPPED
    STOPPED    → FINISHED
    FINISHED   → (none)

What each phase means for a failed delivery report, a send and a flush:

``OPEN``
    The body runs. A failure goes to ``on_delivery_error``, or fails the producer. Sends
    are accepted (refused once the producer failed or was aborted: that closes the
    channel, while the phase stays OPEN until the body has ended). A flush waits for the
    reports of what was sent before it.
``DRAINING``
    The body has ended: the channel is closed, the worker drains it, the reports are
    awaited -- bounded by ``close_timeout``, shielded. Failures as in OPEN. Sends and new
    flushes are refused (``ProducerClosedError``); a flush already waiting goes on.
``CUT_SHORT``
    A Ctrl-C or :meth:`abort` cut the drain short: what librdkafka still queues is
    purged, what is at the broker gets ``CUT_SHORT_GRACE`` to be confirmed. A failure
    from now on is kept for the exit and handed back in its exception, never only to the
    hook; a purged spooled message stays in the spool (for the next producer). Sends and
    flushes as in DRAINING.
``STOPPED``
    The background tasks have ended: everything left is purged, the last reports
    served, the unsent messages collected. Failures as in CUT_SHORT. A waiting flush is
    released (``ProducerClosedError`` if its messages were not all confirmed).
``FINISHED``
    The exit is decided (:func:`trio_producer._exit.decide`): nobody can adopt a failure
    any more -- a cancelled ``send_and_wait`` raises its own.

Who moves the phase -- ``_lifecycle``, in the shutdown order, and nothing else:

* ``_drain``: OPEN → DRAINING (:meth:`ProducerState.begin_drain`, which closes the
  channel), DRAINING → CUT_SHORT (:meth:`ProducerState.cut_short`);
* ``_running``, once the nursery has exited: → STOPPED (:meth:`ProducerState.stop`).
  From OPEN only if the body never came back to drain (an internal error);
* ``open_producer``, once the exit is decided: STOPPED → FINISHED
  (:meth:`ProducerState.finish`).

Who reads it: :meth:`ProducerState.route_failure` and :meth:`ProducerState.adopt_failure`
here; ``DeliveryTracker.stopping`` in ``_delivery`` (a failed spooled message leaves the
spool only while it is false; ``Epoch.settled_at_stop`` records it, per epoch, when the
epoch retires -- data, read by the flush that waited for that epoch).

Not phases (each is a mechanism with a meaning of its own, driven from here):

* ``BatchChannel.closed``: the channel's own close, like a Trio memory channel's. It
  refuses new sends, and the worker's receive loop ends once the channel is closed *and
  empty* -- no flag gates a flush. Only this object closes it: at DRAINING, or earlier
  when the producer fails or is aborted (:meth:`ProducerState._fail`).
* ``BatchChannel.stopped`` / ``DeliveryTracker.stop()``: the release of those who wait
  for the worker's progress or for a flush epoch; the lifecycle calls them in STOPPED,
  after the collection.
* ``SpoolKeeper._stopped``: the keeper task has ended (at the stop, or by a bug): no
  fsync will come, so nothing waits for one.

The transaction's own states are in ``_transaction`` (the same kind of table).
"""

from __future__ import annotations

import enum
import inspect
import logging
from typing import TYPE_CHECKING, TypeVar

import attrs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import trio

    from ._exceptions import DeliveryError
    from ._message import KafkaErrorInfo
    from ._worker import BatchChannel

logger = logging.getLogger("trio_producer")

_E = TypeVar("_E", bound=enum.Enum)

#: Grace after ``close_timeout`` for the background tasks to notice they are stopped
#: (one poll timeout) and for purged delivery reports to be served.
STOP_GRACE = 2.0
#: When the drain is cut short (Ctrl-C while leaving, or Producer.abort): how long the
#: messages already sent to the broker get to be confirmed before they are purged too.
CUT_SHORT_GRACE = 1.0


class Phase(enum.Enum):
    """The producer's shutdown phases (see the module's docstring)."""

    OPEN = "open"
    DRAINING = "draining"
    CUT_SHORT = "cut short"
    STOPPED = "stopped"
    FINISHED = "finished"


#: The allowed moves: the module's table, as data.
PHASE_TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.OPEN: frozenset({Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.CUT_SHORT, Phase.STOPPED}),
    Phase.CUT_SHORT: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset({Phase.FINISHED}),
    Phase.FINISHED: frozenset(),
}

#: Failures in these phases are handed back at the exit, not routed to the hook.
_HANDING_BACK = frozenset({Phase.CUT_SHORT, Phase.STOPPED, Phase.FINISHED})


class IllegalTransition(RuntimeError):
    """A state machine was asked for a move its table does not allow: a bug here."""


def check_transition(table: Mapping[_E, frozenset[_E]], what: str, old: _E, new: _E) -> None:
    """Raise :class:`IllegalTransition` unless ``table`` allows ``old`` → ``new``."""
    if new not in table[old]:
        raise IllegalTransition(
            f"internal error in trio_producer, please report it: the {what} cannot move "
            f"from {old.name} to {new.name}"
        )


@attrs.define(eq=False)
class ProducerState:
    """What happens to the producer as a whole: its phase, failures, fatal errors, abort."""

    on_delivery_error: Callable[[DeliveryError], object] | None
    channel: BatchChannel
    failures: list[DeliveryError] = attrs.Factory(list)
    failed_by: DeliveryError | None = None
    fatal: KafkaErrorInfo | None = None
    aborted: str | None = None
    body_scope: trio.CancelScope | None = None
    #: The drain's wait, cancelled by ``abort`` to cut it short.
    drain_scope: trio.CancelScope | None = None
    #: While a transaction aborts -- exactly while its state is ABORTING: set by its moves
    #: (``_transaction``) -- and without ``on_delivery_error``: the failures of its
    #: messages (refused or purged by the abort), handed back with the exception that
    #: leaves ``transaction()`` instead of failing the producer.
    transaction_failures: list[DeliveryError] | None = None
    #: Written only by ``_move`` (read it as ``phase``).
    _phase: Phase = attrs.field(default=Phase.OPEN, init=False)

    @property
    def phase(self) -> Phase:
        """Where the producer is in its shutdown (moved only by the methods below)."""
        return self._phase

    # ---- the moves (see the module's table) ---------------------------------------------

    def _move(self, new: Phase) -> None:
        check_transition(PHASE_TRANSITIONS, "producer's phase", self._phase, new)
        self._phase = new

    def begin_drain(self) -> None:
        """OPEN → DRAINING: close the channel (sync); new sends raise ProducerClosedError."""
        self._move(Phase.DRAINING)
        self.channel.close()

    def cut_short(self) -> None:
        """DRAINING → CUT_SHORT: failures from now on are handed back at the exit."""
        self._move(Phase.CUT_SHORT)

    def stop(self) -> None:
        """→ STOPPED: the background tasks have ended."""
        self._move(Phase.STOPPED)

    def finish(self) -> None:
        """STOPPED → FINISHED: the exit is decided."""
        self._move(Phase.FINISHED)

    # ---- reads --------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Failures are kept for the exit (not routed): CUT_SHORT, STOPPED, FINISHED."""
        return self.phase in _HANDING_BACK

    # ---- failures -----------------------------------------------------------------------

    def route_failure(self, failure: DeliveryError) -> None:
        if self.transaction_failures is not None and not self.stopping:
            if self.on_delivery_error is None and self.fatal is None:
                self.transaction_failures.append(failure)
                return
        if self.stopping:
            # Reports served after the drain was cut short or the tasks stopped (purged):
            # these are always handed back in the exception, never only to the hook.
            self.failures.append(failure)
            return
        hook = self.on_delivery_error
        if hook is not None and self.fatal is None:
            try:
                result = hook(failure)
                if inspect.isawaitable(result):
                    _discard(result)
                    raise TypeError(
                        "on_delivery_error returned an awaitable: it must be a plain "
                        "(sync) function; it is called on the Trio thread and must not block"
                    )
            except Exception as exc:
                logger.exception("on_delivery_error raised; the producer fails")
                self.failures.append(failure)
                self._fail(failure, f"on_delivery_error raised {exc!r}")
            return
        self.failures.append(failure)
        if self.failed_by is None:
            logger.error("delivery failed, the producer fails: %s", failure)
            self._fail(failure, f"a delivery failed: {failure}")

    def adopt_failure(self, failure: DeliveryError) -> bool:
        """Take a failure a cancelled ``send_and_wait`` could not raise; False if too late."""
        if self.phase is Phase.FINISHED:
            return False
        self.route_failure(failure)
        return True

    def on_fatal(self, error: KafkaErrorInfo) -> None:
        self.fatal = error
        self._fail(None, f"fatal Kafka error: {error}")

    def abort(self, reason: str) -> None:
        if self.aborted is None:
            self.aborted = reason
            logger.warning("the producer is aborted: %s", reason)
        self._fail(None, f"aborted: {reason}")
        if self.drain_scope is not None:
            self.drain_scope.cancel(reason=f"trio_producer: aborted: {reason}")

    def _fail(self, failure: DeliveryError | None, reason: str) -> None:
        if self.failed_by is None and failure is not None:
            self.failed_by = failure
        self.channel.close(f"the producer failed: {reason}", failed=True)
        if self.body_scope is not None:
            self.body_scope.cancel(reason=f"trio_producer: {reason}")


def _discard(awaitable: Awaitable[object]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # no "coroutine was never awaited" warning on top of our error
