"""Turn SIGINT / SIGTERM into a cancellation, so that ``open_producer`` drains."""

from __future__ import annotations

import signal

import trio

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def cancel_on_signals(
    cancel_scope: trio.CancelScope,
    signals: tuple[int, ...] = DEFAULT_SIGNALS,
    *,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> int | None:
    """Cancel ``cancel_scope`` when one of ``signals`` arrives; return its number.

    Trio turns Ctrl-C into ``KeyboardInterrupt`` but does nothing with SIGTERM, which is
    what service managers and ``kill`` send. Run this in a nursery around the producing
    code: the first signal cancels the scope, the ``async with open_producer(...)``
    inside it leaves through its normal, bounded drain, and the program exits cleanly::

        async def main() -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(cancel_on_signals, scope)
                    async with open_producer(config) as producer:
                        ...  # produce until a signal
                    nursery.cancel_scope.cancel()  # done: stop watching

    Must run in the main thread (Trio's signal rule). Start it with
    ``await nursery.start(...)`` so that the handlers are installed before producing
    begins; ``task_status.started()`` reports ``None``.

    Returns:
        The number of the signal that arrived.
    """
    with trio.open_signal_receiver(*signals) as receiver:
        task_status.started(None)
        async for signum in receiver:
            name = signal.Signals(signum).name
            cancel_scope.cancel(reason=f"received {name}")
            return signum
    return None  # pragma: no cover - the receiver never ends by itself
