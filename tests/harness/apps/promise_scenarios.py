"""Scenarios of tests/broker/test_promise.py that run in a process of their own.

Usage (from the repository root, so that this checkout's ``trio_producer`` is imported)::

    python -m tests.harness.apps.promise_scenarios NAME [BOOTSTRAP TOPIC]

Why a process: these scenarios can hang inside the producer's shielded shutdown, where
no ``trio.fail_after`` reaches; in a child, the test's timeout kills the hang without
poisoning the test session. Ctrl-C also needs the main task to be ours (not
pytest-trio's). Each scenario prints one line ``RESULT <json>`` with what it saw; the
test asserts on it. The embedded broker of a black-hole scenario dies with this process.

Ctrl-C is simulated by raising SIGINT from a KI-protected function: Trio's handler then
delivers KeyboardInterrupt to the main task, as for a Ctrl-C that arrives while Trio
waits for I/O (raised from plain task code it would be raised in that helper task).
"""

from __future__ import annotations

import signal

# First thing: a child of a shell's background job inherits SIGINT ignored, and then
# Trio installs no KeyboardInterrupt handler at all.
signal.signal(signal.SIGINT, signal.default_int_handler)

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from tests.harness.accounting import Ledger  # noqa: E402
from tests.harness.faultproxy import proxied_broker  # noqa: E402
from trio_producer import Producer, open_producer  # noqa: E402

result: dict[str, Any] = {}


@trio.lowlevel.enable_ki_protection
def ctrl_c() -> None:
    """A Ctrl-C as the terminal sends it while Trio waits: KeyboardInterrupt for the main task."""
    signal.raise_signal(signal.SIGINT)


async def ctrl_c_after(delay: float) -> None:
    await trio.sleep(delay)
    result["signal_at"] = trio.current_time()
    progress("Ctrl-C now")
    ctrl_c()


def progress(text: str) -> None:
    """On stderr: the test shows it when the scenario hangs."""
    print(f"[scenario {trio.current_time():.3f}] {text}", file=sys.stderr, flush=True)


def _describe(task: trio.lowlevel.Task, depth: int = 0) -> list[str]:
    frames = [f"{f.f_code.co_name}:{lineno}" for f, lineno in task.iter_await_frames()]
    lines = ["  " * depth + f"{task.name} @ {' > '.join(frames[-6:])}"]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            lines.extend(_describe(child, depth + 1))
    return lines


async def watchdog(after: float) -> None:
    """After ``after`` seconds, print which tasks are still alive and where they wait."""
    await trio.sleep(after)
    root = trio.lowlevel.current_root_task()
    assert root is not None
    lines = _describe(root)
    progress("still running; tasks:\n" + "\n".join(lines))


def verdict(ledger: Ledger, producer: Producer | None) -> None:
    ledger.collect(result.pop("_exc", None))
    if producer is not None:
        ledger.collect(producer)
        result["undelivered"] = len(producer.undelivered)
        result["undelivered_values"] = sorted(
            (f.message.value or b"").decode() for f in producer.undelivered
        )
    result["accepted"] = sorted(v.decode() for v in ledger.accepted)
    result["in_topic"] = sum(ledger.in_topic.values())
    result["problems"] = ledger.problems()
    result["summary"] = ledger.summary()


def note_exit(exc: BaseException) -> None:
    result["exc"] = type(exc).__name__
    result["exc_repr"] = repr(exc)[:500]
    result["_exc"] = exc


# ---- Ctrl-C while draining to a black-holed broker ----------------------------------------


async def ctrl_c_black_hole() -> None:
    topic = "ki-black-hole"
    ledger = Ledger("ki")
    producer: Producer | None = None
    async with proxied_broker([topic]) as (bootstrap, proxy, nursery):
        try:
            async with open_producer(bootstrap_servers=bootstrap, close_timeout=5) as p:
                producer = p
                warm = ledger.new_payload()
                await p.send_and_wait(topic, warm)
                ledger.mark_accepted(warm)
                proxy.blackhole()
                for _ in range(100):
                    await ledger.send(p, topic)
                await trio.sleep(0.1)  # they are in flight, unanswered
                nursery.start_soon(ctrl_c_after, 0.5)
                result["body_end"] = trio.current_time()
                progress("body done")
        except BaseException as exc:
            note_exit(exc)
        result["left_at"] = trio.current_time()
        proxy.cut()  # drop what the black hole held, then read through a fresh connection
        proxy.restore()
        await ledger.read_topic(bootstrap, topic)
    verdict(ledger, producer)


# ---- Ctrl-C during the drain of a healthy broker (linger=3600 gives the drain work) -------


async def ctrl_c_healthy_drain(bootstrap: str, topic: str) -> None:
    ledger = Ledger("kid")
    producer: Producer | None = None
    async with trio.open_nursery() as nursery:
        try:
            async with open_producer(
                bootstrap_servers=bootstrap,
                linger=3600,
                batch_max_messages=10**6,
                queue_capacity=10**6,
                close_timeout=3,
            ) as p:
                producer = p
                for _ in range(20_000):
                    await ledger.send(p, topic)
                nursery.start_soon(ctrl_c_after, 0)  # lands as the drain starts
                result["body_end"] = trio.current_time()
                progress("body done")
        except BaseException as exc:
            note_exit(exc)
        result["left_at"] = trio.current_time()
    await ledger.read_topic(bootstrap, topic)
    verdict(ledger, producer)


# ---- Ctrl-C in the body ----------------------------------------------------------------


async def ctrl_c_body(bootstrap: str, topic: str) -> None:
    ledger = Ledger("kib")
    producer: Producer | None = None
    async with trio.open_nursery() as nursery:
        try:
            async with open_producer(
                bootstrap_servers=bootstrap, linger=3600, close_timeout=3
            ) as p:
                producer = p
                for _ in range(100):
                    await ledger.send(p, topic)
                nursery.start_soon(ctrl_c_after, 0.1)
                await trio.sleep(10)
                result["reached_end"] = True
        except BaseException as exc:
            note_exit(exc)
        result["left_at"] = trio.current_time()
    await ledger.read_topic(bootstrap, topic)
    verdict(ledger, producer)


# ---- open_producer in an already-cancelled scope -----------------------------------------


def count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(count_tasks(t) for n in task.child_nurseries for t in n.child_tasks)


async def cancelled_at_open(bootstrap: str, topic: str) -> None:
    ledger = Ledger("pre")
    root = trio.lowlevel.current_root_task()
    assert root is not None
    result["tasks_before"] = count_tasks(root)
    start = trio.current_time()
    try:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with open_producer(bootstrap_servers=bootstrap, close_timeout=2) as p:
                result["body_entered"] = True
                await ledger.send(p, topic)  # if the body runs, this must raise
    except BaseException as exc:
        note_exit(exc)
    result["took"] = trio.current_time() - start
    result["cancelled_caught"] = scope.cancelled_caught
    result["tasks_after"] = count_tasks(root)
    await ledger.read_topic(bootstrap, topic)
    verdict(ledger, None)


SCENARIOS: dict[str, Any] = {
    "ctrl-c-black-hole": ctrl_c_black_hole,
    "ctrl-c-healthy-drain": ctrl_c_healthy_drain,
    "ctrl-c-body": ctrl_c_body,
    "cancelled-at-open": cancelled_at_open,
}


async def _with_watchdog(fn: Any, args: list[str], after: float) -> None:
    trio.lowlevel.spawn_system_task(watchdog, after)
    await fn(*args)


def main() -> None:
    name, *args = sys.argv[1:]
    watch_after = float(os.environ.get("SCENARIO_WATCHDOG", "8"))
    # Python's own handler, so that Trio installs its Ctrl-C handler even when this
    # process was started with SIGINT ignored (from a background shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        trio.run(_with_watchdog, SCENARIOS[name], args, watch_after)
    except BaseException as exc:  # what escaped trio.run itself (nothing should)
        result["escaped_run"] = repr(exc)[:500]
    result.pop("_exc", None)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
