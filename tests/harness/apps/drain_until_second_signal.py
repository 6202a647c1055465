"""A Trio app for the signal tests: cancel_on_signals around a producer that cannot deliver.

Usage: drain_until_second_signal.py BOOTSTRAP COUNT

It sends COUNT messages (BOOTSTRAP is black-holed: nothing is ever delivered), prints
``accepted=COUNT`` and waits. The first SIGINT/SIGTERM cancels it: the producer drains,
for up to close_timeout=30 s. A second one cuts the drain short. It prints
``signal N NAME`` for each signal, and at the end
``handed_back=N accepted=N`` (the messages in UndeliveredMessagesError, and the
messages whose send returned), then exits normally (status 0).
"""

from __future__ import annotations

import signal

# First thing: a child of a shell's background job inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

import sys  # noqa: E402
from functools import partial  # noqa: E402

import trio  # noqa: E402

from trio_producer import UndeliveredMessagesError, cancel_on_signals, open_producer  # noqa: E402

BOOTSTRAP = sys.argv[1]
COUNT = int(sys.argv[2])


def on_signal(signum: int, count: int) -> None:
    print(f"signal {count} {signal.Signals(signum).name}", flush=True)


async def main() -> None:
    accepted = 0
    handed_back: int | None = None
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(cancel_on_signals, scope, on_signal=on_signal))
            try:
                async with open_producer(bootstrap_servers=BOOTSTRAP, close_timeout=30) as producer:
                    for i in range(COUNT):
                        await producer.send("black-hole", b"%d" % i)
                        accepted += 1
                    print(f"accepted={accepted}", flush=True)
                    await trio.sleep_forever()
            except UndeliveredMessagesError as exc:
                handed_back = len(exc.messages)
            finally:
                nursery.cancel_scope.cancel()
    print(f"handed_back={handed_back} accepted={accepted}", flush=True)


trio.run(main)
