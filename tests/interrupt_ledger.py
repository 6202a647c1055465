"""A per-message oracle for the promise: every attempted message is exactly one of
not accepted / in the topic once / handed back once.

One :class:`Ledger` per trial. Each attempt gets a unique payload
(``b"<prefix>:msg-<n>"``), so what is read back from a topic shared by many trials can
be split by prefix. The send wrappers are KI-protected: a ``KeyboardInterrupt`` cannot
land between a send returning and the ledger recording it (Trio then delivers it at the
next checkpoint, which is inside the library's send: exactly what a real Ctrl-C does to
an application that records its sends like this).

Self-contained on purpose (only trio and trio_producer's public names), so that it can
be copied into another checkout or used by a child process.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from trio_producer import DeliveryError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from trio_producer import Producer, RecordMetadata

#: The failure kinds :meth:`Ledger.problems` reports, in the order they are listed.
KINDS = (
    "lost",  # accepted, neither in the topic nor handed back
    "lost-consumed-by-send_many",  # taken from send_many's iterator, then nowhere
    "doubled",  # in the topic more than once
    "delivered-and-handed-back",
    "handed-back-twice",
    "handed-back-but-never-accepted",  # its send raised, yet it was handed back
    "delivered-but-never-accepted",  # its send raised, yet it is in the topic
    "never-attempted",  # a payload with our prefix that no attempt made
)


def payload_prefix(value: bytes | None) -> bytes | None:
    """The ``<prefix>`` of a ``<prefix>:msg-<n>`` payload, or ``None``."""
    if value is None:
        return None
    head, sep, _ = value.rpartition(b":msg-")
    return head if sep else None


class _Consumed:
    """An iterator of fresh payloads for ``send_many`` that records each one it yields."""

    def __init__(self, ledger: Ledger, count: int) -> None:
        self._ledger = ledger
        self._left = count

    def __iter__(self) -> Iterator[bytes]:
        return self

    @trio.lowlevel.enable_ki_protection
    def __next__(self) -> bytes:
        if self._left <= 0:
            raise StopIteration
        self._left -= 1
        payload = self._ledger.new_payload()
        # send_many's contract: an element it consumed is accepted, even if it raises.
        self._ledger.accepted.add(payload)
        self._ledger.via_send_many.add(payload)
        return payload


class Ledger:
    """What one trial attempted, what was accepted, handed back and read back."""

    def __init__(self, prefix: str) -> None:
        if ":msg-" in prefix:
            raise ValueError(f"prefix must not contain ':msg-', not {prefix!r}")
        self.prefix = prefix.encode()
        self._numbers = itertools.count()
        self.attempted: list[bytes] = []
        #: Payloads whose send returned (or that send_many consumed).
        self.accepted: set[bytes] = set()
        #: Payloads whose call raised after it may have accepted them (send_and_wait
        #: interrupted while waiting): any one outcome is fine, never two.
        self.uncertain: set[bytes] = set()
        self.via_send_many: set[bytes] = set()
        self.handed_back: Counter[bytes] = Counter()
        self.read_back: Counter[bytes] = Counter()
        self._seen_failures: set[int] = set()
        self._keep: list[object] = []  # keeps the ids in _seen_failures unique

    # ---- attempts -------------------------------------------------------------------

    def new_payload(self) -> bytes:
        payload = b"%s:msg-%d" % (self.prefix, next(self._numbers))
        self.attempted.append(payload)
        return payload

    @trio.lowlevel.enable_ki_protection
    async def send(self, producer: Producer, topic: str, **kwargs: Any) -> bytes:
        """``producer.send`` of a fresh payload; recorded as accepted only if it returns."""
        payload = self.new_payload()
        await producer.send(topic, payload, **kwargs)
        self.accepted.add(payload)
        return payload

    @trio.lowlevel.enable_ki_protection
    async def send_and_wait(
        self, producer: Producer, topic: str, **kwargs: Any
    ) -> RecordMetadata | None:
        """``producer.send_and_wait`` of a fresh payload.

        Returned: accepted (and confirmed). Raised ``DeliveryError``: handed back by it.
        Raised anything else: uncertain (it may have been accepted before the wait).
        """
        payload = self.new_payload()
        try:
            meta = await producer.send_and_wait(topic, payload, **kwargs)
        except DeliveryError as exc:
            self.accepted.add(payload)
            self.hand_back(exc)
            return None
        except BaseException:
            self.uncertain.add(payload)
            raise
        self.accepted.add(payload)
        return meta

    async def send_many(self, producer: Producer, topic: str, count: int) -> int:
        """``producer.send_many`` of ``count`` fresh payloads from an iterator.

        Not KI-protected itself (a KI may land anywhere in send_many); the iterator
        records each payload as it is consumed, which send_many promises means accepted.
        """
        return await producer.send_many(topic, _Consumed(self, count))

    # ---- outcomes -------------------------------------------------------------------

    def hand_back(self, source: object) -> None:
        """Record what ``source`` hands back: a Producer (its ``undelivered``), a
        DeliveryError, an exception with ``.failures``, or a group of them (walked).

        The same DeliveryError object seen twice (say, in ``producer.undelivered`` and
        in the exception's ``failures``) counts once; two objects for one payload, twice.
        """
        failures: list[DeliveryError] = []
        _collect(source, failures)
        for failure in failures:
            if id(failure) in self._seen_failures:
                continue
            self._seen_failures.add(id(failure))
            self._keep.append(failure)
            value = failure.message.value
            if value is not None and payload_prefix(value) == self.prefix:
                self.handed_back[value] += 1

    def record_read_back(self, values: Iterable[bytes | None]) -> None:
        """Record the values read back from the topic (other prefixes are ignored)."""
        for value in values:
            if value is not None and payload_prefix(value) == self.prefix:
                self.read_back[value] += 1

    # ---- the rule -------------------------------------------------------------------

    def problems(self) -> dict[str, list[bytes]]:
        """Failure kind -> payloads, for every payload that breaks the rule."""
        out: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
        attempted = set(self.attempted)
        for payload in self.attempted:
            t = self.read_back[payload]
            h = self.handed_back[payload]
            if payload in self.uncertain:
                pass  # any one outcome is fine
            elif payload in self.accepted:
                if t + h == 0:
                    kind = "lost-consumed-by-send_many" if payload in self.via_send_many else "lost"
                    out[kind].append(payload)
            else:  # its send raised: not accepted
                if h:
                    out["handed-back-but-never-accepted"].append(payload)
                if t:
                    out["delivered-but-never-accepted"].append(payload)
            if t > 1:
                out["doubled"].append(payload)
            if t and h:
                out["delivered-and-handed-back"].append(payload)
            if h > 1:
                out["handed-back-twice"].append(payload)
        for payload in (self.read_back | self.handed_back).keys() - attempted:
            out["never-attempted"].append(payload)
        return {kind: sorted(found) for kind, found in out.items() if found}

    def counts(self) -> dict[str, int]:
        delivered = sum(1 for p in self.attempted if self.read_back[p])
        return {
            "attempted": len(self.attempted),
            "accepted": len(self.accepted),
            "uncertain": len(self.uncertain),
            "delivered": delivered,
            "handed_back": sum(self.handed_back.values()),
        }

    def describe(self) -> str:
        lines = [f"ledger {self.prefix.decode()}: {self.counts()}"]
        for kind, payloads in self.problems().items():
            shown = ", ".join(p.decode(errors="replace") for p in payloads[:8])
            more = f" (+{len(payloads) - 8} more)" if len(payloads) > 8 else ""
            lines.append(f"  {kind} x{len(payloads)}: {shown}{more}")
        return "\n".join(lines)

    def check(self) -> None:
        """Assert the rule for every payload."""
        if self.problems():
            raise AssertionError(self.describe())


def _collect(source: object, out: list[DeliveryError]) -> None:
    if isinstance(source, DeliveryError):
        out.append(source)
        return
    undelivered = getattr(source, "undelivered", None)
    if isinstance(undelivered, tuple):  # a Producer
        out.extend(f for f in undelivered if isinstance(f, DeliveryError))
    failures = getattr(source, "failures", None)
    if isinstance(source, BaseException) and isinstance(failures, tuple):
        out.extend(f for f in failures if isinstance(f, DeliveryError))
    if isinstance(source, BaseExceptionGroup):
        for inner in source.exceptions:
            _collect(inner, out)
