"""Child processes for the tests: a ``Child`` whose output threads collect (so waits
can time out), the child programs' folder (``APPS``), and a broker address that never
answers (``black_holed_broker``)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import signal
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
