import os

import trio

from trio_producer import ProducerConfig, open_producer

BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")


async def main() -> None:
    config = ProducerConfig(bootstrap_servers=BOOTSTRAP, linger=0.005)
    async with open_producer(config) as producer:
        await producer.send("events", b"hello", key=b"user-1", headers={"trace": b"abc"})
        meta = await producer.send_and_wait("events", b"important")  # RecordMetadata
        print(meta.topic, meta.partition, meta.offset)
    # Here every accepted message has been delivered, or the exit raised and named
    # the ones that were not.
    print(producer.statistics().delivered, "delivered")


trio.run(main)
