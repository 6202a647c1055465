import json
import os

import trio

from trio_producer import open_producer, undelivered_failures

BOOTSTRAP = os.environ.get("BOOTSTRAP_SERVERS", "localhost:9092")
SPOOL = os.environ.get("SPOOL_FILE", "undelivered.jsonl")


def persist(exc: BaseException) -> int:
    """Keep what the broker did not confirm, to send it again later; return how many.

    Plain (sync) file I/O: it also runs when the block was cancelled, where an await
    would raise Cancelled again.
    """
    failures = undelivered_failures(exc)
    with open(SPOOL, "a") as spool:
        for failure in failures:
            m = failure.message
            record = {
                "topic": m.topic,
                "key": m.key.decode() if m.key is not None else None,
                "value": m.value.decode() if m.value is not None else None,
                "reason": failure.error.name,
                # resending may duplicate it (a timeout or a purge of a sent message)
                "possibly_delivered": failure.possibly_delivered,
            }
            spool.write(json.dumps(record) + "\n")
    return len(failures)


async def main() -> None:
    try:
        async with open_producer(bootstrap_servers=BOOTSTRAP, close_timeout=2.0) as producer:
            for i in range(100):
                await producer.send("orders", b"order-%d" % i, key=b"shop-1")
    except BaseException as exc:
        # Whatever ended the block -- undelivered messages at the exit, one failed
        # delivery (an oversized message), your own exception, a cancellation,
        # Ctrl-C, a failed send_and_wait -- the messages not delivered are in it.
        kept = persist(exc)
        print(f"spooled {kept} undelivered message(s) to {SPOOL}")
        if not isinstance(exc, Exception) or kept == 0:
            raise  # Ctrl-C and cancellations go on; so does an error that lost nothing
    else:
        print("all delivered")


trio.run(main)
