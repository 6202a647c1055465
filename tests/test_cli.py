"""The command line, as a subprocess, against the embedded broker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trio_producer.testing import consume_all, free_port

from .test_signals import APPS, Child, black_holed_broker

pytestmark = pytest.mark.broker

CLI = [sys.executable, "-m", "trio_producer"]
#: The same command line, with SIGINT at its default handler even when this process
#: ignores it (pytest started from a shell's background job): for the tests that signal it.
SIGNALLED_CLI = [sys.executable, str(APPS / "run_cli.py")]


def run(
    args: list[str], stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(CLI + args, input=stdin, capture_output=True, timeout=timeout)


def last_line(stderr: bytes | bytearray) -> str:
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_stream_drains_everything_read(
    kafka_bootstrap: str, kafka_topic: str, sig: signal.Signals
) -> None:
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--progress"]
    args += ["--linger", "3600", "--batch-max-messages", "1000000"]
    lines = b"".join(b"line-%d\n" % i for i in range(5_000))
    with Child([*SIGNALLED_CLI, *args], stdin=lines) as child:  # stdin stays open
        # every line read (linger is an hour: nothing has left yet), the signals watched
        child.wait_for(b"read 5000 ")
        child.signal(sig)
        code = child.wait(timeout=60)
    err = child.err.decode()
    assert code == 0, err
    assert last_line(child.err) == "sent=5000 delivered=5000 failed=0 undelivered=0"
    assert f"{sig.name}: stopped reading, draining" in err
    records = consume_all(kafka_bootstrap, kafka_topic, expected=5_000)
    assert [r.value for r in records] == [b"line-%d" % i for i in range(5_000)]


@pytest.mark.parametrize(
    ("sig", "status", "option"),
    [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
    ids=["SIGINT-undelivered-file", "SIGTERM-no-option"],
)
def test_second_signal_cuts_a_black_holed_drain_short(
    tmp_path: Path, sig: signal.Signals, status: int, option: bool
) -> None:
    lines = [b"line-%d" % i for i in range(2_000)]
    undelivered = tmp_path / "undelivered.txt"
    with black_holed_broker() as bootstrap:
        args = ["produce", "-b", bootstrap, "-t", "t", "--close-timeout", "30", "--progress"]
        if option:
            args += ["--undelivered", str(undelivered)]
        stdin = b"".join(x + b"\n" for x in lines)
        tmp = {"TMPDIR": str(tmp_path)}  # where it writes them without --undelivered
        with Child([*SIGNALLED_CLI, *args], stdin=stdin, env=tmp) as child:
            child.wait_for(b"read 2000 ")  # every line read, the signals watched
            child.signal(sig)
            again = "Ctrl-C" if sig == signal.SIGINT else sig.name
            child.wait_for(
                b"trio-producer: draining: 2000 message(s) left, 30 s until close_timeout "
                b"(%s again to stop now)\n" % again.encode()
            )
            # about once a second
            child.wait_for(b"draining: 2000 message(s) left, ", times=2, timeout=5)
            assert child.proc.poll() is None, child.output()  # the broker never answers
            start = time.monotonic()
            child.signal(sig)
            code = child.wait(timeout=20)
            elapsed = time.monotonic() - start
    err = child.err.decode()
    assert code == status, err
    assert elapsed < 5.0, err
    assert last_line(child.err) == "sent=2000 delivered=0 failed=0 undelivered=2000"
    assert f"trio-producer: {sig.name}: stopped reading, draining\n" in err
    assert f"trio-producer: {sig.name}: cutting the drain short (2000 message(s) left)\n" in err
    assert f"(the drain was cut short: received {sig.name} a second time)" in err
    assert "Traceback" not in err
    if not option:  # too many to name on stderr: a file of its own, named there
        found = re.search(r"2000 line\(s\) not delivered, written to (\S+) \(--undelivered", err)
        assert found, err
        undelivered = Path(found[1])
        assert undelivered.parent == tmp_path
        assert undelivered.name.startswith("trio-producer-undelivered-")
    else:
        assert f"2000 line(s) not delivered, written to {undelivered}\n" in err
    written = undelivered.read_bytes().splitlines()
    assert sorted(written) == sorted(lines)  # exactly the lines read, each once


def test_signal_while_draining_after_eof_cuts_it_short(tmp_path: Path) -> None:
    with black_holed_broker() as bootstrap:
        args = ["produce", "-b", bootstrap, "-t", "t", "--close-timeout", "30"]
        with Child([*SIGNALLED_CLI, *args], stdin=b"a\nb\nc", close_stdin=True) as child:
            # EOF: the drain says something once it has lasted a second
            child.wait_for(b"until close_timeout (Ctrl-C to stop now)\n")
            start = time.monotonic()
            child.signal(signal.SIGINT)  # the first signal: the reading had already stopped
            code = child.wait(timeout=20)
            elapsed = time.monotonic() - start
    err = child.err.decode()
    assert code == 130, err
    assert elapsed < 5.0, err
    assert re.search(r"trio-producer: draining: 3 message\(s\) left, 2\d s until", err), err
    assert "trio-producer: SIGINT: cutting the drain short (3 message(s) left)\n" in err
    # few and short: named on stderr, each once
    named = sorted(x for x in err.splitlines() if x.startswith("trio-producer: undelivered: "))
    assert named == [f"trio-producer: undelivered: {x}" for x in "abc"]
    assert last_line(child.err) == "sent=3 delivered=0 failed=0 undelivered=3"


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
    with Child([*SIGNALLED_CLI, "broker"]) as child:
        child.wait_for(b"\n", stream="out")
        bootstrap = child.out.decode().strip()
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        produced = run(["produce", "-b", bootstrap, "-t", "from-broker-cmd"], b"hello\n")
        assert produced.returncode == 0, produced.stderr
        child.signal(signal.SIGINT)
        code = child.wait(timeout=15)
    assert code == 0, child.output()
    assert child.err.decode().strip() == "trio-producer: broker running; Ctrl-C to stop"
