"""Micro-benchmark of the worker's produce loop: the cost of routing, per message.

``python -m benchmarks.routing [--vs DIR]`` (a few seconds). No broker, no Trio:
``KafkaClient.produce`` over a batch of pending messages, with librdkafka replaced by a
stand-in whose calls cost nothing, so what is timed is the loop that decides which
librdkafka call takes each message and groups the runs. ``--vs DIR`` runs the same cases
on another checkout's ``trio_producer`` too, alternating the two in separate processes,
and prints a before/after table.

Cases (10,000 messages per batch, nanoseconds per message, median of ``--rounds``):

* ``plain``: topic and value.
* ``keyed``: topic, value and key.
* ``tracked 1%``: keyed, one in a hundred with its own report callback (``send_and_wait``).
* ``spooled``: plain spooled messages, each with its seq (as its ticket).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

N = 10_000


class _Free:
    """librdkafka's stand-in: takes everything, costs nothing."""

    def __init__(self, conf: dict[str, Any]) -> None:
        pass

    def produce_batch(self, topic: str, messages: list[Any], **kwargs: Any) -> int:
        return len(messages)

    def produce(self, *args: Any, **kwargs: Any) -> None:
        pass


def _cases() -> dict[str, list[Any]]:
    import trio

    from trio_producer._args import make_item
    from trio_producer.spool._format import SpoolRecord
    from trio_producer.spool._keeper import pending_from_record

    keyed = [make_item("t", b"x" * 100, b"k%d" % i, None, None, None, None)[0] for i in range(N)]
    tracked = [
        make_item("t", b"x" * 100, b"k", None, None, None, trio.Event() if i % 100 == 0 else None)[
            0
        ]
        for i in range(N)
    ]
    spooled = [
        pending_from_record(SpoolRecord(i, b"", "t", b"x" * 100, None, None, -1, 0), None)
        for i in range(N)
    ]
    return {
        "plain": [{"topic": "t", "value": b"x" * 100} for _ in range(N)],
        "keyed": keyed,
        "tracked 1%": tracked,
        "spooled": spooled,
    }


def measure(rounds: int) -> dict[str, float]:
    from trio_producer._client import DeliveryReports, KafkaClient

    try:
        client = KafkaClient({"bootstrap.servers": "unused:9092"}, producer_class=_Free)
    except TypeError:  # a checkout from before the stand-in's seam (for --vs)
        client = KafkaClient.__new__(KafkaClient)
        client._producer = _Free({})
    # The spool's run callback, as the delivery task passes it down.
    run_reports: tuple[Any, ...] = ()
    try:
        from trio_producer.spool._reports import SpooledRun
    except ImportError:  # a checkout from before the spool subpackage (for --vs)
        pass
    else:
        if hasattr(client, "run_reports"):  # from before it was produce's argument (--vs)
            client.run_reports = SpooledRun
        else:
            run_reports = (SpooledRun,)
    results: dict[str, float] = {}
    for name, items in _cases().items():
        times = []
        for _ in range(rounds):
            reports = DeliveryReports()
            start = time.perf_counter_ns()
            for _ in range(10):
                client.produce(items, 0, reports, *run_reports)
            times.append((time.perf_counter_ns() - start) / (10 * N))
        results[name] = statistics.median(times)
    return results


def _run(tree: str, rounds: int) -> dict[str, float]:
    # This file, run as a script with -P: nothing but ``tree`` comes before the installed
    # packages (with ``-m``, the current directory would, and its trio_producer with it).
    out = subprocess.run(
        [sys.executable, "-P", os.path.abspath(__file__), "--json", "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.path.abspath(tree)},
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--vs", metavar="DIR", help="another checkout: a before/after table")
    parser.add_argument("--pairs", type=int, default=5, help="alternating runs with --vs")
    args = parser.parse_args()
    if args.vs is None:
        results = measure(args.rounds)
        if args.json:
            print(json.dumps(results))
            return
        for name, ns in results.items():
            print(f"{name:12} {ns:7.1f} ns/message")
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    after: dict[str, list[float]] = {}
    before: dict[str, list[float]] = {}
    for _ in range(args.pairs):
        for tree, into in ((args.vs, before), (here, after)):
            for name, ns in _run(tree, args.rounds).items():
                into.setdefault(name, []).append(ns)
    print(f"{'case':12} {'before':>9} {'after':>9} {'after/before':>13}  (ns/message, medians)")
    for name in after:
        b, a = statistics.median(before[name]), statistics.median(after[name])
        print(f"{name:12} {b:9.1f} {a:9.1f} {a / b:13.2f}")


if __name__ == "__main__":
    main()
