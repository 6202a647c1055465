"""``trio-producer broker``: the embedded broker in the foreground, until a signal."""

from __future__ import annotations

import signal
import sys
import time

import click

from .._embedded import BrokerError, EmbeddedBroker
from ._common import PROG, fail


@click.command()
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="Default: a free port.")
def broker(port: int | None) -> None:
    """Run the embedded broker (Tansu, memory-only) until Ctrl-C."""
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    # Explicit handlers: a shell starts background jobs with SIGINT ignored.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        embedded = EmbeddedBroker(port)
        try:
            embedded.start()
        except BrokerError as exc:
            fail(str(exc))
        with embedded:
            print(embedded.bootstrap_servers, flush=True)
            print(f"{PROG}: broker running; Ctrl-C to stop", file=sys.stderr, flush=True)
            while embedded.running and not stop:
                time.sleep(0.1)
            if not stop:
                fail("the embedded broker stopped by itself")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
