"""The command line, as a subprocess, against the embedded broker."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from trio_producer.testing import consume_all, create_topics, free_port

from ..harness.children import APPS, Child, black_holed_broker

if TYPE_CHECKING:
    from collections.abc import Callable

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
    assert last_line(proc.stderr) == "sent=5 delivered=5 rejected=0 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=5)
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"k1", b"v1", [("src", b"cli")]),
        (b"k2", b"v:2", [("src", b"cli")]),
        (None, b"no-key", [("src", b"cli")]),
        (None, b"", [("src", b"cli")]),
        (None, b"last-without-newline", [("src", b"cli")]),
    ]


def test_delivery_reports_errors_only(kafka_bootstrap: str, kafka_topic: str) -> None:
    lines = b"".join(b"line-%d\n" % i for i in range(2000))
    proc = run(
        ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--delivery-reports", "errors"], lines
    )
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr) == "sent=2000 delivered=2000 rejected=0 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=2000)
    assert [r.value for r in records] == [b"line-%d" % i for i in range(2000)]


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
    assert proc.returncode == 1  # one line was not valid JSON: rejected
    assert last_line(proc.stderr) == "sent=2 delivered=2 rejected=1 failed=0 undelivered=0"
    assert undelivered.read_bytes() == b"not json\n"
    # the same word on its line as in the summary
    assert "trio-producer: rejected: not json (Expecting value" in proc.stderr.decode()
    records = consume_all(kafka_bootstrap, kafka_topic, expected=2)
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"k", b"a", [("h", b"1")]),
        (None, b"b", None),
    ]


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_several_files_are_produced_in_the_order_given(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    first = write(tmp_path / "a.txt", b"a1\na2")  # no newline at its end: still a line
    second = write(tmp_path / "b.txt", b"b1\n")
    third = write(tmp_path / "c.txt", b"c1\nc2\n")
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic]
    args += ["--file", first, "--file", "-", "--file", second, "-l", third]  # - is stdin
    proc = run(args, b"in1\nin2\n")
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr) == "sent=7 delivered=7 rejected=0 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=7)
    assert [r.value for r in records] == [b"a1", b"a2", b"in1", b"in2", b"b1", b"c1", b"c2"]


def test_a_missing_file_is_refused_before_anything_is_sent(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    first = write(tmp_path / "a.txt", b"a\n")
    missing = str(tmp_path / "missing.txt")
    proc = run(
        ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--file", first, missing, "-l"]
    )
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        f"trio-producer: error: cannot read {missing}: No such file or directory\n"
    )
    assert consume_all(kafka_bootstrap, kafka_topic, idle_timeout=1.0) == []


def test_a_signal_names_the_files_it_left_unread(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    later = write(tmp_path / "later.txt", b"never\n")
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--progress"]
    args += ["--file", "-", "--file", later]
    with Child([*SIGNALLED_CLI, *args], stdin=b"a\nb\n") as child:  # stdin stays open
        child.wait_for(b"read 2 ")
        child.signal(signal.SIGINT)
        code = child.wait(timeout=60)
    err = child.err.decode()
    assert code == 0, err  # every line read was delivered
    assert f"trio-producer: not read (the reading stopped first): {later}\n" in err
    assert last_line(child.err) == "sent=2 delivered=2 rejected=0 failed=0 undelivered=0"
    assert [r.value for r in consume_all(kafka_bootstrap, kafka_topic, expected=2)] == [b"a", b"b"]


def test_kcat_flags_partition_fixed_key_null_compression_config_file(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"cli-kcat-flags-{os.getpid()}"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    config = tmp_path / "producer.properties"
    config.write_text(
        "# kcat -F FILE, kafka-console-producer --producer.config FILE\n"
        "\n"
        f"bootstrap.servers = {kafka_bootstrap}\n"  # no -b
        "compression.type=no-such-codec\n"  # -z wins
        "linger.ms=not-a-number\n"  # -X wins
        "client.id=from-a-file\n"
    )
    args = ["produce", "-t", topic, "-F", str(config), "-X", "linger.ms=2", "-z", "lz4"]
    args += ["-p", "1", "-K", ":", "-k", "fixed", "-Z"]
    proc = run(args, b"k1:v1\nplain\nk2:\n:v3\n\n")
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr) == "sent=5 delivered=5 rejected=0 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, topic, expected=5)
    assert [(r.partition, r.key, r.value) for r in records] == [
        (1, b"k1", b"v1"),
        (1, b"fixed", b"plain"),  # -k: the key of a line without one
        (1, b"k2", None),  # -Z: an empty value is null (a tombstone)
        (1, None, b"v3"),  # -Z: and so is an empty key
        (1, b"fixed", None),
    ]


def test_kafka_console_producer_properties(kafka_bootstrap: str, kafka_topic: str) -> None:
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--property", "parse.key=true"]
    # a line without the separator is rejected, as kafka-console-producer does
    proc = run([*args, "--property", "key.separator=:"], b"k1:v1\nno separator\n")
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines()[-2:] == [
        "trio-producer: rejected: no separator (no key separator ':' in the line "
        "(--property ignore.error=true to send it without a key))",
        "sent=1 delivered=1 rejected=1 failed=0 undelivered=0",
    ]
    # ignore.error=true: sent without a key; key.separator defaults to a tab
    proc = run([*args, "--property", "ignore.error=true"], b"k2\tv2\nplain\n")
    assert proc.returncode == 0, proc.stderr
    records = consume_all(kafka_bootstrap, kafka_topic, expected=3)
    assert [(r.key, r.value) for r in records] == [
        (b"k1", b"v1"),
        (b"k2", b"v2"),
        (None, b"plain"),
    ]


def test_a_failed_delivery_is_called_failed_and_handed_back_with_its_partition(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    undelivered = tmp_path / "left.jsonl"
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--jsonl"]
    args += ["--undelivered", str(undelivered), "--close-timeout", "20"]
    # the topic has one partition: partition 7 is unknown
    proc = run(args, b'{"value": "p", "partition": 7}\n{"value": "q"}\n')
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert 'trio-producer: failed: {"value": "p", "partition": 7} (_UNKNOWN_PARTITION: ' in err
    assert last_line(proc.stderr) == "sent=2 delivered=1 rejected=0 failed=1 undelivered=0"
    assert json.loads(undelivered.read_bytes()) == {"value": "p", "partition": 7}


@pytest.mark.parametrize("option", [True, False], ids=["undelivered-file", "no-option"])
def test_long_rejected_lines_are_shortened_on_stderr_kept_whole_in_the_file(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path, option: bool
) -> None:
    not_json = b"x" * 5_000_000
    # headers that are not an object: a 3 MB list
    not_a_value = b'{"value": "x", "headers": [' + b",".join([b"1"] * 1_000_000) + b"]}"
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--jsonl"]
    undelivered = tmp_path / "left.jsonl"
    if option:
        args += ["--undelivered", str(undelivered)]
    stdin = not_json + b"\n" + not_a_value + b'\n{"value": "ok"}\n'
    proc = subprocess.run(
        CLI + args,
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err[:2000]
    assert len(err) < 1500, err[:2000]
    lines = err.splitlines()
    assert lines[0] == (
        f"trio-producer: rejected: {'x' * 77}... (5,000,000 characters) "
        "(Expecting value: line 1 column 1 (char 0))"
    )
    assert lines[1].startswith('trio-producer: rejected: {"value": "x", "headers": [1,1,')
    assert lines[-1] == "sent=1 delivered=1 rejected=2 failed=0 undelivered=0"
    if not option:  # too long for stderr: a file of its own
        found = re.search(r"2 line\(s\) not delivered, written to (\S+) \(--undelivered", err)
        assert found, err
        undelivered = Path(found[1])
    assert undelivered.read_bytes() == not_json + b"\n" + not_a_value + b"\n"


def run_on_a_terminal(
    args: list[str], typed: bytes, wait: Callable[[bytearray], None]
) -> tuple[int, bytes]:
    """Run the command line with a terminal on stdin and on stderr: type ``typed``,
    call ``wait(shown)``, type Ctrl-D; return the exit status and what stderr showed."""
    keyboard, child_in = pty.openpty()
    screen, child_err = pty.openpty()
    proc = subprocess.Popen(CLI + args, stdin=child_in, stdout=subprocess.DEVNULL, stderr=child_err)
    os.close(child_in)
    os.close(child_err)
    shown = bytearray()

    def collect() -> None:
        while True:
            try:
                data = os.read(screen, 1 << 16)
            except OSError:  # EIO: the child has closed the terminal
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        os.write(keyboard, typed)
        wait(shown)
        os.write(keyboard, b"\x04")  # Ctrl-D at the start of a line: EOF
        code = proc.wait(timeout=60)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(keyboard)
        os.close(screen)
    return code, bytes(shown)


@pytest.mark.parametrize("asked", [False, True], ids=["default", "--progress"])
def test_no_progress_line_over_a_terminal_on_stdin_unless_asked(
    kafka_bootstrap: str, kafka_topic: str, asked: bool
) -> None:
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic]

    def wait(shown: bytearray) -> None:
        if asked:
            deadline = time.monotonic() + 30
            while b"msg/s" not in shown:
                assert time.monotonic() < deadline, bytes(shown)
                time.sleep(0.05)
        else:  # delivered, and three progress intervals (0.5 s) without a progress line
            consume_all(kafka_bootstrap, kafka_topic, expected=2)
            time.sleep(1.5)

    code, shown = run_on_a_terminal(args + ["--progress"] * asked, b"typed-1\ntyped-2\n", wait)
    assert code == 0, shown
    assert b"sent=2 delivered=2 rejected=0 failed=0 undelivered=0" in shown
    assert (b"msg/s" in shown) == asked, shown
    values = [r.value for r in consume_all(kafka_bootstrap, kafka_topic, expected=2)]
    assert values == [b"typed-1", b"typed-2"]


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
    assert last_line(child.err) == "sent=5000 delivered=5000 rejected=0 failed=0 undelivered=0"
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
    assert last_line(child.err) == "sent=2000 delivered=0 rejected=0 failed=0 undelivered=2000"
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
    assert last_line(child.err) == "sent=3 delivered=0 rejected=0 failed=0 undelivered=3"


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
    assert last_line(proc.stderr) == "sent=3 delivered=0 rejected=0 failed=0 undelivered=3"
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
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "--property", "acks=all"],
            "trio-producer: error: --property acks: not a kafka-console-producer line-reader "
            "property (parse.key, key.separator, ignore.error); for a producer (librdkafka) "
            "property use -X acks=VALUE",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "--property", "null.marker=NULL"],
            "trio-producer: error: --property null.marker is not supported: use -Z to send "
            "empty values (and keys) as null",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "--property", "key.separator=:"],
            "trio-producer: error: --property key.separator needs --property parse.key=true",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-K", ":", "--property", "parse.key=true"],
            "trio-producer: error: -K and --property parse.key/key.separator do not go together",
        ),
        (
            ["produce", "-t", "t"],
            "trio-producer: error: -b/--bootstrap-servers is required "
            "(or bootstrap.servers in -F FILE)",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-F", "/no/such/file"],
            "trio-producer: error: cannot read /no/such/file: No such file or directory",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "some-file"],
            "trio-producer: error: a FILE argument is sent line by line only with -l (kcat "
            "sends a whole file as one message, which is not supported): -l FILE... or "
            "--file FILE",
        ),
        (
            ["produce", "-P", "-b", "127.0.0.1:1", "-t", "t", "-D", ","],
            "trio-producer: error: kcat's -D is not supported: one message per line; "
            "--jsonl for values with newlines",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-c", "10"],
            "trio-producer: error: kcat's -c is not supported: to send the first N lines: "
            "head -n N | trio-producer produce",
        ),
        (
            [
                "produce",
                "-b",
                "127.0.0.1:1",
                "-t",
                "t",
                "--delivery-reports",
                "errors",
                "--spool",
                "d",
            ],
            "trio-producer: error: delivery_reports='errors' cannot be combined with "
            "spool_path: the spool must be told of every delivery to remove the message from disk",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-z", "brotli"],
            "trio-producer: error: Invalid value for '-z' / '--compression': 'brotli' is not "
            "one of 'none', 'gzip', 'snappy', 'lz4', 'zstd'.",
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


def test_an_unreachable_cluster_is_said_at_once_and_connect_timeout_gives_up() -> None:
    port = free_port()  # nothing listens: connections are refused
    started = time.monotonic()
    proc = run(
        ["produce", "-b", f"127.0.0.1:{port}", "-t", "t", "--connect-timeout", "2"],
        stdin=b"one\ntwo\n",
        timeout=30,
    )
    took = time.monotonic() - started
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert f"the Kafka cluster at 127.0.0.1:{port} is unreachable" in err
    assert "the cluster was unreachable for 2 s (--connect-timeout)" in err
    assert "undelivered: one" in err
    assert "undelivered: two" in err
    assert last_line(proc.stderr) == "sent=2 delivered=0 rejected=0 failed=0 undelivered=2"
    assert took < 10  # close_timeout is 30 s: the timeout, not the drain, ended it


def test_spool_keeps_what_was_not_delivered_for_the_next_run(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool")
    dead = run(
        [
            "produce",
            "-b",
            f"127.0.0.1:{free_port()}",
            "-t",
            kafka_topic,
            "--spool",
            spool,
            "--close-timeout",
            "0.5",
        ],
        stdin=b"a\nb\n",
    )
    assert dead.returncode == 1, dead.stderr.decode()
    assert "kept in the spool" in dead.stderr.decode()
    again = run(
        ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--spool", spool], stdin=b"c\n"
    )
    assert again.returncode == 0, again.stderr.decode()
    assert "2 line(s) an earlier run left in the spool were sent first (2 delivered)" in (
        again.stderr.decode()
    )
    assert last_line(again.stderr) == "sent=1 delivered=1 rejected=0 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=3)
    assert [r.value for r in records] == [b"a", b"b", b"c"]


# ---- the first hour (#24, #22) --------------------------------------------------------


def test_kcat_escapes_in_the_key_separator(kafka_bootstrap: str, kafka_topic: str) -> None:
    # kcat reads -K '\t' as a tab (and \xNN as that byte); the shell passes a backslash
    args = ["produce", "-E", "-b", kafka_bootstrap, "-t", kafka_topic, "-K", "\\t"]
    proc = run(args, b"k1\tv1\n")
    assert proc.returncode == 0, proc.stderr
    proc = run(["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "-K", "\\x3a"], b"k2:v2\n")
    assert proc.returncode == 0, proc.stderr
    records = consume_all(kafka_bootstrap, kafka_topic, expected=2)
    assert [(r.key, r.value) for r in records] == [(b"k1", b"v1"), (b"k2", b"v2")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-m", "5"],
            "trio-producer: error: kcat's -m is not supported: --connect-timeout SECONDS "
            "gives up once the cluster has been unreachable that long",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-q"],
            "trio-producer: error: kcat's -q is not supported: the summary line is on "
            "stderr: 2>/dev/null hides it",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-d", "broker"],
            "trio-producer: error: kcat's -d is not supported: -v shows librdkafka's "
            "warnings, -vv more",
        ),
        (
            ["produce", "-b", "127.0.0.1:1", "-t", "t", "-X", "list"],
            "trio-producer: error: -X list is not supported: librdkafka's properties are "
            "listed in its CONFIGURATION.md",
        ),
    ],
)
def test_kcat_flags_we_do_not_have_say_what_to_use(args: list[str], message: str) -> None:
    proc = run(args)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == message


def test_kcat_version_and_config_dump() -> None:
    version = run(["-V"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.decode().startswith("trio-producer, version ")
    args = ["produce", "-b", "127.0.0.1:1", "-t", "t", "-X", "dump"]
    dump = run([*args, "-X", "enable.idempotence=false", "-X", "acks=1"])
    assert dump.returncode == 0, dump.stderr
    lines = dump.stdout.decode().splitlines()
    assert "acks = 1" in lines
    assert "bootstrap.servers = 127.0.0.1:1" in lines
    assert "enable.idempotence = false" in lines  # as given (the default is True)


def test_verbose_on_the_subcommand_shows_librdkafka_errors() -> None:
    port = free_port()
    args = ["produce", "-vv", "-b", f"127.0.0.1:{port}", "-t", "t", "--close-timeout", "1"]
    proc = run(args, b"x\n")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "trio-producer: INFO: librdkafka error: _TRANSPORT: " in err
    assert last_line(proc.stderr) == "sent=1 delivered=0 rejected=0 failed=0 undelivered=1"


def test_json_lines_with_object_values_are_sent_as_json_text(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    lines = [
        {"value": {"a": 1, "b": ["é", None]}, "key": {"id": 7}},
        {"value": [1, 2.5]},
        {"value": 3},
        {"value": True},
        {"value": "plain"},
    ]
    stdin = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    proc = run(["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--jsonl"], stdin)
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr) == "sent=5 delivered=5 rejected=0 failed=0 undelivered=0"
    records = consume_all(kafka_bootstrap, kafka_topic, expected=5)
    assert [(r.key, r.value) for r in records] == [
        (b'{"id":7}', '{"a":1,"b":["é",null]}'.encode()),
        (None, b"[1,2.5]"),
        (None, b"3"),
        (None, b"true"),
        (None, b"plain"),
    ]


def test_sigterm_on_an_endless_stream_exits_zero_when_everything_accepted_was_delivered(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    # `yes hello | trio-producer produce ...`: the queue fills (nothing leaves for an
    # hour), the reader waits mid-chunk; SIGTERM stops the reading
    args = ["produce", "-b", kafka_bootstrap, "-t", kafka_topic, "--progress"]
    args += ["--linger", "3600", "--batch-max-messages", "1000000"]
    with Child([*SIGNALLED_CLI, *args], stdin=b"hello\n" * 2_000_000) as child:
        child.wait_for(b"msg/s", times=4)  # two seconds of progress: the queue is full
        child.signal(signal.SIGTERM)
        code = child.wait(timeout=60)
    err = child.err.decode()
    assert code == 0, err[-3000:]
    summary = re.fullmatch(
        r"sent=(\d+) delivered=(\d+) rejected=0 failed=0 undelivered=0", last_line(child.err)
    )
    assert summary, err[-3000:]
    assert summary[1] == summary[2]
    assert "undelivered:" not in err
    assert "not delivered" not in err
    records = consume_all(kafka_bootstrap, kafka_topic, expected=int(summary[1]))
    assert len(records) == int(summary[1])
    assert {r.value for r in records} == {b"hello"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_fifo_without_a_writer(
    kafka_bootstrap: str, tmp_path: Path, sig: signal.Signals
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = ["produce", "-b", kafka_bootstrap, "-t", "t", "--file", str(fifo), "--progress"]
    with Child([*SIGNALLED_CLI, *args]) as child:
        child.wait_for(b"msg/s", timeout=10)  # the producer is open: the signals are watched
        child.signal(sig)
        code = child.wait(timeout=20)
    err = child.err.decode()
    assert code == 0, err
    assert f"trio-producer: {sig.name}: stopped reading, draining\n" in err
    assert last_line(child.err) == "sent=0 delivered=0 rejected=0 failed=0 undelivered=0"


def produce_jsonl(bootstrap: str, topic: str, rows: list[dict[str, object]]) -> None:
    """One record batch per message: the embedded broker (Tansu) reports the end of a
    partition as one past the first offset of its last batch, which -o -N relies on."""
    stdin = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    args = ["produce", "-b", bootstrap, "-t", topic, "--jsonl", "-X", "batch.num.messages=1"]
    proc = run(args, stdin)
    assert proc.returncode == 0, proc.stderr


def test_consume_formats_offsets_counts_and_the_end(kafka_bootstrap: str) -> None:
    topic = f"cli-consume-{os.getpid()}"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    rows: list[dict[str, object]] = [
        {"value": f"v{i}", "key": f"k{i}", "partition": i % 2, "headers": {"h": str(i)}}
        for i in range(6)
    ]
    produce_jsonl(kafka_bootstrap, topic, rows)
    base = ["consume", "-b", kafka_bootstrap, "-t", topic]
    proc = run([*base, "-e", "-f", "%t|%p|%o|%k|%s|%h|%S\\n"])
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stderr) == "consumed=6"
    assert sorted(proc.stdout.decode().splitlines()) == [
        f"{topic}|0|0|k0|v0|h=0|2",
        f"{topic}|0|1|k2|v2|h=2|2",
        f"{topic}|0|2|k4|v4|h=4|2",
        f"{topic}|1|0|k1|v1|h=1|2",
        f"{topic}|1|1|k3|v3|h=3|2",
        f"{topic}|1|2|k5|v5|h=5|2",
    ]
    # one partition, two before its end, kcat's -K (escapes read), the default format
    proc = run([*base, "-e", "-p", "1", "-o", "-2", "-K", "\\t"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"k3\tv3\nk5\tv5\n"
    # an absolute offset, and a count that stops it before the end (no -e)
    proc = run([*base, "-p", "0", "-o", "1", "-c", "1", "-f", "%o %s\\n"])
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, last_line(proc.stderr)) == (b"1 v2\n", "consumed=1")
    # -o end with -e: nothing new
    proc = run([*base, "-e", "-o", "end"])
    assert (proc.returncode, proc.stdout, last_line(proc.stderr)) == (0, b"", "consumed=0")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_consume_ends_cleanly_on_a_signal(
    kafka_bootstrap: str, kafka_topic: str, sig: signal.Signals
) -> None:
    produce_jsonl(kafka_bootstrap, kafka_topic, [{"value": "a"}, {"value": "b"}])
    with Child([*SIGNALLED_CLI, "consume", "-b", kafka_bootstrap, "-t", kafka_topic]) as child:
        child.wait_for(b"a\nb\n", stream="out")  # read to the end, waiting for more
        start = time.monotonic()
        child.signal(sig)
        code = child.wait(timeout=20)
    assert code == 0, child.output()
    assert time.monotonic() - start < 5
    assert child.err.decode().splitlines() == [f"trio-producer: {sig.name}: stopped", "consumed=2"]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["-t", "no-such-topic-here", "-e"], 1, "topic 'no-such-topic-here': "),
        (["-t", "t", "-f", "%x"], 2, "-f: unknown token %x in '%x' (known: "),
        (["-t", "t", "-o", "middle"], 2, "-o must be beginning, end, N or -N"),
        (["-t", "t", "-q"], 2, "kcat's -q is not supported: "),
        (["-t", "t", "-J"], 2, "kcat's -J is not supported: consume -f FORMAT chooses"),
    ],
)
def test_consume_errors_are_one_line(
    kafka_bootstrap: str, args: list[str], status: int, message: str
) -> None:
    proc = run(["consume", "-b", kafka_bootstrap, *args])
    assert proc.returncode == status, proc.stderr
    err = proc.stderr.decode()
    assert f"trio-producer: error: {message}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["-X", "-F"])
def test_a_transactional_id_is_refused_at_start_with_what_to_do(where: str, tmp_path: Path) -> None:
    # Before: every line failed with _STATE (exit 1). kcat runs the whole input as one
    # transaction; we refuse before reading anything, and say what to use instead.
    if where == "-X":
        args = ["-X", "transactional.id=orders-1"]
    else:
        config = tmp_path / "producer.properties"
        config.write_text("transactional.id=orders-1\n")
        args = ["-F", str(config)]
    proc = run(["produce", "-b", "127.0.0.1:1", "-t", "t", *args], b"a\nb\n")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().strip() == (
        "trio-producer: error: transactional.id: produce does not run transactions "
        "(kcat runs the whole input as one); leave transactional.id out (each line is "
        "then delivered at least once, or reported undelivered), add --spool DIR to keep "
        "accepted lines across a crash (with --exactly-once, delivered exactly once across "
        "crashes), or use the Python API's producer.transaction()"
    )
