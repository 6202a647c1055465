"""Hooks for what librdkafka calls back (OAuth tokens, statistics), typed keyword config.

The OAUTHBEARER tests need Apache Kafka with an OAUTHBEARER listener
(``python tests/harness/apache_kafka.py -- python -m pytest -m broker -k oauth``); the rest run
against the embedded broker or none.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
import time
import typing

import attrs
import pytest
import trio

from trio_producer import (
    ConfigError,
    KafkaFatalError,
    KafkaStatistics,
    OAuthToken,
    ProducerConfig,
    ProducerFields,
    open_producer,
)
from trio_producer._hooks import OAuthCallback

from ..harness.typecheck import mypy_strict

if typing.TYPE_CHECKING:
    from pathlib import Path

    from trio_producer._message import KafkaErrorInfo

OAUTH = os.environ.get("TRIO_PRODUCER_TEST_OAUTH_BOOTSTRAP")


# ---- typed keyword configuration ---------------------------------------------------------


def test_producer_fields_match_producer_config() -> None:
    """ProducerConfig is the one source of truth: the TypedDict must follow it."""
    config_types = typing.get_type_hints(ProducerConfig)
    fields_types = typing.get_type_hints(ProducerFields)
    assert list(fields_types) == [f.name for f in attrs.fields(ProducerConfig)]
    assert fields_types == {f.name: config_types[f.name] for f in attrs.fields(ProducerConfig)}
    # (with string annotations, Python 3.11 does not fill __required_keys__)
    hints = typing.get_type_hints(ProducerFields, include_extras=True)
    assert hints["bootstrap_servers"] == typing.Required[str]


SNIPPET = """\
from trio_producer import ProducerConfig, open_producer


async def main() -> None:
    async with open_producer(bootstrap_server="x") as p:
        pass
    async with open_producer(bootstrap_servers="x", linger="fast") as p:
        pass
    async with open_producer(bootstrap_servers="x", linger=0.1, delivery_timeout=None) as p:
        pass
    async with open_producer(ProducerConfig("x"), on_delivery_error=print) as p:
        pass
"""


def test_mypy_rejects_a_misspelt_field(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    proc = mypy_strict(SNIPPET, tmp_path)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert any(
        ':5: error: Unexpected keyword argument "bootstrap_server"' in line
        and 'did you mean "bootstrap_servers"' in line
        for line in errors
    ), proc.stdout
    assert any(":7: error:" in line for line in errors), proc.stdout  # linger="fast"
    assert not any(f":{n}: error:" in line for n in (9, 11) for line in errors), proc.stdout


# ---- delivery timeout --------------------------------------------------------------------


def test_delivery_timeout_maps_to_message_timeout_ms() -> None:
    assert "message.timeout.ms" not in ProducerConfig("b:1").librdkafka_config()
    assert (
        ProducerConfig("b:1", delivery_timeout=2.5).librdkafka_config()["message.timeout.ms"]
        == 2500
    )
    assert (
        ProducerConfig("b:1", delivery_timeout=math.inf).librdkafka_config()["message.timeout.ms"]
        == 0
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "delivery_timeout must be a number of seconds > 0 (math.inf: no limit) or None, not 0"),
        ("5s", "delivery_timeout must be a number of seconds or None, not '5s'"),
        (1e10, "delivery_timeout must be at most 2147483 seconds (math.inf: no limit), not "),
    ],
)
def test_delivery_timeout_validation(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProducerConfig("b:1", delivery_timeout=value)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_delivery_timeout_and_message_timeout_ms_conflict() -> None:
    with pytest.raises(ConfigError, match="pass either delivery_timeout or librdkafka property"):
        ProducerConfig("b:1", delivery_timeout=5, librdkafka={"message.timeout.ms": 1000})


@pytest.mark.broker
async def test_send_and_wait_is_bounded_by_delivery_timeout() -> None:
    from trio_producer import DeliveryError
    from trio_producer.testing import free_port

    start = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        async with open_producer(
            bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout=1.0, close_timeout=5
        ) as producer:
            await producer.send_and_wait("t", b"x")
    assert info.value.error.name == "_MSG_TIMED_OUT"
    assert time.monotonic() - start < 5


# ---- librdkafka callbacks refused in the librdkafka dict --------------------------------


@pytest.mark.parametrize(
    ("name", "hook"), [("oauth_cb", "oauth_token"), ("stats_cb", "on_statistics")]
)
def test_callbacks_in_the_librdkafka_dict_point_to_the_hooks(name: str, hook: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProducerConfig("b:1", librdkafka={name: print})  # type: ignore[dict-item]
    assert f"librdkafka property {name!r} is not allowed: pass open_producer({hook}=...)" in str(
        info.value
    )


async def test_async_hooks_are_refused() -> None:
    async def stats(_s: KafkaStatistics) -> None:
        pass

    with pytest.raises(TypeError, match="on_statistics must be a plain"):
        async with open_producer(bootstrap_servers="b:1", on_statistics=stats):
            pass


async def test_oauth_token_needs_the_oauthbearer_mechanism() -> None:
    with pytest.raises(ConfigError, match="oauth_token needs librdkafka="):
        async with open_producer(bootstrap_servers="b:1", oauth_token=lambda: OAuthToken("t", 0)):
            pass


# ---- statistics --------------------------------------------------------------------------


@pytest.mark.broker
async def test_statistics_arrive_on_the_trio_thread(kafka_bootstrap: str, kafka_topic: str) -> None:
    seen: list[tuple[KafkaStatistics, bool]] = []
    got_two = trio.Event()

    def on_statistics(stats: KafkaStatistics) -> None:
        trio.lowlevel.current_task()  # raises RuntimeError off the Trio thread
        seen.append((stats, threading.current_thread() is threading.main_thread()))
        if len(seen) >= 2:
            got_two.set()

    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        librdkafka={"statistics.interval.ms": 100},
        on_statistics=on_statistics,
    ) as producer:
        assert producer.kafka_statistics is None or isinstance(
            producer.kafka_statistics, KafkaStatistics
        )
        await producer.send_and_wait(kafka_topic, b"x")
        with trio.fail_after(10):
            await got_two.wait()
        latest = producer.kafka_statistics
    assert latest is not None
    assert any(latest is stats for stats, _ in seen)
    assert all(on_trio for _, on_trio in seen)
    assert latest.raw["type"] == "producer"
    assert max(stats.brokers_up for stats, _ in seen) >= 1
    assert latest.throttle_ms == 0
    assert "raw" not in repr(latest)


@pytest.mark.broker
async def test_on_statistics_alone_turns_statistics_on(kafka_bootstrap: str) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap, on_statistics=lambda s: None) as p:
        assert p._tracker.client  # opened
    # the default interval (5 s) is set only when the user did not choose one
    from trio_producer._hooks import DEFAULT_STATISTICS_INTERVAL_MS

    assert DEFAULT_STATISTICS_INTERVAL_MS == 5000


def test_throttling_is_visible_in_the_snapshot() -> None:
    doc = {
        "type": "producer",
        "time": 1_800_000_000,
        "msg_cnt": 12,
        "msg_size": 3400,
        "brokers": {
            "b1:9092/1": {"state": "UP", "throttle": {"max": 250, "avg": 120}},
            "b2:9092/2": {"state": "DOWN", "throttle": {"max": 0, "avg": 0}},
        },
    }
    stats = KafkaStatistics.from_json(json.dumps(doc))
    assert (stats.queued_messages, stats.queued_bytes, stats.throttle_ms) == (12, 3400, 250)
    assert dict(stats.brokers) == {"b1:9092/1": "UP", "b2:9092/2": "DOWN"}
    assert stats.brokers_up == 1


# ---- OAuth: the callback's rules, without a broker ----------------------------------------


def test_oauth_callback_hands_out_the_first_token_then_asks_the_provider() -> None:
    calls: list[int] = []
    reported: list[KafkaErrorInfo] = []

    def provider() -> OAuthToken:
        calls.append(1)
        return OAuthToken("second", time.time() + 60, principal="alice", extensions={"a": "b"})

    callback = OAuthCallback(provider, OAuthToken("first", time.time() + 60), reported.append)
    assert callback("")[0] == "first"
    assert calls == []
    assert callback("")[:3] == ("second", callback.expires_at, "alice")
    assert callback("")[3] == {"a": "b"}
    assert reported == []
    assert "second" not in repr(OAuthToken("second", 1.0))


def test_a_failed_refresh_with_a_valid_token_is_a_warning_then_fatal_at_expiry() -> None:
    reported: list[KafkaErrorInfo] = []

    def provider() -> OAuthToken:
        raise OSError("identity provider down")

    callback = OAuthCallback(provider, OAuthToken("first", time.time() + 0.3), reported.append)
    callback("")
    with pytest.raises(OSError, match="identity provider down"):
        callback("")
    assert [(e.name, e.retriable) for e in reported] == [("_AUTHENTICATION", True)]
    assert "the current token is still valid" in reported[0].reason
    callback.check_expiry()
    assert len(reported) == 1
    time.sleep(0.35)
    callback.check_expiry()
    callback.check_expiry()
    assert [(e.name, e.retriable) for e in reported][1:] == [("_AUTHENTICATION", False)]
    assert "there is no valid token: the producer fails" in reported[1].reason


def test_a_provider_returning_the_wrong_type_is_a_failure() -> None:
    reported: list[KafkaErrorInfo] = []
    callback = OAuthCallback(
        lambda: ("tok", 1.0),  # type: ignore[arg-type,return-value]
        OAuthToken("first", 0),
        reported.append,
    )
    callback("")
    with pytest.raises(TypeError, match=r"must return a trio_producer\.OAuthToken, not tuple"):
        callback("")
    assert reported[0].retriable is False  # the first token had already expired


async def test_a_provider_failing_at_open_fails_fast() -> None:
    def provider() -> OAuthToken:
        raise PermissionError("no credentials")

    start = time.monotonic()
    with pytest.raises(KafkaFatalError) as info:
        async with open_producer(
            bootstrap_servers="127.0.0.1:1",
            oauth_token=provider,
            librdkafka={"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER"},
        ):
            pytest.fail("opened")  # pragma: no cover
    assert time.monotonic() - start < 1
    assert info.value.error.name == "_AUTHENTICATION"
    assert "the oauth_token provider raised PermissionError('no credentials')" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


async def test_a_provider_hanging_at_open_does_not_hold_off_cancellation() -> None:
    """The first token is fetched in a worker thread; a provider that hangs (an identity
    provider that never answers) held ``open_producer`` until it returned, past the
    caller's deadline. Now that thread is abandoned: the deadline wins (and the thread
    ends on its own when the provider returns)."""
    release = threading.Event()
    called = threading.Event()
    finished = threading.Event()

    def provider() -> OAuthToken:
        called.set()
        try:
            assert release.wait(timeout=30), "never released"
            return OAuthToken("late", time.time() + 60)
        finally:
            finished.set()

    start = time.monotonic()
    try:
        with trio.move_on_after(0.5) as scope:
            async with open_producer(
                bootstrap_servers="127.0.0.1:1",
                oauth_token=provider,
                librdkafka={"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER"},
            ):
                pytest.fail("opened")  # pragma: no cover
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert scope.cancelled_caught
    assert called.is_set()
    assert elapsed < 2.0, elapsed  # the provider alone would hold it for 30 s
    # The abandoned call finishes once released (no thread is left waiting).
    assert await trio.to_thread.run_sync(finished.wait, 10)


# ---- OAuth against Apache Kafka's OAUTHBEARER listener (unsecured JWTs) -------------------


def unsecured_jwt(sub: str, lifetime: float) -> tuple[str, float]:
    """An unsecured JWT (alg none), as Kafka's test validator takes: sub, iat, exp."""

    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    now = time.time()
    expires = now + lifetime
    claims = {"sub": sub, "iat": int(now), "exp": int(expires)}
    return f"{part({'alg': 'none'})}.{part(claims)}.", expires


OAUTH_PROPS: dict[str, str | int | float | bool] = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "OAUTHBEARER",
}

oauth_broker = pytest.mark.skipif(
    not OAUTH,
    reason="needs Apache Kafka with an OAUTHBEARER listener (tests/harness/apache_kafka.py)",
)


@pytest.mark.broker
@oauth_broker
async def test_oauth_right_token_delivers(kafka_bootstrap: str, kafka_topic: str) -> None:
    from trio_producer.testing import consume_all

    assert OAUTH is not None
    threads: list[str] = []

    def provider() -> OAuthToken:
        threads.append(threading.current_thread().name)
        token, expires = unsecured_jwt("alice", 3600)
        return OAuthToken(token, expires, principal="alice")

    async with open_producer(
        bootstrap_servers=OAUTH, librdkafka=OAUTH_PROPS, oauth_token=provider
    ) as producer:
        meta = await producer.send_and_wait(kafka_topic, b"with-a-token")
    assert meta.offset == 0
    assert threads
    assert threading.main_thread().name not in threads
    records = await trio.to_thread.run_sync(
        lambda: consume_all(kafka_bootstrap, kafka_topic, expected=1)
    )
    assert [r.value for r in records] == [b"with-a-token"]


@pytest.mark.broker
@oauth_broker
async def test_oauth_rejected_token_fails_fast_and_hands_back() -> None:
    assert OAUTH is not None

    def provider() -> OAuthToken:
        token, expires = unsecured_jwt("alice", 3600)
        return OAuthToken(token + "not-a-signature", expires)  # not an unsecured JWT

    start = time.monotonic()
    with pytest.raises(KafkaFatalError) as info:
        async with open_producer(
            bootstrap_servers=OAUTH, close_timeout=30, librdkafka=OAUTH_PROPS, oauth_token=provider
        ) as producer:
            for i in range(5):
                await producer.send("oauth-topic", b"%d" % i)
            await trio.sleep(60)
    assert time.monotonic() - start < 10
    assert info.value.error.name in {"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED"}
    assert sorted(m.value for m in info.value.messages) == [b"%d" % i for i in range(5)]


@pytest.mark.broker
@oauth_broker
async def test_oauth_provider_failing_after_expiry_fails_and_hands_back() -> None:
    assert OAUTH is not None
    calls = 0

    def provider() -> OAuthToken:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("identity provider down")
        token, expires = unsecured_jwt("alice", 3)
        return OAuthToken(token, expires)

    start = time.monotonic()
    with pytest.raises(KafkaFatalError) as info:
        async with open_producer(
            bootstrap_servers=OAUTH, close_timeout=30, librdkafka=OAUTH_PROPS, oauth_token=provider
        ) as producer:
            await producer.send_and_wait("oauth-expiry", b"before")
            with trio.move_on_after(20):
                while True:
                    await producer.send("oauth-expiry", b"after")
                    await trio.sleep(0.5)
    assert time.monotonic() - start < 10
    assert info.value.error.name == "_AUTHENTICATION"
    # Whichever says it first: our check of the token's expiry ("the oauth_token provider
    # raised ...; there is no valid token"), or the broker refusing a connection without one.
    assert all(m.value == b"after" for m in info.value.messages)
