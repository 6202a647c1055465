"""Logging: the last-resort handler, librdkafka's lines mapped, connection failures collapsed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from trio_producer import DeliveryError, Producer, UndeliveredMessagesError, open_producer
from trio_producer._logging import (
    Connectivity,
    DeduplicateFilter,
    LibrdkafkaLog,
    RecentMessages,
)
from trio_producer._message import KafkaErrorInfo
from trio_producer.testing import free_port

from ..harness.faultproxy import proxied_broker


def test_the_library_logger_has_no_handler_of_its_own() -> None:
    """No NullHandler: an application without logging gets Python's last resort (WARNING+)."""
    assert logging.getLogger("trio_producer").handlers == []
    assert logging.getLogger("trio_producer.librdkafka").handlers == []


def test_recent_messages_is_bounded_and_forgets_after_the_window() -> None:
    recent = RecentMessages(window=10.0, max_entries=100)
    for i in range(10_000):
        assert not recent.repeated(f"message {i}", now=float(i) / 1000)
    assert len(recent) == 100
    assert recent.repeated("message 9999", now=10.0)
    assert not recent.repeated("message 9999", now=20.0)  # the window passed: shown again
    assert not recent.repeated("message 0", now=10.0)  # forgotten (bounded), shown again


def test_deduplicate_filter() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "same %s", ("text",), None)
    dedup = DeduplicateFilter(window=60.0, max_entries=8)
    assert dedup.filter(record)
    assert not dedup.filter(record)
    assert len(dedup.recent) == 1


def test_librdkafka_connection_failures_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_producer")
    log = LibrdkafkaLog()
    fail = "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect failed"
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", fail)
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "odd setting")
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "odd setting")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("trio_producer.librdkafka", logging.DEBUG, f"FAIL [rdkafka#producer-1] {fail}"),
        ("trio_producer.librdkafka", logging.WARNING, "CONFWARN [rdkafka#producer-1] odd setting"),
        ("trio_producer.librdkafka", logging.DEBUG, "CONFWARN [rdkafka#producer-1] odd setting"),
    ]


def transport(address: str) -> KafkaErrorInfo:
    return KafkaErrorInfo(
        -195, "_TRANSPORT", f"{address}: Connect to ipv4#{address} failed: Connection refused"
    )


def test_connectivity_collapses_repeated_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_producer")
    down = KafkaErrorInfo(-187, "_ALL_BROKERS_DOWN", "1/1 brokers are down")
    state = Connectivity("b1:9092")
    for _ in range(50):
        state.error(transport("b1:9092/bootstrap"))
        state.error(down)
    state.progress(0)
    assert not state.reachable
    state.progress(3)
    assert state.reachable
    state.error(transport("b1:9092/bootstrap"))
    loud = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert loud[0] == (
        "INFO",
        "librdkafka error: _TRANSPORT: b1:9092/bootstrap: Connect to ipv4#b1:9092/bootstrap "
        "failed: Connection refused",
    )
    assert loud[1][0] == "WARNING"
    assert loud[1][1].startswith(
        "the Kafka cluster at b1:9092 is unreachable (b1:9092/bootstrap: Connect to"
    )
    assert loud[2][0] == "INFO"
    assert loud[2][1].startswith("the Kafka cluster at b1:9092 is reachable again (after ")
    assert loud[3][0] == "INFO"  # down again later: said again
    assert len(loud) == 4


@pytest.mark.slow  # (over 5 s: in CI's -m slow run, out of the README's command)
@pytest.mark.broker
async def test_an_unreachable_cluster_is_one_warning_within_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_producer")
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    warned = None
    with pytest.raises(Exception):  # noqa: B017, PT011 - what it raises is tested elsewhere
        async with open_producer(bootstrap_servers=address, close_timeout=0) as producer:
            await producer.send("t", b"x")
            while time.monotonic() - start < 6:
                await trio.sleep(0.1)
                if warned is None and any(r.levelno == logging.WARNING for r in caplog.records):
                    warned = time.monotonic() - start
                    assert not producer.cluster_reachable
    assert warned is not None
    assert warned < 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0].startswith(f"the Kafka cluster at {address} is unreachable (")
    assert "Connection refused" in warnings[0]
    # the rest are about the undelivered message at the exit, not the connection
    assert not any("unreachable" in w or "librdkafka" in w for w in warnings[1:])
    debug = [r for r in caplog.records if r.name == "trio_producer.librdkafka"]
    assert debug
    assert all(r.levelno == logging.DEBUG for r in debug)


@pytest.mark.broker
@pytest.mark.faults
async def test_the_cluster_back_is_one_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_producer")
    async with proxied_broker(["back"]) as (bootstrap, proxy, _nursery):
        async with open_producer(bootstrap_servers=bootstrap, linger=0) as producer:
            await producer.send_and_wait("back", b"before")
            proxy.cut()
            for _ in range(600):  # at most 30 s
                if not producer.cluster_reachable:
                    break
                await trio.sleep(0.05)
            assert not producer.cluster_reachable
            proxy.restore()
            with trio.fail_after(30):
                await producer.send_and_wait("back", b"after")
            assert producer.cluster_reachable
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    unreachable = [line for line in lines if "is unreachable" in line[1]]
    back = [line for line in lines if "is reachable again" in line[1]]
    assert [level for level, _ in unreachable] == ["WARNING"]
    assert [level for level, _ in back] == ["INFO"]
    assert bootstrap in unreachable[0][1]


QUIET = """\
import trio
from trio_producer import open_producer

async def main():
    async with open_producer(bootstrap_servers="127.0.0.1:{port}", close_timeout=0) as p:
        await p.send("t", b"x")
        await trio.sleep(2)

try:
    trio.run(main)
except Exception as exc:
    print(type(exc).__name__)
"""


@pytest.mark.broker
def test_without_logging_configured_the_warning_is_on_stderr() -> None:
    """The application configured no logging: the one WARNING (Python's last-resort
    handler), and nothing else -- no librdkafka line, no repeat."""
    port = free_port()
    code = textwrap.dedent(QUIET).format(port=port)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"the Kafka cluster at 127.0.0.1:{port} is unreachable (127.0.0.1:{port}/bootstrap: "
        f"Connect to ipv4#127.0.0.1:{port} failed: Connection refused"
    )
    assert proc.stdout.strip() in {"DeliveryError", "UndeliveredMessagesError"}


@pytest.mark.slow  # (over 5 s: in CI's -m slow run, out of the README's command)
@pytest.mark.broker
def test_the_quickstart_without_a_broker_says_so_and_ends() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "quickstart.py"
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(example)],
        env={**os.environ, "BOOTSTRAP_SERVERS": address},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - start < 20
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"the Kafka cluster at {address} is unreachable")
    assert (
        "DeliveryError: delivery to 'events' failed: _MSG_TIMED_OUT: Local: Message timed "
        f"out; the Kafka cluster at {address} was unreachable ("
    ) in proc.stderr
    assert "[rdkafka#" not in proc.stderr  # no raw librdkafka lines


@pytest.mark.broker
async def test_a_timeout_while_unreachable_names_the_cluster() -> None:
    """_MSG_TIMED_OUT alone does not say why: the DeliveryError names the dead cluster."""
    address = f"127.0.0.1:{free_port()}"
    async with open_producer(bootstrap_servers=address, delivery_timeout=1.5) as producer:
        with pytest.raises(DeliveryError) as caught:
            await producer.send_and_wait("t", b"x")
    error = caught.value
    assert error.error.name == "_MSG_TIMED_OUT"
    assert error.cluster_unreachable is not None
    assert error.cluster_unreachable.startswith(
        f"the Kafka cluster at {address} was unreachable ({address}/bootstrap: Connect to "
    )
    assert str(error) == (
        f"delivery to 't' failed: _MSG_TIMED_OUT: Local: Message timed out; "
        f"{error.cluster_unreachable}"
    )


async def wait_unreachable(producer: Producer) -> None:
    with trio.fail_after(10):
        while producer.cluster_reachable:  # noqa: ASYNC110 - a state polled from librdkafka
            await trio.sleep(0.05)


@pytest.mark.broker
async def test_ctrl_c_with_the_cluster_unreachable_does_not_wait_for_the_drain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ctrl-C in the body while no broker answers: a WARNING at once, no 30 s of silence;
    the message comes back."""
    caplog.set_level(logging.WARNING, logger="trio_producer")
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(KeyboardInterrupt):
        async with open_producer(bootstrap_servers=address, close_timeout=30) as producer:
            await producer.send("t", b"x", key=b"k")
            await wait_unreachable(producer)
            start = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - start < 3
    assert [(f.message.key, f.message.value) for f in producer.undelivered] == [(b"k", b"x")]
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said[1].startswith(
        f"Ctrl-C while the Kafka cluster at {address} is unreachable ({address}/bootstrap: "
    )
    assert said[1].endswith(
        ": not waiting for the 1 undelivered message(s); they are handed back "
        "(Producer.undelivered, trio_producer.undelivered_messages)"
    )


@pytest.mark.broker
async def test_leaving_with_the_cluster_unreachable_says_how_long_it_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_producer")
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(UndeliveredMessagesError):
        async with open_producer(bootstrap_servers=address, close_timeout=1.5) as producer:
            await producer.send("t", b"x")
            await wait_unreachable(producer)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said[1].startswith(
        "leaving the producer: waiting up to 1.5 s more (close_timeout) for 1 message(s) to be "
        f"delivered; the Kafka cluster at {address} is unreachable ({address}/bootstrap: "
    )
    assert said[1].endswith("; what is not delivered by then is handed back")
