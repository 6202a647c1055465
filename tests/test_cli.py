"""The command line, as a subprocess, against the embedded broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from trio_producer.testing import consume_all, free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.broker

CLI = [sys.executable, "-m", "trio_producer"]


def run(
    args: list[str], stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(CLI + args, input=stdin, capture_output=True, timeout=timeout)


def last_line(stderr: bytes) -> str:
    return stderr.decode().strip().splitlines()[-1]


def test_stdin_lines_with_keys_and_headers_arrive(kafka_bootstrap: str, kafka_topic: str) -> None:
    lines = b"k1:v1\nk2:v:2\nno-key\n\nlast-without-newline"
    proc = run(
        ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "-K", ":", "-H", "src=cli"], lines
    )
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr) == "sent=5 delivered=5 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=5)
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"k1", b"v1", [("src", b"cli")]),
        (b"k2", b"v:2", [("src", b"cli")]),
        (None, b"no-key", [("src", b"cli")]),
        (None, b"", [("src", b"cli")]),
        (None, b"last-without-newline", [("src", b"cli")]),
    ]


def test_json_lines_mode(kafka_bootstrap: str, kafka_topic: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"value": "a", "key": "k", "headers": {"h": "1"}})
        + "\nnot json\n"
        + json.dumps({"value": "b"})
        + "\n"
    )
    undelivered = tmp_path / "undelivered.txt"
    proc = run(
        [
            "produce",
            "-b",
            kafka_bootstrap,
            "-t",
            kafka_topic,
            "--jsonl",
            "--file",
            str(source),
            "--undelivered",
            str(undelivered),
        ]
    )
    assert proc.returncode == 1  # one line was not valid JSON
    assert last_line(proc.stderr) == "sent=2 delivered=2 failed=1 undelivered=0"
    assert undelivered.read_bytes() == b"not json\n"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=2)
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"k", b"a", [("h", b"1")]),
        (None, b"b", None),
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_stream_drains_everything_read(
    kafka_bootstrap: str, kafka_topic: str, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [
            *CLI,
            "produce",
            "-b",
            kafka_bootstrap,
            "-t",
            kafka_topic,
            "--linger",
            "3600",
            "--batch-max-messages",
            "1000000",
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"".join(b"line-%d\n" % i for i in range(5_000)))
    proc.stdin.flush()
    time.sleep(1.5)  # it reads all of it; linger is an hour, so nothing has left yet
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # stdin stays open until here: the signal ends it
    assert proc.returncode == 0, err
    summary = last_line(err)
    assert summary == "sent=5000 delivered=5000 failed=0 undelivered=0"
    assert f"{sig.name}: stopped reading, draining" in err.decode()
    records = consume_all(kafka_bootstrap, kafka_topic, expected=5_000)
    assert [r.value for r in records] == [b"line-%d" % i for i in range(5_000)]


def test_unreachable_broker_exits_nonzero_and_keeps_the_lines(tmp_path: Path) -> None:
    undelivered = tmp_path / "undelivered.txt"
    start = time.monotonic()
    proc = run(
        [
            "produce",
            "-b",
            f"127.0.0.1:{free_port()}",
            "-t",
            "t",
            "--close-timeout",
            "1",
            "-K",
            "=",
            "--undelivered",
            str(undelivered),
        ],
        b"a=1\nb=2\nplain\n",
    )
    assert time.monotonic() - start < 15
    assert proc.returncode == 1
    assert last_line(proc.stderr) == "sent=3 delivered=0 failed=0 undelivered=3"
    lines = proc.stderr.decode().strip().splitlines()
    assert lines[-2].startswith("trio-producer: error: could not reach the broker at 127.0.0.1:")
    assert lines[-2].endswith("; 3 accepted message(s) were not delivered: _PURGE_QUEUE x3")
    assert not any("WARNING" in line for line in lines)  # librdkafka's retries: only with -v
    assert sorted(undelivered.read_bytes().splitlines()) == [b"a=1", b"b=2", b"plain"]
    assert "Traceback" not in proc.stderr.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-X", "no.such.prop=1"],
            "trio-producer: error: librdkafka rejected the configuration: "
            'No such configuration property: "no.such.prop"',
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-X", "novalue"],
            "trio-producer: error: -X must look like name=value, not 'novalue'",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "--linger", "-1"],
            "trio-producer: error: linger must be a finite number of seconds >= 0, not -1.0",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(args: list[str], message: str) -> None:
    proc = run(args)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().replace("'", "") == message.replace("'", "")
    assert proc.stdout == b""


def test_unknown_option_is_one_line_without_traceback() -> None:
    proc = run(["produce", "--bogus"])
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    # click words it "No such option: --bogus" or "No such option '--bogus'." by version
    assert lines[0].startswith("trio-producer: error: No such option")
    assert "--bogus" in lines[0]


def test_demo_exits_zero_and_reports_nothing_lost() -> None:
    proc = run(["demo", "--messages", "3000"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "trio-producer demo" in out
    row = [line for line in out.splitlines() if "3000" in line and "│" in line]
    cells = [c.strip() for c in row[-1].split("│") if c.strip()]
    assert cells[:5] == ["3000", "3000", "3000", "0", "yes"]


def test_broker_command_serves_until_interrupted() -> None:
    proc = subprocess.Popen([*CLI, "broker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    bootstrap = proc.stdout.readline().decode().strip()
    try:
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        produced = run(["produce", "-b", bootstrap, "-t", "from-broker-cmd"], b"hello\n")
        assert produced.returncode == 0, produced.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert err.decode().strip() == "trio-producer: broker running; Ctrl-C to stop"
