"""Logging: the library's loggers, librdkafka's lines, and connection failures collapsed.

* ``trio_producer`` has no handler of its own: an application that configured no
  logging gets Python's last-resort handler, which prints WARNING and above to stderr --
  so the one WARNING of an unreachable cluster is seen at once, and the ERRORs of
  messages not delivered. Repeated lines are logged at DEBUG (below), so it is not
  noisy. An application that configures logging decides for itself.
* librdkafka's log lines go to ``trio_producer.librdkafka`` (confluent-kafka maps the
  syslog levels: 0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG). Its connection
  failures (facility ``FAIL``) are logged at DEBUG: the same events come through
  ``error_cb`` and are collapsed by :class:`Connectivity`. Other lines that repeat
  within a minute are logged at DEBUG too. The memory of what was seen is bounded.
* :class:`Connectivity` turns librdkafka's stream of connection errors into one WARNING
  naming the address when the cluster becomes unreachable, and one INFO when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._message import KafkaErrorInfo

logger = logging.getLogger("trio_producer")
librdkafka_logger = logging.getLogger("trio_producer.librdkafka")

#: A repeated message is shown again after this many seconds.
REPEAT_WINDOW = 60.0
#: How many distinct recent messages are remembered (the oldest are forgotten first).
MAX_REMEMBERED = 256

#: librdkafka errors that say "a connection to a broker failed".
CONNECTION_ERRORS = frozenset({"_TRANSPORT", "_RESOLVE"})


class RecentMessages:
    """Which messages were seen in the last ``window`` seconds; bounded memory."""

    def __init__(self, window: float = REPEAT_WINDOW, max_entries: int = MAX_REMEMBERED) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def repeated(self, text: str, now: float | None = None) -> bool:
        """Record ``text``; return whether it was already seen within the window."""
        if now is None:
            now = time.monotonic()
        with self._lock:
            seen = self._seen
            last = seen.get(text)
            if last is not None and now - last < self.window:
                return True
            seen[text] = now
            seen.move_to_end(text)
            while len(seen) > self.max_entries:
                seen.popitem(last=False)
            return False

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def __len__(self) -> int:
        return len(self._seen)


class DeduplicateFilter(logging.Filter):
    """A :class:`logging.Filter` that lets a message through once per ``window`` seconds.

    The memory of seen messages is bounded (``max_entries``, oldest forgotten first), so
    a long-running process does not grow it without limit.
    """

    def __init__(self, window: float = REPEAT_WINDOW, max_entries: int = MAX_REMEMBERED) -> None:
        super().__init__()
        self.recent = RecentMessages(window, max_entries)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.recent.repeated(record.getMessage())


class LibrdkafkaLog:
    """The ``logger`` handed to librdkafka: called on the poll thread, never touches Trio.

    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client_name, text)``.
    """

    def __init__(self, target: logging.Logger = librdkafka_logger) -> None:
        self.target = target
        self.recent = RecentMessages()

    def log(self, level: int, msg: str, *args: object) -> None:
        facility = args[0] if args else ""
        if facility == "FAIL" or self.recent.repeated(msg % args if args else msg):
            level = logging.DEBUG
        self.target.log(level, msg, *args)


def _address(error: KafkaErrorInfo) -> str:
    """``host:port/id`` of the broker a connection error names (librdkafka's prefix)."""
    head, sep, _rest = error.reason.partition(": ")
    return head if sep else error.reason


class Connectivity:
    """Collapses librdkafka's connection errors into state changes (Trio thread only).

    * The first ``_TRANSPORT``/``_RESOLVE`` error of each broker address (in ten minutes) is
      logged at INFO as ``librdkafka error: ...`` (repeats at DEBUG).
    * ``_ALL_BROKERS_DOWN`` while the cluster was reachable: one WARNING, naming the
      bootstrap address and the last connection error.
    * The first sign of life after that (a delivery report of a delivered message, or
      statistics showing a broker up): one INFO.
    * Any other non-fatal error: WARNING, repeats within a minute at DEBUG.
    """

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        #: The cluster is unreachable since this time (monotonic), or None.
        self.unreachable_since: float | None = None
        self._last_connection_error: KafkaErrorInfo | None = None
        self._addresses = RecentMessages(window=600.0)
        self._others = RecentMessages()
        self._delivered = 0

    @property
    def reachable(self) -> bool:
        return self.unreachable_since is None

    def describe(self) -> str | None:
        """``the Kafka cluster at X was unreachable (<last error>)`` while it is, else None."""
        if self.unreachable_since is None:
            return None
        last = self._last_connection_error
        why = f" ({last.reason})" if last is not None else ""
        return f"the Kafka cluster at {self.bootstrap_servers} was unreachable{why}"

    def error(self, error: KafkaErrorInfo) -> None:
        """A non-fatal librdkafka error (from ``error_cb``)."""
        if error.name in CONNECTION_ERRORS:
            self._last_connection_error = error
            if self.unreachable_since is None and not self._addresses.repeated(_address(error)):
                # librdkafka's own log line (trio_producer.librdkafka) says the same
                logger.info("librdkafka error: %s", error)
            else:
                logger.debug("librdkafka error: %s", error)
        elif error.name == "_ALL_BROKERS_DOWN":
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                last = self._last_connection_error
                logger.warning(
                    "the Kafka cluster at %s is unreachable (%s); librdkafka keeps trying, "
                    "messages wait for at most the delivery timeout",
                    self.bootstrap_servers,
                    last.reason if last is not None else error.reason,
                )
            else:
                logger.debug("librdkafka error: %s", error)
        elif self._others.repeated(str(error)):
            logger.debug("librdkafka error: %s", error)
        else:
            logger.warning("librdkafka error: %s", error)

    def progress(self, delivered: int, *, brokers_up: bool = False) -> None:
        """Signs of life: the delivered count, or brokers up in the statistics."""
        more = delivered > self._delivered
        self._delivered = delivered
        since = self.unreachable_since
        if since is not None and (more or brokers_up):
            self.unreachable_since = None
            self._addresses.clear()
            logger.info(
                "the Kafka cluster at %s is reachable again (after %.1f s)",
                self.bootstrap_servers,
                time.monotonic() - since,
            )
