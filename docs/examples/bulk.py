import os

import trio

from trio_producer import open_producer

BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")


async def main() -> None:
    async with open_producer(bootstrap_servers=BOOTSTRAP) as producer:
        # values, or (key, value) pairs; waits while the queue is full
        await producer.send_many("events", (b"event-%d" % i for i in range(100_000)))
        await producer.send_many("events", [(b"user-1", b"login"), (b"user-2", b"logout")])

        # or, without any await: send_nowait until the queue is full
        for i in range(1_000):
            try:
                producer.send_nowait("events", b"more-%d" % i)
            except trio.WouldBlock:
                await producer.send("events", b"more-%d" % i)
    print(producer.statistics().delivered, "delivered")


trio.run(main)
