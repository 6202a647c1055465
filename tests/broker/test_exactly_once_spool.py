"""Exactly once across a crash (issue #25): ``exactly_once=True`` attacked on Apache Kafka.

Every test runs the producer in child processes (tests/harness/apps/exactly_once_child.py)
that are SIGKILLed -- at random moments, or deterministically at one step of the commit
protocol through ``trio_producer.spool._exactly_once.STEP_HOOK`` -- and rerun on the same
spool and ``transactional.id``; then a read_committed consumer reads the topic back.

The accounting is per message. Each child writes an append-only ledger file, one
``write`` per line, so that a SIGKILL neither tears nor loses a line that was written:
``i P`` before ``send(P)`` (the intent), ``a P`` once it returned (accepted), ``r P``
when it raised, ``h P ERROR`` when ``on_delivery_error`` was given ``P``. Every payload
``P`` is unique (``<run>:msg-<n>``). The rule (tests/harness/accounting.py's
:class:`Ledger`, rebuilt from the file), checked against the read_committed read:

* accepted (``a``): in the topic exactly once, or handed back exactly once; never both;
* intent only (``i`` without ``a`` or ``r``: the kill landed inside ``send``): the
  message may have been written to the spool before the kill, and then the spool sends
  it like any other -- so it is in the topic **at most** once (the ledger's
  "uncertain": any one outcome, never two);
* raised (``r``), and anything handed back: never in the topic;
* nothing else is in the topic (a stranger), and per key the messages of one spool are
  in the order they were sent (a payload sorts in the order it was made; the runs on one
  spool follow each other, as the spool sends what it recovered first).

The read_uncommitted read shows what the aborted transactions wrote: the duplicates
there are counted for the figures (``[figures]`` lines, ``-s``); read_committed has none.

Tansu does not implement read_committed, so these run on Apache Kafka only::

    python tests/harness/apache_kafka.py -- \\
        python -m pytest -m broker tests/broker/test_exactly_once_spool.py
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

import trio_producer
from trio_producer.testing import consume_all

from ..harness.accounting import Ledger
from ..harness.children import APPS, Child
from ..harness.faultproxy import FaultProxy

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trio_producer.testing import ConsumedRecord

pytestmark = [pytest.mark.broker]

#: Set by tests/harness/apache_kafka.py (as .ci/run uses it) when the suite runs on Apache Kafka.
BROKER_KIND = os.environ.get("TRIO_PRODUCER_TEST_BROKER_KIND", "tansu")

apache_only = pytest.mark.skipif(
    BROKER_KIND != "apache-kafka",
    reason="needs Apache Kafka (read_committed): run under "
    "`python tests/harness/apache_kafka.py -- python -m pytest -m broker ...`",
)

APP = APPS / "exactly_once_child.py"
#: The checkout the parent imports trio_producer from: the children use the same.
SOURCE = Path(trio_producer.__file__).resolve().parents[1]
PARTITIONS = 3
KEYS = 6
#: The steps of the commit protocol (see trio_producer/spool/_exactly_once.py).
RECOVERY_STEPS = ("fenced", "recovered")
TRANSACTION_STEPS = ("begin", "produced", "committed", "confirmed")

#: A child's last line -> where it was (see Run.phase).
PHASES = {
    "": "starting",
    "start": "recovery",
    "step fenced": "recovery",
    "step recovered": "recovery",
    "open": "between transactions",
    "step confirmed": "between transactions",
    "step begin": "in a transaction",
    "step produced": "in a transaction",
    "step committed": "between commit and confirm",
}

#: The recovery's INFO line (a spool that held messages when it was opened).
RECOVERY_LOG = re.compile(
    rb"exactly once: committed through seq (-?\d+); of (\d+) recovered message\(s\), "
    rb"(\d+) were committed already \(dropped\), (\d+) are sent again"
)


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"


def make_topic(bootstrap: str, name: str, config: dict[str, str] | None = None) -> str:
    topic = unique(name)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1, config=config or {})
    admin.create_topics([new], operation_timeout=30)[topic].result(30)
    return topic


@attrs.define
class Recovery:
    """What one rerun's recovery said (its INFO line)."""

    position: int
    recovered: int
    dropped: int
    again: int


@attrs.define
class Run:
    """One child process."""

    name: str
    spool: str
    child: Child
    #: Its ``exit`` report (``None``: it was SIGKILLed).
    exit: dict[str, Any] | None = None
    killed: bool = False

    @property
    def steps(self) -> list[str]:
        return [line[5:] for line in self.child.out.decode().splitlines() if line[:5] == "step "]

    @property
    def phase(self) -> str:
        """Where the child was when it ended, by the last line it printed."""
        lines = self.child.out.decode().splitlines()
        last = lines[-1] if lines else ""
        return PHASES.get(last, last)

    @property
    def recovery(self) -> Recovery | None:
        found = RECOVERY_LOG.search(bytes(self.child.err))
        return None if found is None else Recovery(*(int(x) for x in found.groups()))


@attrs.define
class Figures:
    """What a check found."""

    accepted: int
    uncertain: int
    uncertain_delivered: int
    raised: int
    handed_back: int
    read_committed: int
    read_uncommitted: int
    uncommitted_duplicates: int

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in attrs.asdict(self).items())


@attrs.define
class Trial:
    """The children of one test: one topic, one ledger file, spools under ``folder``."""

    bootstrap: str
    topic: str
    folder: Path
    tid: str = attrs.field(factory=lambda: unique("eo-tid"))
    progress_topic: str = attrs.field(factory=lambda: unique("eo-progress"))
    runs: list[Run] = attrs.field(factory=list)

    @property
    def ledger_file(self) -> Path:
        return self.folder / "ledger"

    def spawn(
        self,
        count: int,
        *,
        spool: str = "spool",
        bootstrap: str | None = None,
        tid: str | None = None,
        **options: Any,
    ) -> Run:
        """Start a child that sends ``count`` messages (its run's name: ``rNN``)."""
        name = f"r{len(self.runs):02d}"
        cfg = {
            "bootstrap": bootstrap or self.bootstrap,
            "topic": self.topic,
            "spool": str(self.folder / spool),
            "tid": tid or self.tid,
            "progress_topic": self.progress_topic,
            "run": name,
            "ledger": str(self.ledger_file),
            "count": count,
            "keys": KEYS,
            **options,
        }
        python_path = os.pathsep.join(p for p in (str(SOURCE), os.environ.get("PYTHONPATH")) if p)
        child = Child(
            [sys.executable, str(APP), json.dumps(cfg)],
            env={"PYTHONPATH": python_path},
        )
        run = Run(name, spool, child)
        self.runs.append(run)
        return run

    def finish(self, run: Run, timeout: float = 60) -> dict[str, Any] | None:
        """Wait for the child to end; its exit report (``None``: it was SIGKILLed)."""
        try:
            code = run.child.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{run.name} did not end within {timeout} s\n{run.child.output()}"
            ) from None
        if code == -signal.SIGKILL:
            run.killed = True
            return None
        lines = [line for line in bytes(run.child.out).splitlines() if line[:5] == b"exit "]
        assert lines, f"{run.name} ended ({code}) without its report\n{run.child.output()}"
        run.exit = json.loads(lines[-1][5:])
        return run.exit

    def kill(self, run: Run) -> None:
        """SIGKILL the child (if it has not ended already) and wait for it."""
        if run.child.proc.poll() is None:
            run.child.signal(signal.SIGKILL)
        self.finish(run, timeout=10)

    def clean(self, run: Run, timeout: float = 60) -> dict[str, Any]:
        """Wait for a child that must end cleanly; its exit report."""
        report = self.finish(run, timeout)
        assert report is not None, f"{run.name} was killed\n{run.child.output()}"
        assert report["type"] is None, f"{run.name}: {report}\n{run.child.output()}"
        return report

    def close(self) -> None:
        """Kill what still runs; close the children's pipes."""
        for run in self.runs:
            run.child.close()

    @property
    def kills(self) -> int:
        return sum(run.killed for run in self.runs)

    def accepted_so_far(self) -> int:
        return sum(line[:2] == b"a " for line in self.ledger_file.read_bytes().splitlines())

    def ledger(self) -> tuple[Ledger, set[bytes]]:
        """The accounting ledger rebuilt from the ledger file, and the raised payloads."""
        values: dict[bytes, bytes] = {}
        intents: list[bytes] = []
        accepted: set[bytes] = set()
        raised: set[bytes] = set()
        handed: list[tuple[bytes, str]] = []
        for line in self.ledger_file.read_bytes().splitlines():
            kind, payload, *rest = line.split(b" ")
            if kind == b"i":
                intents.append(payload)
                values[payload] = payload.ljust(int(rest[0]), b".") if rest else payload
            elif kind == b"a":
                accepted.add(payload)
            elif kind == b"r":
                raised.add(payload)
            elif kind == b"h":
                handed.append((payload, f"on_delivery_error: {rest[0].decode()}"))
            else:  # pragma: no cover - a torn line cannot happen (one write per line)
                raise AssertionError(f"unexpected ledger line {line!r}")
        uncertain = set(intents) - accepted - raised

        def text(payload: bytes) -> str:
            return values.get(payload, payload).decode("latin-1")

        books = {
            "attempted": [text(p) for p in intents],
            "accepted": [text(p) for p in accepted],
            "uncertain": [text(p) for p in uncertain],
            "via_send_many": [],
            "handed_back": [[text(p), where] for p, where in handed],
        }
        return Ledger.from_books("eo", books), {values[p] for p in raised}

    def read(self, isolation_level: str, expected: int | None = None) -> list[ConsumedRecord]:
        """The topic, read from the start until ``expected`` records (or 1.5 s idle)."""
        return consume_all(
            self.bootstrap,
            self.topic,
            expected=expected,
            idle_timeout=1.5,
            timeout=120,
            isolation_level=isolation_level,
        )

    def check(self) -> Figures:
        """The rule (see the module docstring) against a read_committed read; the figures."""
        ledger, raised = self.ledger()
        at_most = len(ledger.accepted | ledger.uncertain) - ledger.handed_back_count
        committed = self.read("read_committed", at_most if not ledger.uncertain else None)
        ledger.record_topic(r.value for r in committed)
        assert ledger.problems() == {}, ledger.describe()
        assert [r.value for r in committed if r.value in raised] == []
        assert order_problems(committed, {run.name: run.spool for run in self.runs}) == []
        uncommitted = self.read("read_uncommitted")
        seen = Counter(r.value for r in uncommitted)
        uncertain_delivered = sum(1 for p in ledger.uncertain if ledger.in_topic[p])
        figures = Figures(
            accepted=len(ledger.accepted),
            uncertain=len(ledger.uncertain),
            uncertain_delivered=uncertain_delivered,
            raised=len(raised),
            handed_back=ledger.handed_back_count,
            read_committed=len(committed),
            read_uncommitted=len(uncommitted),
            uncommitted_duplicates=sum(n - 1 for n in seen.values()),
        )
        # Exactly once, in numbers: every accepted one not handed back, plus the intent-only
        # ones the spool had, each once.
        delivered = len(ledger.accepted) - ledger.handed_back_count + uncertain_delivered
        assert len(committed) == delivered == len(ledger.in_topic), figures.line()
        return figures


TrialMaker = Callable[..., Trial]


@pytest.fixture
def make_trial(kafka_bootstrap: str, tmp_path: Path) -> Iterator[TrialMaker]:
    """``make_trial(name, topic_config=None)``: a trial on a new topic (closed at the end)."""
    trials: list[Trial] = []

    def make(name: str, topic_config: dict[str, str] | None = None) -> Trial:
        folder = tmp_path / f"trial-{len(trials)}"
        folder.mkdir()
        trial = Trial(kafka_bootstrap, make_topic(kafka_bootstrap, name, topic_config), folder)
        trials.append(trial)
        return trial

    yield make
    for trial in trials:
        trial.close()


def order_problems(records: list[ConsumedRecord], spool_of_run: dict[str, str]) -> list[str]:
    """Per key, the messages of one spool must come in the order they were made."""
    last: dict[tuple[bytes | None, str], bytes] = {}
    out = []
    for record in records:  # offset order within each partition; a key has one partition
        payload = (record.value or b"").rstrip(b".")
        spool = spool_of_run[payload.split(b":msg-")[0].decode()]
        group = (record.key, spool)
        if group in last and payload <= last[group]:
            out.append(f"key {record.key!r}: {payload!r} after {last[group]!r}")
        last[group] = payload
    return out


def wait_steps(run: Run, step: str, times: int, timeout: float = 30) -> None:
    run.child.wait_for(f"step {step}\n".encode(), stream="out", times=times, timeout=timeout)


# ---- 1. kill -9 at random moments --------------------------------------------------------

TORTURE_KILLS = 22


@apache_only
@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_then_every_accepted_message_exactly_once(
    make_trial: TrialMaker,
) -> None:
    """22 seeded kills on one spool and ``transactional.id``: SIGKILL at a random time
    from the call of ``open_producer`` (during the recovery of what the run before left,
    or while sending), right after ``open``, or by the child itself at a random step of
    the commit protocol (its n-th begin / produced / committed / confirmed, or during
    the recovery); random send rates and commit intervals. A final clean run drains.
    read_committed: every accepted message exactly once, per-key order kept, nothing
    that was not accepted; the kills landed in the recovery, inside a transaction and
    between a commit and the spool's confirmation (the last line each child printed)."""
    rng = random.Random(25_2026)
    trial = make_trial("eo-torture")
    modes: Counter[str] = Counter()
    started = time.monotonic()
    while trial.kills < TORTURE_KILLS:
        mode = rng.choice(["time", "time", "after-open", "step", "step", "recovery"])
        options: dict[str, Any] = {
            "rate": rng.choice([500, 2000, 5000]),
            "commit_interval": rng.choice([0.0, 0.05, 0.1, 0.3]),
        }
        if mode == "step":
            options["kill_step"] = rng.choice(TRANSACTION_STEPS)
            options["kill_nth"] = rng.randint(1, 8)
            options["kill_delay"] = rng.choice([0.0, 0.0, 0.02])
        elif mode == "recovery":
            options["kill_step"] = rng.choice(RECOVERY_STEPS)
        run = trial.spawn(100_000, **options)
        if mode == "time":  # from the start of open_producer: in the recovery, or later
            run.child.wait_for(b"start\n", stream="out")
            time.sleep(rng.uniform(0.0, 3.0))
        elif mode == "after-open":
            run.child.wait_for(b"open\n", stream="out")
            time.sleep(rng.uniform(0.0, 0.25))
        else:  # the child kills itself (a backstop if the step never comes)
            try:
                run.child.wait(15)
            except subprocess.TimeoutExpired:
                pass
        trial.kill(run)
        assert run.killed, f"{run.name} ended by itself\n{run.child.output()}"
        modes[mode] += 1
    final = trial.spawn(200, flush=True)
    trial.clean(final)
    elapsed = time.monotonic() - started
    figures = trial.check()
    recoveries = [run.recovery for run in trial.runs]
    phases = Counter(run.phase for run in trial.runs if run.killed)
    print(
        f"\n[figures] exactly-once kill -9 torture: kills={trial.kills} ({dict(modes)}; "
        f"where: {dict(phases)}) {figures.line()} recoveries_with_dropped="
        f"{sum(1 for r in recoveries if r is not None and r.dropped)} in {elapsed:.0f} s"
    )
    assert trial.kills >= 20
    assert {"recovery", "in a transaction", "between commit and confirm"} <= set(phases)
    assert figures.accepted > 0


# ---- 2. a kill at each step of the commit protocol ---------------------------------------


@apache_only
@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", RECOVERY_STEPS + TRANSACTION_STEPS)
def test_kill_9_at_each_step_of_the_commit_protocol(make_trial: TrialMaker, step: str) -> None:
    """SIGKILL at the 2nd occurrence of ``step``: for a transaction's steps, in the run
    that streams; for the recovery's, in the rerun after a run killed mid-transaction
    (at its 2nd "produced"), i.e. at the spool's 2nd recovery. A clean run drains.

    Exact outcomes: exactly once (the module's rule); the clean run's recovery finds the
    position at the last committed message (seqs count from 0, so ``position + 1`` is
    the number of messages committed before it), sends again exactly what no commit
    carried, and drops what was committed but not confirmed: a whole transaction when
    the kill came between "committed" and "confirmed", nothing when it came inside a
    transaction."""
    trial = make_trial(f"eo-step-{step}")
    first_kill = step if step in TRANSACTION_STEPS else "produced"
    first = trial.spawn(100_000, rate=2000, kill_step=first_kill, kill_nth=2)
    trial.finish(first, timeout=30)
    assert first.killed, first.child.output()
    assert first.steps[-1] == first_kill
    assert first.steps.count(first_kill) == 2
    if step in RECOVERY_STEPS:
        second = trial.spawn(100, kill_step=step, kill_nth=1)
        trial.finish(second, timeout=30)
        assert second.killed, second.child.output()
        assert second.steps == list(RECOVERY_STEPS[: RECOVERY_STEPS.index(step) + 1])
    committed_before = len(trial.read("read_committed"))
    final = trial.spawn(100, flush=True)
    trial.clean(final)
    figures = trial.check()
    recovery = final.recovery
    assert recovery is not None, final.child.output()
    print(
        f"\n[figures] exactly-once kill at {step!r}: {committed_before} committed before the "
        f"clean run; {recovery}; {figures.line()}"
    )
    # The committer's step can come while the sender waits inside a send: at most that
    # one is uncertain. The recovery-step run accepted nothing (it never got past open).
    assert figures.uncertain <= 1
    spooled_by_first = figures.accepted - 100 + figures.uncertain_delivered
    assert recovery.position == committed_before - 1
    assert recovery.again == spooled_by_first - committed_before
    assert recovery.dropped + recovery.again == recovery.recovered
    if step == "committed":
        assert recovery.dropped > 0  # the 2nd transaction: committed, still in the spool
    elif step != "confirmed":  # (after "confirmed", whether the mark reached the disk)
        assert recovery.dropped == 0


# ---- 3. store and forward through an outage, kill -9 during the catch-up -----------------

PROXIED = os.environ.get("TRIO_PRODUCER_TEST_PROXIED_BOOTSTRAP")
PROXIED_TARGET = os.environ.get("TRIO_PRODUCER_TEST_PROXIED_TARGET")


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@apache_only
@pytest.mark.skipif(
    PROXIED is None or PROXIED_TARGET is None,
    reason="needs tests/harness/apache_kafka.py's PROXIED listener",
)
@pytest.mark.timeout(150)
async def test_store_and_forward_through_an_outage_then_kill_9_during_the_catch_up(
    make_trial: TrialMaker,
) -> None:
    """The child reaches the broker through a fault proxy (the harness's PROXIED listener:
    every connection, the bootstrap and the ones learnt from metadata, goes through it).
    After two commits the network is cut for 3 s: ``send`` goes on accepting into the
    spool (nothing commits). Restored, the committer catches up; the child is SIGKILLed
    right after the first commit of the catch-up, with most of the backlog still in the
    spool. A clean rerun: exactly once, and its recovery sends again exactly what no
    commit carried."""
    assert PROXIED is not None
    assert PROXIED_TARGET is not None
    trial = make_trial("eo-outage")
    proxy = FaultProxy(port(PROXIED), port(PROXIED_TARGET))
    to_thread = trio.to_thread.run_sync
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        first = trial.spawn(100_000, bootstrap=PROXIED, rate=3000, commit_interval=0.1)
        await to_thread(partial(wait_steps, first, "committed", 2))
        proxy.cut()
        await trio.sleep(0.3)  # what was on its way when the cut came
        at_cut = (trial.accepted_so_far(), first.steps.count("committed"))
        await trio.sleep(3.0)
        during = (trial.accepted_so_far(), first.steps.count("committed"))
        proxy.restore()
        await to_thread(partial(wait_steps, first, "committed", during[1] + 1, timeout=60))
        trial.kill(first)
        accepted_first = trial.accepted_so_far()
        committed_at_kill = await to_thread(partial(trial.read, "read_committed"))
        final = trial.spawn(100, bootstrap=PROXIED, flush=True)
        await to_thread(trial.clean, final)
        nursery.cancel_scope.cancel()
    figures = trial.check()
    recovery = final.recovery
    assert recovery is not None, final.child.output()
    print(
        f"\n[figures] exactly-once outage: accepted during the 3 s cut "
        f"{during[0] - at_cut[0]} (commits {at_cut[1]}->{during[1]}); accepted before the "
        f"kill {accepted_first}, committed at the kill {len(committed_at_kill)}; "
        f"{recovery}; {figures.line()}"
    )
    assert during[0] - at_cut[0] >= 3000  # store and forward: sends went on during the cut
    assert during[1] == at_cut[1]  # ... and nothing committed
    # Killed during the catch-up: most of what was accepted was still in the spool.
    assert accepted_first - len(committed_at_kill) >= 3000
    # The recovery sends again exactly what no commit carried: what the killed run
    # accepted (and the one whose send the kill cut, if it was spooled) minus the commits.
    assert figures.uncertain <= 1
    sent_again = accepted_first + figures.uncertain_delivered - len(committed_at_kill)
    assert (recovery.position, recovery.again) == (len(committed_at_kill) - 1, sent_again)


# ---- 4. a second process on the same spool -----------------------------------------------


@apache_only
@pytest.mark.timeout(90)
def test_a_second_process_with_the_same_spool_is_refused_before_it_fences_anyone(
    make_trial: TrialMaker,
) -> None:
    """While a producer streams, a second process with the same ``transactional.id`` and
    spool is refused by the spool's lock (``SpoolLockedError``, naming the holder) before
    ``init_transactions``: it fences no one, and the first one goes on committing (then
    it is SIGKILLed, and a clean run drains: every message exactly once)."""
    trial = make_trial("eo-locked")
    first = trial.spawn(100_000, rate=1000)
    wait_steps(first, "committed", 2)
    second = trial.spawn(10)
    refused = trial.finish(second, timeout=30)
    assert refused is not None, second.child.output()
    assert refused["type"] == "SpoolLockedError"
    spool = str(trial.folder / "spool")
    assert refused["str"].startswith(
        f"spool {spool!r} is locked by process {first.child.proc.pid}"
    ), refused
    assert second.steps == []  # never reached init_transactions: nobody was fenced
    commits = first.steps.count("committed")
    wait_steps(first, "committed", commits + 3)  # the first one goes on committing
    assert first.child.proc.poll() is None
    trial.kill(first)
    trial.clean(trial.spawn(0, flush=True))
    figures = trial.check()
    assert figures.accepted > 0
    assert figures.handed_back == 0


# ---- 5. a zombie fenced by Kafka ---------------------------------------------------------


@apache_only
@pytest.mark.timeout(120)
def test_a_zombie_fenced_by_a_new_producer_fails_with_kafka_fatal_error_and_keeps_its_spool(
    make_trial: TrialMaker,
) -> None:
    """Two producers with the same ``transactional.id`` and different spools: the second
    one's open fences the first (still streaming), which fails with ``KafkaFatalError``
    (PRODUCER_FENCED) within seconds, not retried forever; what it had not committed stays
    in its spool, not handed back. A later producer on the first spool delivers it:
    every message of both exactly once."""
    trial = make_trial("eo-zombie")
    zombie = trial.spawn(100_000, spool="spool-a", rate=1000)
    wait_steps(zombie, "committed", 2)
    fencer_started = time.monotonic()
    fencer = trial.spawn(300, spool="spool-b", rate=1000, flush=True)
    wait_steps(fencer, "fenced", 1)
    report = trial.finish(zombie, timeout=30)
    failed_after = time.monotonic() - fencer_started  # (an upper bound)
    assert report is not None, zombie.child.output()
    trial.clean(fencer)
    accepted_by_zombie = sum(1 for p in trial.ledger()[0].accepted if p.startswith(b"r00:"))
    in_topic = Counter(
        (r.value or b"")[:4] for r in trial.read("read_committed")
    )  # (a read before the zombie's spool is reopened)
    later = trial.spawn(0, spool="spool-a", flush=True)
    trial.clean(later)
    figures = trial.check()
    recovery = later.recovery
    print(
        f"\n[figures] exactly-once zombie: ended <= {failed_after:.1f} s after the fencer "
        f"started, with "
        f"{report['type']}: {report['str']!r} notes={report['notes']}; the zombie accepted "
        f"{accepted_by_zombie}, {in_topic[b'r00:']} committed before it failed; later run "
        f"{recovery}; {figures.line()}"
    )
    assert report["type"] == "KafkaFatalError", report
    # (librdkafka's reason depends on the call that met the fence: a produce request's
    # "transactional producer fenced by newer producer instance", or AddPartitions'
    # "This instance has been fenced by a newer instance")
    assert report["str"].startswith("fatal Kafka error: _FENCED: "), report
    assert "fenced by" in report["str"], report
    assert failed_after < 15
    assert report["failures"] == []  # kept in the spool, not handed back
    assert figures.handed_back == 0
    assert recovery is not None
    # The later run sent again exactly what the zombie had not committed.
    kept = accepted_by_zombie + figures.uncertain_delivered - in_topic[b"r00:"]
    assert kept > 0
    assert recovery.again == recovery.recovered == kept
    assert figures.read_committed == figures.accepted + figures.uncertain_delivered
    # The exit says how many accepted messages it kept, and where (as the spool's
    # UndeliveredMessagesError does: "N more never left the spool ... kept in the spool").
    spool = str(trial.folder / "spool-a")
    assert [n for n in report["notes"] if f"{kept} " in n and repr(spool) in n], report


@apache_only
@pytest.mark.timeout(120)
def test_a_spool_reopened_after_another_spool_took_over_its_transactional_id_sends_nothing_twice(
    make_trial: TrialMaker,
) -> None:
    """A failover: producer A (spool A) is SIGKILLed between a commit and the spool's
    confirmation, so spool A still holds a committed transaction. Producer B, with the
    same ``transactional.id`` and its own spool, takes over and commits. Later A's spool
    is opened again with that ``transactional.id``: what A committed must not be sent a
    second time (the progress record it would read is B's)."""
    trial = make_trial("eo-failover")
    a = trial.spawn(100_000, spool="spool-a", rate=1000, kill_step="committed", kill_nth=2)
    trial.finish(a, timeout=30)
    assert a.killed, a.child.output()
    b = trial.spawn(300, spool="spool-b", rate=1000, flush=True)
    trial.clean(b)
    later = trial.spawn(0, spool="spool-a", flush=True)
    trial.clean(later)
    ledger, _ = trial.ledger()
    ledger.record_topic(r.value for r in trial.read("read_committed"))
    doubled = [p for p, n in ledger.in_topic.items() if n > 1]
    print(
        f"\n[figures] exactly-once failover: later run on spool A {later.recovery}; "
        f"doubled in read_committed: {len(doubled)}"
    )
    trial.check()


# ---- 6. a message that fails on its own --------------------------------------------------


@apache_only
@pytest.mark.timeout(90)
@pytest.mark.parametrize("refused_by", ["broker", "client"])
def test_a_message_too_large_is_handed_back_alone_and_never_sent_again(
    make_trial: TrialMaker, refused_by: str
) -> None:
    """Among 300 messages sent as fast as they are accepted, one is larger than the
    topic's ``max.message.bytes`` (the broker refuses it) or than the producer's
    ``message.max.bytes`` (librdkafka refuses it at once). It alone is handed back to
    ``on_delivery_error`` (MSG_SIZE_TOO_LARGE), the 299 others are committed exactly once,
    and a restart on the spool sends nothing again."""
    limit = 20_000
    if refused_by == "broker":
        trial = make_trial("eo-too-large", {"max.message.bytes": str(limit)})
        options: dict[str, Any] = {}
    else:
        trial = make_trial("eo-too-large")
        options = {"librdkafka": {"message.max.bytes": limit}}
    first = trial.spawn(300, big=[150], big_size=3 * limit, flush=True, **options)
    trial.clean(first)
    again = trial.spawn(0, flush=True, **options)
    trial.clean(again)
    ledger, _ = trial.ledger()
    print(f"\n[figures] exactly-once too large ({refused_by}): {first.exit}; {ledger.summary()}")
    figures = trial.check()  # (no message lost, none twice)
    big = b"r00:msg-000150".ljust(3 * limit, b".")
    assert ledger.handed == {big: ["child: on_delivery_error: MSG_SIZE_TOO_LARGE"]}
    assert (figures.accepted, figures.read_committed, figures.handed_back) == (300, 299, 1)
    assert first.exit == {"type": None, "delivered": 299}
    assert again.recovery is None  # the spool was empty: nothing is sent again


# ---- 7. the progress topic is shared -----------------------------------------------------


@apache_only
@pytest.mark.timeout(120)
def test_a_producer_dead_in_a_transaction_does_not_hide_another_ones_position(
    make_trial: TrialMaker,
) -> None:
    """Producers with different ``transactional.id`` s share the progress topic (as all do
    with the default ``exactly_once_topic``). One (A) is SIGKILLed after its progress
    record went out in a transaction it never ends (a host that is gone: the broker
    aborts the transaction after A's ``transaction.timeout.ms``, here 10 s). Another one
    (B) then commits, is SIGKILLed between a commit and the spool's confirmation, and
    reopens at once: its recovery must find its own last committed position, which lies
    past A's open transaction (past the partition's last stable offset, where a
    read_committed consumer's own end is): it waits for A's transaction to end, and
    sends nothing twice. (It read only up to the last stable offset once, found nothing
    of its own, and sent a committed transaction again.)"""
    dead = make_trial("eo-shared-dead")
    other = make_trial("eo-shared-other")
    other.progress_topic = dead.progress_topic
    a = dead.spawn(
        100_000,
        rate=1000,
        kill_step="produced",
        kill_nth=2,
        kill_delay=0.5,
        librdkafka={"transaction.timeout.ms": 10_000},
    )
    dead.finish(a, timeout=30)
    assert a.killed, a.child.output()
    try:
        b = other.spawn(100_000, rate=1000, kill_step="committed", kill_nth=2)
        other.finish(b, timeout=30)
        assert b.killed, b.child.output()
        again = other.spawn(0, flush=True)
        other.clean(again)
        ledger, _ = other.ledger()
        ledger.record_topic(r.value for r in other.read("read_committed"))
        doubled = sum(1 for n in ledger.in_topic.values() if n > 1)
        print(
            f"\n[figures] exactly-once shared progress topic: B's rerun {again.recovery}; "
            f"doubled in read_committed: {doubled}"
        )
        other.check()
    finally:
        dead.clean(dead.spawn(0, flush=True))  # ends the dead one's transaction
    dead.check()


# ---- 8. the exit's bounds against a cluster that does not answer (the attack's findings) --


@apache_only
@pytest.mark.skipif(
    PROXIED is None or PROXIED_TARGET is None,
    reason="needs tests/harness/apache_kafka.py's PROXIED listener",
)
@pytest.mark.timeout(120)
async def test_a_black_holed_cluster_holds_the_exit_no_longer_than_close_timeout(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Messages are in a transaction when the cluster stops answering (a black hole: no
    reset, no reply). The exit must keep ``close_timeout`` (3 s), not wait out
    ``transaction_timeout`` (20 s) in a commit or an abort, nor hang in the client's
    close; a ``send_and_wait`` caller outside the block gets its message back
    (``_KEPT_IN_SPOOL``) instead of waiting forever. The exit keeps everything not
    committed in the spool, and a run after the cluster is back sends it: exactly once.
    (Before: 14-19 s, a hang in confluent's close() after a second Ctrl-C, and a waiter
    never woken.)"""
    assert PROXIED is not None
    assert PROXIED_TARGET is not None
    topic = await trio.to_thread.run_sync(make_topic, kafka_bootstrap, "eo-blackhole")
    tid = unique("eo-blackhole-tid")
    proxy = FaultProxy(port(PROXIED), port(PROXIED_TARGET))
    fields: dict[str, Any] = {
        "spool_path": str(tmp_path / "spool"),
        "exactly_once": True,
        "exactly_once_topic": unique("eo-blackhole-progress"),
        "librdkafka": {"transactional.id": tid},
    }
    waited: list[BaseException] = []

    async def waiter(producer: trio_producer.Producer, task_status: Any) -> None:
        task_status.started()
        try:
            await producer.send_and_wait(topic, b"waited")
        except trio_producer.DeliveryError as exc:
            waited.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        async with trio.open_nursery() as outside:
            with pytest.raises(trio_producer.UndeliveredMessagesError) as raised:
                async with trio_producer.open_producer(
                    bootstrap_servers=PROXIED,
                    close_timeout=3.0,
                    transaction_timeout=20.0,
                    commit_interval=0.5,
                    **fields,
                ) as producer:
                    for i in range(200):
                        await producer.send(topic, b"a%d" % i)
                    await producer.flush()
                    proxy.blackhole()
                    for i in range(200):
                        await producer.send(topic, b"b%d" % i)
                    await outside.start(waiter, producer)
                    await trio.sleep(1.0)  # in a transaction that cannot commit
                    left_at = trio.current_time()
            took = trio.current_time() - left_at
        proxy.restore()
        nursery.cancel_scope.cancel()
    exc = raised.value
    assert exc.spool_path == fields["spool_path"]
    assert took < 3.0 + 2.0, f"the exit took {took:.1f} s with close_timeout=3"
    assert len(waited) == 1
    assert isinstance(waited[0], trio_producer.DeliveryError)
    assert waited[0].error.name == "_KEPT_IN_SPOOL"
    assert waited[0].message.value == b"waited"
    async with trio_producer.open_producer(bootstrap_servers=kafka_bootstrap, **fields) as again:
        await again.flush()
    records = await trio.to_thread.run_sync(
        lambda: consume_all(
            kafka_bootstrap, topic, expected=401, idle_timeout=2.0, isolation_level="read_committed"
        )
    )
    values = [r.value for r in records]
    assert sorted(values, key=lambda v: v or b"") == sorted(
        [b"a%d" % i for i in range(200)] + [b"b%d" % i for i in range(200)] + [b"waited"]
    )
