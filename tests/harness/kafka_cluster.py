"""A replicated Apache Kafka 4.x cluster (KRaft) from Maven Central jars, for the cluster tests.

    python tests/harness/kafka_cluster.py -- COMMAND

starts a cluster, runs COMMAND with ``TRIO_PRODUCER_CLUSTER_BOOTSTRAP`` pointing at it,
and stops it: for poking at a cluster by hand. The tests (tests/broker/test_cluster.py) start
their own, because they kill and restart its brokers.

Layout -- the "isolated KRaft" layout of Apache Kafka's own system tests: one
controller-only process (the metadata quorum, never faulted here) and three broker-only
processes, each with its own ports, data folder, log file and JVM (Java 17, small
serial-GC heap: the test machine has 2 cores). Broker failures are what the tests
inject; keeping the quorum apart means that two brokers down is "below
min.insync.replicas" (the broker says NOT_ENOUGH_REPLICAS), not "no quorum".

Each broker has two client listeners:

* ``INTERNAL`` -- inter-broker traffic, admin calls and read-back (``bootstrap``);
* ``EXTERNAL`` -- advertised at a *proxy* port (``proxied_bootstrap``): put a
  :class:`tests.harness.faultproxy.FaultProxy` in front of each broker and the producer's
  connections -- and only those -- can be cut while the brokers still see each other.

Helpers: create an RF-3 topic (``min.insync.replicas=2``), find a partition's leader and
ISR and a transactional id's coordinator, SIGKILL / SIGTERM / start a broker, wait for a
new leader or for the ISR to be full again. Every wait is bounded. JVMs are killed in
:meth:`KafkaCluster.close`, get SIGKILL if the process that started them dies (Linux),
and leftovers of an earlier run are found through a pid file and killed at start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trio_producer.testing import free_port

try:  # imported as tests.harness.kafka_cluster
    from .apache_kafka import KAFKA_VERSION, cluster_id, resolve_jars
except ImportError:  # run as a script: tests/harness/ is on sys.path
    from apache_kafka import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        KAFKA_VERSION,
        cluster_id,
        resolve_jars,
    )

BROKER_IDS = (1, 2, 3)
CONTROLLER_ID = 100
#: One pid file per process that runs a cluster: ``trio-producer-kafka-cluster.<owner>.pids``.
PID_FILES = Path(tempfile.gettempdir())
PID_FILE = PID_FILES / f"trio-producer-kafka-cluster.{os.getpid()}.pids"
WORKDIR_PREFIX = "trio-producer-cluster-"

#: JVM flags: small fixed heap, serial GC, C1 only -- cheap on a 2-core machine.
JVM_FLAGS = [
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
BROKER_HEAP = ["-Xms512m", "-Xmx512m"]
CONTROLLER_HEAP = ["-Xms192m", "-Xmx256m"]

#: Settings of every broker: replicated defaults, fast failure detection, few threads.
BROKER_SETTINGS = {
    "num.partitions": "3",
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
    "auto.create.topics.enable": "false",
    "offsets.topic.replication.factor": "3",
    "offsets.topic.num.partitions": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "transaction.state.log.num.partitions": "3",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    "group.initial.rebalance.delay.ms": "0",
    # a follower that stops fetching leaves the ISR after 4 s (default 30 s)
    "replica.lag.time.max.ms": "4000",
    "broker.heartbeat.interval.ms": "500",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "num.replica.fetchers": "1",
    "background.threads": "2",
    "log.cleaner.threads": "1",
    "log.cleaner.dedupe.buffer.size": "8388608",
    "controlled.shutdown.enable": "true",
}
#: Settings of the controller: a broker that misses heartbeats for 3 s is fenced.
CONTROLLER_SETTINGS = {
    "broker.session.timeout.ms": "3000",
    "num.io.threads": "1",
    "num.network.threads": "1",
}


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode``: over UTF-16 code units, in 32-bit signed arithmetic."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def transaction_state_partition(transactional_id: str, partitions: int) -> int:
    """The ``__transaction_state`` partition of a transactional id, as Kafka's
    ``TransactionStateManager.partitionFor`` computes it (``Utils.abs(hashCode) %
    partitions``; ``Utils.abs`` maps ``Integer.MIN_VALUE`` to 0)."""
    h = java_string_hash(transactional_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def log(message: str) -> None:
    print(f"[kafka-cluster] {message}", file=sys.stderr, flush=True)


def _kill_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the JVM gets SIGKILL when the thread that started it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def kill_leftovers() -> None:
    """SIGKILL the JVMs of earlier runs whose Python process is gone (their pid files)."""
    for pid_file in PID_FILES.glob("trio-producer-kafka-cluster.*.pids"):
        try:
            owner = int(pid_file.name.split(".")[1])
        except ValueError:
            continue
        if owner != os.getpid() and Path(f"/proc/{owner}").exists():
            log(f"a cluster of process {owner} is still running: left alone")
            continue
        for line in pid_file.read_text().splitlines():
            try:
                pid_text, folder = line.split(" ", 1)
                pid = int(pid_text)
            except ValueError:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                cmdline = b""
            if b"kafka.Kafka" in cmdline and folder.encode() in cmdline:
                log(f"killing leftover JVM {pid} ({folder})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if Path(folder).name.startswith(WORKDIR_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)
        pid_file.unlink(missing_ok=True)


@dataclass
class PartitionState:
    leader: int  # -1: no leader
    replicas: list[int]
    isr: list[int]


@dataclass
class Node:
    node_id: int
    folder: Path
    port: int  # INTERNAL (brokers) or CONTROLLER (the controller)
    external_port: int = 0  # brokers: the EXTERNAL listener
    proxy_port: int = 0  # brokers: what EXTERNAL advertises
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    log_handle: Any = field(default=None, repr=False)

    @property
    def properties(self) -> Path:
        return self.folder / "server.properties"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.folder / "kafka.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class KafkaCluster:
    """One controller and three brokers on loopback ports (see the module's docstring)."""

    def __init__(self) -> None:
        kill_leftovers()
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.cluster_id = cluster_id()
        self.controller = Node(CONTROLLER_ID, self.workdir / "controller", free_port())
        self.brokers = {
            i: Node(
                i,
                self.workdir / f"broker-{i}",
                free_port(),
                external_port=free_port(),
                proxy_port=free_port(),
            )
            for i in BROKER_IDS
        }
        self.topics: set[str] = set()
        self._jars: Path | None = None

    # ---- addresses --------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The INTERNAL listeners of all brokers (direct, never proxied)."""
        return ",".join(f"127.0.0.1:{b.port}" for b in self.brokers.values())

    @property
    def proxied_bootstrap(self) -> str:
        """The proxy ports the EXTERNAL listeners advertise (needs proxies running)."""
        return ",".join(f"127.0.0.1:{b.proxy_port}" for b in self.brokers.values())

    def live_bootstrap(self) -> str:
        live = [b for b in self.brokers.values() if b.running]
        return ",".join(f"127.0.0.1:{b.port}" for b in live) or self.bootstrap

    # ---- start ------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        start = time.monotonic()
        self._jars = resolve_jars()
        self._write_config(self.controller, self._controller_props())
        for broker in self.brokers.values():
            self._write_config(broker, self._broker_props(broker))
        for node in [self.controller, *self.brokers.values()]:
            self._format(node)
        self._spawn(self.controller)
        for broker_id in BROKER_IDS:
            self._spawn(self.brokers[broker_id])
        self.wait_brokers(set(BROKER_IDS), timeout=timeout - (time.monotonic() - start))
        log(
            f"Apache Kafka {KAFKA_VERSION}: 1 controller + {len(self.brokers)} brokers up in "
            f"{time.monotonic() - start:.1f} s; bootstrap {self.bootstrap}"
        )

    def _controller_props(self) -> dict[str, str]:
        return {
            "process.roles": "controller",
            "node.id": str(CONTROLLER_ID),
            "controller.quorum.voters": f"{CONTROLLER_ID}@127.0.0.1:{self.controller.port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"CONTROLLER://127.0.0.1:{self.controller.port}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.controller.folder / "data"),
            **BROKER_SETTINGS,
            **CONTROLLER_SETTINGS,
        }

    def _broker_props(self, broker: Node) -> dict[str, str]:
        return {
            "process.roles": "broker",
            "node.id": str(broker.node_id),
            "controller.quorum.voters": f"{CONTROLLER_ID}@127.0.0.1:{self.controller.port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"INTERNAL://127.0.0.1:{broker.port},"
            f"EXTERNAL://127.0.0.1:{broker.external_port}",
            "advertised.listeners": f"INTERNAL://127.0.0.1:{broker.port},"
            f"EXTERNAL://127.0.0.1:{broker.proxy_port}",
            "listener.security.protocol.map": "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,"
            "CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "log.dirs": str(broker.folder / "data"),
            **BROKER_SETTINGS,
        }

    def _write_config(self, node: Node, props: dict[str, str]) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        node.properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (node.folder / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.logger.kafka.server.KafkaConfig=WARN\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )

    def _java(self) -> str:
        return shutil.which("java") or "java"

    def _format(self, node: Node) -> None:
        subprocess.run(
            [
                self._java(),
                *JVM_FLAGS,
                "-Xmx256m",
                "-cp",
                f"{self._jars}/*",
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(node.properties),
                "--cluster-id",
                self.cluster_id,
                "--ignore-formatted",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _spawn(self, node: Node) -> None:
        assert not node.running, f"node {node.node_id} is already running"
        heap = CONTROLLER_HEAP if node.node_id == CONTROLLER_ID else BROKER_HEAP
        if node.log_handle is not None:
            node.log_handle.close()
        node.log_handle = open(node.folder / "kafka.log", "ab")
        # PDEATHSIG fires when the *thread* that forked dies: only fork from the main thread.
        on_main = threading.current_thread() is threading.main_thread()
        node.process = subprocess.Popen(
            [
                self._java(),
                *JVM_FLAGS,
                *heap,
                f"-Dlog4j.configuration=file:{node.folder / 'log4j.properties'}",
                "-cp",
                f"{self._jars}/*",
                "kafka.Kafka",
                str(node.properties),
            ],
            stdout=node.log_handle,
            stderr=subprocess.STDOUT,
            preexec_fn=_kill_with_parent if on_main else None,
        )
        node.started_at = time.monotonic()
        node.starts += 1
        self._write_pids()

    def _write_pids(self) -> None:
        nodes = [self.controller, *self.brokers.values()]
        lines = [f"{n.process.pid} {self.workdir}" for n in nodes if n.process is not None]
        PID_FILE.write_text("".join(line + "\n" for line in lines))

    # ---- metadata ---------------------------------------------------------------------

    def admin(self, bootstrap: str | None = None) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient(
            {"bootstrap.servers": bootstrap or self.live_bootstrap(), "log_level": 0}
        )

    def registered_brokers(self, timeout: float = 5.0) -> set[int]:
        """The brokers the metadata lists (registered and unfenced)."""
        metadata = self.admin().list_topics(timeout=timeout)
        return set(metadata.brokers)

    def partitions(self, topic: str, timeout: float = 5.0) -> dict[int, PartitionState]:
        metadata = self.admin().list_topics(topic, timeout=timeout)
        described = metadata.topics[topic]
        if described.error is not None:
            raise RuntimeError(f"metadata of {topic!r}: {described.error}")
        return {
            p: PartitionState(meta.leader, list(meta.replicas), list(meta.isrs))
            for p, meta in described.partitions.items()
        }

    def leader(self, topic: str, partition: int) -> int:
        return self.partitions(topic)[partition].leader

    def transaction_partition(self, transactional_id: str) -> int:
        """The ``__transaction_state`` partition that holds ``transactional_id``."""
        partitions = int(BROKER_SETTINGS["transaction.state.log.num.partitions"])
        return transaction_state_partition(transactional_id, partitions)

    def coordinator(self, transactional_id: str) -> int:
        """The broker that coordinates ``transactional_id``'s transactions: the leader of
        its ``__transaction_state`` partition."""
        return self.leader("__transaction_state", self.transaction_partition(transactional_id))

    # ---- topics -----------------------------------------------------------------------

    def create_topic(
        self,
        topic: str,
        *,
        partitions: int = 3,
        replication_factor: int = 3,
        min_insync_replicas: int = 2,
        timeout: float = 60.0,
    ) -> None:
        """Create an RF-3 topic and wait until every partition has a leader and a full ISR."""
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        admin = self.admin()
        new = NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config={"min.insync.replicas": str(min_insync_replicas)},
        )
        for future in admin.create_topics([new], operation_timeout=timeout).values():
            future.result(timeout)
        self.topics.add(topic)
        self.wait_isr(topic, size=replication_factor, timeout=timeout)

    # ---- faults -----------------------------------------------------------------------

    def kill(self, broker_id: int) -> None:
        """SIGKILL a broker (no controlled shutdown, no flush)."""
        self.kill_nowait(broker_id)
        self.reap(broker_id)

    def kill_nowait(self, broker_id: int) -> None:
        """Send SIGKILL and return at once (from a hook that must not block); then
        :meth:`reap`."""
        node = self.brokers[broker_id]
        assert node.process is not None, f"broker {broker_id} was never started"
        assert node.running, f"broker {broker_id} is not running"
        node.process.kill()

    def reap(self, broker_id: int) -> None:
        """Wait until a broker sent SIGKILL is gone."""
        node = self.brokers[broker_id]
        assert node.process is not None, f"broker {broker_id} was never started"
        node.process.wait(30)
        log(f"broker {broker_id}: SIGKILL")

    def terminate(self, broker_id: int, timeout: float = 60.0) -> float:
        """SIGTERM a broker (controlled shutdown) and wait for it to exit; return seconds.

        SIGKILL after ``timeout`` (and raise: a controlled shutdown that hangs is a finding).
        """
        node = self.brokers[broker_id]
        assert node.process is not None, f"broker {broker_id} was never started"
        assert node.running, f"broker {broker_id} is not running"
        start = time.monotonic()
        node.process.terminate()
        try:
            node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(30)
            raise RuntimeError(
                f"broker {broker_id} did not stop within {timeout} s of SIGTERM"
            ) from None
        took = time.monotonic() - start
        log(f"broker {broker_id}: SIGTERM, exited in {took:.1f} s")
        return took

    def start_broker(self, broker_id: int) -> None:
        """Start a stopped broker again, on its own ports and data folder (no wait)."""
        self._spawn(self.brokers[broker_id])
        log(f"broker {broker_id}: started again")

    # ---- bounded waits ----------------------------------------------------------------

    def _check_alive(self) -> None:
        for node in [self.controller, *self.brokers.values()]:
            if node.process is not None and node.process.poll() not in (None, -9, -15, 143):
                raise RuntimeError(
                    f"node {node.node_id} exited with {node.process.returncode}:\n"
                    + node.log_tail()
                )

    def _until(self, what: str, check: Any, timeout: float, interval: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            self._check_alive()
            try:
                result = check()
            except (AttributeError, TypeError, NameError):
                raise  # a bug here, not a cluster still settling
            except Exception as exc:  # metadata not ready, broker going away, ...
                result, last_error = None, exc
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{what}: not within {timeout:.0f} s (last error {last_error!r})"
                )
            time.sleep(interval)

    def wait_brokers(self, ids: set[int], timeout: float = 90.0) -> float:
        """Wait until the metadata lists every broker in ``ids``; return seconds waited."""
        start = time.monotonic()
        self._until(
            f"brokers {sorted(ids)} registered", lambda: ids <= self.registered_brokers(), timeout
        )
        return time.monotonic() - start

    def wait_leader(
        self, topic: str, partition: int, *, not_on: set[int], timeout: float = 60.0
    ) -> tuple[int, float]:
        """Wait for a leader of the partition that is not in ``not_on``; return it and seconds."""
        start = time.monotonic()

        def check() -> int | None:
            leader = self.leader(topic, partition)
            return leader if leader >= 0 and leader not in not_on else None

        leader = self._until(f"{topic}[{partition}] new leader", check, timeout)
        return leader, time.monotonic() - start

    def wait_isr(self, topic: str, *, size: int = 3, timeout: float = 90.0) -> float:
        """Wait until every partition of ``topic`` has a leader and ``size`` in-sync replicas."""
        start = time.monotonic()

        def check() -> bool:
            parts = self.partitions(topic)
            return bool(parts) and all(p.leader >= 0 and len(p.isr) >= size for p in parts.values())

        self._until(f"{topic}: ISR of {size} on every partition", check, timeout)
        return time.monotonic() - start

    def heal(self, timeout: float = 120.0) -> None:
        """Start every stopped broker and wait until every known topic's ISR is full."""
        deadline = time.monotonic() + timeout
        stopped = [i for i, b in self.brokers.items() if not b.running]
        for broker_id in stopped:
            self.start_broker(broker_id)
        self.wait_brokers(set(BROKER_IDS), timeout=deadline - time.monotonic())
        for topic in sorted(self.topics):
            self.wait_isr(topic, timeout=max(1.0, deadline - time.monotonic()))

    # ---- stop -------------------------------------------------------------------------

    def close(self) -> None:
        """SIGKILL every JVM (data is thrown away anyway) and remove the folders."""
        for node in [*self.brokers.values(), self.controller]:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
        for node in [*self.brokers.values(), self.controller]:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(30)
            if node.log_handle is not None:
                node.log_handle.close()
                node.log_handle = None
        PID_FILE.unlink(missing_ok=True)
        if os.environ.get("TRIO_PRODUCER_CLUSTER_KEEP"):
            log(f"kept {self.workdir} (TRIO_PRODUCER_CLUSTER_KEEP)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    with KafkaCluster() as cluster:
        env = {
            **os.environ,
            "TRIO_PRODUCER_CLUSTER_BOOTSTRAP": cluster.bootstrap,
            "TRIO_PRODUCER_CLUSTER_WORKDIR": str(cluster.workdir),
        }
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
