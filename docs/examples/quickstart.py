import os

import trio

from trio_producer import ProducerConfig, open_producer

# No broker yet? `trio-producer broker` starts one and prints its address; then
#   BOOTSTRAP_SERVERS=127.0.0.1:PORT python quickstart.py
BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")


async def main() -> None:
    # delivery_timeout: a message not delivered in 10 s fails (here: DeliveryError).
    config = ProducerConfig(BOOTSTRAP, linger=0.005, delivery_timeout=10)
    async with open_producer(config) as producer:
        await producer.send("events", b"hello", key=b"user-1", headers={"trace": b"abc"})
        meta = await producer.send_and_wait("events", b"important")  # RecordMetadata
        print(meta.topic, meta.partition, meta.offset)
    # Here every accepted message has been delivered, or the exit raised and named
    # the ones that were not.
    print(producer.statistics().delivered, "delivered")


trio.run(main)
