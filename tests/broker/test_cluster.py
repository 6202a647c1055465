"""The producer on a replicated Apache Kafka cluster: a leader dying, a rolling restart,
too few in-sync replicas, a leader cut off from the client, a transaction across a
leader's death, exactly once across the transaction coordinator's or a leader's death
during a commit.

Modelled on Apache Kafka's system tests (``replication_test``: 3 brokers, replication
factor 3, ``min.insync.replicas=2``, the leader killed with SIGKILL or bounced, every
acknowledged message consumed, a duplicate is a failure when idempotence is on) and on
librdkafka's idempotence tests. The cluster is real Apache Kafka from the Maven Central
jars (tests/harness/kafka_cluster.py): one controller and three brokers, each its own JVM.

Every scenario runs under load -- keyed messages carrying a per-key sequence number,
the producer's safe defaults (idempotence on, acks=all) -- and reads every partition
back with a real consumer. The verdict is per message: accepted -> in the topic exactly
once, or handed back exactly once; per key, the sequence numbers in the partition only
go up. Each run's figures go to a table printed at the end of the module and written
as JSON to ``$TRIO_PRODUCER_CLUSTER_REPORT`` (docs/cluster.rst shows a run).

Slow (minutes), so they run only when asked: ``python -m pytest -m cluster``
(or ``bash .ci/cluster.sh``).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_producer import (
    DeliveryError,
    KafkaFatalError,
    KafkaStatistics,
    Producer,
    TransactionError,
    UndeliveredMessagesError,
    open_producer,
)
from trio_producer.spool import _exactly_once as exactly_once
from trio_producer.testing import ConsumedRecord, consume_all

from ..harness.faultproxy import FaultProxy
from ..harness.kafka_cluster import BROKER_IDS, KafkaCluster

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

pytestmark = pytest.mark.cluster

#: Messages per second the load sends (keyed, ~100 bytes each).
RATE = 800
KEYS = 24
VALUE_SIZE = 100
REPORT = Path(
    os.environ.get(
        "TRIO_PRODUCER_CLUSTER_REPORT",
        Path(os.environ.get("TMPDIR", "/tmp")) / "trio-producer-cluster-report.json",
    )
)
_topic_numbers = iter(range(10**9))


# ---- the run records ---------------------------------------------------------------------


@dataclass
class Run:
    """One scenario's figures, as they go into the table."""

    scenario: str
    messages: int = 0  # accepted by send / send_and_wait (committed, for transactions)
    in_topic: int = 0
    handed_back: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    recovery: str = ""
    retries: str = ""
    seconds: float = 0.0
    verdict: str = "not finished"
    notes: list[str] = field(default_factory=list)


RUNS: list[Run] = []


def _selected(config: pytest.Config) -> bool:
    expr = str(config.getoption("markexpr") or "")
    return ("cluster" in expr and "not cluster" not in expr) or bool(
        os.environ.get("TRIO_PRODUCER_CLUSTER_TESTS")
    )


def _table(runs: list[Run]) -> list[str]:
    head = (
        "scenario",
        "messages",
        "recovery",
        "retries",
        "handed back",
        "lost",
        "duplicated",
        "out of order",
        "verdict",
    )
    rows = [
        (
            r.scenario,
            str(r.messages),
            r.recovery,
            r.retries,
            str(r.handed_back),
            str(r.lost),
            str(r.duplicated),
            str(r.out_of_order),
            r.verdict,
        )
        for r in runs
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    for r in runs:
        out += [f"  {r.scenario}: {note}" for note in r.notes]
    return out


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    if not _selected(request.config):
        pytest.skip("the cluster scenarios run only when asked: python -m pytest -m cluster")
    start = time.monotonic()
    with KafkaCluster() as kafka:
        yield kafka
    REPORT.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "total_seconds": round(time.monotonic() - start, 1),
                "runs": [asdict(r) for r in RUNS],
            },
            indent=2,
        )
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and RUNS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(f"What the cluster tests show ({time.monotonic() - start:.0f} s):")
            for text in _table(RUNS):
                reporter.write_line(text)
            reporter.write_line(f"(also in {REPORT})")


@pytest.fixture
def healthy(cluster: KafkaCluster) -> KafkaCluster:
    """The cluster with all three brokers up and every earlier topic's ISR full."""
    cluster.heal()
    return cluster


def new_topic(cluster: KafkaCluster, name: str) -> str:
    topic = f"cluster-{name}-{os.getpid()}-{next(_topic_numbers)}"
    cluster.create_topic(topic, partitions=3, replication_factor=3, min_insync_replicas=2)
    return topic


# ---- librdkafka's statistics of the producer under test -----------------------------------


class StatsTap:
    """The latest librdkafka statistics of the producer under test (``on_statistics``)."""

    def __init__(self) -> None:
        self.latest: Mapping[str, Any] | None = None
        self.reports = 0

    def __call__(self, snapshot: KafkaStatistics) -> None:
        self.latest = snapshot.raw
        self.reports += 1

    def figures(self) -> dict[str, int]:
        stats = self.latest
        if stats is None:
            return {}
        txmsgs = sum(
            part.get("txmsgs", 0)
            for topic in stats.get("topics", {}).values()
            for pid, part in topic.get("partitions", {}).items()
            if pid != "-1"
        )
        brokers = stats.get("brokers", {}).values()
        return {
            "txmsgs": txmsgs,
            "txretries": sum(b.get("txretries", 0) for b in brokers),
            "txerrs": sum(b.get("txerrs", 0) for b in brokers),
            "req_timeouts": sum(b.get("req_timeouts", 0) for b in brokers),
            "epochs": int(stats.get("eos", {}).get("epoch_cnt", 0)),
        }

    def retries(self, delivered: int) -> str:
        """Request retries, and message sends beyond one per delivered message."""
        f = self.figures()
        if not f:
            return "not measured (no statistics report)"
        resent = max(0, f["txmsgs"] - delivered)
        text = f"{f['txretries']} req, {resent} msg"
        if f["epochs"] > 1:
            text += f", epoch bumps {f['epochs'] - 1}"
        return text


@pytest.fixture
def stats() -> StatsTap:
    return StatsTap()


# ---- the load and its ledger ----------------------------------------------------------------


class Ledger:
    """Keyed messages with per-key sequence numbers, and where each one ended up."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.next_seq: Counter[bytes] = Counter()
        self.made: set[bytes] = set()
        self.accepted: set[bytes] = set()
        self.uncertain: set[bytes] = set()
        self.handed: dict[bytes, list[str]] = {}
        #: Handed back marked possibly_delivered (in doubt).
        self.in_doubt: set[bytes] = set()
        self._collected: set[int] = set()
        self._key_turn = 0
        self.max_send_wait = 0.0
        self.max_loop_lag = 0.0
        self.samples: list[tuple[float, int, int, int]] = []  # (time, accepted, queued, in flight)
        self.probes: list[tuple[float, float]] = []  # (started, confirmed), trio clock

    def make(self, key: bytes) -> bytes:
        seq = self.next_seq[key]
        self.next_seq[key] += 1
        value = b"%s:%08d:" % (key, seq)
        value += b"." * (VALUE_SIZE - len(value))
        self.made.add(value)
        return value

    def next_key(self) -> bytes:
        self._key_turn = (self._key_turn + 1) % KEYS
        return b"k%02d" % self._key_turn

    def hand_back(self, failure: DeliveryError, where: str) -> None:
        value = failure.message.value
        assert isinstance(value, bytes)
        self.handed.setdefault(value, []).append(f"{where}: {failure.error.name}")
        if failure.possibly_delivered:
            self.in_doubt.add(value)

    def hook(self, failure: DeliveryError) -> None:
        self.hand_back(failure, "on_delivery_error")

    def collect(self, exc: BaseException | None) -> None:
        if exc is None or id(exc) in self._collected:
            return
        self._collected.add(id(exc))
        if isinstance(exc, UndeliveredMessagesError | KafkaFatalError):
            for failure in exc.failures:
                self.hand_back(failure, type(exc).__name__)
        elif isinstance(exc, DeliveryError):
            self.hand_back(exc, "DeliveryError")
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                self.collect(inner)

    def error_names(self) -> Counter[str]:
        return Counter(w.rsplit(": ", 1)[-1] for ws in self.handed.values() for w in ws)


@dataclass
class Verdict:
    in_topic: int
    lost: list[bytes]
    duplicated: int
    out_of_order: list[str]
    delivered_and_handed: list[bytes]
    #: why the messages that are in the topic AND were handed back were handed back
    both_reasons: Counter[str]
    handed_twice: list[bytes]
    strangers: int
    not_accepted_but_present: list[bytes]

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.out_of_order
            or self.delivered_and_handed
            or self.handed_twice
            or self.strangers
            or self.not_accepted_but_present
        )

    def describe(self) -> str:
        parts = []
        if self.lost:
            parts.append(f"lost {len(self.lost)} (e.g. {[v[:12].decode() for v in self.lost[:3]]})")
        if self.duplicated:
            parts.append(f"duplicated {self.duplicated}")
        if self.out_of_order:
            parts.append(f"out of order {len(self.out_of_order)} (e.g. {self.out_of_order[:3]})")
        if self.delivered_and_handed:
            parts.append(
                f"delivered AND handed back {len(self.delivered_and_handed)} "
                f"(handed back as {dict(self.both_reasons)}; "
                f"e.g. {[v[:12].decode() for v in self.delivered_and_handed[:3]]})"
            )
        if self.handed_twice:
            parts.append(f"handed back twice {len(self.handed_twice)}")
        if self.strangers:
            parts.append(f"never sent, yet in the topic {self.strangers}")
        if self.not_accepted_but_present:
            parts.append(f"not accepted, yet delivered {len(self.not_accepted_but_present)}")
        return "; ".join(parts) or "clean"


def judge(ledger: Ledger, records: list[ConsumedRecord]) -> Verdict:
    """Every accepted message in the topic once or handed back once; per key, in order."""
    seen: Counter[bytes] = Counter()
    last: dict[tuple[int, bytes], int] = {}
    out_of_order: list[str] = []
    strangers = 0
    for record in records:
        value = record.value
        if value is None or value not in ledger.made:
            strangers += 1
            continue
        seen[value] += 1
        key, seq_text, _ = value.split(b":", 2)
        seq = int(seq_text)
        where = (record.partition, key)
        if where in last and seq <= last[where]:
            out_of_order.append(f"{key.decode()}[{record.partition}] {last[where]} then {seq}")
        last[where] = max(seq, last.get(where, -1))
    handed = ledger.handed
    lost = sorted(v for v in ledger.accepted if not seen[v] and v not in handed)
    both = sorted(v for v in seen if v in handed)
    twice = sorted(v for v, where in handed.items() if len(where) > 1)
    allowed = ledger.accepted | ledger.uncertain
    present_unaccepted = sorted(v for v in seen if v not in allowed)
    return Verdict(
        in_topic=sum(seen.values()),
        lost=lost,
        duplicated=sum(n - 1 for n in seen.values() if n > 1),
        out_of_order=out_of_order,
        delivered_and_handed=both,
        both_reasons=Counter(w.rsplit(": ", 1)[-1] for v in both for w in handed[v]),
        handed_twice=twice,
        strangers=strangers,
        not_accepted_but_present=present_unaccepted,
    )


async def read_back(
    cluster: KafkaCluster, topic: str, isolation_level: str = "read_uncommitted"
) -> list[ConsumedRecord]:
    return await trio.to_thread.run_sync(
        partial(
            consume_all,
            cluster.bootstrap,
            topic,
            idle_timeout=3.0,
            timeout=90.0,
            isolation_level=isolation_level,
        )
    )


async def pump(producer: Producer, ledger: Ledger, rate: int = RATE) -> None:
    """Send keyed messages at about ``rate`` per second until cancelled."""
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    next_tick = trio.current_time()
    while True:
        for _ in range(per_tick):
            value = ledger.make(ledger.next_key())
            started = trio.current_time()
            try:
                await producer.send(ledger.topic, value, key=value[:3])
            finally:  # a send still waiting when the load stops counts too
                ledger.max_send_wait = max(ledger.max_send_wait, trio.current_time() - started)
            ledger.accepted.add(value)  # only once send returned: then it was accepted
        next_tick = max(next_tick + tick, trio.current_time() - tick)
        await trio.sleep_until(next_tick)


async def watch_loop(ledger: Ledger) -> None:
    """The longest time the Trio thread did not come back to a 10 ms sleep on time."""
    while True:
        before = trio.current_time()
        await trio.sleep(0.01)
        ledger.max_loop_lag = max(ledger.max_loop_lag, trio.current_time() - before - 0.01)


async def probe(producer: Producer, ledger: Ledger, partition: int) -> None:
    """``send_and_wait`` to one partition in a loop: when did it confirm again?"""
    while True:
        value = ledger.make(b"pr%d" % partition)
        ledger.uncertain.add(value)  # a cancelled send_and_wait may or may not have accepted
        started = trio.current_time()
        try:
            await producer.send_and_wait(ledger.topic, value, key=value[:3], partition=partition)
        except DeliveryError as failure:
            ledger.uncertain.discard(value)
            ledger.accepted.add(value)
            ledger.hand_back(failure, "send_and_wait")
        else:
            ledger.uncertain.discard(value)
            ledger.accepted.add(value)
            ledger.probes.append((started, trio.current_time()))
        await trio.sleep(0.05)


def confirmed_again(ledger: Ledger, after: float) -> float | None:
    """Seconds from ``after`` until a probe sent after it was confirmed."""
    ends = [end for start, end in ledger.probes if start >= after]
    return min(ends) - after if ends else None


def longest_stall(ledger: Ledger) -> float:
    """The longest gap between two probe confirmations."""
    ends = sorted(end for _, end in ledger.probes)
    return max((b - a for a, b in itertools.pairwise(ends)), default=0.0)


async def run_producer(
    ledger: Ledger,
    stats: StatsTap,
    body: Callable[[Producer], Awaitable[None]],
    **fields: Any,
) -> BaseException | None:
    """Run ``body`` inside ``open_producer``; collect what is handed back; return the exit
    exception of the producer's own kinds (anything else propagates)."""
    handle: Producer | None = None
    fields["librdkafka"] = {"statistics.interval.ms": 500, **fields.get("librdkafka", {})}
    try:
        async with open_producer(
            on_delivery_error=ledger.hook, on_statistics=stats, **fields
        ) as producer:
            handle = producer
            await body(producer)
    except (UndeliveredMessagesError, KafkaFatalError, DeliveryError) as exc:
        ledger.collect(exc)
        return exc
    finally:
        if handle is not None:
            for failure in handle.undelivered:
                ledger.hand_back(failure, "producer.undelivered")
    return None


def settle(run: Run, ledger: Ledger, verdict: Verdict, extra: list[str]) -> None:
    run.notes.append(
        f"longest send() wait {ledger.max_send_wait:.2f} s; "
        f"longest event-loop lag {ledger.max_loop_lag:.2f} s"
    )
    run.messages = len(ledger.accepted)
    run.in_topic = verdict.in_topic
    run.handed_back = sum(len(w) for w in ledger.handed.values())
    run.lost = len(verdict.lost)
    run.duplicated = verdict.duplicated + len(verdict.delivered_and_handed)
    run.out_of_order = len(verdict.out_of_order)
    problems = [] if verdict.clean else [verdict.describe()]
    problems += extra
    run.verdict = "pass" if not problems else "FAIL: " + "; ".join(problems)


async def wait_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


# ---- 1. the leader of a partition is SIGKILLed mid-stream, restarted later ---------------


async def test_leader_sigkill_mid_stream(healthy: KafkaCluster, stats: StatsTap) -> None:
    cluster = healthy
    run = Run("1. leader SIGKILL, restarted")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, "kill")
    ledger = Ledger(topic)
    figures: dict[str, float] = {}

    async def body(producer: Producer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, producer, ledger)
            nursery.start_soon(watch_loop, ledger)
            nursery.start_soon(probe, producer, ledger, 0)
            await trio.sleep(3)
            victim = await wait_in_thread(cluster.leader, topic, 0)
            killed_at = trio.current_time()
            await wait_in_thread(cluster.kill, victim)
            _, figures["failover"] = await wait_in_thread(
                cluster.wait_leader, topic, 0, not_on={victim}
            )
            await trio.sleep(4)
            cluster.start_broker(victim)
            figures["isr"] = await wait_in_thread(cluster.wait_isr, topic, timeout=90)
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
        figures["confirmed"] = confirmed_again(ledger, killed_at) or -1
        await producer.flush()
        await trio.sleep(1.2)  # one more statistics report after the last send

    exc = await run_producer(
        ledger, stats, body, bootstrap_servers=cluster.bootstrap, close_timeout=60
    )
    verdict = judge(ledger, await read_back(cluster, topic))
    run.recovery = (
        f"new leader {figures['failover']:.1f} s, partition confirms again "
        f"{figures['confirmed']:.1f} s, ISR full {figures['isr']:.1f} s after restart"
    )
    run.retries = stats.retries(verdict.in_topic)
    extra = [f"exit raised {exc!r}"] if exc is not None else []
    if ledger.handed:
        extra.append(f"handed back {dict(ledger.error_names())}")
    settle(run, ledger, verdict, extra)
    run.seconds = time.monotonic() - start
    assert run.verdict == "pass", run.verdict


# ---- 2. rolling restart: SIGTERM, wait for the ISR, next ---------------------------------


async def test_rolling_restart(healthy: KafkaCluster, stats: StatsTap) -> None:
    cluster = healthy
    run = Run("2. rolling restart (SIGTERM x3)")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, "rolling")
    ledger = Ledger(topic)
    bounces: list[str] = []

    async def body(producer: Producer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, producer, ledger)
            nursery.start_soon(watch_loop, ledger)
            nursery.start_soon(probe, producer, ledger, 0)
            await trio.sleep(2)
            for broker_id in BROKER_IDS:
                stopped = await wait_in_thread(cluster.terminate, broker_id)
                cluster.start_broker(broker_id)
                isr = await wait_in_thread(cluster.wait_isr, topic, timeout=90)
                bounces.append(f"{broker_id}: stop {stopped:.1f} s, ISR full {isr:.1f} s")
                await trio.sleep(1)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        await producer.flush()
        await trio.sleep(1.2)

    exc = await run_producer(
        ledger, stats, body, bootstrap_servers=cluster.bootstrap, close_timeout=60
    )
    verdict = judge(ledger, await read_back(cluster, topic))
    run.recovery = f"longest stall of p0 {longest_stall(ledger):.1f} s"
    run.notes.append("bounces: " + "; ".join(bounces))
    run.retries = stats.retries(verdict.in_topic)
    extra = [f"exit raised {exc!r}"] if exc is not None else []
    if ledger.handed:
        extra.append(f"handed back {dict(ledger.error_names())}")
    settle(run, ledger, verdict, extra)
    run.seconds = time.monotonic() - start
    assert run.verdict == "pass", run.verdict


# ---- 3. two brokers down: below min.insync.replicas --------------------------------------

QUEUE_CAPACITY = 1000
LIBRDKAFKA_QUEUE = 2000


async def watch_memory(producer: Producer, ledger: Ledger, peak: list[int]) -> None:
    """The most messages the producer held at once (its queue + librdkafka's)."""
    n = 0
    while True:
        s = producer.statistics()
        peak[0] = max(peak[0], s.queued + s.in_flight)
        n += 1
        if n % 10 == 0:
            ledger.samples.append(
                (trio.current_time(), len(ledger.accepted), s.queued, s.in_flight)
            )
        await trio.sleep(0.05)


async def test_below_min_isr_one_broker_returns(healthy: KafkaCluster, stats: StatsTap) -> None:
    cluster = healthy
    run = Run("3a. 2 of 3 down, one returns")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, "minisr")
    ledger = Ledger(topic)
    peak = [0]
    figures: dict[str, float] = {}

    async def body(producer: Producer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, producer, ledger)
            nursery.start_soon(watch_loop, ledger)
            nursery.start_soon(probe, producer, ledger, 0)
            nursery.start_soon(watch_memory, producer, ledger, peak)
            await trio.sleep(3)
            await wait_in_thread(cluster.kill, 2)
            await wait_in_thread(cluster.kill, 3)
            await trio.sleep(10)  # long enough to fill every queue at RATE
            returned_at = trio.current_time()
            cluster.start_broker(2)
            figures["isr2"] = await wait_in_thread(cluster.wait_isr, topic, size=2, timeout=90)
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
        figures["confirmed"] = confirmed_again(ledger, returned_at) or -1
        await producer.flush()
        await trio.sleep(1.2)

    exc = await run_producer(
        ledger,
        stats,
        body,
        bootstrap_servers=cluster.bootstrap,
        close_timeout=60,
        queue_capacity=QUEUE_CAPACITY,
        batch_max_messages=500,
        librdkafka={"queue.buffering.max.messages": LIBRDKAFKA_QUEUE},
    )
    verdict = judge(ledger, await read_back(cluster, topic))
    bound = 2 * QUEUE_CAPACITY + LIBRDKAFKA_QUEUE
    figures["blocked"] = ledger.max_send_wait
    run.recovery = (
        f"ISR of 2 {figures['isr2']:.1f} s after the restart, partition confirms "
        f"{figures['confirmed']:.1f} s after it"
    )
    run.notes.append(
        f"back-pressure: longest send() wait {figures['blocked']:.1f} s; most messages held "
        f"{peak[0]} (bound {bound}: 2 x queue_capacity + queue.buffering.max.messages)"
    )
    run.retries = stats.retries(verdict.in_topic)
    extra = [f"exit raised {exc!r}"] if exc is not None else []
    if ledger.handed:
        extra.append(f"handed back {dict(ledger.error_names())}")
    if figures["blocked"] < 1.0:
        extra.append(f"send never blocked (longest wait {figures['blocked']:.2f} s)")
    if peak[0] > bound:
        extra.append(f"held {peak[0]} messages, more than {bound}")
    settle(run, ledger, verdict, extra)
    run.seconds = time.monotonic() - start
    assert run.verdict == "pass", run.verdict


CLOSE_TIMEOUT = 8.0


async def test_below_min_isr_none_returns(healthy: KafkaCluster, stats: StatsTap) -> None:
    cluster = healthy
    run = Run("3b. 2 of 3 down, none returns")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, "minisr-gone")
    ledger = Ledger(topic)
    peak = [0]
    left: list[float] = []
    leaders_before: dict[int, int] = {}

    async def body(producer: Producer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, producer, ledger)
            nursery.start_soon(watch_loop, ledger)
            nursery.start_soon(watch_memory, producer, ledger, peak)
            await trio.sleep(2)
            parts = await wait_in_thread(cluster.partitions, topic)
            leaders_before.update({p: state.leader for p, state in parts.items()})
            await wait_in_thread(cluster.kill, 2)
            await wait_in_thread(cluster.kill, 3)
            await trio.sleep(8)
            nursery.cancel_scope.cancel()
        left.append(time.monotonic())

    exc = await run_producer(
        ledger,
        stats,
        body,
        bootstrap_servers=cluster.bootstrap,
        close_timeout=CLOSE_TIMEOUT,
        queue_capacity=QUEUE_CAPACITY,
        batch_max_messages=500,
        librdkafka={"queue.buffering.max.messages": LIBRDKAFKA_QUEUE},
    )
    exit_seconds = time.monotonic() - left[0]
    # Bring the two brokers back before reading: what the leader wrote (and never got
    # acknowledged by min.insync.replicas) becomes visible only then -- or never.
    await wait_in_thread(cluster.heal)
    records = await read_back(cluster, topic)
    verdict = judge(ledger, records)
    names = ledger.error_names()
    text = str(exc)
    broker_reason = "NOT_ENOUGH_REPLICAS" in text or any("NOT_ENOUGH" in n for n in names)
    run.recovery = f"none: the exit took {exit_seconds:.1f} s (close_timeout {CLOSE_TIMEOUT} s)"
    run.retries = stats.retries(verdict.in_topic)
    run.notes.append(f"exit raised {type(exc).__name__}: {text[:300]}")
    run.notes.append(f"handed back by reason: {dict(names)}")
    extra = []
    if not isinstance(exc, UndeliveredMessagesError):
        extra.append(f"expected UndeliveredMessagesError, got {exc!r}")
    if exit_seconds > CLOSE_TIMEOUT + 4:
        extra.append(f"the exit took {exit_seconds:.1f} s, close_timeout is {CLOSE_TIMEOUT}")
    if not ledger.handed:
        extra.append("nothing was handed back")
    if not broker_reason:
        run.notes.append("the broker's reason (NOT_ENOUGH_REPLICAS) is not in what came back")
    settle(run, ledger, verdict, extra)
    run.seconds = time.monotonic() - start
    in_doubt = {r.partition for r in records if r.value in set(verdict.delivered_and_handed)}
    if in_doubt:
        run.notes.append(
            f"in the topic AND handed back: {len(verdict.delivered_and_handed)} messages of "
            f"partition(s) {sorted(in_doubt)}, led before the kill by "
            f"{ {p: leaders_before[p] for p in sorted(in_doubt)} } (broker 1 survived)"
        )
    only_in_doubt = (
        not extra
        and verdict.delivered_and_handed
        and not (
            verdict.lost
            or verdict.duplicated
            or verdict.out_of_order
            or verdict.handed_twice
            or verdict.strangers
            or verdict.not_accepted_but_present
        )
    )
    if only_in_doubt:
        # The leader appended these, the followers died before acknowledging them
        # (NOT_ENOUGH_REPLICAS_AFTER_APPEND, retried by librdkafka), close_timeout purged
        # them and the producer handed them back; when the ISR came back they became
        # visible. Kafka cannot tell the producer: every such message must be handed back
        # marked as in doubt (DeliveryError.possibly_delivered), never as plainly undelivered.
        unmarked = [v for v in verdict.delivered_and_handed if v not in ledger.in_doubt]
        assert unmarked == [], f"{len(unmarked)} in the topic, handed back as not in doubt"
        run.notes.append(
            f"{len(verdict.delivered_and_handed)} in the topic and handed back, every one "
            "marked possibly_delivered (in doubt)"
        )
        run.verdict = "pass (in doubt, marked)"
        return
    assert run.verdict == "pass", run.verdict


# ---- 4. the leader's network is cut (the client's side only) -----------------------------


async def test_leader_network_cut(healthy: KafkaCluster, stats: StatsTap) -> None:
    cluster = healthy
    run = Run("4. leader cut off from the client")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, "cut")
    ledger = Ledger(topic)
    figures: dict[str, float] = {}
    proxies = {i: FaultProxy(b.proxy_port, b.external_port) for i, b in cluster.brokers.items()}

    async def body(producer: Producer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, producer, ledger)
            nursery.start_soon(watch_loop, ledger)
            nursery.start_soon(probe, producer, ledger, 0)
            await trio.sleep(3)
            victim = await wait_in_thread(cluster.leader, topic, 0)
            proxies[victim].cut()
            await trio.sleep(8)
            restored_at = trio.current_time()
            proxies[victim].restore()
            await trio.sleep(6)
            nursery.cancel_scope.cancel()
        figures["confirmed"] = confirmed_again(ledger, restored_at) or -1
        await producer.flush()
        await trio.sleep(1.2)

    async with trio.open_nursery() as proxy_nursery:
        for proxy in proxies.values():
            await proxy_nursery.start(proxy.run)
        exc = await run_producer(
            ledger, stats, body, bootstrap_servers=cluster.proxied_bootstrap, close_timeout=60
        )
        proxy_nursery.cancel_scope.cancel()
    verdict = judge(ledger, await read_back(cluster, topic))
    run.recovery = f"cut 8 s; partition confirms {figures['confirmed']:.1f} s after the restore"
    run.retries = stats.retries(verdict.in_topic)
    extra = [f"exit raised {exc!r}"] if exc is not None else []
    if ledger.handed:
        extra.append(f"handed back {dict(ledger.error_names())}")
    settle(run, ledger, verdict, extra)
    run.seconds = time.monotonic() - start
    assert run.verdict == "pass", run.verdict


# ---- 5. a transaction in progress while the leader of its partition dies -----------------


class Abort(Exception):
    pass


async def test_transaction_across_leader_death(healthy: KafkaCluster, stats: StatsTap) -> None:
    cluster = healthy
    run = Run("5. transactions, leader SIGKILL")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, "txn")
    ledger = Ledger(topic)
    outcomes: list[tuple[str, list[bytes]]] = []
    per_txn = 40
    figures: dict[str, float] = {}

    async def body(producer: Producer) -> None:
        victim = -1
        for n in range(24):
            key = b"t%02d" % n
            values: list[bytes] = []
            outcome = "committed"
            try:
                async with producer.transaction():
                    for i in range(per_txn):
                        value = ledger.make(key)
                        await producer.send(topic, value, key=key, partition=0)
                        ledger.accepted.add(value)
                        values.append(value)
                        if n == 6 and i == per_txn // 2:
                            victim = await wait_in_thread(cluster.leader, topic, 0)
                            figures["killed"] = trio.current_time()
                            await wait_in_thread(cluster.kill, victim)
                        await trio.sleep(0.002)
                    if n % 4 == 3:
                        raise Abort
            except Abort:
                outcome = "aborted"
            except TransactionError as exc:
                outcome = "aborted (error)" if exc.abortable else f"unknown ({exc})"
            if n >= 6 and "done" not in figures and outcome == "committed":
                figures["done"] = trio.current_time() - figures["killed"]
            outcomes.append((outcome, values))
            if n == 12:
                cluster.start_broker(victim)
                await wait_in_thread(cluster.wait_isr, topic, timeout=90)
            if outcome.startswith("unknown"):
                break

    exc = await run_producer(
        ledger,
        stats,
        body,
        bootstrap_servers=cluster.bootstrap,
        close_timeout=60,
        transaction_timeout=60,
        librdkafka={"transactional.id": f"cluster-txn-{os.getpid()}-{time.monotonic_ns()}"},
    )
    records = await read_back(cluster, topic, isolation_level="read_committed")
    seen = Counter(r.value for r in records)
    committed = [v for o, vs in outcomes if o == "committed" for v in vs]
    aborted = [v for o, vs in outcomes if o.startswith("aborted") for v in vs]
    unknown = [(o, vs) for o, vs in outcomes if o.startswith("unknown")]
    missing = [v for v in committed if seen[v] != 1]
    leaked = [v for v in aborted if seen[v]]
    torn = [o for o, vs in unknown if len({seen[v] for v in vs}) != 1]  # not all-or-nothing
    order = judge(ledger, records).out_of_order
    counts = Counter(o.split(" (")[0] for o, _ in outcomes)
    run.messages = len(committed)
    run.in_topic = sum(seen.values())
    run.handed_back = sum(len(w) for w in ledger.handed.values())
    run.lost = sum(1 for v in committed if seen[v] == 0)
    run.duplicated = sum(n - 1 for n in seen.values() if n > 1)
    run.out_of_order = len(order)
    run.recovery = f"first commit after the kill {figures.get('done', -1):.1f} s"
    run.retries = stats.retries(run.in_topic + len(aborted))
    run.notes.append(
        f"transactions: {dict(counts)}; aborted messages visible under read_committed: "
        f"{len(leaked)}"
    )
    problems = []
    if exc is not None:
        problems.append(f"exit raised {exc!r}")
    if missing:
        problems.append(f"committed but not exactly once: {len(missing)}")
    if leaked:
        problems.append(f"aborted yet visible: {len(leaked)}")
    if torn:
        problems.append(f"transactions neither all nor nothing: {torn}")
    if order:
        problems.append(f"out of order: {order[:3]}")
    if counts["committed"] < 10:
        problems.append(f"only {counts['committed']} transactions committed")
    run.verdict = "pass" if not problems else "FAIL: " + "; ".join(problems)
    run.seconds = time.monotonic() - start
    assert run.verdict == "pass", run.verdict


# ---- 6. exactly once (#25): a broker SIGKILLed during a commit ---------------------------

#: What ``exactly_once`` commits per transaction: the default.
COMMIT_INTERVAL = 0.1


@pytest.mark.parametrize("kill", ["coordinator", "leader"])
async def test_exactly_once_broker_sigkill_during_commit(
    healthy: KafkaCluster, stats: StatsTap, tmp_path: Path, kill: str
) -> None:
    """``exactly_once=True`` streams keyed messages; at the step between handing a
    transaction's messages and its progress record to librdkafka and
    ``commit_transaction`` (the commit protocol's ``"produced"``), the broker of
    ``kill`` gets SIGKILL: the transaction coordinator of the ``transactional.id``, or
    the leader of a partition of the data topic (one the coordinator does not lead,
    where there is one). The producer must go on without a restart (commits resume
    while the broker is down), nothing is handed back, and a read_committed read holds
    every accepted message exactly once, per key in order."""
    cluster = healthy
    run = Run(f"6{'ab'[kill == 'leader']}. exactly once, {kill} SIGKILL in a commit")
    RUNS.append(run)
    start = time.monotonic()
    topic = new_topic(cluster, f"eo-{kill}")
    ledger = Ledger(topic)
    tid = f"cluster-eo-{kill}-{os.getpid()}-{time.monotonic_ns()}"
    figures: dict[str, float] = {}
    steps: Counter[str] = Counter()
    armed: list[int] = []  # the victim, while the hook waits for the next commit
    killed = trio.Event()
    killed_at: list[float] = []
    after_kill: list[str] = []  # the steps after the kill, in order

    def hook(step: str) -> None:
        steps[step] += 1
        if killed.is_set():
            after_kill.append(step)
            if step == "committed" and "commit" not in figures:
                figures["commit"] = trio.current_time() - killed_at[0]
        elif step == "produced" and armed:
            cluster.kill_nowait(armed[0])  # SIGKILL now, reaped below
            killed_at.append(trio.current_time())
            killed.set()

    async def body(producer: Producer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, producer, ledger)
            nursery.start_soon(watch_loop, ledger)
            await trio.sleep(3)
            coordinator = await wait_in_thread(cluster.coordinator, tid)
            leaders = {
                p: state.leader
                for p, state in (await wait_in_thread(cluster.partitions, topic)).items()
            }
            # The leader killed is not the coordinator where the cluster allows (each
            # broker leads one partition, as a rule); the probe's partition: the one
            # killed, or one that the killed coordinator does not lead.
            spared = sorted(p for p, broker in leaders.items() if broker != coordinator)
            partition = spared[0] if spared else 0
            victim = coordinator if kill == "coordinator" else leaders[partition]
            nursery.start_soon(probe, producer, ledger, partition)
            run.notes.append(
                f"coordinator broker {coordinator}, leaders {leaders}: killed broker "
                f"{victim}; probed partition {partition}"
            )
            await trio.sleep(1)  # the probe runs before the kill
            armed.append(victim)
            with trio.fail_after(10):
                await killed.wait()
            await wait_in_thread(cluster.reap, victim)
            if kill == "coordinator":
                _, figures["failover"] = await wait_in_thread(
                    cluster.wait_leader,
                    "__transaction_state",
                    cluster.transaction_partition(tid),
                    not_on={victim},
                )
            else:
                _, figures["failover"] = await wait_in_thread(
                    cluster.wait_leader, topic, partition, not_on={victim}
                )
            await trio.sleep(6)  # the stream goes on, one broker down
            figures["down_commits"] = after_kill.count("committed")
            cluster.start_broker(victim)
            figures["isr"] = await wait_in_thread(cluster.wait_isr, topic, timeout=90)
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
        figures["confirmed"] = confirmed_again(ledger, killed_at[0]) or -1
        await producer.flush()
        await trio.sleep(1.2)  # one more statistics report after the last send

    exactly_once.STEP_HOOK = hook
    try:
        exc = await run_producer(
            ledger,
            stats,
            body,
            bootstrap_servers=cluster.bootstrap,
            close_timeout=60,
            spool_path=tmp_path / "spool",
            exactly_once=True,
            commit_interval=COMMIT_INTERVAL,
            librdkafka={"transactional.id": tid},
        )
    finally:
        exactly_once.STEP_HOOK = None
    records = await read_back(cluster, topic, isolation_level="read_committed")
    verdict = judge(ledger, records)
    uncommitted = await read_back(cluster, topic)
    run.recovery = (
        f"first commit {figures.get('commit', -1):.1f} s after the kill (new "
        f"{'coordinator' if kill == 'coordinator' else 'leader'} {figures.get('failover', -1):.1f}"
        f" s), the probe confirms {figures.get('confirmed', -1):.1f} s; ISR full "
        f"{figures.get('isr', -1):.1f} s after restart"
    )
    run.retries = stats.retries(verdict.in_topic)
    aborted = steps["produced"] - steps["committed"]
    run.notes.append(
        f"transactions: {steps['committed']} committed, {aborted} not (aborted and sent "
        f"again); {int(figures.get('down_commits', 0))} committed while the broker was down; "
        f"read_uncommitted holds {len(uncommitted) - len(records)} more records than "
        "read_committed (the aborted ones)"
    )
    extra = [f"exit raised {exc!r}"] if exc is not None else []
    if ledger.handed:
        extra.append(f"handed back {dict(ledger.error_names())}")
    if not killed.is_set():
        extra.append("the kill never happened")
    if not figures.get("down_commits"):
        extra.append("no commit while the broker was down: the producer did not recover")
    settle(run, ledger, verdict, extra)
    run.seconds = time.monotonic() - start
    assert run.verdict == "pass", run.verdict
