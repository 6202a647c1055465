"""Apache Kafka 4.x (KRaft, one node) from Maven Central jars, for the test suite.

    python tests/harness/apache_kafka.py -- python -m pytest -m broker

resolves the jars with ``mvn`` (tests/harness/apache-kafka/pom.xml) into a cache folder, makes a
throw-away CA and server certificate with ``openssl``, formats storage, starts the
broker with Java 17 on free loopback ports -- PLAINTEXT, SASL_PLAINTEXT (PLAIN), SSL and
SASL_PLAINTEXT (OAUTHBEARER, Kafka's unsecured-JWT validator, for tests only) listeners,
and a PLAINTEXT one (``PROXIED``) advertised at a *proxy* port: a test that runs a
:class:`tests.harness.faultproxy.FaultProxy` from ``TRIO_PRODUCER_TEST_PROXIED_BOOTSTRAP``
to ``TRIO_PRODUCER_TEST_PROXIED_TARGET`` can cut its clients' connections (and only
theirs) -- waits until it answers, runs the command with the environment pointing the suite at
it, and stops the broker. No Docker, no download outside the package registries.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# (run as a script with the project installed: its free_port, not a copy)
from trio_producer.testing import free_port

HERE = Path(__file__).resolve().parent
POM = HERE / "apache-kafka" / "pom.xml"
KAFKA_VERSION = "4.1.1"
JARS = Path(
    os.environ.get(
        "TRIO_PRODUCER_KAFKA_JARS",
        Path.home() / ".cache" / "trio-producer" / f"kafka-{KAFKA_VERSION}-jars",
    )
)
SASL_USER, SASL_PASSWORD = "alice", "alice-secret"
STORE_PASSWORD = "test-store-pass"


def log(message: str) -> None:
    print(f"[apache-kafka] {message}", file=sys.stderr, flush=True)


def resolve_jars() -> Path:
    marker = JARS / ".complete"
    if marker.exists():
        return JARS
    start = time.monotonic()
    JARS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={JARS}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={KAFKA_VERSION}",
        ],
        check=True,
    )
    marker.touch()
    log(f"resolved {len(list(JARS.glob('*.jar')))} jars in {time.monotonic() - start:.1f} s")
    return JARS


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, and a PKCS12 keystore for the broker."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=folder, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=trio-producer-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    openssl(
        "pkcs12",
        "-export",
        "-in",
        "server.pem",
        "-inkey",
        "server.key",
        "-certfile",
        "ca.pem",
        "-out",
        "server.p12",
        "-passout",
        f"pass:{STORE_PASSWORD}",
    )
    return {"ca": folder / "ca.pem", "keystore": folder / "server.p12"}


def cluster_id() -> str:
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class ApacheKafka:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="trio-producer-kafka-"))
        self.plain = free_port()
        self.controller = free_port()
        self.sasl = free_port()
        self.ssl = free_port()
        self.oauth = free_port()
        self.proxied = free_port()  # the PROXIED listener
        self.proxy = free_port()  # what it advertises (a test's FaultProxy listens there)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        jars = resolve_jars()
        certs = make_certificates(self.workdir)
        self.ca = certs["ca"]
        props = self.workdir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.plain},"
                    f"CONTROLLER://127.0.0.1:{self.controller},"
                    f"SASL_PLAINTEXT://127.0.0.1:{self.sasl},SSL://127.0.0.1:{self.ssl},"
                    f"OAUTH://127.0.0.1:{self.oauth},PROXIED://127.0.0.1:{self.proxied}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.plain},"
                    f"SASL_PLAINTEXT://127.0.0.1:{self.sasl},SSL://127.0.0.1:{self.ssl},"
                    f"OAUTH://127.0.0.1:{self.oauth},PROXIED://127.0.0.1:{self.proxy}",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
                    "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,OAUTH:SASL_PLAINTEXT,"
                    "PROXIED:PLAINTEXT",
                    "sasl.enabled.mechanisms=PLAIN",
                    # OAUTHBEARER with unsecured JWTs (alg none, a "sub" claim): tests only.
                    "listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER",
                    "listener.name.oauth.oauthbearer.sasl.jaas.config="
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule "
                    'required unsecuredLoginStringClaim_sub="admin";',
                    "listener.name.oauth.oauthbearer.sasl.server.callback.handler.class="
                    "org.apache.kafka.common.security.oauthbearer.internals.unsecured."
                    "OAuthBearerUnsecuredValidatorCallbackHandler",
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config="
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'user_{SASL_USER}="{SASL_PASSWORD}";',
                    "ssl.keystore.type=PKCS12",
                    f"ssl.keystore.location={certs['keystore']}",
                    f"ssl.keystore.password={STORE_PASSWORD}",
                    f"ssl.key.password={STORE_PASSWORD}",
                    f"log.dirs={self.workdir / 'data'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        (self.workdir / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        classpath = f"{jars}/*"
        java = shutil.which("java") or "java"
        start = time.monotonic()
        subprocess.run(
            [
                java,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(props),
                "--cluster-id",
                cluster_id(),
                "--ignore-formatted",
            ],
            check=True,
            capture_output=True,
        )
        self.log_file = open(self.workdir / "kafka.log", "wb")
        self.process = subprocess.Popen(
            [
                java,
                "-Xmx768m",
                "-Xms256m",
                "-XX:+UseSerialGC",
                f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(start)

    def _wait_ready(self, start: float, timeout: float = 120.0) -> None:
        from confluent_kafka.admin import AdminClient

        while time.monotonic() - start < timeout:
            if self.process is not None and self.process.poll() is not None:
                tail = (self.workdir / "kafka.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Apache Kafka exited at start:\n{tail}")
            try:
                admin = AdminClient(
                    {"bootstrap.servers": f"127.0.0.1:{self.plain}", "log_level": 0}
                )
                admin.list_topics(timeout=2)
                log(
                    f"Apache Kafka {KAFKA_VERSION} up in {time.monotonic() - start:.1f} s "
                    f"on 127.0.0.1:{self.plain}"
                )
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"Apache Kafka did not answer within {timeout} s")

    def env(self) -> dict[str, str]:
        return {
            "TRIO_PRODUCER_TEST_BOOTSTRAP": f"127.0.0.1:{self.plain}",
            "TRIO_PRODUCER_TEST_BROKER_KIND": "apache-kafka",
            "TRIO_PRODUCER_TEST_SASL_BOOTSTRAP": f"127.0.0.1:{self.sasl}",
            "TRIO_PRODUCER_TEST_SASL_USER": SASL_USER,
            "TRIO_PRODUCER_TEST_SASL_PASSWORD": SASL_PASSWORD,
            "TRIO_PRODUCER_TEST_SSL_BOOTSTRAP": f"127.0.0.1:{self.ssl}",
            "TRIO_PRODUCER_TEST_SSL_CA": str(self.ca),
            "TRIO_PRODUCER_TEST_OAUTH_BOOTSTRAP": f"127.0.0.1:{self.oauth}",
            "TRIO_PRODUCER_TEST_PROXIED_BOOTSTRAP": f"127.0.0.1:{self.proxy}",
            "TRIO_PRODUCER_TEST_PROXIED_TARGET": f"127.0.0.1:{self.proxied}",
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
            self.log_file.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    kafka = ApacheKafka()
    try:
        kafka.start()
        env = {**os.environ, **kafka.env()}
        return subprocess.run(command, env=env).returncode
    finally:
        kafka.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
