"""A Trio app for the signal tests: produces numbered messages until a signal.

Usage: produce_until_signal.py BOOTSTRAP TOPIC (sigint|sigterm)

``sigint``: no helper; Trio raises KeyboardInterrupt in the body and open_producer drains.
``sigterm``: trio_producer.cancel_on_signals cancels the scope; open_producer drains.
It prints ``accepted=N`` (messages whose send returned) on stdout when it ends.
"""

from __future__ import annotations

import signal

# First thing: a child of a shell's background job inherits SIGINT ignored, and Trio
# only raises KeyboardInterrupt when SIGINT has Python's default handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

import sys  # noqa: E402

import trio  # noqa: E402

from trio_producer import cancel_on_signals, open_producer  # noqa: E402

BOOTSTRAP, TOPIC, MODE = sys.argv[1:4]
accepted = 0


async def produce() -> None:
    global accepted
    async with open_producer(
        bootstrap_servers=BOOTSTRAP, linger=3600, batch_max_messages=10**9, queue_capacity=10**6
    ) as producer:
        print("producing", flush=True)
        while True:
            await producer.send(TOPIC, b"%d" % accepted)
            accepted += 1
            if accepted % 100 == 0:
                await trio.sleep(0.001)


async def main() -> None:
    if MODE == "sigterm":
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(cancel_on_signals, scope)
                await produce()
    else:
        await produce()


try:
    trio.run(main)
except KeyboardInterrupt:
    print(f"accepted={accepted}", flush=True)
    sys.exit(130)
print(f"accepted={accepted}", flush=True)
