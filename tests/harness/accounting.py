"""Per-message accounting for the promise: every attempted message is exactly one of
not accepted / in the topic once / handed back once.

One :class:`Ledger` per trial. Each attempt gets a unique payload
``b"<prefix>:msg-<n>"`` (``n`` zero-padded to six digits, so that payloads sort in the
order they were made; optionally padded with ``b"."`` to a size), and the ledger records
what became of it:

* accepted: the send call returned (``send_many``: its iterator yielded it;
  ``send_and_wait``: it returned, or raised ``DeliveryError``, which it only does for a
  message it had accepted);
* uncertain: the call raised after it may have accepted it (an interrupted
  ``send_and_wait``): then any one outcome is fine, never two;
* handed back: a ``DeliveryError`` passed to :meth:`Ledger.hand_back` (the message's own
  ``send_and_wait``, the ``on_delivery_error`` hook), or collected by
  :meth:`Ledger.collect` from an exception's ``.failures`` (groups walked) or a
  producer's ``undelivered`` -- each with where it came from;
* in the topic: read back with a real consumer (:meth:`Ledger.read_topic`), or recorded
  from records read elsewhere (:meth:`Ledger.record_topic`). A topic shared by several
  ledgers is split by prefix (``shared=True``); otherwise anything in it that this
  ledger did not attempt is a stranger.

:meth:`Ledger.check` asserts the rule for every payload and lists the offenders by kind
(:data:`KINDS`). The send wrappers are KI-protected: a ``KeyboardInterrupt`` cannot land
between a send returning and the ledger recording it (Trio then delivers it at the next
checkpoint, which is inside the library's send: exactly what a real Ctrl-C does to an
application that records its sends like this).

Self-contained on purpose (only trio, trio_producer's public names and
``trio_producer.testing``), so that a child process (``tests/harness/apps/``) can use it, and
it can be copied into another checkout.
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from trio_producer import DeliveryError, Producer
from trio_producer.testing import consume_all

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from trio_producer import Message, RecordMetadata

#: The failure kinds :meth:`Ledger.problems` reports, in the order they are listed.
KINDS = (
    "lost",  # accepted, neither in the topic nor handed back
    "lost-consumed-by-send_many",  # taken from send_many's iterator, then nowhere
    "doubled",  # accepted, in the topic more than once
    "handed-back-twice",  # accepted, handed back more than once
    "delivered-and-handed-back",  # accepted, in the topic and handed back
    "handed-back-but-never-accepted",  # its send raised, yet it was handed back
    "delivered-but-never-accepted",  # its send raised, yet it is in the topic
    "uncertain-in-two-places",  # its send_and_wait was interrupted; two outcomes
    "handed-back-but-never-attempted",  # handed back, but no attempt made it
    "delivered-but-never-attempted",  # in the topic, but no attempt made it (a stranger)
)

_MARK = b":msg-"


def payload_prefix(value: bytes | None) -> bytes | None:
    """The ``<prefix>`` of a ``<prefix>:msg-<n>`` payload, or ``None``."""
    if value is None:
        return None
    head, sep, _ = value.rpartition(_MARK)
    return head if sep else None


def _show(value: bytes | None) -> str:
    """A payload without its padding (a stranger: its start, as repr)."""
    if value is None:
        return "None"
    if payload_prefix(value) is not None:
        return value.rstrip(b".").decode(errors="backslashreplace")
    return repr(value[:40])


def _text(value: bytes) -> str:
    return value.decode("latin-1")  # any bytes, both ways


def _raw(text: str) -> bytes:
    return text.encode("latin-1")


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
        self._ledger.mark_accepted(payload)
        self._ledger.via_send_many.add(payload)
        return payload


class Ledger:
    """What one trial attempted, what was accepted, handed back and read back.

    Args:
        prefix: The payloads' prefix, exactly (a child process and its parent agree
            on it; a shared topic is split by it). Must not contain ``":msg-"``.
        size: Pad every payload with ``b"."`` up to this many bytes (0: no padding).
    """

    def __init__(self, prefix: str, *, size: int = 0) -> None:
        if _MARK.decode() in prefix:
            raise ValueError(f"prefix must not contain ':msg-', not {prefix!r}")
        self.prefix = prefix.encode()
        self.size = size
        self._numbers = itertools.count()
        self.attempted: list[bytes] = []
        self._attempted_set: set[bytes] = set()
        #: Payloads whose send returned (or that send_many consumed).
        self.accepted: set[bytes] = set()
        #: Payloads whose call raised after it may have accepted them (send_and_wait
        #: interrupted while waiting): any one outcome is fine, never two.
        self.uncertain: set[bytes] = set()
        self.via_send_many: set[bytes] = set()
        #: value -> where it was handed back (one entry per hand-back)
        self.handed: dict[bytes | None, list[str]] = {}
        #: our payloads read back from the topic, in the order they were read
        self.in_topic: Counter[bytes] = Counter()
        #: values in the topic this ledger did not attempt
        self.strangers: list[bytes | None] = []
        self.hook_calls = 0
        self._read = False
        self._collected: set[int] = set()
        self._keep: list[object] = []  # keeps the ids in _collected unique

    # ---- attempts -------------------------------------------------------------------

    def new_payload(self) -> bytes:
        """A fresh payload, recorded as attempted."""
        payload = b"%s%s%06d" % (self.prefix, _MARK, next(self._numbers))
        if len(payload) < self.size:
            payload += b"." * (self.size - len(payload))
        self.attempted.append(payload)
        self._attempted_set.add(payload)
        return payload

    def mark_accepted(self, payload: bytes) -> None:
        self.accepted.add(payload)

    def mark_uncertain(self, payload: bytes) -> None:
        """The call raised after it may have accepted ``payload`` (say, ``send_and_wait``)."""
        self.uncertain.add(payload)

    @trio.lowlevel.enable_ki_protection
    async def send(self, producer: Producer, topic: str, **kwargs: Any) -> bytes:
        """``producer.send`` of a fresh payload; recorded as accepted only if it returns."""
        payload = self.new_payload()
        await producer.send(topic, payload, **kwargs)
        self.mark_accepted(payload)
        return payload

    @trio.lowlevel.enable_ki_protection
    async def send_and_wait(
        self, producer: Producer, topic: str, **kwargs: Any
    ) -> RecordMetadata | None:
        """``producer.send_and_wait`` of a fresh payload.

        Returned: accepted (and confirmed). Raised ``DeliveryError``: accepted and handed
        back by it (returns ``None``). Raised anything else: uncertain (it may have been
        accepted before the wait), and the exception goes on.
        """
        payload = self.new_payload()
        try:
            meta = await producer.send_and_wait(topic, payload, **kwargs)
        except DeliveryError as exc:
            self.mark_accepted(payload)
            self.hand_back(exc, "its send_and_wait")
            return None
        except BaseException:
            self.mark_uncertain(payload)
            raise
        self.mark_accepted(payload)
        return meta

    async def send_many(self, producer: Producer, topic: str, count: int) -> int:
        """``producer.send_many`` of ``count`` fresh payloads from an iterator.

        Not KI-protected itself (a KI may land anywhere in send_many); the iterator
        records each payload as it is consumed, which send_many promises means accepted.
        """
        return await producer.send_many(topic, _Consumed(self, count))

    # ---- hand-backs -----------------------------------------------------------------

    def hand_back(self, item: DeliveryError | Message | bytes | None, where: str) -> None:
        """One hand-back of one message. Counted every time (no de-duplication): use it
        for what the application is given directly (its ``send_and_wait``, the hook)."""
        if isinstance(item, DeliveryError):
            value = item.message.value
        elif isinstance(item, bytes) or item is None:
            value = item
        else:
            value = item.value
        self.handed.setdefault(value, []).append(where)

    def hook(self, failure: DeliveryError) -> None:
        """Use as ``on_delivery_error=ledger.hook``."""
        self.hook_calls += 1
        self.hand_back(failure, "on_delivery_error hook")

    def collect(self, source: object, where: str = "exit exception") -> None:
        """Collect every message ``source`` hands back: a producer (its ``undelivered``),
        a ``DeliveryError``, an exception with ``.failures`` (``UndeliveredMessagesError``,
        ``KafkaFatalError``), or a group of them (walked); ``None`` is ignored.

        Each object is collected once, however often it is passed in (the block's
        exception is often also what left ``trio.run``); but a message that two
        different objects hand back (say, ``producer.undelivered`` and the exception's
        ``failures``) is handed back twice.
        """
        if source is None or id(source) in self._collected:
            return
        self._collected.add(id(source))
        self._keep.append(source)
        if isinstance(source, Producer):
            for failure in source.undelivered:
                self.hand_back(failure, "producer.undelivered")
            return
        if isinstance(source, DeliveryError):
            self.hand_back(source, f"{where}: DeliveryError")
        failures = getattr(source, "failures", None)
        if isinstance(source, BaseException) and isinstance(failures, tuple):
            for failure in failures:
                if isinstance(failure, DeliveryError):
                    self.hand_back(failure, f"{where}: {type(source).__name__}.failures")
        if isinstance(source, BaseExceptionGroup):
            for inner in source.exceptions:
                self.collect(inner, f"{where} (in a group)")

    @property
    def handed_back_count(self) -> int:
        return sum(len(v) for v in self.handed.values())

    # ---- the topic ------------------------------------------------------------------

    def record_topic(self, values: Iterable[bytes | None], *, shared: bool = False) -> None:
        """Record the values read back from the topic.

        ``shared=False``: the topic is this ledger's alone, so a value it did not
        attempt is a stranger. ``shared=True``: other ledgers (other prefixes) write to
        it too; only values with this ledger's prefix are looked at.
        """
        self._read = True
        for value in values:
            if value is not None and value in self._attempted_set:
                self.in_topic[value] += 1
            elif not shared or payload_prefix(value) == self.prefix:
                self.strangers.append(value)

    async def read_topic(
        self,
        bootstrap: str,
        topic: str,
        *,
        shared: bool = False,
        idle_timeout: float = 0.5,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        """Read ``topic`` back with a real consumer (every partition) and record it."""
        expected = len(self.accepted | self.uncertain) + 1
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
        self.record_topic((r.value for r in records), shared=shared)

    # ---- a child's books ------------------------------------------------------------

    def books(self) -> dict[str, list[Any]]:
        """What was attempted, accepted, uncertain and handed back, as JSON-able lists
        (a child process reports them; :meth:`from_books` rebuilds the ledger)."""
        return {
            "attempted": [_text(p) for p in self.attempted],
            "accepted": sorted(_text(p) for p in self.accepted),
            "uncertain": sorted(_text(p) for p in self.uncertain),
            "via_send_many": sorted(_text(p) for p in self.via_send_many),
            "handed_back": [
                [None if v is None else _text(v), w] for v, ws in self.handed.items() for w in ws
            ],
        }

    @classmethod
    def from_books(cls, prefix: str, books: dict[str, Any]) -> Ledger:
        """The ledger whose :meth:`books` a child process reported (nothing read yet)."""
        ledger = cls(prefix)
        ledger.attempted = [_raw(p) for p in books["attempted"]]
        ledger._attempted_set = set(ledger.attempted)
        ledger.accepted = {_raw(p) for p in books["accepted"]}
        ledger.uncertain = {_raw(p) for p in books["uncertain"]}
        ledger.via_send_many = {_raw(p) for p in books["via_send_many"]}
        for value, where in books["handed_back"]:
            ledger.hand_back(None if value is None else _raw(value), f"child: {where}")
        return ledger

    # ---- the rule -------------------------------------------------------------------

    def problems(self) -> dict[str, list[str]]:
        """Failure kind -> offenders (readable), for every message that breaks the rule."""
        assert self._read, "read the topic back (read_topic / record_topic) before check()"
        out: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for payload in self.attempted:
            t = self.in_topic[payload]
            handed = self.handed.get(payload, [])
            h = len(handed)
            where = f"{_show(payload)} (topic x{t}, handed back: {handed or 'no'})"
            if payload in self.accepted:
                if t + h == 0:
                    kind = "lost-consumed-by-send_many" if payload in self.via_send_many else "lost"
                    out[kind].append(where)
                if t > 1:
                    out["doubled"].append(where)
                if h > 1:
                    out["handed-back-twice"].append(where)
                if t and h:
                    out["delivered-and-handed-back"].append(where)
            elif payload in self.uncertain:
                if t + h > 1:
                    out["uncertain-in-two-places"].append(where)
            else:  # its send raised: not accepted
                if h:
                    out["handed-back-but-never-accepted"].append(where)
                if t:
                    out["delivered-but-never-accepted"].append(where)
        for value, handed in self.handed.items():
            if value is None or value not in self._attempted_set:
                out["handed-back-but-never-attempted"].append(f"{_show(value)} ({handed})")
        strangers = Counter(self.strangers)
        for value, n in strangers.items():
            out["delivered-but-never-attempted"].append(f"{_show(value)} (topic x{n})")
        return {kind: found for kind, found in out.items() if found}

    def counts(self) -> dict[str, int]:
        return {
            "attempted": len(self.attempted),
            "accepted": len(self.accepted),
            "uncertain": len(self.uncertain),
            "delivered": len(self.in_topic),
            "in_topic": sum(self.in_topic.values()),
            "handed_back": self.handed_back_count,
            "hook_calls": self.hook_calls,
        }

    def summary(self) -> str:
        return f"ledger {self.prefix.decode()}: " + " ".join(
            f"{k}={v}" for k, v in self.counts().items()
        )

    def describe(self) -> str:
        """The summary, and up to ten offenders of each failure kind."""
        lines = [self.summary()]
        for kind, offenders in self.problems().items():
            shown = ", ".join(offenders[:10])
            more = f" ... and {len(offenders) - 10} more" if len(offenders) > 10 else ""
            lines.append(f"  {kind}: {len(offenders)}: {shown}{more}")
        return "\n".join(lines)

    def check(self) -> None:
        """Assert the rule for every payload; list the offenders by kind."""
        if self.problems():
            raise AssertionError("the promise is broken -- " + self.describe())
