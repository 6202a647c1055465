"""A producer with a durable spool, for the kill -9 torture of tests/broker/test_spool_producer.py.

Usage: spool_child.py BOOTSTRAP TOPIC SPOOL ROUND LINGER COUNT

Sends COUNT keyed messages ``ROUND:i`` (key ``k{i % 5}``) and prints ``ok i`` after each
``send`` returned -- the moment the message is durable. COUNT 0: just open the spool
(which sends what an earlier process left) and close it, then print ``drained``.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.default_int_handler)

import sys  # noqa: E402

import trio  # noqa: E402

from trio_producer import open_producer  # noqa: E402

BOOTSTRAP, TOPIC, SPOOL, ROUND, LINGER, COUNT = sys.argv[1:7]


async def main() -> None:
    count = int(COUNT)
    async with open_producer(
        bootstrap_servers=BOOTSTRAP,
        spool_path=SPOOL,
        spool_sync="never",
        linger=float(LINGER),
        queue_capacity=1000,
        close_timeout=20.0 if count == 0 else 2.0,
        librdkafka={"queue.buffering.max.messages": 1000},
    ) as producer:
        print("open", flush=True)
        for i in range(count):
            await producer.send(TOPIC, f"{ROUND}:{i}".encode(), key=b"k%d" % (i % 5))
            sys.stdout.write(f"ok {i}\n")
            sys.stdout.flush()
    if count == 0:
        print("drained", flush=True)


trio.run(main)
