"""ProducerConfig: validated before any task starts, with a librdkafka dict."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, Required, TypeAlias, TypedDict

import attrs

from ._exceptions import ConfigError
from ._topics import check_topic

LibrdkafkaValue: TypeAlias = str | int | float | bool

#: librdkafka properties that the producer sets itself; passing them is an error.
_RESERVED = {
    "bootstrap.servers": "use the bootstrap_servers field",
    "on_delivery": "delivery reports are routed by the producer; use on_delivery_error",
    "delivery.report.only.error": "use the delivery_reports field",
    "dr_cb": "delivery reports are routed by the producer; use on_delivery_error",
    "dr_msg_cb": "delivery reports are routed by the producer; use on_delivery_error",
    "error_cb": "errors are routed by the producer",
    "logger": "librdkafka logs go to the 'trio_producer.librdkafka' logger",
    "log_cb": "librdkafka logs go to the 'trio_producer.librdkafka' logger",
    "oauth_cb": "pass open_producer(oauth_token=...): it is called in a worker thread, "
    "and its errors fail the producer clearly",
    "oauthbearer_token_refresh_cb": "pass open_producer(oauth_token=...)",
    "stats_cb": "pass open_producer(on_statistics=...): it is called on the Trio thread",
    "stats_callback": "pass open_producer(on_statistics=...)",
}

#: librdkafka's names of the delivery timeout, set by the delivery_timeout field.
_DELIVERY_TIMEOUT_PROPS = ("message.timeout.ms", "delivery.timeout.ms")
#: The largest message.timeout.ms librdkafka takes (0 means "no limit").
_MAX_TIMEOUT_MS = 2_147_483_647

#: Substrings of property names whose values never appear in a repr or a message.
_SECRET_MARKERS = ("password", "secret", "sasl.oauthbearer.config", "key.pem", "token", "jaas")

_DEFAULTS: Mapping[str, LibrdkafkaValue] = MappingProxyType(
    {
        "enable.idempotence": True,
        "acks": "all",
        # Our own worker batches by `linger`; librdkafka need not wait again.
        "linger.ms": 1,
    }
)


def is_secret(name: str) -> bool:
    """Return whether a librdkafka property holds a secret."""
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def _redacted(props: Mapping[str, LibrdkafkaValue]) -> str:
    shown = {name: ("***" if is_secret(name) else value) for name, value in props.items()}
    return repr(shown)


def _seconds(name: str, *, allow_zero: bool) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            allowed = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{name} must be a finite number of seconds {allowed}, not {value!r}")

    return check


def _check_delivery_timeout(_inst: object, _attr: object, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"delivery_timeout must be a number of seconds or None, not {value!r}")
    if math.isnan(value) or value <= 0:
        raise ConfigError(
            f"delivery_timeout must be a number of seconds > 0 (math.inf: no limit) or None, "
            f"not {value!r}"
        )
    if math.isfinite(value) and value * 1000 > _MAX_TIMEOUT_MS:
        raise ConfigError(
            f"delivery_timeout must be at most {_MAX_TIMEOUT_MS // 1000} seconds "
            f"(math.inf: no limit), not {value!r}"
        )


def _positive_int(name: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an int >= 1, not {value!r}")
        if value < 1:
            raise ConfigError(f"{name} must be an int >= 1, not {value!r}")

    return check


def _check_bootstrap(_inst: object, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            "bootstrap_servers must be a non-empty 'host:port[,host:port...]' string, "
            f"not {value!r}"
        )


def _spool_path(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _check_spool_path(_inst: object, _attr: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(
            f"spool_path must be a directory path (str or os.PathLike) or None, not {value!r}"
        )


def _check_spool_max_bytes(_inst: object, _attr: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 << 16:
        raise ConfigError(f"spool_max_bytes must be an int >= 65536, not {value!r}")


_SPOOL_SYNC = ("never", "interval", "always")


def _check_spool_sync(_inst: object, _attr: object, value: object) -> None:
    if value not in _SPOOL_SYNC:
        raise ConfigError(f"spool_sync must be one of {_SPOOL_SYNC}, not {value!r}")


def _check_id_header(_inst: object, _attr: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"spool_id_header must be a non-empty str or None, not {value!r}")


def _check_exactly_once(_inst: object, _attr: object, value: object) -> None:
    if type(value) is not bool:
        raise ConfigError(f"exactly_once must be True or False, not {value!r}")


def _check_progress_topic(_inst: object, _attr: Any, value: Any) -> None:
    try:
        check_topic(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"exactly_once_topic: {exc}") from None


def _check_delivery_reports(_inst: object, _attr: object, value: object) -> None:
    if value not in ("all", "errors"):
        raise ConfigError(f"delivery_reports must be 'all' or 'errors', not {value!r}")


#: librdkafka's names of ``acks``, and the values below "all" it takes.
_ACKS_PROPS = ("acks", "request.required.acks")
_ACKS_BELOW_ALL = (0, 1, "0", "1")


def _check_acks(props: Mapping[str, LibrdkafkaValue]) -> None:
    """acks below "all" with idempotence on (our default): say so at construction, with
    the fix, rather than librdkafka's words at open (which blame a setting never made)."""
    for name in _ACKS_PROPS:
        value = props.get(name)
        if value is None or isinstance(value, bool) or value not in _ACKS_BELOW_ALL:
            continue
        idempotence = props.get("enable.idempotence")
        if idempotence is None:
            raise ConfigError(
                f"librdkafka={{{name!r}: {value!r}}} needs idempotence off: trio_producer "
                "turns enable.idempotence on by default, and librdkafka allows it only with "
                "acks=all (no duplicates, order kept across retries); to accept that risk, "
                f"pass librdkafka={{'enable.idempotence': False, {name!r}: {value!r}}}"
            )
        if str(idempotence).lower() in ("true", "t", "1"):
            raise ConfigError(
                f"librdkafka={{{name!r}: {value!r}}} contradicts enable.idempotence="
                f"{idempotence!r}: librdkafka allows idempotence only with acks=all; set one "
                "of them differently"
            )


def _freeze_props(value: object) -> Mapping[str, LibrdkafkaValue]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"librdkafka must be a mapping of property names to values, not {value!r}"
        )
    props: dict[str, LibrdkafkaValue] = {}
    for name, prop in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"librdkafka property names must be non-empty strings, not {name!r}")
        if name in _RESERVED:
            raise ConfigError(f"librdkafka property {name!r} is not allowed: {_RESERVED[name]}")
        if not isinstance(prop, str | int | float | bool):
            shown = "***" if is_secret(name) else repr(prop)
            raise ConfigError(
                f"librdkafka property {name!r} must be a str, int, float or bool, not {shown}"
            )
        props[name] = prop
    return MappingProxyType(props)


@attrs.frozen
class ProducerConfig:
    """Settings of one producer. Validated on construction; immutable.

    Durations are in seconds (floats), as everywhere in Trio.

    Args:
        bootstrap_servers: ``"host:port[,host:port...]"`` of the Kafka cluster.
        linger: How long the worker waits for more messages before handing a batch to
            librdkafka, counted from the first message of the batch. ``0`` hands each
            message on as soon as the worker runs.
        batch_max_messages: Hand the batch on as soon as it holds this many messages.
        batch_max_bytes: Hand the batch on as soon as its keys and values add up to
            this many bytes.
        queue_capacity: How many accepted messages may wait for the worker. When it
            is full, :meth:`~Producer.send` waits and :meth:`~Producer.send_nowait`
            raises :class:`trio.WouldBlock`.
        close_timeout: How long leaving ``open_producer`` waits for the last delivery
            reports before it purges what is left and raises
            :class:`~trio_producer.UndeliveredMessagesError`.
        transaction_timeout: The budget of each blocking transactional step:
            ``init_transactions`` when the producer opens, and the commit or the abort
            that ends :meth:`~Producer.transaction` (also when it was interrupted).
        delivery_timeout: How long librdkafka keeps trying to deliver a message it
            was handed (librdkafka's ``message.timeout.ms``), after which the message
            fails with ``_MSG_TIMED_OUT``: it bounds
            :meth:`~Producer.send_and_wait` against an unreachable cluster.
            ``None`` (the default) leaves librdkafka's setting (5 minutes, or
            ``librdkafka={"message.timeout.ms": ...}``); ``math.inf`` means "retry
            until the producer closes" (for a durable spool). The time counts from
            the hand-over to librdkafka, after ``linger``.
        spool_path: A directory for the durable spool (off when ``None``): every
            accepted message is written there before ``send`` returns, so it survives
            ``kill -9`` of the process, and is sent again by the next producer that
            opens the directory if it was not confirmed. See the Durability page.
        spool_max_bytes: The most the spool's files take on disk; a full spool is
            backpressure (``send`` waits, ``send_nowait`` raises ``trio.WouldBlock``).
        spool_sync: When the spool is fsynced (power-loss safety): ``"never"`` (only
            ``Producer.sync()``), ``"interval"`` (every ``spool_sync_interval``
            seconds, in a worker thread) or ``"always"`` (``send`` returns once its
            message is fsynced; sends waiting at the same time share one fsync).
        spool_sync_interval: Seconds between fsyncs for ``"interval"``.
        spool_id_header: A header name (e.g. ``"trio-producer-id"``) to give each
            spooled message its stable id (24 bytes: the spooling run's uuid and the
            message's sequence number), so that consumers can drop the duplicates a
            crash can cause; ``None`` (the default) for none. Messages with headers
            take librdkafka's slower one-by-one path.
        exactly_once: With ``spool_path`` and ``librdkafka={"transactional.id": ...}``:
            exactly once across crashes. The producer runs the transactions itself:
            each carries spooled messages and the spool position they reach (a record
            in ``exactly_once_topic``), and a message leaves the spool only once its
            transaction committed; after a crash the next producer with the same
            ``transactional.id`` and spool sends again exactly what was not committed.
            Consumers read with ``isolation.level=read_committed``. See the Durability
            page, "Exactly once across crashes".
        exactly_once_topic: The compacted topic that holds each spool's committed
            position (created with one partition if missing).
        commit_interval: With ``exactly_once``: how long a transaction gathers messages
            before it commits (seconds); longer is faster, shorter delivers sooner.
        delivery_reports: ``"all"`` (the default): a delivery report for every
            message, which counts each delivery and gives :meth:`~Producer.send_and_wait`
            its result. ``"errors"``: librdkafka reports only failures (its
            ``delivery.report.only.error``), which saves a callback per delivered
            message (faster bulk sending); every failure is still handed back. Then
            :meth:`~Producer.send_and_wait` is refused, :meth:`~Producer.flush` holds
            new messages back until everything before it is settled, and a spool or
            transactions cannot be used. See the Performance page.
        librdkafka: Any other librdkafka property (``acks``, ``compression.type``,
            ``security.protocol``, ``sasl.*``, ...). Unknown names fail at open with
            librdkafka's own message. Defaults: ``enable.idempotence=true``,
            ``acks=all``, ``linger.ms=1``.

    Raises:
        ConfigError: A field has a value that is not allowed.
    """

    bootstrap_servers: str = attrs.field(validator=_check_bootstrap)
    linger: float = attrs.field(
        kw_only=True, default=0.005, validator=_seconds("linger", allow_zero=True)
    )
    batch_max_messages: int = attrs.field(
        kw_only=True, default=10_000, validator=_positive_int("batch_max_messages")
    )
    batch_max_bytes: int = attrs.field(
        kw_only=True, default=1_048_576, validator=_positive_int("batch_max_bytes")
    )
    queue_capacity: int = attrs.field(
        kw_only=True, default=10_000, validator=_positive_int("queue_capacity")
    )
    close_timeout: float = attrs.field(
        kw_only=True, default=30.0, validator=_seconds("close_timeout", allow_zero=True)
    )
    transaction_timeout: float = attrs.field(
        kw_only=True, default=30.0, validator=_seconds("transaction_timeout", allow_zero=False)
    )
    delivery_timeout: float | None = attrs.field(
        kw_only=True, default=None, validator=_check_delivery_timeout
    )
    spool_path: str | None = attrs.field(
        kw_only=True, default=None, converter=_spool_path, validator=_check_spool_path
    )
    spool_max_bytes: int = attrs.field(
        kw_only=True, default=1 << 30, validator=_check_spool_max_bytes
    )
    spool_sync: str = attrs.field(kw_only=True, default="interval", validator=_check_spool_sync)
    spool_sync_interval: float = attrs.field(
        kw_only=True, default=0.5, validator=_seconds("spool_sync_interval", allow_zero=False)
    )
    spool_id_header: str | None = attrs.field(
        kw_only=True, default=None, validator=_check_id_header
    )
    exactly_once: bool = attrs.field(kw_only=True, default=False, validator=_check_exactly_once)
    exactly_once_topic: str = attrs.field(
        kw_only=True, default="trio-producer-progress", validator=_check_progress_topic
    )
    commit_interval: float = attrs.field(
        kw_only=True, default=0.1, validator=_seconds("commit_interval", allow_zero=True)
    )
    delivery_reports: Literal["all", "errors"] = attrs.field(
        kw_only=True, default="all", validator=_check_delivery_reports
    )
    librdkafka: Mapping[str, LibrdkafkaValue] = attrs.field(
        kw_only=True, factory=dict, converter=_freeze_props, repr=_redacted, eq=False
    )

    def __attrs_post_init__(self) -> None:
        _check_acks(self.librdkafka)
        if self.exactly_once:
            self._check_exactly_once()
        if self.delivery_reports == "errors":
            if self.spool_path is not None:
                raise ConfigError(
                    "delivery_reports='errors' cannot be combined with spool_path: the spool "
                    "must be told of every delivery to remove the message from disk"
                )
            if self.librdkafka.get("transactional.id"):
                raise ConfigError(
                    "delivery_reports='errors' cannot be combined with transactions "
                    "(transactional.id): a commit must account for every message"
                )
        if self.delivery_timeout is not None:
            both = [name for name in _DELIVERY_TIMEOUT_PROPS if name in self.librdkafka]
            if both:
                raise ConfigError(
                    f"pass either delivery_timeout or librdkafka property {both[0]!r}, not both"
                )

    def _check_exactly_once(self) -> None:
        """What ``exactly_once=True`` cannot keep its promise without."""
        if self.spool_path is None:
            raise ConfigError(
                "exactly_once=True needs spool_path: the spool's positions are what each "
                "transaction commits (spool_path='/var/lib/myapp/spool')"
            )
        if not self.librdkafka.get("transactional.id"):
            raise ConfigError(
                "exactly_once=True needs librdkafka={'transactional.id': ...}: a stable id "
                "per spool directory, so that the next producer fences a crashed one and "
                "aborts what it left open"
            )
        if self.delivery_reports == "errors":
            raise ConfigError(
                "delivery_reports='errors' cannot be combined with exactly_once: a commit "
                "must account for every message"
            )
        if self.librdkafka.get("enable.idempotence") is False:
            raise ConfigError(
                "exactly_once=True needs an idempotent producer: remove "
                "librdkafka={'enable.idempotence': False}"
            )

    def librdkafka_config(self) -> dict[str, LibrdkafkaValue]:
        """The librdkafka properties this config stands for (defaults, then overrides)."""
        props: dict[str, LibrdkafkaValue] = dict(_DEFAULTS)
        props.update(self.librdkafka)
        props["bootstrap.servers"] = self.bootstrap_servers
        if self.delivery_reports == "errors":
            props["delivery.report.only.error"] = True
        timeout = self.delivery_timeout
        if timeout is not None:
            props["message.timeout.ms"] = (
                0 if math.isinf(timeout) else min(_MAX_TIMEOUT_MS, max(1, round(timeout * 1000)))
            )
        return props


class ProducerFields(TypedDict, total=False):
    """The fields of :class:`ProducerConfig`, as keyword arguments of :func:`open_producer`.

    ``open_producer(bootstrap_servers=..., linger=...)`` is checked by type checkers
    against this: a misspelt field or a wrong type is a type error. A test keeps it
    equal to ``attrs.fields(ProducerConfig)`` (names and types).
    """

    bootstrap_servers: Required[str]
    linger: float
    batch_max_messages: int
    batch_max_bytes: int
    queue_capacity: int
    close_timeout: float
    transaction_timeout: float
    delivery_timeout: float | None
    spool_path: str | None
    spool_max_bytes: int
    spool_sync: str
    spool_sync_interval: float
    spool_id_header: str | None
    exactly_once: bool
    exactly_once_topic: str
    commit_interval: float
    delivery_reports: Literal["all", "errors"]
    librdkafka: Mapping[str, LibrdkafkaValue]


#: Settings of other Kafka clients (aiokafka, kafka-python), and ours for them.
FOREIGN_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "linger_ms": "linger_ms is aiokafka's; use linger=0.005 (seconds)",
        "max_batch_size": "max_batch_size is aiokafka's; use batch_max_bytes=16384",
        "request_timeout_ms": (
            "request_timeout_ms is aiokafka's; use librdkafka={'request.timeout.ms': 30000}"
        ),
        "delivery_timeout_ms": (
            "delivery_timeout_ms is kafka-python's; use delivery_timeout=120.0 (seconds)"
        ),
        "acks": "acks is aiokafka's keyword; use librdkafka={'acks': 'all'}",
        "enable_idempotence": (
            "enable_idempotence is aiokafka's; idempotence is on by default here "
            "(off: librdkafka={'enable.idempotence': False})"
        ),
        "compression_type": (
            "compression_type is aiokafka's; use librdkafka={'compression.type': 'zstd'}"
        ),
        "client_id": "client_id is aiokafka's; use librdkafka={'client.id': 'my-app'}",
        "transactional_id": (
            "transactional_id is aiokafka's; use librdkafka={'transactional.id': '...'} "
            "and `async with producer.transaction():`"
        ),
        "security_protocol": (
            "security_protocol is aiokafka's; use librdkafka={'security.protocol': 'SASL_SSL'}"
        ),
        "sasl_mechanism": (
            "sasl_mechanism is aiokafka's; use librdkafka={'sasl.mechanism': 'PLAIN'}"
        ),
        "max_request_size": (
            "max_request_size is aiokafka's; use librdkafka={'message.max.bytes': 1048576}"
        ),
        "max_block_ms": (
            "max_block_ms is kafka-python's; send() waits while the queue is full "
            "(queue_capacity); bound it with trio.fail_after"
        ),
        "buffer_memory": "buffer_memory is kafka-python's; use queue_capacity=10_000 (messages)",
        "batch_size": "batch_size is kafka-python's; use batch_max_bytes=16384",
    }
)


def make_config(config: ProducerConfig | None, fields: Mapping[str, Any]) -> ProducerConfig:
    """Build the config from either a ProducerConfig or keyword fields, not both."""
    if config is not None:
        if fields:
            raise ConfigError(
                f"pass either a ProducerConfig or keyword fields, not both (got {sorted(fields)})"
            )
        if isinstance(config, str):
            raise ConfigError(
                f"config must be a ProducerConfig, not the str {config!r}: pass "
                f"open_producer(bootstrap_servers={config!r}) or "
                f"open_producer(ProducerConfig({config!r}))"
            )
        if not isinstance(config, ProducerConfig):
            raise ConfigError(f"config must be a ProducerConfig, not {config!r}")
        return config
    known = {a.name for a in attrs.fields(ProducerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        hints = [FOREIGN_FIELDS[name] for name in unknown if name in FOREIGN_FIELDS]
        text = f"unknown ProducerConfig field(s) {unknown}"
        if hints:
            text = f"{text}: {'; '.join(hints)}"
        raise ConfigError(f"{text}; allowed: {sorted(known)}")
    if "bootstrap_servers" not in fields:
        raise ConfigError("bootstrap_servers is required")
    return ProducerConfig(**fields)
