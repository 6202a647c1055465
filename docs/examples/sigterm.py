import os

import trio

from trio_producer import Producer, cancel_on_signals, open_producer

BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")


async def produce_forever(producer: Producer) -> None:
    i = 0
    while True:
        await producer.send("ticks", b"tick-%d" % i)
        i += 1
        await trio.sleep(0.001)


async def main() -> None:
    # SIGINT or SIGTERM cancels `scope`; open_producer then drains as on any exit.
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(cancel_on_signals, scope)
            async with open_producer(bootstrap_servers=BOOTSTRAP) as producer:
                if os.environ.get("EXAMPLE_STOP_AFTER"):  # for the docs test run
                    nursery.start_soon(_stop_later, scope, float(os.environ["EXAMPLE_STOP_AFTER"]))
                await produce_forever(producer)
    print(f"stopped; {producer.statistics().delivered} delivered")


async def _stop_later(scope: trio.CancelScope, seconds: float) -> None:
    await trio.sleep(seconds)
    os.kill(os.getpid(), 15)  # SIGTERM to ourselves


trio.run(main)
