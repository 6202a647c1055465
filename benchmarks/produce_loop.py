"""``KafkaClient.produce`` over a fake confluent producer: nanoseconds per message.

Runs against any checkout of trio_producer since the accept path had ``make_item``,
including the code before routes were carried in the messages (``b6864b1^``), which
``benchmarks.routing --vs`` cannot (its messages carry routes). To compare two
checkouts, run it alternately under each (``-P``: the current directory stays off
``sys.path``)::

    PYTHONPATH=/path/to/old python -P benchmarks/produce_loop.py
    PYTHONPATH=/path/to/new python -P benchmarks/produce_loop.py

Each figure is the fastest of 30 passes over 10,000 messages of 100 bytes, plain and
keyed: the minimum is what the code costs, the rest is the machine's noise.
"""

from __future__ import annotations

import time
from typing import Any

from trio_producer._args import make_item
from trio_producer._client import DeliveryReports, KafkaClient

N = 10_000
PASSES = 30


class _Fake:
    """Takes every batch at once, like a librdkafka queue with room."""

    def produce_batch(self, topic: str, messages: list[Any], on_delivery: Any = None) -> int:
        return len(messages)

    def produce(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __len__(self) -> int:
        return 0


def _items(keyed: bool) -> list[Any]:
    out = []
    for i in range(N):
        key = b"k%d" % (i % 10) if keyed else None
        item, _ = make_item("t", b"v" * 100, key, None, None, None, None)
        out.append(item)
    return out


def main() -> None:
    client = KafkaClient({"bootstrap.servers": "127.0.0.1:1"})
    real = client._producer
    client._producer = _Fake()
    try:
        for keyed in (False, True):
            best = float("inf")
            for _ in range(PASSES):
                batch = _items(keyed)
                reports = DeliveryReports()
                start = time.perf_counter_ns()
                client.produce(batch, 0, reports)
                best = min(best, (time.perf_counter_ns() - start) / N)
            print(f"{'keyed' if keyed else 'plain'} {best:.1f} ns/msg")
    finally:
        client._producer = real


if __name__ == "__main__":
    main()
