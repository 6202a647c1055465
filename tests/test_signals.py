"""Signals to a real process: ``cancel_on_signals`` with a black-holed broker.

Every child here starts with SIGINT at Python's default handler (the apps set it first
thing: a shell starts background jobs with SIGINT ignored, and children inherit that),
is waited for with a hard timeout, and is killed in ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

APPS = Path(__file__).resolve().parent / "apps"


class Child:
    """A child process whose output is collected by threads, so that waits can time out."""

    def __init__(
        self,
        args: list[str],
        *,
        stdin: bytes = b"",
        close_stdin: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
        )
        self.out = bytearray()
        self.err = bytearray()
        self._changed = threading.Condition()
        self._open = 2
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._feed, args=(stdin, close_stdin), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _feed(self, data: bytes, close: bool) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            if close:
                self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the child has gone (or was killed)

    def _collect(self, stream: IO[bytes], into: bytearray) -> None:
        while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
            with self._changed:
                into += chunk
                self._changed.notify_all()
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def output(self) -> str:
        return f"stdout={bytes(self.out)!r}\nstderr={bytes(self.err)!r}"

    def wait_for(
        self,
        text: bytes,
        *,
        stream: Literal["out", "err"] = "err",
        times: int = 1,
        timeout: float = 30,
    ) -> None:
        """Wait until ``text`` has appeared ``times`` times in stdout/stderr."""
        buffer = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        with self._changed:
            while buffer.count(text) < times:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._open:
                    why = "the child exited" if not self._open else f"not within {timeout} s"
                    raise AssertionError(f"{text!r} did not appear ({why})\n{self.output()}")
                self._changed.wait(remaining)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status (a hard timeout: ``TimeoutExpired``, then ``close`` kills it)."""
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads[:2]:
            thread.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def black_holed_broker() -> Iterator[str]:
    """A broker address that accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def black_hole() -> Iterator[str]:
    with black_holed_broker() as bootstrap:
        yield bootstrap


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_cuts_the_drain_short_and_hands_everything_back(
    black_hole: str, sig: signal.Signals
) -> None:
    count = 1_000
    app = [sys.executable, str(APPS / "drain_until_second_signal.py"), black_hole, str(count)]
    with Child(app) as child:
        child.wait_for(b"accepted=%d\n" % count, stream="out")
        child.signal(sig)
        child.wait_for(b"signal 1 %s\n" % sig.name.encode(), stream="out")
        time.sleep(1.0)
        assert child.proc.poll() is None, child.output()  # draining: up to close_timeout=30
        start = time.monotonic()
        child.signal(sig)
        code = child.wait(timeout=20)
        elapsed = time.monotonic() - start
    assert code == 0, child.output()  # a normal exit, not killed by the signal
    lines = child.out.decode().splitlines()
    assert lines[-1] == f"handed_back={count} accepted={count}", child.output()
    assert f"signal 2 {sig.name}" in lines
    assert elapsed < 3.0, child.output()
