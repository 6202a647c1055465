"""Turn SIGINT / SIGTERM into a cancellation, so that ``open_producer`` drains; a second
signal cuts the drain short.

The producers open in the current Trio run are registered here (a ``RunVar``), so that
the signal helper can ask them to stop waiting when a second signal arrives.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("trio_producer")

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Abortable(Protocol):
    def abort(self, reason: str = ...) -> None: ...


class _Registry:
    """The producers open in one Trio run."""

    def __init__(self) -> None:
        self.open: set[Abortable] = set()
        self.changed = trio.lowlevel.ParkingLot()


_REGISTRY: trio.lowlevel.RunVar[_Registry] = trio.lowlevel.RunVar("trio_producer_registry")


def _registry() -> _Registry:
    try:
        return _REGISTRY.get()
    except LookupError:
        registry = _Registry()
        _REGISTRY.set(registry)
        return registry


def register(producer: Abortable) -> None:
    """Note that ``producer`` is open in this run (until :func:`unregister`)."""
    _registry().open.add(producer)


def unregister(producer: Abortable) -> None:
    registry = _registry()
    registry.open.discard(producer)
    registry.changed.unpark_all()


def abort_open_producers(reason: str) -> int:
    """Cut short every producer open in this run (see ``Producer.abort``); return how many."""
    producers = list(_registry().open)
    for producer in producers:
        producer.abort(reason)
    return len(producers)


async def _wait_until_closed(producers: set[Abortable], done: trio.CancelScope) -> None:
    registry = _registry()
    while producers & registry.open:
        await registry.changed.park()
    done.cancel(reason="the producers open at the first signal have closed")


async def cancel_on_signals(
    cancel_scope: trio.CancelScope,
    signals: tuple[int, ...] = DEFAULT_SIGNALS,
    *,
    on_signal: Callable[[int, int], object] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int | None:
    """Cancel ``cancel_scope`` when one of ``signals`` arrives; cut the drain short on a second.

    Trio turns Ctrl-C into ``KeyboardInterrupt`` but does nothing with SIGTERM, which is
    what service managers and ``kill`` send. Run this in a nursery around the producing
    code: the first signal cancels the scope, and the ``async with open_producer(...)``
    inside it leaves through its normal, bounded drain::

        async def main() -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(cancel_on_signals, scope)
                    async with open_producer(config) as producer:
                        ...  # produce until a signal
                    nursery.cancel_scope.cancel()  # done: stop watching

    After the first signal the handlers stay installed (shielded from the cancellation
    it caused) for as long as a producer that was open at that moment is still open:
    a second signal does not kill the process with the default action, it calls
    :meth:`Producer.abort <trio_producer.Producer.abort>` on every open producer of this
    Trio run -- the drain stops waiting, what was not delivered is purged and handed
    back in :class:`~trio_producer.UndeliveredMessagesError` (within about a second).
    Further signals are logged and ignored. Once those producers have closed, the
    helper returns.

    Must run in the main thread (Trio's signal rule). Start it with
    ``await nursery.start(...)`` so that the handlers are installed before producing
    begins.

    Args:
        cancel_scope: What the first signal cancels.
        signals: The signals to watch.
        on_signal: Called (on the Trio thread) with the signal number and how many
            signals have arrived so far (1 for the first), before acting on it.

    Returns:
        The number of the first signal that arrived.
    """
    with trio.open_signal_receiver(*signals) as receiver:
        task_status.started()
        first: int | None = None
        async for signum in receiver:
            first = signum
            break
        if first is None:  # pragma: no cover - the receiver never ends by itself
            return None
        producers = set(_registry().open)
        if on_signal is not None:
            on_signal(first, 1)
        cancel_scope.cancel(reason=f"received {signal.Signals(first).name}")
        count = 1
        with trio.CancelScope(shield=True) as watching:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_until_closed, producers, watching)
                async for signum in receiver:
                    count += 1
                    name = signal.Signals(signum).name
                    if on_signal is not None:
                        on_signal(signum, count)
                    if count == 2:
                        aborted = abort_open_producers(f"received {name} a second time")
                        logger.warning(
                            "received %s a second time: cutting the drain of %d producer(s) short",
                            name,
                            aborted,
                        )
                    else:
                        logger.warning("received %s again: already cutting the drain short", name)
        return first
