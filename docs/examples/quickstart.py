import logging
import os

import trio

from trio_producer import ProducerConfig, open_producer

# Start a broker first -- `trio-producer broker` runs one and prints its address -- then:
#   BOOTSTRAP_SERVERS=127.0.0.1:PORT python quickstart.py
BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")

# The library logs nothing unless you configure logging; with this, an unreachable
# cluster is one WARNING within a second or so, naming the address.
logging.basicConfig(level=logging.WARNING)


async def main() -> None:
    # delivery_timeout: send_and_wait gives up (DeliveryError) after 10 s without a broker.
    config = ProducerConfig(bootstrap_servers=BOOTSTRAP, linger=0.005, delivery_timeout=10)
    async with open_producer(config) as producer:
        await producer.send("events", b"hello", key=b"user-1", headers={"trace": b"abc"})
        meta = await producer.send_and_wait("events", b"important")  # RecordMetadata
        print(meta.topic, meta.partition, meta.offset)
    # Here every accepted message has been delivered, or the exit raised and named
    # the ones that were not.
    print(producer.statistics().delivered, "delivered")


trio.run(main)
