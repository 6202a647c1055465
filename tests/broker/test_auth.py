"""Authentication and TLS, on Apache Kafka (the listeners tests/harness/apache_kafka.py starts).

Skipped unless the suite runs against that broker (Tansu's authentication is not
Kafka's SASL/TLS listeners).
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial

import pytest
import trio

from trio_producer import KafkaFatalError, ProducerConfig, open_producer
from trio_producer.testing import consume_all, create_topics

SASL = os.environ.get("TRIO_PRODUCER_TEST_SASL_BOOTSTRAP")
SSL = os.environ.get("TRIO_PRODUCER_TEST_SSL_BOOTSTRAP")
USER = os.environ.get("TRIO_PRODUCER_TEST_SASL_USER", "")
PASSWORD = os.environ.get("TRIO_PRODUCER_TEST_SASL_PASSWORD", "")
CA = os.environ.get("TRIO_PRODUCER_TEST_SSL_CA", "")

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not (SASL and SSL), reason="needs Apache Kafka with SASL/TLS listeners"),
]


def sasl_props(password: str) -> dict[str, str | int | float | bool]:
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": USER,
        "sasl.password": password,
    }


async def test_sasl_plain_right_credentials_deliver(kafka_bootstrap: str, kafka_topic: str) -> None:
    assert SASL is not None
    async with open_producer(bootstrap_servers=SASL, librdkafka=sasl_props(PASSWORD)) as producer:
        meta = await producer.send_and_wait(kafka_topic, b"authenticated")
        await producer.send(kafka_topic, b"second")
    assert (meta.partition, meta.offset) == (0, 0)
    records = await trio.to_thread.run_sync(
        partial(consume_all, kafka_bootstrap, kafka_topic, expected=2)
    )
    assert [r.value for r in records] == [b"authenticated", b"second"]


async def test_sasl_wrong_password_fails_fast_and_hands_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert SASL is not None
    caplog.set_level(logging.DEBUG, logger="trio_producer")
    wrong = "not-the-password-42"
    config = ProducerConfig(bootstrap_servers=SASL, close_timeout=30, librdkafka=sasl_props(wrong))
    start = time.monotonic()
    with pytest.raises(KafkaFatalError) as info:
        async with open_producer(config) as producer:
            for i in range(10):
                await producer.send("auth-topic", b"%d" % i)
            await trio.sleep(60)
    elapsed = time.monotonic() - start
    assert elapsed < 10  # seconds, not close_timeout
    assert info.value.error.name == "_AUTHENTICATION"
    assert "Authentication failed" in str(info.value)
    assert sorted(m.value for m in info.value.messages) == [b"%d" % i for i in range(10)]
    for text in [str(info.value), repr(config), *(r.getMessage() for r in caplog.records)]:
        assert wrong not in text
        assert PASSWORD not in text


async def test_tls_with_the_test_ca_delivers(kafka_bootstrap: str, kafka_topic: str) -> None:
    assert SSL is not None
    props: dict[str, str | int | float | bool] = {
        "security.protocol": "SSL",
        "ssl.ca.location": CA,
    }
    async with open_producer(bootstrap_servers=SSL, librdkafka=props) as producer:
        meta = await producer.send_and_wait(kafka_topic, b"over-tls")
    assert meta.offset == 0
    records = await trio.to_thread.run_sync(
        partial(consume_all, kafka_bootstrap, kafka_topic, expected=1)
    )
    assert [r.value for r in records] == [b"over-tls"]


async def test_tls_with_an_untrusted_certificate_fails_fast(kafka_bootstrap: str) -> None:
    assert SSL is not None
    create_topics(kafka_bootstrap, ["tls-untrusted"])
    start = time.monotonic()
    with pytest.raises(KafkaFatalError) as info:
        # no ssl.ca.location: the system CAs do not trust the test CA
        async with open_producer(
            bootstrap_servers=SSL, close_timeout=30, librdkafka={"security.protocol": "SSL"}
        ) as producer:
            await producer.send("tls-untrusted", b"x")
            await trio.sleep(60)
    assert time.monotonic() - start < 10
    assert info.value.error.name == "_SSL"
    assert [m.value for m in info.value.messages] == [b"x"]
