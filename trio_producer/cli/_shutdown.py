"""How a ``produce`` run stops: what each signal does, and what the drain says."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from ._common import say, signal_name

if TYPE_CHECKING:
    from .._producer import Producer
    from ._lines import ReadStop
    from ._report import ProduceResult


@attrs.define(eq=False)
class Shutdown:
    """How a ``produce`` run stops: what each signal does, and what the drain says.

    The first SIGINT/SIGTERM while reading stops the reading (``stop``; the lines
    already read are still sent): the producer drains. A signal while it drains (the second
    one, or the first one after EOF) cuts the drain short: ``Producer.abort``.
    """

    producer: Producer
    result: ProduceResult
    close_timeout: float
    #: What the first signal stops (the reading) and a later one cuts (the sending).
    stop: ReadStop
    reading: bool = True
    closed: bool = False
    #: The "draining: ..." lines; cancelled when the drain is cut short.
    report_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    def left(self) -> int:
        stats = self.producer.statistics()
        return stats.queued + stats.in_flight

    def on_signal(self, signum: int, count: int) -> None:
        """``cancel_on_signals``' ``on_signal``: called before the helper acts on it."""
        name = signal_name(signum)
        if self.closed:
            return  # the producer has closed: nothing left to stop
        if self.result.cut_short is not None:
            say(f"{name}: already cutting the drain short")
            return
        if count == 1 and self.reading:
            self.result.interrupted = name
            self.stop.stop(self.close_timeout)
            say(f"{name}: stopped reading, draining")
            return
        # A signal while draining: the helper aborts every open producer on the second
        # signal; after EOF the first signal is already one "while draining".
        self.result.cut_short = signum
        self.stop.cut()
        self.report_scope.cancel(reason=f"received {name}")
        say(f"{name}: cutting the drain short ({self.left()} message(s) left)")
        if count == 1:
            self.producer.abort(f"received {name} while draining")

    async def report_drain(self, deadline: float, delay: float, hint: str) -> None:
        """Say how many messages are left about once a second until the producer closes."""
        with self.report_scope:
            await trio.sleep(delay)
            while True:
                left = self.left()
                if left:
                    until = max(0.0, deadline - trio.current_time())
                    say(
                        f"draining: {left} message(s) left, {until:.0f} s until "
                        f"close_timeout ({hint})"
                    )
                await trio.sleep(1.0)

    def start_drain(self, nursery: trio.Nursery) -> None:
        """The reading has stopped (EOF or a signal); the drain begins."""
        self.reading = False
        deadline = trio.current_time() + self.close_timeout
        first = self.result.interrupted
        if first is None:  # EOF: say something only when the drain takes a while
            nursery.start_soon(self.report_drain, deadline, 1.0, "Ctrl-C to stop now")
        else:
            again = "Ctrl-C" if first == "SIGINT" else first
            nursery.start_soon(self.report_drain, deadline, 0.0, f"{again} again to stop now")
