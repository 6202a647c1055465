from functools import partial

import trio

from trio_producer import open_producer
from trio_producer.testing import consume_all


async def test_orders_are_published(kafka_bootstrap: str, kafka_topic: str) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        for i in range(3):
            await producer.send(kafka_topic, b"order-%d" % i, key=b"shop-1")

    records = await trio.to_thread.run_sync(
        partial(consume_all, kafka_bootstrap, kafka_topic, expected=3)
    )
    assert [r.value for r in records] == [b"order-0", b"order-1", b"order-2"]
    assert [r.offset for r in records] == [0, 1, 2]
