"""A Trio app for the second-SIGTERM test: 100 messages to a broker that never answers.

Usage: second_sigterm_app.py BOOTSTRAP TOPIC

Runs the producer under ``cancel_on_signals`` with ``close_timeout=30``: the first SIGTERM
cancels the scope and the drain starts (it would wait 30 s for a broker that never
answers); a second SIGTERM must cut the drain short and hand the messages back.
Prints ``ready`` once the messages are accepted, then, when the block is left,
``left=<exception type> handed_back=<n>`` and finally ``accepted=<n>``.
"""

from __future__ import annotations

import sys

import trio

from trio_producer import Producer, UndeliveredMessagesError, cancel_on_signals, open_producer

BOOTSTRAP, TOPIC = sys.argv[1:3]
accepted = 0


async def main() -> None:
    global accepted
    producer: Producer | None = None
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(cancel_on_signals, scope)
            try:
                async with open_producer(bootstrap_servers=BOOTSTRAP, close_timeout=30) as p:
                    producer = p
                    for i in range(100):
                        await p.send(TOPIC, b"%d" % i)
                        accepted += 1
                    print("ready", flush=True)
                    await trio.sleep_forever()
            except UndeliveredMessagesError as exc:
                print(f"left=UndeliveredMessagesError handed_back={len(exc.messages)}", flush=True)
            except BaseException as exc:
                undelivered = len(producer.undelivered) if producer is not None else 0
                print(f"left={type(exc).__name__} handed_back={undelivered}", flush=True)
                raise
            else:
                print("left=nothing handed_back=0", flush=True)
            nursery.cancel_scope.cancel()


try:
    trio.run(main)
except KeyboardInterrupt:
    print(f"accepted={accepted}", flush=True)
    sys.exit(130)
print(f"accepted={accepted}", flush=True)
