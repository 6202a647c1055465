"""Per-message accounting for the promise: every attempted message ends up in exactly one place.

A :class:`Ledger` hands out unique payloads, one per attempt, and records what became of
each one:

* ``accepted``: the send call returned (or ``send_and_wait`` raised ``DeliveryError``,
  which it only does for a message it had accepted);
* ``uncertain``: the call raised after it may have accepted the message (a cancelled
  ``send_and_wait``): then "nowhere" is allowed, but never two places;
* handed back: collected from an exception's ``.failures``, a ``DeliveryError.message``,
  ``producer.undelivered``, or ``on_delivery_error`` hook calls -- each with where it came from;
* in the topic: read back with a real consumer.

``check()`` asserts, for every attempted payload, exactly one of: not accepted (and then
nowhere); in the topic once; handed back once -- and lists the offenders by kind.
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import trio

from trio_producer import DeliveryError, KafkaFatalError, UndeliveredMessagesError
from trio_producer.testing import consume_all

if TYPE_CHECKING:
    from collections.abc import Iterable

    from trio_producer import Message, Producer

_ledgers = itertools.count()


class Ledger:
    """What the application tried to send, and where each message ended up.

    Args:
        name: A prefix for the payloads (kept unique across ledgers by a counter).
        size: Pad every payload with ``b"."`` up to this many bytes (0: no padding).
    """

    def __init__(self, name: str = "m", size: int = 0) -> None:
        self.prefix = f"{name}{next(_ledgers)}-".encode()
        self.size = size
        self.attempted: list[bytes] = []
        self._attempted_set: set[bytes] = set()
        self.accepted_set: set[bytes] = set()
        self.uncertain_set: set[bytes] = set()
        #: payload -> where it was handed back (one entry per hand-back)
        self.handed: dict[bytes, list[str]] = {}
        self.in_topic: Counter[bytes] = Counter()
        self.strangers: list[bytes | None] = []
        self._collected: set[int] = set()
        self.hook_calls = 0
        self._read = False

    # ---- the sending side -----------------------------------------------------------

    def new(self) -> bytes:
        """A fresh payload, recorded as attempted."""
        payload = self.prefix + b"%06d" % len(self.attempted)
        if len(payload) < self.size:
            payload += b"." * (self.size - len(payload))
        self.attempted.append(payload)
        self._attempted_set.add(payload)
        return payload

    def accepted(self, payload: bytes) -> None:
        self.accepted_set.add(payload)

    def uncertain(self, payload: bytes) -> None:
        """The call raised after it may have accepted ``payload`` (cancelled ``send_and_wait``)."""
        self.uncertain_set.add(payload)

    # ---- hand-backs -----------------------------------------------------------------

    def hand_back(self, item: DeliveryError | Message | bytes | None, where: str) -> None:
        if isinstance(item, DeliveryError):
            value = item.message.value
        elif isinstance(item, bytes) or item is None:
            value = item
        else:
            value = item.value
        key = value if value is not None else b"<None>"
        self.handed.setdefault(key, []).append(where)

    def hook(self, failure: DeliveryError) -> None:
        """Use as ``on_delivery_error=ledger.hook``."""
        self.hook_calls += 1
        self.hand_back(failure, "on_delivery_error hook")

    def collect(self, exc: BaseException | None, where: str = "exit exception") -> None:
        """Collect every message handed back in ``exc`` (groups, notes' owners included).

        Each exception object is collected once, however often it is passed in.
        """
        if exc is None or id(exc) in self._collected:
            return
        self._collected.add(id(exc))
        if isinstance(exc, UndeliveredMessagesError | KafkaFatalError):
            for failure in exc.failures:
                self.hand_back(failure, f"{where}: {type(exc).__name__}.failures")
        elif isinstance(exc, DeliveryError):
            self.hand_back(exc, f"{where}: DeliveryError")
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                self.collect(inner, f"{where} (in a group)")

    def collect_undelivered(self, producer: Producer | None) -> None:
        if producer is None:
            return
        for failure in producer.undelivered:
            self.hand_back(failure, "producer.undelivered")

    @property
    def handed_back_count(self) -> int:
        return sum(len(v) for v in self.handed.values())

    # ---- the topic ------------------------------------------------------------------

    def record_topic(self, values: Iterable[bytes | None]) -> None:
        self._read = True
        for value in values:
            if value is not None and value in self._attempted_set:
                self.in_topic[value] += 1
            else:
                self.strangers.append(value)

    async def read_topic(
        self,
        bootstrap: str,
        topic: str,
        *,
        idle_timeout: float = 0.5,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        """Read ``topic`` back with a real consumer (every partition) and record it."""
        expected = len(self.accepted_set | self.uncertain_set) + 1
        records = await trio.to_thread.run_sync(
            partial(
                consume_all,
                bootstrap,
                topic,
                expected=expected,
                idle_timeout=idle_timeout,
                timeout=20.0,
                isolation_level=isolation_level,
            )
        )
        self.record_topic(r.value for r in records)

    # ---- the verdict ----------------------------------------------------------------

    def problems(self) -> dict[str, list[str]]:
        assert self._read, "read the topic back (read_topic / record_topic) before check()"
        kinds: dict[str, list[str]] = {
            "lost (accepted, neither in the topic nor handed back)": [],
            "in the topic more than once": [],
            "handed back more than once": [],
            "delivered AND handed back": [],
            "not accepted, yet in the topic or handed back": [],
            "uncertain, yet in two places": [],
        }
        for payload in self.attempted:
            shown = payload[: len(self.prefix) + 6].decode()
            topic = self.in_topic[payload]
            handed = self.handed.get(payload, [])
            where = f"{shown} (topic x{topic}, handed back: {handed or 'no'})"
            if payload in self.accepted_set:
                if topic == 0 and not handed:
                    kinds["lost (accepted, neither in the topic nor handed back)"].append(where)
                if topic > 1:
                    kinds["in the topic more than once"].append(where)
                if len(handed) > 1:
                    kinds["handed back more than once"].append(where)
                if topic and handed:
                    kinds["delivered AND handed back"].append(where)
            elif payload in self.uncertain_set:
                if topic + len(handed) > 1:
                    kinds["uncertain, yet in two places"].append(where)
            elif topic or handed:
                kinds["not accepted, yet in the topic or handed back"].append(where)
        unknown = [k for k in self.handed if k not in self._attempted_set]
        if unknown:
            kinds["handed back but never attempted"] = [repr(k[:40]) for k in unknown]
        if self.strangers:
            kinds["in the topic but never attempted"] = [repr(v and v[:40]) for v in self.strangers]
        return {k: v for k, v in kinds.items() if v}

    def summary(self) -> str:
        return (
            f"attempted={len(self.attempted)} accepted={len(self.accepted_set)} "
            f"uncertain={len(self.uncertain_set)} in_topic={sum(self.in_topic.values())} "
            f"handed_back={self.handed_back_count} (hook calls {self.hook_calls})"
        )

    def check(self) -> None:
        """Assert the promise for every attempted payload; list the offenders by kind."""
        problems = self.problems()
        if problems:
            lines = [f"the promise is broken -- {self.summary()}"]
            for kind, offenders in problems.items():
                shown = ", ".join(offenders[:10])
                more = f" ... and {len(offenders) - 10} more" if len(offenders) > 10 else ""
                lines.append(f"  {kind}: {len(offenders)}: {shown}{more}")
            raise AssertionError("\n".join(lines))
