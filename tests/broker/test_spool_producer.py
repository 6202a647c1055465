"""The producer with a durable spool: accepted means durable, on a real broker.

Per-message accounting as everywhere: what ``send`` accepted is in the topic (at least
once: the spool is at-least-once across a crash), or still in the spool and said so.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from trio_producer import (
    ConfigError,
    ProducerConfig,
    UndeliveredMessagesError,
    open_producer,
)
from trio_producer.spool._engine import Spool, SpoolDiskFullError, SpoolLockedError
from trio_producer.spool._keeper import SpoolKeeper
from trio_producer.testing import consume_all

from ..harness.faultproxy import proxied_broker
from ..harness.helpers import rss_mb

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..conftest import ReadBack

pytestmark = [pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "harness" / "apps" / "spool_child.py"


def silent_listener() -> socket.socket:
    """A broker address that accepts connections and never answers (black hole)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def spool_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in ("LOCK", "HANDED"))


async def test_every_field_round_trips_with_an_id_header_and_the_spool_empties(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        spool_path=str(spool),
        spool_id_header="trio-producer-id",
        linger=0.01,
    ) as producer:
        await producer.send(kafka_topic, b"plain")
        await producer.send(
            kafka_topic,
            "text",
            key="k",
            headers=[("a", b"1"), ("b", None)],
            partition=0,
            timestamp=1_700_000_000_123,
        )
        await producer.send_many(kafka_topic, [b"m0", (b"mk", b"m1")])
        meta = await producer.send_and_wait(kafka_topic, None, key=b"tomb")
        await producer.sync()
        stats = producer.statistics()
    assert (meta.partition, meta.offset) == (0, 4)
    assert (stats.delivered, stats.failed) == (5, 0)
    records = await read_back(kafka_topic, expected=5)
    assert [(r.key, r.value) for r in records] == [
        (None, b"plain"),
        (b"k", b"text"),
        (None, b"m0"),
        (b"mk", b"m1"),
        (b"tomb", None),
    ]
    assert records[1].timestamp == 1_700_000_000_123
    headers = [r.headers or [] for r in records]
    assert [h[:-1] for h in headers] == [[], [("a", b"1"), ("b", None)], [], [], []]
    ids = [h[-1] for h in headers]
    assert {name for name, _ in ids} == {"trio-producer-id"}
    values = [value for _, value in ids]
    assert all(value is not None and len(value) == 24 for value in values)
    assert len({v[:16] for v in values if v}) == 1  # one run's uuid
    assert [int.from_bytes(v[16:], "big") for v in values if v] == [0, 1, 2, 3, 4]
    assert spool_files(spool) == []  # every segment confirmed and deleted


async def test_undelivered_messages_stay_in_the_spool_and_go_first_next_time(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool")
    with silent_listener() as dead:
        dead_bootstrap = f"127.0.0.1:{dead.getsockname()[1]}"
        with pytest.raises(UndeliveredMessagesError) as raised:
            async with open_producer(
                bootstrap_servers=dead_bootstrap, spool_path=spool, close_timeout=0.5
            ) as producer:
                for i in range(30):
                    await producer.send(kafka_topic, b"old-%d" % i)
    error = raised.value
    assert error.spool_path == spool
    assert len(error.messages) == 30
    assert "are kept in the spool" in str(error)
    async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=spool) as producer:
        await producer.send(kafka_topic, b"new")
    records = await read_back(kafka_topic, expected=31)
    assert [r.value for r in records] == [b"old-%d" % i for i in range(30)] + [b"new"]


async def test_a_full_spool_is_backpressure_not_loss(
    kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool")
    async with proxied_broker([kafka_topic]) as (bootstrap, proxy, _nursery):
        proxy.blackhole()
        accepted = 0
        async with open_producer(
            bootstrap_servers=bootstrap,
            spool_path=spool,
            spool_max_bytes=65_536,
            close_timeout=20,
        ) as producer:
            value = b"x" * 500
            with pytest.raises(trio.WouldBlock):
                for _ in range(10_000):
                    producer.send_nowait(kafka_topic, value)
                    accepted += 1
            assert 50 < accepted < 130  # 64 KiB of ~560-byte records, one segment spare
            with trio.move_on_after(0.5) as waited:
                await producer.send(kafka_topic, value)
            assert waited.cancelled_caught  # send waits while the spool is full
            proxy.restore()
            with trio.fail_after(15):
                for _ in range(200):  # needs confirmations to free segments
                    await producer.send(kafka_topic, value)
                    accepted += 1
        records = await trio.to_thread.run_sync(
            lambda: consume_all(bootstrap, kafka_topic, expected=accepted)
        )
    assert len(records) == accepted


async def test_a_second_producer_on_the_same_spool_is_refused(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool")
    async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=spool):
        with pytest.raises(SpoolLockedError, match=r"is locked by process \d+: one producer"):
            async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=spool):
                pass  # pragma: no cover


async def test_a_second_process_on_the_same_spool_is_refused(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool")
    code = (
        "import trio, sys\n"
        "from trio_producer import open_producer\n"
        "async def main():\n"
        f"    async with open_producer(bootstrap_servers={kafka_bootstrap!r}, "
        f"spool_path={spool!r}):\n"
        "        pass\n"
        "trio.run(main)\n"
    )
    async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=spool):
        proc = await trio.run_process(
            [sys.executable, "-c", code], capture_stderr=True, check=False, cwd=ROOT
        )
    assert proc.returncode == 1
    assert f"SpoolLockedError: spool {spool!r} is locked by process {os.getpid()}" in (
        proc.stderr.decode()
    )


async def test_transactions_with_a_spool_are_refused(kafka_bootstrap: str, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="spool_path cannot be combined with your own transactions"
    ):
        async with open_producer(
            bootstrap_servers=kafka_bootstrap,
            spool_path=str(tmp_path / "spool"),
            librdkafka={"transactional.id": "spool-txn"},
        ):
            pass  # pragma: no cover


async def test_sync_without_a_spool_is_refused_and_the_producer_goes_on(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """The spool is a part of the one Producer, not a subclass: every producer has
    sync(), and one without a spool refuses it plainly (before: AttributeError)."""
    import trio.testing

    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        await producer.send(kafka_topic, b"a")
        with (
            trio.testing.assert_checkpoints(),
            pytest.raises(
                ConfigError,
                match=r"^sync\(\) waits for the durable spool, and this producer has none: ",
            ),
        ):
            await producer.sync()
        await producer.send(kafka_topic, b"b")
        assert producer.backlog() == 0
    records = await read_back(kafka_topic, expected=2)
    assert [r.value for r in records] == [b"a", b"b"]


async def test_a_spooled_producer_is_a_producer_and_spooled_producer_names_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from trio_producer import Producer, SpooledProducer

    assert SpooledProducer is Producer
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, spool_path=tmp_path / "s"
    ) as producer:
        assert type(producer) is Producer
        await producer.sync()


def test_bad_spool_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"spool_sync must be one of \('never', 'interval'"):
        ProducerConfig("x:1", spool_path="/tmp/s", spool_sync="sometimes")
    with pytest.raises(ConfigError, match=r"spool_max_bytes must be an int >= 65536, not 10"):
        ProducerConfig("x:1", spool_path="/tmp/s", spool_max_bytes=10)
    with pytest.raises(ConfigError, match=r"spool_path must be a directory path"):
        ProducerConfig("x:1", spool_path="")


# ---- kill -9 torture ---------------------------------------------------------------------

ROUNDS = 20


async def _round(
    bootstrap: str,
    topic: str,
    spool: str,
    rnd: int,
    linger: float,
    kill_after: float,
    count: int,
) -> list[int]:
    """One child that sends ``count`` messages, SIGKILLed after ``kill_after`` seconds
    (in its body, or -- when it has sent them all -- in its drain); the messages whose
    send returned."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(APP), bootstrap, topic, spool, str(rnd), str(linger), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    out = b""
    try:
        assert proc.stdout is not None
        with trio.move_on_after(kill_after):
            while True:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    break
                out += chunk
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await proc.wait()
    accepted = []
    for line in out.split(b"\n")[:-1]:  # only whole lines: the last may be cut
        if line.startswith(b"ok "):
            accepted.append(int(line[3:]))
    return accepted


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kill_9_at_random_moments_loses_nothing_accepted(tmp_path: Path) -> None:
    """20 seeded rounds: SIGKILL mid-send (broker healthy or cut, random linger, also
    during the recovery of the round before), restart on the same spool. At the end
    every message whose send returned is in the topic; duplicates are bounded."""
    rng = random.Random(20261128)
    topic = "spool-torture"
    spool = str(tmp_path / "spool")
    accepted: dict[int, list[int]] = {}
    cut_rounds = 0
    async with proxied_broker([topic], partitions=3) as (bootstrap, proxy, _nursery):
        for rnd in range(ROUNDS):
            cut = rng.random() < 0.3
            cut_rounds += cut
            if cut:
                proxy.cut()
            else:
                proxy.restore()
            linger = rng.choice([0.0, 0.005, 0.05, 1.0])
            kill_after = rng.uniform(0.4, 2.0)
            # A third of the rounds send few messages with a long linger: the kill lands
            # in the final drain (or after a clean exit).
            count = rng.choice([100_000, 100_000, 2_000])
            accepted[rnd] = await _round(
                bootstrap,
                topic,
                spool,
                rnd,
                3600.0 if count == 2_000 else linger,
                kill_after,
                count,
            )
        proxy.restore()
        drained = await trio.run_process(
            [sys.executable, str(APP), bootstrap, topic, spool, "final", "0", "0"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )
        assert drained.returncode == 0, drained.stderr.decode()[-2000:]
        total = sum(len(v) for v in accepted.values())
        records = await trio.to_thread.run_sync(
            lambda: consume_all(bootstrap, topic, idle_timeout=3.0, timeout=120)
        )
    seen = Counter(r.value for r in records)
    lost = [
        f"{rnd}:{i}"
        for rnd, ids in accepted.items()
        for i in ids
        if seen[f"{rnd}:{i}".encode()] == 0
    ]
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(
        f"[figures] kill -9 torture: rounds={ROUNDS} (broker cut in {cut_rounds}) "
        f"accepted={total} in_topic={len(seen)} lost={len(lost)} duplicates={duplicates}"
    )
    assert lost == []
    # At most what was in flight at each crash: librdkafka's queue (1000) + ours (1000).
    assert duplicates <= ROUNDS * 2000
    # Per key (= per partition), the first occurrences keep send order within a round,
    # and rounds follow each other (recovered messages go before new ones).
    for key in {r.key for r in records}:
        firsts: list[tuple[int, int]] = []
        done = set()
        for r in records:
            if r.key != key or r.value in done:
                continue
            done.add(r.value)
            rnd, i = (r.value or b"").decode().split(":")
            firsts.append((int(rnd), int(i)))
        assert firsts == sorted(firsts), f"order broken for key {key!r}"


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_store_and_forward_a_million_messages_through_an_outage(tmp_path: Path) -> None:
    """1,000,000 x 100 B accepted while no broker is reachable: memory stays flat (the
    spool holds them, not the queue), then the broker comes back and every one is
    delivered, in order, and the spool files are removed."""
    count = 1_000_000
    topic = "store-and-forward"
    spool = tmp_path / "spool"
    value = b"v" * 100
    async with proxied_broker([topic]) as (bootstrap, proxy, _nursery):
        proxy.cut()
        async with open_producer(
            bootstrap_servers=bootstrap,
            spool_path=str(spool),
            spool_max_bytes=1 << 30,
            spool_sync="never",
            queue_capacity=10_000,
            close_timeout=120,
        ) as producer:
            started = trio.current_time()
            rss = {}
            for start in range(0, count, 100_000):
                await producer.send_many(topic, [value] * 100_000)
                rss[start + 100_000] = rss_mb(anon=True)  # the spool's mappings are not ours
            accepted_in = trio.current_time() - started
            stats = producer.statistics()
            on_disk = sum(p.stat().st_size for p in spool.iterdir())
            assert stats.delivered == 0
            # librdkafka holds up to its own limit; the rest waits, mostly in the spool.
            assert stats.queued + stats.in_flight == count
            proxy.restore()
            restored = trio.current_time()
            with trio.fail_after(240):
                await producer.flush()
            delivered_in = trio.current_time() - restored
            final = producer.statistics()
        records = await trio.to_thread.run_sync(
            lambda: consume_all(bootstrap, topic, expected=count, timeout=240)
        )
    growth = rss[count] - rss[200_000]
    print(
        f"[figures] store and forward: accepted {count:,} in {accepted_in:.1f} s with the "
        f"broker cut; spool {on_disk / 2**20:.0f} MiB on disk; anonymous RSS at 200k/1M: "
        f"{rss[200_000]:.0f}/{rss[count]:.0f} MB (growth {growth:.1f} MB); delivered in "
        f"{delivered_in:.1f} s after the broker came back"
    )
    assert final.delivered == count
    assert len(records) == count
    assert [r.offset for r in records[:3]] == [0, 1, 2]
    assert growth < 50  # 800,000 more messages; in memory they would take ~300 MB
    assert spool_files(spool) == []


async def test_spool_sync_always_returns_after_the_fsync_and_a_cancel_cannot_unaccept(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    import trio.testing

    async with open_producer(
        bootstrap_servers=kafka_bootstrap, spool_path=str(tmp_path / "s"), spool_sync="always"
    ) as producer:
        spool = producer._intake._keeper.spool  # type: ignore[attr-defined]
        for i in range(5):
            await producer.send(kafka_topic, b"a%d" % i)
            assert spool.synced_seq >= i  # fsynced before send returned
        with pytest.raises(TypeError, match="send_nowait cannot wait for the fsync"):
            producer.send_nowait(kafka_topic, b"never")
        returned: list[bool] = []
        with trio.CancelScope() as scope:

            async def sender() -> None:
                await producer.send(kafka_topic, b"waited")
                returned.append(True)  # accepted: the cancellation comes after
                await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()  # sender waits for the fsync
                scope.cancel()
        assert returned == [True]
        # (scope.cancelled_caught is not asserted: when the fsync is done before
        # wait_all_tasks_blocked returns, the sender has finished and nothing is left to
        # cancel -- about 1 run in 20.)
    records = await read_back(kafka_topic, expected=6)
    assert [r.value for r in records] == [b"a%d" % i for i in range(5)] + [b"waited"]


async def test_flush_right_after_reopening_waits_for_the_recovered_messages(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool")
    with silent_listener() as dead, pytest.raises(UndeliveredMessagesError):
        async with open_producer(
            bootstrap_servers=f"127.0.0.1:{dead.getsockname()[1]}",
            spool_path=spool,
            close_timeout=0.2,
        ) as producer:
            await producer.send_many(kafka_topic, [b"old-%d" % i for i in range(500)])
    with trio.fail_after(30):
        async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=spool) as p:
            await p.flush()  # found by an attack: returned before the recovered ones
            stats = p.statistics()
    assert (stats.recovered, stats.delivered, stats.in_flight) == (500, 500, 0)


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_sender_waiting_on_a_full_spool_sleeps(kafka_topic: str, tmp_path: Path) -> None:
    """Found by an attack: the waiting sender and the keeper woke each other in a loop
    (22,196 task steps and a whole core in one second, nothing accepted)."""
    steps = _Steps()
    accepted: list[bytes] = []
    with silent_listener() as dead, trio.fail_after(20):
        with pytest.raises(UndeliveredMessagesError):
            async with open_producer(
                bootstrap_servers=f"127.0.0.1:{dead.getsockname()[1]}",
                spool_path=str(tmp_path / "spool"),
                spool_max_bytes=65_536,
                close_timeout=0.5,
            ) as producer:
                async with trio.open_nursery() as nursery:

                    async def sender() -> None:
                        for i in range(100_000):
                            await producer.send(kafka_topic, b"full-%d" % i)
                            accepted.append(b"full-%d" % i)

                    nursery.start_soon(sender)
                    await trio.sleep(0.5)  # the spool is full by now
                    full_at = len(accepted)
                    trio.lowlevel.add_instrument(steps)
                    await trio.sleep(1.0)
                    trio.lowlevel.remove_instrument(steps)
                    assert len(accepted) == full_at  # nothing is confirmed: still full
                    nursery.cancel_scope.cancel()
    assert 0 < full_at < 1_000
    assert steps.steps < 200, f"{steps.steps} task steps in 1 s of waiting: a busy loop"


def test_a_ctrl_c_while_the_spool_closes_still_closes_and_unlocks_it(tmp_path: Path) -> None:
    """Found by an attack (Ctrl-C at every traced line): a KeyboardInterrupt pending when
    the spool's close began in a thread (a shield stops cancellations, not Ctrl-C) left
    the spool open and locked by this very process."""
    from trio_producer.spool._engine import Spool
    from trio_producer.spool._keeper import SpoolKeeper

    spool_dir = tmp_path / "spool"

    @trio.lowlevel.enable_ki_protection
    async def close_with_a_ctrl_c_pending() -> None:
        keeper = SpoolKeeper(
            await trio.to_thread.run_sync(lambda: Spool.open(spool_dir, max_bytes=1 << 20)),
            None,
        )
        keeper.spool.append("t", b"kept")
        signal.raise_signal(signal.SIGINT)  # protected here: delivered at the next checkpoint
        await keeper.aclose()

    # (pytest may run with SIGINT ignored, as a background job: Trio then leaves it alone)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            trio.run(close_with_a_ctrl_c_pending)
    finally:
        signal.signal(signal.SIGINT, previous)
    reopened = Spool.open(spool_dir, max_bytes=1 << 20)  # SpoolLockedError before the fix
    try:
        assert [r.value for r in reopened.recovered] == [b"kept"]
    finally:
        reopened.close()


# ---- send_many's bulk path: chunks spooled with one write and accepted whole ----------------


class Consumed:
    """An iterator of values that records what ``send_many`` took from it."""

    def __init__(self, values: list[bytes]) -> None:
        self._values = iter(values)
        self.taken: list[bytes] = []

    def __iter__(self) -> Consumed:
        return self

    def __next__(self) -> bytes:
        value = next(self._values)
        self.taken.append(value)
        return value


async def test_send_many_cancelled_while_waiting_for_room_accepted_what_it_consumed(
    kafka_topic: str, tmp_path: Path
) -> None:
    """A full spool (black-holed broker): send_many waits for room and is cancelled.
    What it consumed is in the topic once each, in order; nothing else."""
    values = Consumed([b"%04d-" % i + b"x" * 400 for i in range(2_000)])
    async with proxied_broker([kafka_topic]) as (bootstrap, proxy, _nursery):
        proxy.blackhole()
        async with open_producer(
            bootstrap_servers=bootstrap,
            spool_path=str(tmp_path / "spool"),
            spool_max_bytes=65_536,
            close_timeout=20,
        ) as producer:
            with trio.move_on_after(1.0) as waited:
                await producer.send_many(kafka_topic, values)
            assert waited.cancelled_caught
            assert 50 < len(values.taken) < 200  # 64 KiB of ~450-byte records
            assert producer.statistics().spooled == len(values.taken)
            proxy.restore()
        records = await trio.to_thread.run_sync(
            lambda: consume_all(bootstrap, kafka_topic, idle_timeout=1.0)
        )
    assert [r.value for r in records] == values.taken


async def test_send_many_accepts_a_chunk_up_to_a_bad_element(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    elements: list[object] = [b"a%d" % i for i in range(10)]
    elements += [(b"k", b"pair"), "text", 123, b"never"]
    it = iter(elements)
    async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=str(spool)) as p:
        with pytest.raises(TypeError, match="value must be bytes, bytearray, memoryview, str"):
            await p.send_many(kafka_topic, it)  # type: ignore[arg-type]
        assert next(it) == b"never"  # 123 was consumed, not accepted; the rest not taken
        assert p.statistics().spooled + p.statistics().delivered == 12
    records = await read_back(kafka_topic, expected=12)
    assert [(r.key, r.value) for r in records] == [(None, b"a%d" % i) for i in range(10)] + [
        (b"k", b"pair"),
        (None, b"text"),
    ]
    assert spool_files(spool) == []  # all confirmed


async def test_send_many_behind_a_backlog_goes_to_the_spool_in_order(
    kafka_topic: str, tmp_path: Path
) -> None:
    """Store and forward: with messages only in the spool (the broker cut, memory full),
    send_many spools behind them -- even its bad element's predecessors -- and all of
    it is delivered in order once the broker is back."""
    async with proxied_broker([kafka_topic]) as (bootstrap, proxy, _nursery):
        proxy.cut()
        async with open_producer(
            bootstrap_servers=bootstrap,
            spool_path=str(tmp_path / "spool"),
            queue_capacity=20,
            librdkafka={"queue.buffering.max.messages": 20},
            close_timeout=30,
        ) as producer:
            sent = [b"a%d" % i for i in range(100)]
            for value in sent:
                producer.send_nowait(kafka_topic, value)
            await trio.testing.wait_all_tasks_blocked()
            backlog = producer.backlog()
            assert backlog > 0
            more = [b"b%d" % i for i in range(3000)]
            assert await producer.send_many(kafka_topic, iter(more)) == 3000
            assert producer.backlog() == backlog + 3000
            with pytest.raises(TypeError):
                await producer.send_many(kafka_topic, [b"c0", b"c1", 123])  # type: ignore[list-item]
            assert producer.backlog() == backlog + 3002
            sent += [*more, b"c0", b"c1"]
            proxy.restore()
        records = await trio.to_thread.run_sync(
            lambda: consume_all(bootstrap, kafka_topic, expected=len(sent), timeout=60)
        )
    assert [r.value for r in records] == sent


async def test_send_many_spills_into_the_spool_when_the_worker_stalls_and_lets_others_run(
    kafka_topic: str, tmp_path: Path
) -> None:
    """The broker is away and memory is full: send_many does not wait for it (store and
    forward), and other tasks run between its chunks."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with proxied_broker([kafka_topic]) as (bootstrap, proxy, _nursery):
        proxy.cut()
        async with open_producer(
            bootstrap_servers=bootstrap,
            spool_path=str(tmp_path / "spool"),
            queue_capacity=100,
            librdkafka={"queue.buffering.max.messages": 100},
            close_timeout=30,
        ) as producer:
            values = [b"v%d" % i for i in range(50_000)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                with trio.fail_after(10):
                    assert await producer.send_many(kafka_topic, values) == 50_000
                ticked = ticks
                nursery.cancel_scope.cancel()
            assert ticked > 10  # at least one step per chunk spooled alone: ~40
            assert producer.backlog() > 49_000
            proxy.restore()
        records = await trio.to_thread.run_sync(
            lambda: consume_all(bootstrap, kafka_topic, expected=50_000, timeout=60)
        )
    assert [r.value for r in records] == values


SEND_MANY_CHILD = """
import sys, trio
from trio_producer import open_producer
bootstrap, topic, spool = sys.argv[1:4]
async def main():
    async with open_producer(
        bootstrap_servers=bootstrap, spool_path=spool, spool_sync="never",
        queue_capacity=500, librdkafka={"queue.buffering.max.messages": 500},
    ) as producer:
        print("open", flush=True)
        for call in range(1_000_000):
            await producer.send_many(topic, (b"%d:%d" % (call, i) for i in range(700)))
            print("ok", call, flush=True)
trio.run(main)
"""


@pytest.mark.parametrize("kill_after", [0.3, pytest.param(0.8, marks=pytest.mark.slow)])
async def test_kill_9_during_send_many_loses_no_chunk_it_returned(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path, kill_after: float
) -> None:
    """A child calls send_many over and over against a broker that never answers (into
    memory, then into the spool alone) and is SIGKILLed. Every call that returned is
    sent by the next producer on the spool, once each, in order."""
    spool = str(tmp_path / "spool")
    with silent_listener() as dead:
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-c",
                SEND_MANY_CHILD,
                f"127.0.0.1:{dead.getsockname()[1]}",
                kafka_topic,
                spool,
            ],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        out = b""
        try:
            assert proc.stdout is not None
            with trio.move_on_after(kill_after + 5):
                while b"open" not in out:
                    out += await proc.stdout.receive_some(65536)
            with trio.move_on_after(kill_after):
                while True:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        break
                    out += chunk
        finally:
            proc.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await proc.wait()
    returned = [int(line[3:]) for line in out.split(b"\n")[:-1] if line.startswith(b"ok ")]
    assert returned == list(range(len(returned)))
    assert returned, "no send_many returned before the kill"
    async with open_producer(bootstrap_servers=kafka_bootstrap, spool_path=spool) as producer:
        with trio.fail_after(60):
            await producer.flush()
        recovered = producer.statistics().recovered
    expected = [b"%d:%d" % (call, i) for call in returned for i in range(700)]
    assert recovered >= len(expected)
    records = await read_back(kafka_topic, expected=recovered, timeout=60)
    values = [r.value for r in records]
    assert len(values) == len(set(values)) == recovered  # once each
    assert values[: len(expected)] == expected  # in order; then maybe a part of the next


async def test_spool_sync_always_send_many_that_raises_part_way_has_fsynced_what_it_accepted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    """spool_sync='always' promises an fsync before the call returns -- or raises: the
    elements send_many accepted before a bad one are fsynced when it raises (before: the
    wait was skipped on the way out; found by an independent attack)."""
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        spool_path=tmp_path / "s",
        spool_sync="always",
        linger=1.0,
    ) as producer:
        spool = producer._intake._keeper.spool  # type: ignore[attr-defined]
        await producer.send(kafka_topic, b"warm")
        base = spool.synced_seq
        with pytest.raises(TypeError):
            await producer.send_many(kafka_topic, iter([b"a", b"b", 5]))  # type: ignore[list-item]
        assert spool.synced_seq >= base + 2
    records = await read_back(kafka_topic, expected=3)
    assert [r.value for r in records] == [b"warm", b"a", b"b"]


async def test_send_many_whose_iterator_sends_on_the_same_producer_loses_nothing(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    """The iterator sends on the same producer (a logging handler that produces to Kafka)
    while send_many takes a chunk: less room than measured. Before: an AssertionError
    out of send_many (with -O: silence), and the chunk's tail only in the spool until a
    later process opened it. Found by an independent attack."""
    logged: list[bytes] = []
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        spool_path=tmp_path / "s",
        queue_capacity=20,
        linger=1.0,
    ) as producer:

        def elements() -> Iterator[bytes]:
            for i in range(20):
                if i == 5:
                    producer.send_nowait(kafka_topic, b"log")
                    logged.append(b"log")
                yield b"m-%d" % i

        assert await producer.send_many(kafka_topic, elements()) == 20
    records = await read_back(kafka_topic, expected=21)
    assert [r.value for r in records] == [b"log"] + [b"m-%d" % i for i in range(20)]
    assert logged == [b"log"]


async def test_a_run_cut_short_keeps_exactly_its_undelivered_messages_in_the_spool(
    tmp_path: Path,
) -> None:
    """Plain spooled messages go to librdkafka's batch call in runs with one shared report
    callback. When the drain is cut short in the middle of a run, the run's delivered
    messages are confirmed and its purged ones stay in the spool: none of each the other
    way round (librdkafka's mock cluster, slowed down, delivers part of the run)."""
    spool = tmp_path / "spool"
    values = [b"v-%04d" % i for i in range(3000)]
    slow_cluster = {
        "test.mock.num.brokers": 1,
        "test.mock.broker.rtt": 100,
        "batch.num.messages": 100,
        "max.in.flight": 1,
    }
    with pytest.raises(UndeliveredMessagesError) as raised:
        async with open_producer(
            bootstrap_servers="mock:9092",
            spool_path=str(spool),
            close_timeout=3.0,
            librdkafka=slow_cluster,
        ) as producer:
            await producer.send_many("cut", values)
    stats = producer.statistics()
    handed_back = [m.value for m in raised.value.messages]
    assert 0 < stats.delivered < 3000, "the cut did not fall inside the messages"
    assert len(handed_back) == 3000 - stats.delivered  # no message both ways, none neither
    with Spool.open(spool, max_bytes=1 << 30) as reopened:
        kept = [record.value for record in reopened.recovered]
    # (librdkafka hands purged messages back partition by partition: compare as sets)
    assert len(kept) == len(set(kept)) == len(handed_back)
    assert sorted(kept) == sorted(handed_back)
    assert [value for value in values if value in set(kept)] == kept  # in send order


async def test_no_room_for_the_spare_segment_is_retried_with_a_backoff_not_a_loop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.abc.Clock,
) -> None:
    """Found by the attack on #22: maintenance_due stayed true after the keeper's
    maintain() failed to create the spare (ENOSPC), so the keeper ran it again at once:
    thousands of WARNINGs in two idle seconds."""
    import trio_producer.spool._engine as module

    real_fallocate = module._fallocate
    tries: list[float] = []
    full = [True]

    def fallocate(fd: int, offset: int, length: int) -> None:
        if full[0]:
            tries.append(autojump_clock.current_time())
            if len(tries) > 50:
                raise RuntimeError("the keeper retries in a loop")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fallocate(fd, offset, length)

    # maintain() runs in a thread: jump the clock only once that thread is done too.
    autojump_clock.autojump_threshold = 0.1  # type: ignore[attr-defined]
    spool = Spool.open(tmp_path, max_bytes=64 * 4096, segment_bytes=4096)
    monkeypatch.setattr(module, "_fallocate", fallocate)
    keeper = SpoolKeeper(spool, None)
    try:
        with caplog.at_level(logging.INFO, logger="trio_producer"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keeper.run)
                await trio.sleep(600)
                # 1, 2, 4, ... 60 s apart: 15 tries in 600 s (not thousands), one WARNING.
                gaps = [round(b - a) for a, b in itertools.pairwise(tries)]
                assert gaps == [1, 2, 4, 8, 16, 32] + [60] * 8
                assert spool.disk_error is not None
                full[0] = False
                await trio.sleep(61)
                assert spool._spare is not None
                assert spool.disk_error is None
                nursery.cancel_scope.cancel()
        messages = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in messages] == ["WARNING", "INFO"]
        assert "cannot create the spare segment (no space left on the device" in messages[0][1]
    finally:
        spool.close()


async def test_a_full_disk_refuses_new_segments_at_the_call_and_delivery_goes_on(
    kafka_bootstrap: str,
    kafka_topic: str,
    read_back: ReadBack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the attack on #22: ENOSPC from the ack log's write, inside the delivery
    task, aborted the producer as an "internal error", cut the drain short and purged
    what was in flight while the broker was healthy."""
    import trio_producer.spool._engine as module

    real_write, real_fallocate = module._write, module._fallocate
    full = [False]

    def write(fd: int, data: bytes) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def fallocate(fd: int, offset: int, length: int) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(module, "_write", write)
    monkeypatch.setattr(module, "_fallocate", fallocate)
    spool = str(tmp_path / "spool")
    sent: list[bytes] = []
    with caplog.at_level(logging.WARNING, logger="trio_producer"):
        async with open_producer(
            bootstrap_servers=kafka_bootstrap,
            spool_path=spool,
            spool_max_bytes=1 << 20,  # segments of 256 KiB
            spool_sync="never",
        ) as producer:
            for i in range(10):
                await producer.send(kafka_topic, b"before-%d" % i)
                sent.append(b"before-%d" % i)
            await producer.flush()
            full[0] = True
            for i in range(10):
                await producer.send(kafka_topic, b"full-%d" % i)
                sent.append(b"full-%d" % i)
            await producer.flush()  # delivered, confirmed in memory
            stats = producer.statistics()
            assert stats.delivered == 20
            assert stats.spool_unrecorded == 10
            assert stats.spool_error == (
                f"no space left on the device ({spool!r}): [Errno 28] No space left on device"
            )
            value = b"x" * 1000
            with pytest.raises(SpoolDiskFullError) as info:
                while True:  # the preallocated segment still takes messages
                    await producer.send(kafka_topic, value)
                    sent.append(value)
            assert info.value.path == Path(spool)
            assert "no space left on the device for a new segment" in str(info.value)
            # The active segment and the spare, preallocated before the disk filled: 2 x
            # 256 KiB of ~1 KiB records, then refused at the call.
            assert 400 < len(sent) < 540
            await producer.flush()
            full[0] = False
            await producer.send(kafka_topic, b"after")  # room again: a new segment
            sent.append(b"after")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors  # once for the ack log, once for the segment
    assert "for the confirmation log" in errors[0]
    assert "cannot create a new segment" in errors[1]
    assert not [e for e in errors if "internal error" in e]
    records = await read_back(kafka_topic, expected=len(sent))
    assert [r.value for r in records] == sent
    with Spool.open(spool, max_bytes=1 << 20) as reopened:
        assert reopened.recovered == []  # every confirmation was written, or its segment went


async def test_a_spool_directory_removed_while_running_hands_everything_back(
    kafka_topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the attack on #22: store and forward read segments back by path, so a
    removed directory lost what only the spool held. Now it reads through mappings that
    outlive the files, and the exit hands back what the spool can no longer keep."""
    spool = tmp_path / "spool"
    with silent_listener() as dead:
        with pytest.raises(UndeliveredMessagesError) as raised:
            async with open_producer(
                bootstrap_servers=f"127.0.0.1:{dead.getsockname()[1]}",
                spool_path=str(spool),
                queue_capacity=10,
                close_timeout=0.5,
                librdkafka={"queue.buffering.max.messages": 10},
            ) as producer:
                for i in range(100):
                    await producer.send(kafka_topic, b"m-%d" % i)
                assert producer.backlog() > 50  # only in the spool
                while spool.exists():  # (the keeper may be creating a spare meanwhile)
                    shutil.rmtree(spool, ignore_errors=True)
    error = raised.value
    assert error.spool_path is None
    assert sorted(m.value for m in error.messages) == sorted(b"m-%d" % i for i in range(100))
    assert "kept in the spool" not in str(error)
    assert any(
        "was removed while the producer ran" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )


async def test_duplicates_possible_counts_only_what_reached_librdkafka(
    kafka_topic: str, tmp_path: Path
) -> None:
    """Found by the attack on #22: every recovered message counted as a possible
    duplicate, also the store-and-forward backlog that never left the spool."""
    spool = tmp_path / "spool"
    with silent_listener() as dead:
        with pytest.raises(UndeliveredMessagesError) as raised:
            async with open_producer(
                bootstrap_servers=f"127.0.0.1:{dead.getsockname()[1]}",
                spool_path=str(spool),
                queue_capacity=10,
                close_timeout=0.5,
                librdkafka={"queue.buffering.max.messages": 10},
            ) as producer:
                for i in range(100):
                    await producer.send(kafka_topic, b"m-%d" % i)
                await trio.testing.wait_all_tasks_blocked()
                in_memory = 100 - producer.backlog()
    assert len(raised.value.messages) == in_memory
    with Spool.open(spool, max_bytes=1 << 30) as reopened:
        assert len(reopened.recovered) == 100
        # The hand-off mark: the newest message in memory when a batch went to
        # librdkafka (an upper bound; the backlog behind it never left the spool).
        assert reopened.recovery.duplicates_possible == in_memory


async def test_a_spool_directory_removed_hands_back_the_recovered_messages_too(
    kafka_topic: str, tmp_path: Path
) -> None:
    """Found by the attack after #22: the exit handed back only this run's backlog when
    the directory was removed; recovered messages not yet handed to librdkafka were
    lost (300 left by a run, 10 came back)."""
    spool = tmp_path / "spool"
    sent = [b"m-%d" % i for i in range(300)]
    with silent_listener() as dead:
        address = f"127.0.0.1:{dead.getsockname()[1]}"
        with pytest.raises(UndeliveredMessagesError) as raised:
            async with open_producer(
                bootstrap_servers=address, spool_path=str(spool), close_timeout=0.5
            ) as producer:
                await producer.send_many(kafka_topic, sent)
        assert raised.value.spool_path == str(spool)
        with pytest.raises(UndeliveredMessagesError) as raised:
            async with open_producer(
                bootstrap_servers=address,
                spool_path=str(spool),
                queue_capacity=10,
                close_timeout=0.5,
                librdkafka={"queue.buffering.max.messages": 10},
            ) as producer:
                await trio.testing.wait_all_tasks_blocked()
                assert producer.statistics().recovered == 300
                while spool.exists():
                    shutil.rmtree(spool, ignore_errors=True)
    error = raised.value
    assert error.spool_path is None
    assert sorted(m.value for m in error.messages) == sorted(sent)
