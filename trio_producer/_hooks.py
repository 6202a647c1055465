"""What librdkafka calls back besides delivery reports: OAuth tokens, statistics.

Where each runs:

* The OAuth token provider (``open_producer(oauth_token=...)``) runs in a worker thread:
  once in a Trio worker thread while ``open_producer`` opens (the first token), then in
  librdkafka's own background thread each time the token is due for a refresh (at
  about 80 % of its lifetime). Never on the Trio thread. It may block (an HTTP call to
  the identity provider); it must not touch Trio objects.
* ``stats_cb`` runs on the poll thread and only stores librdkafka's JSON; the delivery
  task parses it on the Trio thread and calls ``on_statistics`` there (sync, must not
  block), and keeps the latest snapshot for :attr:`Producer.kafka_statistics`.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._logging import Connectivity
from ._message import KafkaErrorInfo

logger = logging.getLogger("trio_producer")

#: librdkafka's RD_KAFKA_RESP_ERR__AUTHENTICATION.
AUTHENTICATION_CODE = -169
#: When an OAuth hook is given without ``statistics.interval.ms``: nothing. When
#: ``on_statistics`` is given without it, librdkafka emits statistics this often (ms).
DEFAULT_STATISTICS_INTERVAL_MS = 5_000


@attrs.frozen
class OAuthToken:
    """An OAUTHBEARER token, as returned by the ``oauth_token`` provider.

    Attributes:
        token: The token (a JWT, for most providers). Never shown in a repr.
        expires_at: When it expires, in seconds since the epoch (``time.time()``).
            librdkafka asks for a new one at about 80 % of its lifetime.
        principal: The principal name librdkafka reports (not sent to the broker,
            which reads the token); ``""`` is fine.
        extensions: SASL extensions (``logicalCluster`` and ``identityPoolId`` for
            Confluent Cloud, for example).
    """

    token: str = attrs.field(repr=False)
    expires_at: float
    principal: str = ""
    extensions: Mapping[str, str] = attrs.field(factory=dict, repr=False)


#: The ``oauth_token`` hook: returns a fresh token, raises when it cannot.
OAuthTokenProvider = Callable[[], OAuthToken]


def check_token(token: object) -> OAuthToken:
    if not isinstance(token, OAuthToken):
        raise TypeError(
            f"the oauth_token provider must return a trio_producer.OAuthToken, "
            f"not {type(token).__name__}"
        )
    return token


def provider_error(exc: BaseException, *, fatal: bool) -> KafkaErrorInfo:
    """The error reported when the OAuth token provider raised."""
    if fatal:
        tail = "there is no valid token: the producer fails"
    else:
        tail = "the current token is still valid; librdkafka asks again in about 10 s"
    return KafkaErrorInfo(
        code=AUTHENTICATION_CODE,
        name="_AUTHENTICATION",
        reason=f"the oauth_token provider raised {exc!r}; {tail}",
        # retriable: not (yet) a reason to fail the producer (see DeliveryTracker.process)
        retriable=not fatal,
    )


class OAuthCallback:
    """librdkafka's ``oauth_cb``: calls the provider in librdkafka's background thread.

    The first token is fetched by ``open_producer`` (in a Trio worker thread, so that a
    failing provider fails the open at once, not after librdkafka's 10 s wait) and
    handed out on librdkafka's first call. A failure while the current token is still
    valid is a warning (librdkafka retries); a failure with no valid token left fails the
    producer. Errors go to ``report`` (the client's error list): never to Trio directly.
    """

    def __init__(
        self,
        provider: OAuthTokenProvider,
        first: OAuthToken,
        report: Callable[[KafkaErrorInfo], None],
    ) -> None:
        self.provider = provider
        self.report = report
        self._first: OAuthToken | None = first
        self.expires_at = first.expires_at
        #: The last refresh failed: once the token expires, the producer fails.
        self.refresh_failed = False
        self._expiry_reported = False
        self.calls = 0

    def __call__(self, _oauthbearer_config: str) -> tuple[str, float, str, dict[str, str]]:
        self.calls += 1
        token = self._first
        self._first = None
        if token is None:
            try:
                token = check_token(self.provider())
            except BaseException as exc:
                fatal = time.time() >= self.expires_at
                self.refresh_failed = True
                self._expiry_reported = fatal
                self.report(provider_error(exc, fatal=fatal))
                raise  # librdkafka records a token failure and retries later
        self.expires_at = token.expires_at
        self.refresh_failed = False
        return token.token, token.expires_at, token.principal, dict(token.extensions)

    def check_expiry(self) -> None:
        """On the Trio thread: the refresh failed and the token has now expired."""
        if self.refresh_failed and not self._expiry_reported and time.time() >= self.expires_at:
            self._expiry_reported = True
            self.report(provider_error(RuntimeError("the OAuth token expired"), fatal=True))


def fetch_first_token(provider: OAuthTokenProvider) -> OAuthToken:
    """Call the provider once (in a worker thread) before librdkafka is created."""
    return check_token(provider())


@attrs.frozen
class KafkaStatistics:
    """One snapshot of librdkafka's statistics (``statistics.interval.ms``).

    Attributes:
        raw: The whole parsed JSON document, as librdkafka documents it
            (``STATISTICS.md``): per broker, topic and partition.
        time: When librdkafka made it (seconds since the epoch).
        queued_messages: Messages in librdkafka's queues (``msg_cnt``).
        queued_bytes: Their size (``msg_size``).
        brokers: The state of each broker librdkafka knows (``"UP"``, ``"DOWN"``, ...).
        throttle_ms: The longest time a broker throttled this producer in the last
            window (quotas), in milliseconds; 0 when not throttled.
    """

    raw: Mapping[str, Any] = attrs.field(repr=False)
    time: float
    queued_messages: int
    queued_bytes: int
    brokers: Mapping[str, str]
    throttle_ms: int

    @property
    def brokers_up(self) -> int:
        return sum(1 for state in self.brokers.values() if state == "UP")

    @classmethod
    def from_json(cls, text: str) -> KafkaStatistics:
        raw = json.loads(text)
        brokers = raw.get("brokers") or {}
        return cls(
            raw=MappingProxyType(raw),
            time=float(raw.get("time", 0)),
            queued_messages=int(raw.get("msg_cnt", 0)),
            queued_bytes=int(raw.get("msg_size", 0)),
            brokers=MappingProxyType({n: str(b.get("state", "")) for n, b in brokers.items()}),
            throttle_ms=max(
                (int((b.get("throttle") or {}).get("max", 0)) for b in brokers.values()),
                default=0,
            ),
        )


def check_sync_hook(name: str, hook: object) -> None:
    if hook is None:
        return
    if not callable(hook):
        raise TypeError(f"{name} must be a callable or None, not {hook!r:.80}")
    call = getattr(hook, "__call__", None)  # noqa: B004 - an async __call__ counts too
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(call):
        raise TypeError(f"{name} must be a plain (sync) function, not the async {hook!r:.80}")


class Hooks:
    """The producer's hooks, handed over on the Trio thread after each poll."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        on_statistics: Callable[[KafkaStatistics], object] | None = None,
        oauth: OAuthCallback | None = None,
    ) -> None:
        self.connectivity = Connectivity(bootstrap_servers)
        self.on_statistics = on_statistics
        self.oauth = oauth
        #: The latest statistics snapshot, or None before the first one.
        self.statistics: KafkaStatistics | None = None

    def after_poll(self, statistics: str | None, delivered: int) -> None:
        """Called by the delivery task (Trio thread) after the reports were handed over,
        with librdkafka's statistics JSON since the last call (if any) and the count of
        deliveries so far."""
        brokers_up = False
        if statistics is not None:
            brokers_up = self._statistics(statistics)
        self.connectivity.progress(delivered, brokers_up=brokers_up)
        if self.oauth is not None:
            self.oauth.check_expiry()

    def _statistics(self, text: str) -> bool:
        try:
            stats = KafkaStatistics.from_json(text)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("could not read librdkafka's statistics: %r", exc)
            return False
        self.statistics = stats
        hook = self.on_statistics
        if hook is not None:
            try:
                hook(stats)
            except Exception:
                logger.exception("on_statistics raised (ignored)")
        return stats.brokers_up > 0
