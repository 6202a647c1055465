"""Regression tests for known breaches of the promise, one section per bug.

The promise: for every message the application tried to send, exactly one of -- not
accepted; in the topic once; handed back once (exit exception, ``producer.undelivered``,
its own ``send_and_wait``, or the ``on_delivery_error`` hook). ``tests/harness/accounting.py``
keeps the per-message books.

Bounds: every in-process test runs under ``trio.fail_after`` (and a ``pytest.mark.timeout``
backstop). A hang inside the producer's shielded shutdown cannot be cut by ``fail_after``
(the shield is what makes the drain safe), and a pytest-timeout there would leave the
Trio run broken for the rest of the session; so the scenarios that hung on the old code
(Ctrl-C, an already-cancelled scope) run in a child process
(``tests/harness/apps/promise_scenarios.py``) that is killed on timeout.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trio_producer import (
    ConfigError,
    DeliveryError,
    Producer,
    ProducerClosedError,
    UndeliveredMessagesError,
    open_producer,
)

from ..harness.accounting import Ledger
from ..harness.faultproxy import FaultProxy, proxied_broker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = [pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "harness" / "apps"
#: Set by tests/harness/apache_kafka.py when the suite runs against Apache Kafka.
BROKER_KIND = os.environ.get("TRIO_PRODUCER_TEST_BROKER_KIND", "tansu")
_names = iter(range(10**9))


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{next(_names)}"


async def reopen_and_read(ledger: Ledger, bootstrap: str, proxy: FaultProxy, topic: str) -> None:
    """Read a proxied topic back: cut first, so data the black hole held is dropped."""
    proxy.cut()
    proxy.restore()
    await ledger.read_topic(bootstrap, topic)


def scenario(name: str, *args: str, timeout: float = 20.0) -> dict[str, Any]:
    """Run a scenario of tests/harness/apps/promise_scenarios.py in a child; return what it saw.

    A hang (in the producer's shielded shutdown, where fail_after cannot reach) is
    killed after ``timeout`` and fails the test without harming the session.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.harness.apps.promise_scenarios", name, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        pytest.fail(f"scenario {name!r} hung: no result within {timeout} s; stderr: {err[-1500:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            seen: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return seen
    pytest.fail(
        f"scenario {name!r} printed no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )


# ---- 1. a cancelled send_and_wait must not swallow its failed delivery --------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["unknown-partition", "oversized"])
async def test_cancelled_send_and_wait_never_loses_a_failed_delivery(
    kafka_bootstrap: str, kafka_topic: str, kind: str
) -> None:
    """Many send_and_wait calls whose deliveries fail at once, cancelled at random
    moments: each failure reaches its caller (DeliveryError), the hook, or the exit."""
    oversized = kind == "oversized"
    ledger = Ledger("saw", size=2_000 if oversized else 0)
    kwargs: dict[str, Any] = {} if oversized else {"partition": 5}
    librdkafka = {"message.max.bytes": 1_000} if oversized else {}
    rng = random.Random(20261201)
    outcomes = {"raised DeliveryError": 0, "cancelled": 0, "returned": 0}

    async def one(producer: Producer, delay: float) -> None:
        # DeliveryError: accepted and handed back by its send_and_wait (None);
        # cancelled: uncertain (before or after it was accepted)
        with trio.move_on_after(delay) as scope:
            meta = await ledger.send_and_wait(producer, kafka_topic, **kwargs)
            outcomes["raised DeliveryError" if meta is None else "returned"] += 1
        if scope.cancelled_caught:
            outcomes["cancelled"] += 1

    producer: Producer | None = None
    exit_exc: BaseException | None = None
    with trio.fail_after(30):
        try:
            async with open_producer(
                bootstrap_servers=kafka_bootstrap,
                linger=0,
                close_timeout=2,
                on_delivery_error=ledger.hook,
                librdkafka=librdkafka,
            ) as p:
                producer = p
                for _ in range(40):
                    async with trio.open_nursery() as nursery:
                        for _ in range(50):
                            nursery.start_soon(one, p, rng.uniform(0.0, 0.004))
        except Exception as exc:
            exit_exc = exc
    assert producer is not None
    ledger.collect(exit_exc)
    ledger.collect(producer)
    stats = producer.statistics()
    await ledger.read_topic(kafka_bootstrap, kafka_topic)
    print(f"[figures] {kind}: {outcomes} {ledger.summary()} stats={stats}")
    assert stats.delivered == 0
    assert stats.failed == ledger.handed_back_count, (
        f"{stats.failed} deliveries failed but {ledger.handed_back_count} reached the "
        f"application: {stats.failed - ledger.handed_back_count} vanished "
        f"(cancelled send_and_wait in the report window); {ledger.summary()}"
    )
    ledger.check()


# ---- 2. an unencodable str header raises at the call -------------------------------------


@pytest.mark.parametrize("shape", ["mapping", "pairs"])
@pytest.mark.parametrize("method", ["send", "send_nowait", "send_and_wait"])
async def test_unencodable_header_raises_at_the_call_and_the_producer_goes_on(
    kafka_bootstrap: str, kafka_topic: str, method: str, shape: str
) -> None:
    ledger = Ledger("hdr")
    bad_headers: Any = {"trace-id": "\ud800"} if shape == "mapping" else [("trace-id", "\ud800")]
    with trio.fail_after(10):
        async with open_producer(bootstrap_servers=kafka_bootstrap, close_timeout=2) as p:
            await ledger.send(p, kafka_topic, headers={"ok": "fine"})
            bad = ledger.new_payload()
            with pytest.raises((TypeError, ValueError)) as info:
                if method == "send":
                    await p.send(kafka_topic, bad, headers=bad_headers)
                elif method == "send_nowait":
                    p.send_nowait(kafka_topic, bad, headers=bad_headers)
                else:
                    await p.send_and_wait(kafka_topic, bad, headers=bad_headers)
            assert "trace-id" in str(info.value), (
                f"the error does not name the header: {info.value}"
            )
            await ledger.send(p, kafka_topic, headers={"ok": "fine"})
    await ledger.read_topic(kafka_bootstrap, kafka_topic)
    ledger.check()
    assert list(ledger.in_topic) == sorted(ledger.accepted)  # both neighbours, in order


# ---- 4. KeyboardInterrupt while leaving the block (and in the body) ----------------------
# These run in a child process (tests/harness/apps/promise_scenarios.py): the main task must be
# the scenario's own, and a hang in the shielded shutdown must not poison the session.


def test_ctrl_c_while_draining_to_a_black_holed_broker_leaves_at_once() -> None:
    """Ctrl-C 0.5 s into a drain that would take close_timeout=5: the block is left
    within ~1.5 s with KeyboardInterrupt itself, every message in producer.undelivered."""
    seen = scenario("ctrl-c-black-hole")
    assert "escaped_run" not in seen, seen
    assert seen.get("exc") == "KeyboardInterrupt", f"the block was left with {seen.get('exc_repr')}"
    took = seen["left_at"] - seen["signal_at"]
    assert took < 1.5, f"left {took:.2f} s after the Ctrl-C"
    assert seen["undelivered"] == 100
    assert seen["in_topic"] == 1  # the warm-up message
    assert not seen["problems"], seen["summary"] + f" {seen['problems']}"


def test_ctrl_c_during_the_drain_of_a_healthy_broker_hands_back_the_rest(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """linger=3600 gives the drain work; Ctrl-C arrives as the drain starts. The block
    leaves with KeyboardInterrupt; each message is in the topic once or in
    producer.undelivered once, never both, never neither."""
    seen = scenario("ctrl-c-healthy-drain", kafka_bootstrap, kafka_topic)
    assert "escaped_run" not in seen, seen
    assert seen.get("exc") == "KeyboardInterrupt", f"the block was left with {seen.get('exc_repr')}"
    assert seen["left_at"] - seen["body_end"] < 3 + 2.5
    print(f"[figures] Ctrl-C in a healthy drain: {seen['summary']}")
    assert not seen["problems"], seen["summary"] + f" {seen['problems']}"


def test_ctrl_c_in_the_body_still_drains_everything(kafka_bootstrap: str, kafka_topic: str) -> None:
    seen = scenario("ctrl-c-body", kafka_bootstrap, kafka_topic)
    assert "escaped_run" not in seen, seen
    assert seen.get("exc") == "KeyboardInterrupt", f"the block was left with {seen.get('exc_repr')}"
    assert "reached_end" not in seen
    assert seen["undelivered"] == 0
    assert seen["in_topic"] == 100
    assert not seen["problems"], seen["summary"] + f" {seen['problems']}"


# ---- 5. open_producer in an already-cancelled scope --------------------------------------


def test_open_producer_in_an_already_cancelled_scope_raises_cancelled_at_once(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """``with CancelScope() as s: s.cancel(); async with open_producer(...)``: Cancelled at
    once, absorbed by the scope, no task left, nothing sent. (In a child: it used to hang.)"""
    seen = scenario("cancelled-at-open", kafka_bootstrap, kafka_topic, timeout=15)
    assert "escaped_run" not in seen, seen
    assert "exc" not in seen, f"the scope let {seen.get('exc_repr')} out"
    assert seen["cancelled_caught"]
    assert seen["took"] < 1.0, f"took {seen['took']:.2f} s"
    assert seen["tasks_after"] == seen["tasks_before"]
    assert seen["accepted"] == []
    assert seen["in_topic"] == 0
    assert not seen["problems"], seen["summary"] + f" {seen['problems']}"


# ---- 6. flush() in another task is released when the producer closes ---------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["in-librdkafka", "librdkafka-full"])
async def test_flush_in_another_task_is_released_when_the_producer_closes(where: str) -> None:
    """A flush() waiting in a task outside the block, for messages a black-holed broker
    never confirms: the close (close_timeout=1) releases it with ProducerClosedError.
    ``librdkafka-full``: librdkafka's queue holds 5 messages, so most never leave the
    worker (the flush waits for them to be produced); ``in-librdkafka``: all were handed
    to librdkafka (the flush waits for their reports)."""
    topic = "flush-release"
    ledger = Ledger("fl")
    flushed: dict[str, Any] = {}
    released = trio.Event()
    librdkafka = {"queue.buffering.max.messages": 5} if where == "librdkafka-full" else {}

    async def flusher(producer: Producer) -> None:
        try:
            await producer.flush()
        except trio.Cancelled:
            flushed["exc"] = "cancelled by the test"
            raise
        except Exception as exc:
            flushed["exc"] = exc
        else:
            flushed["exc"] = None
        finally:
            flushed["at"] = trio.current_time()
            released.set()

    async with proxied_broker([topic]) as (bootstrap, proxy, _nursery):
        exit_exc: BaseException | None = None
        producer: Producer | None = None
        with trio.fail_after(10):
            async with trio.open_nursery() as outer:
                try:
                    async with open_producer(
                        bootstrap_servers=bootstrap, close_timeout=1, librdkafka=librdkafka
                    ) as p:
                        producer = p
                        warm = ledger.new_payload()
                        await p.send_and_wait(topic, warm)
                        ledger.mark_accepted(warm)
                        proxy.blackhole()
                        for _ in range(20):
                            await ledger.send(p, topic)
                        outer.start_soon(flusher, p)
                        await trio.sleep(0.2)
                except Exception as exc:
                    exit_exc = exc
                left_at = trio.current_time()
                with trio.move_on_after(0.5):
                    await released.wait()
                released_in_time = released.is_set()
                outer.cancel_scope.cancel()
        await reopen_and_read(ledger, bootstrap, proxy, topic)
    assert released_in_time, "flush() was still waiting 0.5 s after the producer closed"
    assert isinstance(flushed["exc"], ProducerClosedError), (
        f"flush() ended with {flushed['exc']!r} (undelivered messages were purged)"
    )
    assert flushed["at"] <= left_at + 0.1
    assert isinstance(exit_exc, UndeliveredMessagesError), f"left with {exit_exc!r}"
    ledger.collect(exit_exc)
    ledger.collect(producer)
    ledger.check()


# ---- 7. a failed delivery with a nursery inside the block -----------------------------


@pytest.mark.timeout(30)
async def test_failed_delivery_with_a_nursery_in_the_block_leaves_as_that_delivery_error(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    ledger = Ledger("nd")
    exit_exc: BaseException | None = None
    producer: Producer | None = None
    bad = b""
    with trio.fail_after(10):
        try:
            async with open_producer(bootstrap_servers=kafka_bootstrap, close_timeout=2) as p:
                producer = p
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(trio.sleep, 30)
                    for _ in range(5):
                        await ledger.send(p, kafka_topic)
                    bad = await ledger.send(p, kafka_topic, partition=5)
                    await trio.sleep(30)
        except BaseException as exc:
            exit_exc = exc
    assert type(exit_exc) is DeliveryError, f"the block was left with {exit_exc!r}"
    assert exit_exc.error.name == "_UNKNOWN_PARTITION"
    assert exit_exc.message.value == bad
    ledger.collect(exit_exc)
    ledger.collect(producer)
    await ledger.read_topic(kafka_bootstrap, kafka_topic)
    ledger.check()
    assert sum(ledger.in_topic.values()) == 5


# ---- 8. cancelled block with a nursery inside: UndeliveredMessagesError still escapes -----


@pytest.mark.timeout(30)
async def test_cancelled_block_with_a_nursery_inside_still_raises_undelivered() -> None:
    topic = "nested-cancel"
    ledger = Ledger("nc")
    async with proxied_broker([topic]) as (bootstrap, proxy, _nursery):
        proxy.blackhole()
        exit_exc: BaseException | None = None
        producer: Producer | None = None
        with trio.fail_after(10):
            try:
                with trio.move_on_after(0.5):
                    async with open_producer(bootstrap_servers=bootstrap, close_timeout=1) as p:
                        producer = p
                        async with trio.open_nursery() as nursery:
                            for _ in range(3):
                                nursery.start_soon(trio.sleep, 30)
                            for _ in range(20):
                                await ledger.send(p, topic)
                            await trio.sleep(30)
            except BaseException as exc:
                exit_exc = exc
        await reopen_and_read(ledger, bootstrap, proxy, topic)
    assert producer is not None
    assert isinstance(exit_exc, UndeliveredMessagesError), (
        f"move_on_after(0.5) was left with {exit_exc!r}; "
        f"{len(producer.undelivered)} message(s) only in producer.undelivered"
    )
    assert sorted(m.value or b"" for m in exit_exc.messages) == sorted(ledger.accepted)
    ledger.collect(exit_exc)
    ledger.collect(producer)
    ledger.check()


# ---- 9. a failed delivery while a send waits for room: the root cause leaves ---------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bulk", [False, True], ids=["send", "send_many"])
async def test_failed_delivery_while_a_send_waits_for_room_raises_that_delivery_error(
    bulk: bool,
) -> None:
    """The send is surely parked waiting for room when the failure comes: the broker is
    black-holed from the start, librdkafka holds at most 3 messages and the channel 1,
    so the worker is stuck; the message to partition 5 waits in librdkafka for metadata.
    After 0.5 s the broker answers: the metadata fails it (_UNKNOWN_PARTITION) while the
    body waits for room. What leaves the block must be that DeliveryError."""
    topic = "room"
    ledger = Ledger("room")
    async with proxied_broker([topic]) as (bootstrap, proxy, nursery):
        proxy.blackhole()
        exit_exc: BaseException | None = None
        producer: Producer | None = None
        bad = b""

        async def restore_later() -> None:
            await trio.sleep(0.5)
            proxy.restore()

        with trio.fail_after(10):
            try:
                async with open_producer(
                    bootstrap_servers=bootstrap,
                    linger=3600,
                    queue_capacity=1,
                    close_timeout=3,
                    librdkafka={"queue.buffering.max.messages": 3},
                ) as p:
                    producer = p
                    bad = await ledger.send(p, topic, partition=5)
                    nursery.start_soon(restore_later)
                    if bulk:
                        # what send_many consumed is accepted: the iterator records it
                        await ledger.send_many(p, topic, 100_000)
                    else:
                        for _ in range(100_000):
                            await ledger.send(p, topic)
                    await trio.sleep(5)
            except BaseException as exc:
                exit_exc = exc
        await reopen_and_read(ledger, bootstrap, proxy, topic)
    assert isinstance(exit_exc, DeliveryError), f"the block was left with {exit_exc!r}"
    assert exit_exc.message.value == bad
    assert exit_exc.error.name == "_UNKNOWN_PARTITION"
    ledger.collect(exit_exc)
    ledger.collect(producer)
    ledger.check()


# ---- 10. a transaction cancelled while it commits ----------------------------------------


@pytest.mark.transactions
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    BROKER_KIND == "tansu", reason="needs Apache Kafka (read_committed, transaction states)"
)
async def test_transaction_cancelled_while_committing_ends_and_the_next_one_works(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    first = Ledger("txa")
    second = Ledger("txb")
    close_timeout = 3.0
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        linger=3600,
        close_timeout=close_timeout,
        librdkafka={"transactional.id": unique("txn-commit-cancel")},
    ) as p:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                start = trio.current_time()
                with trio.CancelScope() as scope:
                    async with p.transaction():
                        for _ in range(1_000):
                            await first.send(p, kafka_topic)
                        # runs once the body is done and the commit step has begun
                        nursery.start_soon(_cancel, scope)
                took = trio.current_time() - start
            assert scope.cancelled_caught, "the cancellation did not reach the caller"
            assert took < close_timeout + 2
            async with p.transaction():
                await second.send(p, kafka_topic)
    for ledger in (first, second):  # one topic, two ledgers
        await ledger.read_topic(
            kafka_bootstrap, kafka_topic, shared=True, isolation_level="read_committed"
        )
    assert sum(second.in_topic.values()) == 1
    got = sum(first.in_topic.values())
    assert got in (0, 1_000), f"{got} of 1000 records of the interrupted transaction are visible"


async def _cancel(scope: trio.CancelScope) -> None:
    scope.cancel()


# ---- 11. a second SIGTERM cuts the drain short: tests/unit/test_signals.py ---------------------


# ---- 12. idle async methods are checkpoints ----------------------------------------------


async def _checkpoints(call: Callable[[], Awaitable[object]]) -> bool:
    try:
        with trio.testing.assert_checkpoints():
            await call()
    except AssertionError:
        return False
    return True


@pytest.mark.timeout(20)
async def test_idle_flush_is_a_checkpoint_and_a_flush_loop_can_be_cancelled(
    kafka_bootstrap: str,
) -> None:
    with trio.fail_after(10):
        async with open_producer(bootstrap_servers=kafka_bootstrap, close_timeout=2) as p:
            assert await _checkpoints(p.flush), "flush() on an idle producer is no checkpoint"
            start = time.monotonic()
            with trio.move_on_after(0.2) as scope:
                while True:
                    await p.flush()
                    if time.monotonic() - start > 3:
                        pytest.fail("while True: await flush() ran 3 s under move_on_after(0.2)")
            assert scope.cancelled_caught


@pytest.mark.timeout(20)
async def test_every_async_method_checkpoints_on_its_idle_path(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async def enter_transaction() -> None:
        with pytest.raises(ConfigError):  # not transactional: raises after its checkpoint
            async with p.transaction():
                pass  # pragma: no cover

    with trio.fail_after(10):
        async with open_producer(bootstrap_servers=kafka_bootstrap, close_timeout=2) as p:
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "send_many([])": lambda: p.send_many(kafka_topic, []),
                "send_many(iter(()))": lambda: p.send_many(kafka_topic, iter(())),
                "flush() idle": p.flush,
                "send()": lambda: p.send(kafka_topic, b"one"),
                "send_and_wait()": lambda: p.send_and_wait(kafka_topic, b"two"),
                "flush() idle after sends": p.flush,
                "transaction() refused": enter_transaction,
            }
            missing = [name for name, call in calls.items() if not await _checkpoints(call)]
    assert missing == [], f"no checkpoint in: {', '.join(missing)}"


async def test_every_async_method_checkpoints_when_the_producer_is_closed(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """Every path, the refusals included: a loop of refused calls cannot freeze the loop."""
    with trio.fail_after(10):
        async with open_producer(bootstrap_servers=kafka_bootstrap, close_timeout=2) as p:
            pass
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "send()": lambda: p.send(kafka_topic, b"one"),
        "send_many()": lambda: p.send_many(kafka_topic, [b"two"]),
        "send_and_wait()": lambda: p.send_and_wait(kafka_topic, b"three"),
        "flush()": p.flush,
    }
    missing = []
    for name, call in calls.items():
        try:
            # assert_checkpoints checks nothing when its block raises: catch inside it.
            with trio.testing.assert_checkpoints():
                with pytest.raises(ProducerClosedError):
                    await call()
        except AssertionError:
            missing.append(name)
    assert missing == [], f"no checkpoint in: {', '.join(missing)}"


# ---- 13. on_delivery_error must be a plain callable --------------------------------------


async def _async_hook(failure: DeliveryError) -> None:  # pragma: no cover - never called
    pass


@pytest.mark.parametrize("hook", [_async_hook, 42, "print"], ids=["async-def", "int", "str"])
async def test_on_delivery_error_that_is_async_or_not_callable_is_refused_at_open(
    kafka_bootstrap: str, kafka_topic: str, hook: Any
) -> None:
    ledger = Ledger("hook")
    entered = False
    with trio.fail_after(10):
        with pytest.raises(TypeError, match="on_delivery_error"):
            async with open_producer(
                bootstrap_servers=kafka_bootstrap, close_timeout=2, on_delivery_error=hook
            ) as p:
                entered = True
                await ledger.send(p, kafka_topic)
    assert not entered
    await ledger.read_topic(kafka_bootstrap, kafka_topic)
    ledger.check()
    assert not ledger.in_topic
