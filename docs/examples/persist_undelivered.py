import json
import os

import trio

from trio_producer import UndeliveredMessagesError, open_producer

BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")
SPOOL = os.environ.get("SPOOL_FILE", "undelivered.jsonl")


async def main() -> None:
    try:
        async with open_producer(bootstrap_servers=BOOTSTRAP, close_timeout=2.0) as producer:
            for i in range(100):
                await producer.send("orders", b"order-%d" % i, key=b"shop-1")
    except UndeliveredMessagesError as exc:
        # Nothing is lost: keep what the broker did not confirm, send it again later.
        async with await trio.open_file(SPOOL, "a") as spool:
            for failure in exc.failures:
                m = failure.message
                record = {
                    "topic": m.topic,
                    "key": m.key.decode() if m.key is not None else None,
                    "value": m.value.decode() if m.value is not None else None,
                    "reason": failure.error.name,
                }
                await spool.write(json.dumps(record) + "\n")
        print(f"spooled {len(exc.messages)} undelivered message(s) to {SPOOL}")
    else:
        print("all delivered")


trio.run(main)
