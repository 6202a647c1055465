"""Micro-benchmark of the spool's storage engine: per-message cost of appending.

``python -m benchmarks.spool`` (about 30 seconds). No broker, no Trio: the storage engine
alone, against the alternatives it was chosen over. Prints a table of microseconds per
message (the median of ``--rounds`` rounds).

Rows:

* ``spool append``: ``Spool.append`` per message (what ``send`` / ``send_nowait`` add).
* ``spool append_many``: ``Spool.append_many`` per batch of ``--batch`` messages.
* ``spool append_values``: ``Spool.append_values`` per batch (one topic, values only):
  what the producer's ``send_many`` writes per chunk.
* sync ``never``: no fsync; ``interval``: a thread calls ``sync()`` every 100 ms while
  appending; ``always``: ``sync()`` after each batch (group commit, for ``append_many``).
* ``os.write log``: the same framed records written with one ``os.write`` per call to an
  ``O_APPEND`` file (the alternative to the shared mapping).
* ``sqlite WAL``: one ``INSERT`` per message in autocommit, or one transaction with
  ``executemany`` per batch; ``synchronous=OFF`` (never) or ``FULL`` (always).
* ``confirm_many``: recording deliveries, per message, batches of ``--batch``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from trio_producer.spool._engine import Spool
from trio_producer.spool._format import encode_record

Bench = Callable[[Path, int, int, int], float]


def _spool(path: Path, sync: str) -> Spool:
    return Spool.open(path, max_bytes=4 << 30, segment_bytes=64 << 20, sync=sync)  # type: ignore[arg-type]


class _Syncer:
    """Calls ``spool.sync()`` every ``interval`` seconds in a thread, like the producer."""

    def __init__(self, spool: Spool, interval: float = 0.1) -> None:
        self.spool = spool
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.syncs = 0

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.spool.sync()
            self.syncs += 1

    def __enter__(self) -> _Syncer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def spool_append(sync: str) -> Bench:
    def bench(path: Path, count: int, size: int, batch: int) -> float:
        value = b"x" * size
        with _spool(path, sync) as spool:
            append = spool.append
            t0 = time.perf_counter()
            if sync == "interval":
                with _Syncer(spool):
                    for _ in range(count):
                        append("events", value, None)
            else:
                for _ in range(count):
                    append("events", value, None)
            return time.perf_counter() - t0

    return bench


def spool_append_many(sync: str) -> Bench:
    def bench(path: Path, count: int, size: int, batch: int) -> float:
        value = b"x" * size
        items = [("events", value, None, None, -1, 0)] * batch
        with _spool(path, sync) as spool:
            t0 = time.perf_counter()
            if sync == "interval":
                with _Syncer(spool):
                    for _ in range(count // batch):
                        spool.append_many(items)
            else:
                for _ in range(count // batch):
                    spool.append_many(items)
                    if sync == "always":
                        spool.sync()
            return time.perf_counter() - t0

    return bench


def spool_append_values() -> Bench:
    """``append_values``: what the producer's ``send_many`` writes, a chunk of one topic's
    values (no keys, no headers)."""

    def bench(path: Path, count: int, size: int, batch: int) -> float:
        values: list[bytes | None] = [b"x" * size] * batch
        with _spool(path, "never") as spool:
            t0 = time.perf_counter()
            for _ in range(count // batch):
                spool.append_values("events", values)
            return time.perf_counter() - t0

    return bench


def write_log(batched: bool) -> Bench:
    def bench(path: Path, count: int, size: int, batch: int) -> float:
        value = b"x" * size
        fd = os.open(path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            t0 = time.perf_counter()
            if batched:
                seq = 0
                for _ in range(count // batch):
                    chunks = []
                    for _ in range(batch):
                        chunks.append(encode_record(seq, b"events", value, None, None, -1, 0))
                        seq += 1
                    os.write(fd, b"".join(chunks))
            else:
                for seq in range(count):
                    os.write(fd, encode_record(seq, b"events", value, None, None, -1, 0))
            return time.perf_counter() - t0
        finally:
            os.close(fd)

    return bench


def sqlite(batched: bool, synchronous: str) -> Bench:
    def bench(path: Path, count: int, size: int, batch: int) -> float:
        value = b"x" * size
        db = sqlite3.connect(path / "spool.db", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(
                "CREATE TABLE spool (seq INTEGER PRIMARY KEY, topic TEXT, key BLOB, "
                "value BLOB, headers BLOB, partition INTEGER, timestamp INTEGER)"
            )
            insert = "INSERT INTO spool VALUES (?, ?, ?, ?, ?, ?, ?)"
            t0 = time.perf_counter()
            if batched:
                seq = 0
                for _ in range(count // batch):
                    rows = [(seq + i, "events", None, value, None, -1, 0) for i in range(batch)]
                    seq += batch
                    db.execute("BEGIN")
                    db.executemany(insert, rows)
                    db.execute("COMMIT")
            else:
                for seq in range(count):
                    db.execute(insert, (seq, "events", None, value, None, -1, 0))
            return time.perf_counter() - t0
        finally:
            db.close()

    return bench


def confirm_many() -> Bench:
    def bench(path: Path, count: int, size: int, batch: int) -> float:
        value = b"x" * size
        items = [("events", value, None, None, -1, 0)] * batch
        with _spool(path, "never") as spool:
            for _ in range(count // batch):
                spool.append_many(items)
            t0 = time.perf_counter()
            for first in range(0, count - count % batch, batch):
                spool.confirm_many(range(first, first + batch))
            return time.perf_counter() - t0

    return bench


ROWS: list[tuple[str, str, Bench]] = [
    ("spool append (mmap)", "never", spool_append("never")),
    ("spool append (mmap)", "interval", spool_append("interval")),
    ("os.write log, one write per message", "never", write_log(False)),
    ("sqlite WAL, autocommit INSERT per message", "never", sqlite(False, "OFF")),
    ("spool append_many (mmap)", "never", spool_append_many("never")),
    ("spool append_many (mmap)", "interval", spool_append_many("interval")),
    ("spool append_many (mmap)", "always", spool_append_many("always")),
    ("spool append_values (mmap, send_many)", "never", spool_append_values()),
    ("os.write log, one write per batch", "never", write_log(True)),
    ("sqlite WAL, executemany per batch", "never", sqlite(True, "OFF")),
    ("sqlite WAL, executemany per batch", "always", sqlite(True, "FULL")),
    ("spool confirm_many", "never", confirm_many()),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        results: dict[int, list[float]] = {i: [] for i in range(len(ROWS))}
        for _ in range(args.rounds):  # rounds in alternation, so load spikes spread out
            for i, (_, _, bench) in enumerate(ROWS):
                where = base / f"run-{i}"
                where.mkdir()
                try:
                    elapsed = bench(where, args.count, args.size, args.batch)
                finally:
                    shutil.rmtree(where)
                results[i].append(elapsed / args.count * 1e6)
        print(
            f"{args.count:,} messages, {args.size}-byte values, batches of {args.batch}, "
            f"median of {args.rounds} rounds, microseconds per message"
        )
        print()
        width = max(len(name) for name, _, _ in ROWS)
        print(f"{'how':<{width}}  {'sync':<8}  {'us/msg':>7}")
        print(f"{'-' * width}  {'-' * 8}  {'-' * 7}")
        for i, (name, sync, _) in enumerate(ROWS):
            print(f"{name:<{width}}  {sync:<8}  {statistics.median(results[i]):7.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
