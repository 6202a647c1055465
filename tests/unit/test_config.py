"""ProducerConfig validation, defaults, secrets, and librdkafka's own errors at open."""

from __future__ import annotations

import time

import pytest

from trio_producer import ConfigError, ProducerConfig, open_producer


def test_defaults_are_safe() -> None:
    config = ProducerConfig(bootstrap_servers="localhost:9092")
    assert (config.linger, config.batch_max_messages, config.batch_max_bytes) == (
        0.005,
        10_000,
        1_048_576,
    )
    assert (config.queue_capacity, config.close_timeout) == (10_000, 30.0)
    props = config.librdkafka_config()
    assert props["enable.idempotence"] is True
    assert props["acks"] == "all"
    assert props["bootstrap.servers"] == "localhost:9092"


def test_bootstrap_servers_is_positional_and_the_rest_keyword_only() -> None:
    assert ProducerConfig("b:1", linger=0.5).linger == 0.5
    with pytest.raises(TypeError):
        ProducerConfig("b:1", 0.5)  # type: ignore[misc]


def test_librdkafka_overrides_the_defaults() -> None:
    config = ProducerConfig(
        bootstrap_servers="b:1",
        librdkafka={"enable.idempotence": False, "acks": 1, "compression.type": "lz4"},
    )
    props = config.librdkafka_config()
    assert props["acks"] == 1
    assert props["compression.type"] == "lz4"
    assert props["enable.idempotence"] is False


ACKS_WITH_IDEMPOTENCE = (
    "librdkafka={{'{name}': {value!r}}} needs idempotence off: trio_producer turns "
    "enable.idempotence on by default, and librdkafka allows it only with acks=all "
    "(no duplicates, order kept across retries); to accept that risk, pass "
    "librdkafka={{'enable.idempotence': False, '{name}': {value!r}}}"
)


@pytest.mark.parametrize(
    ("name", "value"),
    [("acks", 1), ("acks", "1"), ("acks", 0), ("request.required.acks", "0")],
)
def test_acks_below_all_says_idempotence_is_our_default_and_how_to_turn_it_off(
    name: str, value: object
) -> None:
    with pytest.raises(ConfigError) as caught:
        ProducerConfig("b:1", librdkafka={name: value})
    assert str(caught.value) == ACKS_WITH_IDEMPOTENCE.format(name=name, value=value)
    # turned off as it says: accepted
    props = ProducerConfig("b:1", librdkafka={"enable.idempotence": False, name: value})
    assert props.librdkafka_config()[name] == value


def test_acks_below_all_with_idempotence_set_on_explicitly() -> None:
    with pytest.raises(ConfigError) as caught:
        ProducerConfig("b:1", librdkafka={"enable.idempotence": "true", "acks": 1})
    assert str(caught.value) == (
        "librdkafka={'acks': 1} contradicts enable.idempotence='true': librdkafka allows "
        "idempotence only with acks=all; set one of them differently"
    )


@pytest.mark.parametrize("value", ["all", -1, "-1"])
def test_acks_all_is_fine_with_idempotence(value: object) -> None:
    assert ProducerConfig("b:1", librdkafka={"acks": value}).librdkafka_config()["acks"] == value


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"bootstrap_servers": ""},
            "bootstrap_servers must be a non-empty 'host:port[,host:port...]' string, not ''",
        ),
        (
            {"bootstrap_servers": 9092},
            "bootstrap_servers must be a non-empty 'host:port[,host:port...]' string, not 9092",
        ),
        ({"linger": -0.1}, "linger must be a finite number of seconds >= 0, not -0.1"),
        ({"linger": float("nan")}, "linger must be a finite number of seconds >= 0, not nan"),
        ({"linger": "5ms"}, "linger must be a number of seconds, not '5ms'"),
        (
            {"close_timeout": float("inf")},
            "close_timeout must be a finite number of seconds >= 0, not inf",
        ),
        ({"batch_max_messages": 0}, "batch_max_messages must be an int >= 1, not 0"),
        ({"batch_max_bytes": 1.5}, "batch_max_bytes must be an int >= 1, not 1.5"),
        ({"queue_capacity": True}, "queue_capacity must be an int >= 1, not True"),
        (
            {"librdkafka": {"bootstrap.servers": "x"}},
            "librdkafka property 'bootstrap.servers' is not allowed: "
            "use the bootstrap_servers field",
        ),
        (
            {"librdkafka": {"acks": None}},
            "librdkafka property 'acks' must be a str, int, float or bool, not None",
        ),
        (
            {"librdkafka": {"sasl.password": ["hunter2"]}},
            "librdkafka property 'sasl.password' must be a str, int, float or bool, not ***",
        ),
        (
            {"librdkafka": "acks=all"},
            "librdkafka must be a mapping of property names to values, not 'acks=all'",
        ),
    ],
)
def test_bad_values_raise_config_error_naming_field_value_and_allowed(
    fields: dict[str, object], message: str
) -> None:
    fields = {"bootstrap_servers": "localhost:9092", **fields}
    with pytest.raises(ConfigError) as info:
        ProducerConfig(**fields)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_repr_never_shows_secrets() -> None:
    config = ProducerConfig(
        bootstrap_servers="b:1",
        librdkafka={
            "sasl.username": "alice",
            "sasl.password": "hunter2",
            "ssl.key.password": "s3cret",
            "sasl.oauthbearer.client.secret": "tok",
        },
    )
    text = repr(config)
    assert "alice" in text
    for secret in ("hunter2", "s3cret", "tok"):
        assert secret not in text
    assert text.count("'***'") == 3


def test_config_is_frozen() -> None:
    config = ProducerConfig(bootstrap_servers="b:1")
    with pytest.raises(AttributeError):
        config.linger = 1.0  # type: ignore[misc]


async def test_unknown_librdkafka_property_fails_at_open_with_librdkafkas_words() -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        async with open_producer(bootstrap_servers="127.0.0.1:1", librdkafka={"no.such.thing": 1}):
            pytest.fail("the block must not run")  # pragma: no cover
    assert str(info.value) == (
        'librdkafka rejected the configuration: No such configuration property: "no.such.thing"'
    )
    assert time.monotonic() - start < 1.0


async def test_bad_librdkafka_value_fails_at_open_without_showing_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        async with open_producer(
            bootstrap_servers="127.0.0.1:1",
            librdkafka={"acks": "banana", "sasl.password": "hunter2"},
        ):
            pytest.fail("the block must not run")  # pragma: no cover
    assert "acks" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_open_producer_rejects_config_and_fields_together() -> None:
    config = ProducerConfig(bootstrap_servers="b:1")
    with pytest.raises(
        ConfigError,
        match=r"pass either a ProducerConfig or keyword fields, not both \(got \['linger'\]\)",
    ):
        async with open_producer(config, linger=1.0):
            pass  # pragma: no cover
    with pytest.raises(ConfigError, match=r"unknown ProducerConfig field\(s\) \['lingr'\]"):
        async with open_producer(bootstrap_servers="b:1", lingr=1.0):
            pass  # pragma: no cover


async def test_a_bootstrap_string_instead_of_a_config_says_how_to_pass_it() -> None:
    with pytest.raises(ConfigError) as caught:
        async with open_producer("localhost:9092"):  # type: ignore[call-overload]
            pass  # pragma: no cover
    assert str(caught.value) == (
        "config must be a ProducerConfig, not the str 'localhost:9092': pass "
        "open_producer(bootstrap_servers='localhost:9092') or "
        "open_producer(ProducerConfig('localhost:9092'))"
    )


async def test_aiokafka_keywords_get_the_mapping_to_ours() -> None:
    with pytest.raises(ConfigError) as caught:
        async with open_producer(bootstrap_servers="b:1", linger_ms=5, acks="all"):  # type: ignore[call-overload]
            pass  # pragma: no cover
    assert str(caught.value).startswith(
        "unknown ProducerConfig field(s) ['acks', 'linger_ms']: acks is aiokafka's keyword; "
        "use librdkafka={'acks': 'all'}; linger_ms is aiokafka's; use linger=0.005 "
        "(seconds); allowed: ['batch_max_bytes', "
    )
