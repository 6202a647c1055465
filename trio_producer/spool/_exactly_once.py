"""Exactly once across crashes (``exactly_once=True``): the spool's position committed in
the same Kafka transaction as its messages.

The spool's sequence numbers are the source offsets (as Kafka Connect's exactly-once
source connectors do it, KIP-618). Accepting a message writes it to the spool only
(:class:`ExactlyOnceIntake`); the :class:`Committer`, a background task, takes the
accepted messages in spool order and runs the transactions itself. Each transaction
carries:

* the next spooled messages, in their spool order (per-key order is kept: one producer,
  idempotent, in order), and
* one record in the progress topic (``exactly_once_topic``, compacted, one partition):
  key ``transactional.id`` and the spool directory's identity (:func:`progress_key`),
  value that identity again and the highest seq the transaction reaches
  (:func:`encode_position`).

A message leaves the spool only after its transaction committed. The commit protocol,
step by step (the names are what :data:`STEP_HOOK` is called with, the seam of the
kill-at-every-step tests)::

    "begin"      begin_transaction (the HANDED mark is raised before each hand-off:
                 seqs never repeat)
    "produced"   the messages and the progress record are handed to librdkafka; next,
                 commit_transaction (it flushes, then commits)
    "committed"  it returned: the messages and the position are in Kafka, atomically
    "confirmed"  the seqs are confirmed in the spool (they leave it)

A crash anywhere leaves one of two states: the transaction committed (the position says
so: its seqs are dropped at recovery, confirmed or not) or it did not (the next producer
with the same ``transactional.id`` fences this one and aborts it, and the seqs above
the position are sent again, in order). Recovery (:func:`open_exactly_once`), in order:

    lock and recover the spool      (a second process is refused here, before any fencing)
    "fenced"     init_transactions: fences a zombie, aborts (or completes) what it left open
    "recovered"  the committed position was read back (read_committed, up to the
                 partition's high watermark: another producer's open transaction holds
                 the read back until it ends); the recovered records at or below it are
                 confirmed as delivered, the rest sent again

A transaction that fails is aborted and sent again, minus the messages whose own
delivery failed for good (:data:`OWN_FAULT`: too large, unknown topic, timed out, ...):
those are handed back (``on_delivery_error``, a ``send_and_wait`` caller, or the
producer fails), as without exactly once. A fatal error (fenced by another producer
with the same ``transactional.id``) fails the producer at once; what is not committed
stays in the spool.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs
import trio

from .._admin import ensure_compacted_topic, read_last_committed
from .._batch import Route, message_from_pending, route_for
from .._client import DeliveryReports, TrackedReport
from .._exceptions import DeliveryError, ProducerClosedError, TransactionError
from .._message import KafkaErrorInfo, Message
from ._backlog import Backlog
from ._engine import SpoolError
from ._intake import SpoolIntake

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from .._batch import Pending
    from .._client import Failure, KafkaClient
    from .._config import ProducerConfig
    from .._message import ProducerStatistics
    from .._worker import BatchChannel
    from ._engine import Spool
    from ._format import SpoolRecord
    from ._keeper import SpoolKeeper

    RunExclusive = Callable[..., Awaitable[object]]

    class Failures(Protocol):
        """Where the committer's failures go: the producer's state."""

        fatal: KafkaErrorInfo | None

        def route_failure(self, failure: DeliveryError) -> None: ...

        def on_fatal(self, error: KafkaErrorInfo) -> None: ...


logger = logging.getLogger("trio_producer")

#: Called with each step's name (see the module docstring) when set: the seam the
#: kill-at-every-step tests use (a child process sets it to kill itself at one step).
STEP_HOOK: Callable[[str], None] | None = None

#: Delivery failures that are the message's own: handed back, not sent again. Any
#: other failure in an aborted transaction (purged by the abort, refused because the
#: transaction had already failed, ...) sends the message again in the next one.
OWN_FAULT = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "_MSG_TIMED_OUT",
        "INVALID_MSG",
        "CORRUPT_MESSAGE",
        "INVALID_RECORD",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_TIMESTAMP",
        "UNKNOWN_TOPIC_OR_PART",
        "_UNKNOWN_TOPIC",
        "_UNKNOWN_PARTITION",
        "TOPIC_AUTHORIZATION_FAILED",
        "TOPIC_EXCEPTION",
        "POLICY_VIOLATION",
        "_INVALID_ARG",
        "_BAD_MSG",
    }
)

#: Failures of the progress record that fail the producer (nothing can commit): the
#: message's own failures, except a timeout (an unreachable cluster is waited out).
PROGRESS_REFUSED = OWN_FAULT - {"_MSG_TIMED_OUT"}

#: What a ``send_and_wait`` caller gets when the producer stops before its message's
#: transaction committed: the message stays in the spool, for the next producer.
KEPT_IN_SPOOL = KafkaErrorInfo(
    code=-10_001,
    name="_KEPT_IN_SPOOL",
    reason="the producer stopped before the message's transaction committed; it stays in "
    "the spool and the next producer that opens it sends it (do not send it again)",
)

#: The most messages (and bytes) one transaction carries: well below librdkafka's queue
#: (``queue.buffering.max.messages``), so that a transaction is handed over in one go.
MAX_MESSAGES = 10_000
MAX_BYTES = 16 << 20
#: After an aborted transaction, wait this long before the next (doubling, up to
#: ``MAX_BACKOFF``); after this many aborts in a row without a commit, the producer fails.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
MAX_ABORTS = 20

#: The most accepted messages the committer keeps in memory (beyond them it reads the
#: spool back, as store and forward does).
FRESH_MAX = 4 * MAX_MESSAGES

#: While a transaction gathers messages, it hands what came to librdkafka this often.
GATHER_TICK = 0.005

#: The longest a recovery waits to read the progress topic to its end: past librdkafka's
#: default ``transaction.timeout.ms`` (60 s), after which the broker aborts the open
#: transaction of a producer that is gone.
PROGRESS_READ_TIMEOUT = 75.0

#: The file in the spool directory that names it (its identity in the progress records).
ORIGIN_FILE = "ORIGIN"

#: librdkafka properties the progress topic's admin client and consumer take from the
#: producer's (how to reach and authenticate with the cluster).
_CLIENT_PREFIXES = (
    "bootstrap.servers",
    "security.protocol",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl",
    "socket.",
    "broker.",
    "client.",
    "client.dns",
    "api.version",
    "reconnect.",
    "connections.",
    "metadata.",
    "topic.metadata",
    "enable.sasl",
    "oauthbearer",
    "allow.auto.create.topics",
)


def _step(name: str) -> None:
    hook = STEP_HOOK
    if hook is not None:
        hook(name)


def progress_key(cfg: ProducerConfig, origin: str) -> bytes:
    """The progress record's key: the ``transactional.id`` and the spool's identity, so
    that each spool directory keeps its own position in the compacted topic (a zombie's
    or a replaced directory's records never overwrite it)."""
    return f"{cfg.librdkafka['transactional.id']}|{origin}".encode()


def encode_position(origin: str, seq: int) -> bytes:
    """The progress record's value: the spool's identity and the highest committed seq."""
    return json.dumps({"spool": origin, "seq": seq}, separators=(",", ":")).encode()


def decode_position(value: bytes | None, origin: str) -> tuple[int, str | None]:
    """The committed position of *this* spool (``-1``: none) read from a progress value,
    and, when the value cannot be read or names another spool, why it is ignored."""
    if value is None:
        return -1, None
    try:
        data = json.loads(value)
        spool, seq = data["spool"], data["seq"]
        if not isinstance(spool, str) or type(seq) is not int:
            raise TypeError(f"unexpected types in {data!r}")
    except (ValueError, TypeError, KeyError) as exc:
        return -1, f"its last progress record cannot be read ({exc!r}: {value!r:.80})"
    if spool != origin:
        return -1, f"its last progress record names another spool directory ({spool})"
    return seq, None


def read_or_create_origin(path: os.PathLike[str] | str) -> tuple[str, bool]:
    """The spool directory's identity (hex), and whether it was made now (written and
    fsynced: at the directory's first use with ``exactly_once``). Blocking."""
    file = os.path.join(path, ORIGIN_FILE)
    try:
        with open(file, encoding="ascii") as f:
            origin = f.read().strip()
        if len(origin) == 32 and all(c in "0123456789abcdef" for c in origin):
            return origin, False
        logger.warning("spool %r: %s is not an identity (%r): made anew", path, file, origin)
    except FileNotFoundError:
        pass
    origin = os.urandom(16).hex()
    tmp = f"{file}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(origin + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return origin, True


def client_conf(props: Mapping[str, Any]) -> dict[str, Any]:
    """The producer's properties that say how to reach the cluster (for the progress
    topic's admin client and consumer)."""
    return {
        name: value
        for name, value in props.items()
        if name.startswith(_CLIENT_PREFIXES) and not callable(value)
    }


#: One message of the committer: its seq and the message as librdkafka takes it (no
#: report callback of its own unless it needs one).
Entry = tuple[int, "Pending"]


class Committer:
    """The exactly-once transactions: takes the accepted messages in spool order,
    commits each transaction with the spool's position, confirms what committed (see
    the module docstring).

    Where the messages come from, oldest first: those of an aborted transaction (sent
    again), the recovered ones, then the ones accepted by this run -- from memory while
    the committer keeps up (``_fresh``, bounded by ``FRESH_MAX``), else read back from
    the spool. Nothing is lost by dropping the memory copy: the spool has every one.

    A transaction's messages share one report callback, which only counts (librdkafka's
    commit fails when any of them failed), except a ``send_and_wait`` caller's. When a
    transaction is aborted because messages failed on their own (``OWN_FAULT``), its
    messages are sent again each with a callback of its own (``_careful``), so that
    the failures are known by message; the ones that failed are then sent each alone in
    a transaction (a broker that refuses a batch fails every message in it), and only
    one that fails alone is handed back. The order is kept throughout.

    Args:
        keeper: The spool's keeper.
        client: The (transactional, initialised) Kafka client.
        position: The committed position read at recovery (``-1``: none).
        pending: The recovered records above it, in order (sent first).
        origin: The spool directory's identity.
        cfg: The producer's configuration.
    """

    def __init__(
        self,
        keeper: SpoolKeeper,
        client: KafkaClient,
        position: int,
        pending: Iterable[SpoolRecord],
        origin: str,
        cfg: ProducerConfig,
    ) -> None:
        self._keeper = keeper
        self._spool: Spool = keeper.spool
        self._client = client
        self._origin = origin
        self._topic = cfg.exactly_once_topic
        self._key = progress_key(cfg, origin)
        self._interval = cfg.commit_interval
        self._timeout = cfg.transaction_timeout
        self._id_header = keeper.id_header
        #: The highest seq in a committed transaction (the position in Kafka).
        self.position = position
        #: Messages of an aborted transaction, to send again first.
        self._retry: deque[Entry] = deque()
        #: Seqs that failed on their own in a transaction with others: each is sent
        #: alone in a transaction of its own, and handed back only if it fails alone.
        self._suspects: set[int] = set()
        #: The next transaction gives each message a report callback of its own.
        self._careful = False
        #: The recovered records above the position, in order.
        self._recovered: deque[SpoolRecord] = deque(pending)
        #: The first seq of this run not taken yet (from ``_fresh`` or the spool).
        self._next = self._spool.next_seq
        #: This run's accepted messages in memory, contiguous from ``_next`` on.
        self._fresh: deque[Entry] = deque()
        #: Everything at or below this seq was committed or handed back.
        self.done_through = self._spool.next_seq - 1
        if self._recovered:
            self.done_through = self._recovered[0].seq - 1
        #: The messages of the transaction in progress.
        self._in_transaction: list[Entry] = []
        #: ``send_and_wait`` callers' trackers, by seq: woken after the commit.
        self._waiters: dict[int, TrackedReport] = {}
        self._wake = trio.lowlevel.ParkingLot()
        self._idle = False
        self._progress = trio.lowlevel.ParkingLot()
        self._closing = False
        self._stopped = False
        self._gather: trio.CancelScope | None = None
        #: A flush() waits: commit without waiting out ``commit_interval``.
        self._urgent = False
        #: The last abort's cause was retriable (the cluster was unreachable).
        self._last_cause_retriable = False
        #: When the exit must be done (Trio time): the transactional calls are bounded by
        #: it (and by ``transaction_timeout``); past it they are given up on.
        self._deadline = math.inf
        #: Messages handed back (failed on their own, or refused at the call).
        self.handed_back = 0
        #: The scope of the transactional call in progress (see ``_call``).
        self._call_scope: trio.CancelScope | None = None
        #: Counters: messages committed, transactions committed and aborted.
        self.committed = 0
        self.transactions = 0
        self.aborts = 0

    # ---- the intake's side (Trio thread) --------------------------------------------------

    def pending(self) -> int:
        """Accepted messages not yet committed (nor handed back)."""
        return (
            len(self._in_transaction)
            + len(self._retry)
            + len(self._recovered)
            + self._spool.next_seq
            - self._next
        )

    @property
    def in_transaction(self) -> int:
        """Messages in the transaction in progress."""
        return len(self._in_transaction)

    def accepted(self, seq: int, item: Pending, tracked: TrackedReport | None) -> None:
        """The message ``item`` was spooled as ``seq`` (``tracked``: a ``send_and_wait``
        caller's). ``item`` is the message as librdkafka takes it, with no callback."""
        if tracked is not None:
            self._waiters[seq] = tracked
        fresh = self._fresh
        if len(fresh) < FRESH_MAX and (fresh[-1][0] == seq - 1 if fresh else seq == self._next):
            fresh.append((seq, item))
        if self._idle:
            self._wake.unpark_all()

    def accepted_many(self, first: int, entries: list[Entry]) -> None:
        """A chunk of ``send_many`` was spooled from ``first`` on (see :meth:`accepted`)."""
        fresh = self._fresh
        if len(fresh) < FRESH_MAX and (fresh[-1][0] == first - 1 if fresh else first == self._next):
            fresh.extend(entries)
        if self._idle:
            self._wake.unpark_all()

    async def wait_done(self, seq: int) -> None:
        """Wait until everything up to ``seq`` is committed or handed back.

        Raises:
            ProducerClosedError: The committer stopped first.
        """
        while self.done_through < seq:
            self._urgent = True  # commit now: do not wait out commit_interval
            if self._gather is not None:
                self._gather.cancel()
            if self._stopped:
                raise ProducerClosedError(
                    "the producer closed before every message sent before flush() was "
                    "committed; what was not stays in the spool for the next producer",
                    producer_failed=True,
                )
            await self._progress.park()

    def take_all(self) -> list[Pending]:
        """Every accepted message not committed, in order, as messages to hand back
        (the exit, when the spool directory was removed); forgotten here."""
        entries = [*self._in_transaction, *self._retry]
        entries += [self._from_record(record) for record in self._recovered]
        spool = self._spool
        while self._next < spool.next_seq:
            entries += self._take_new(spool.next_seq - self._next)
        self._in_transaction = []
        self._retry.clear()
        self._recovered.clear()
        return [self._careful_item(seq, item) for seq, item in entries]

    def hurry(self, deadline: float) -> None:
        """The exit must be done by ``deadline`` (Trio time; the drain's, or a second later
        when it is cut short): no transactional call waits past it."""
        self._deadline = min(self._deadline, deadline)
        if self._call_scope is not None:
            self._call_scope.deadline = self._deadline

    async def drain(self, deadline: float) -> None:
        """At the exit (the channel is closed): commit what is pending without waiting
        for ``commit_interval``, and return once nothing is (``deadline``: see
        :meth:`hurry`)."""
        self.hurry(deadline)
        self._closing = True
        if self._gather is not None:
            self._gather.cancel()
        if self._idle:
            self._wake.unpark_all()
        while self.pending() and not self._stopped:
            await self._progress.park()

    # ---- where a transaction's messages come from -------------------------------------------

    def _from_record(self, record: SpoolRecord) -> Entry:
        item: Pending = {"topic": record.topic, "value": record.value}
        if record.key is not None:
            item["key"] = record.key
        if record.partition >= 0:
            item["partition"] = record.partition
        if record.timestamp > 0:
            item["timestamp"] = record.timestamp
        headers = list(record.headers or ())
        if self._id_header is not None:
            headers.append((self._id_header, record.id))
        if headers:
            item["headers"] = headers
        if "headers" in item or "partition" in item or "timestamp" in item:
            item["route"] = Route.SINGLE
        return record.seq, item

    def _take_new(self, room: int) -> list[Entry]:
        """Up to ``room`` of this run's next messages: from memory, else from the spool
        (up to where the memory copy begins)."""
        fresh = self._fresh
        if fresh and fresh[0][0] == self._next:
            n = min(room, len(fresh))
            out = [fresh.popleft() for _ in range(n)]
        else:
            limit = min(room, 1000, self._spool.next_seq - self._next)
            if fresh:
                limit = min(limit, fresh[0][0] - self._next)
            out = [self._from_record(r) for r in self._spool.read_from(self._next, limit)]
        if out:
            self._next = out[-1][0] + 1
        return out

    def _take(self, entries: list[Entry], size: int) -> int:
        """Add the next messages to the transaction's ``entries``, up to
        ``MAX_MESSAGES`` and ``MAX_BYTES``; a suspect only alone (it ends the taking,
        and takes nothing after it). Returns the bytes the transaction holds now."""
        for source in (self._retry, None):
            while len(entries) < MAX_MESSAGES and size < MAX_BYTES:
                if source is not None:
                    if not source:
                        break
                    if self._suspects:
                        if source[0][0] in self._suspects:
                            if entries:
                                return size  # the suspect goes alone, next time
                            entry = source.popleft()
                            entries.append(entry)
                            return MAX_BYTES  # alone: nothing after it
                    batch = [source.popleft()]
                elif self._recovered:
                    n = min(MAX_MESSAGES - len(entries), len(self._recovered))
                    batch = [self._from_record(self._recovered.popleft()) for _ in range(n)]
                elif self._next < self._spool.next_seq:
                    batch = self._take_new(MAX_MESSAGES - len(entries))
                else:
                    break
                for _, item in batch:
                    value, key = item["value"], item.get("key")
                    size += (len(value) if value else 0) + (len(key) if key else 0)
                entries += batch
        return size

    def _careful_item(self, seq: int, item: Pending) -> Pending:
        """``item`` with a report callback of its own (its failure is then known)."""
        own: Pending = {**item}
        own.pop("route", None)
        tracked = self._waiters.get(seq)
        if tracked is None:
            tracked = TrackedReport(own.get("headers"), None, seq)
        else:
            tracked.failure = tracked.metadata = None
            tracked.headers = own.get("headers")
        own["callback"] = tracked
        own["route"] = route_for(own, own_callback=True)
        return own

    def _items(self, entries: list[Entry]) -> list[Pending]:
        """The messages of ``entries`` as handed to librdkafka."""
        if self._careful:
            return [self._careful_item(seq, item) for seq, item in entries]
        waiters = self._waiters
        suspects = self._suspects
        if not waiters and not suspects:
            return [item for _, item in entries]
        return [
            self._careful_item(seq, item) if seq in waiters or seq in suspects else item
            for seq, item in entries
        ]

    # ---- the task --------------------------------------------------------------------------

    async def run(self, run_exclusive: RunExclusive, state: Failures) -> None:
        """Run the transactions until the producer stops (``run_exclusive``: the
        delivery task's, which pauses its polling while a transactional call runs;
        ``state``: the producer's, which takes the failures handed back and a fatal
        error)."""
        try:
            await self._run(run_exclusive, state)
        finally:
            self._stopped = True
            self._progress.unpark_all()
            self._release_waiters()

    def _release_waiters(self) -> None:
        """The committer stopped: every ``send_and_wait`` caller still waiting gets its
        message back in a ``DeliveryError`` (it stays in the spool for the next producer,
        as the exit's exception says)."""
        for seq, tracked in self._waiters.items():
            waiter = tracked.waiter
            if waiter is None or waiter.is_set():
                continue
            item = self._find(seq)
            message = (
                message_from_pending(item)
                if item is not None
                else Message(topic="<in the spool>", value=None)
            )
            tracked.failure = DeliveryError(message, KEPT_IN_SPOOL)
            waiter.set()
        self._waiters.clear()

    def _find(self, seq: int) -> Pending | None:
        for entries in (self._in_transaction, self._retry, self._fresh):
            for entry_seq, item in entries:
                if entry_seq == seq:
                    return item
        spool = self._spool
        if self._next <= seq < spool.next_seq:
            try:
                return self._from_record(spool.read_from(seq, 1)[0])[1]
            except (ValueError, IndexError, SpoolError):
                return None
        return None

    async def _run(self, run_exclusive: RunExclusive, state: Failures) -> None:
        backoff = FIRST_BACKOFF
        aborts = 0
        while True:
            if not self.pending():
                self._idle = True
                try:
                    await self._wake.park()
                finally:
                    self._idle = False
                continue
            outcome = await self._transact(run_exclusive, state)
            if outcome is None:
                return  # the producer failed (fatal): what is left stays in the spool
            if outcome:
                backoff = FIRST_BACKOFF
                aborts = 0
                continue
            self.aborts += 1
            if not self._last_cause_retriable:
                aborts += 1  # (an unreachable cluster is waited out, never given up on)
            if aborts >= MAX_ABORTS:
                state.on_fatal(
                    KafkaErrorInfo(
                        code=-1,
                        name="_EXACTLY_ONCE",
                        reason=f"{aborts} transactions in a row were aborted; what was not "
                        f"committed stays in the spool {str(self._spool.path)!r}",
                    )
                )
                return
            if not self._careful and not self._suspects:
                await trio.sleep(backoff)  # (a failure of the transaction, not a message's)
                backoff = min(MAX_BACKOFF, backoff * 2)

    async def _transact(self, run_exclusive: RunExclusive, state: Failures) -> bool | None:
        """One transaction: begin; for ``commit_interval`` (or until it is full, a
        ``flush`` asks, or the producer closes) hand each message to librdkafka as it
        comes, so that it is on its way before the commit; then the progress record and
        the commit. True: committed; False: aborted (to be sent again, minus what was
        handed back); None: the producer failed."""
        client = self._client
        try:
            client.begin_transaction()
        except TransactionError as exc:
            self._fail(exc, state)
            return None
        _step("begin")
        deadline = trio.current_time() + self._interval
        reports = DeliveryReports()
        entries: list[Entry] = []
        self._in_transaction = entries  # (the list grows below)
        items: list[Pending] = []
        size = 0
        careful = self._careful
        while True:
            before = len(entries)
            size = self._take(entries, size)
            if len(entries) > before:
                # Before the hand-off: no seq above the mark was handed over, so a new
                # process never gives out a seq that may be in Kafka already.
                self._spool.note_handed(entries[-1][0])
                items += self._items(entries[before:])
                await self._produce(items, before, reports, run_exclusive)
            full = len(entries) >= MAX_MESSAGES or size >= MAX_BYTES
            if full or self._closing or self._urgent or trio.current_time() >= deadline:
                break
            # Not woken by each accepted message (a task switch per message): it looks
            # again every GATHER_TICK, and at once when a flush() or the exit asks.
            tick = min(deadline, trio.current_time() + GATHER_TICK)
            with trio.CancelScope(deadline=tick) as self._gather:
                await trio.sleep_forever()
            self._gather = None
        self._urgent = False
        last = entries[-1][0]
        progress = TrackedReport(None, None)
        items.append(
            {
                "topic": self._topic,
                "value": encode_position(self._origin, last),
                "key": self._key,
                "partition": 0,
                "callback": progress,
                "route": Route.SINGLE,
            }
        )
        await self._produce(items, len(items) - 1, reports, run_exclusive)
        _step("produced")
        outcome: TransactionError | Literal[True] | None
        if progress.failure is not None:
            # librdkafka refused the progress record at once: the transaction must not
            # commit without it. (Refused because the transaction had failed already --
            # _STATE after a message's failure -- it is aborted and sent again.)
            outcome = TransactionError(
                "producing the progress record", progress.failure.error, abortable=True
            )
        else:
            outcome = await self._commit(run_exclusive, state)
        if isinstance(outcome, TransactionError):
            if progress.failure is not None and progress.failure.error.name in PROGRESS_REFUSED:
                # The progress topic itself refused it: nothing can commit.
                await self._abort(run_exclusive, state)
                error = TransactionError("producing the progress record", progress.failure.error)
                self._fail(error, state)
                return None
            return await self._aborted(entries, reports, careful, run_exclusive, outcome, state)
        if outcome is None:
            return None
        _step("committed")
        self._committed(entries, last, reports, careful, state)
        _step("confirmed")
        return True

    def _call_timeout(self) -> float:
        """The timeout of the next transactional call: ``transaction_timeout``, or what is
        left before the exit's deadline."""
        return max(0.1, min(self._timeout, self._deadline - trio.current_time()))

    async def _call(
        self, run_exclusive: RunExclusive, fn: Callable[[float], None], what: str
    ) -> bool:
        """Run a transactional call (``what``: commit, abort) in a thread until it is done:
        shielded -- a call that returned is never lost to a cancellation -- and called
        again while it only times out (an unreachable cluster; librdkafka resumes it),
        but not past the exit's deadline, even one set while it runs (:meth:`hurry`):
        then the thread is abandoned (the call goes on, holding the client), the
        transaction is left open, and this returns False. Raises any other error."""
        said = False
        while True:
            with trio.CancelScope(shield=True, deadline=self._deadline) as scope:
                self._call_scope = scope
                try:
                    await run_exclusive(fn, self._call_timeout(), abandon_on_cancel=True)
                except TransactionError as exc:
                    if not exc.retriable or exc.fatal or exc.abortable:
                        raise
                    if self._past_deadline():
                        self._leave_open(exc)
                        return False
                    if not said:
                        said = True
                        logger.warning(
                            "exactly once: the %s did not finish yet, waiting on: %s", what, exc
                        )
                    await trio.sleep(0.01)  # (never a busy loop)
                    continue
                finally:
                    self._call_scope = None
            if scope.cancelled_caught:
                self._leave_open(f"the exit's deadline passed in the {what}")
                return False
            return True

    def _past_deadline(self) -> bool:
        return trio.current_time() >= self._deadline

    def _leave_open(self, exc: TransactionError | str) -> None:
        """The exit's deadline passed in a transactional call: the transaction is left
        open (the next producer with this transactional.id fences and aborts it; its
        messages stay in the spool), and the client is closed without waiting on it."""
        logger.warning(
            "exactly once: the producer closes with a transaction neither committed nor "
            "aborted (%s); its messages stay in the spool %r",
            exc,
            str(self._spool.path),
        )
        self._client.leave_transaction_open()

    async def _commit(
        self, run_exclusive: RunExclusive, state: Failures
    ) -> TransactionError | Literal[True] | None:
        """``commit_transaction``. True: committed; a ``TransactionError``: the
        transaction must be aborted; None: the producer failed (or the exit's deadline
        passed: the transaction is left open)."""
        try:
            if not await self._call(run_exclusive, self._client.commit_transaction, "commit"):
                return None
        except TransactionError as exc:
            if exc.abortable:
                return exc
            self._fail(exc, state)
            return None
        return True

    async def _produce(
        self,
        items: list[Pending],
        start: int,
        reports: DeliveryReports,
        run_exclusive: RunExclusive,
    ) -> None:
        client = self._client
        while True:
            start = client.produce(items, start, reports)
            if start >= len(items):
                return
            await run_exclusive(client.poll, 0.1)  # librdkafka's queue is full: serve some

    def _committed(
        self,
        entries: list[Entry],
        last: int,
        reports: DeliveryReports,
        careful: bool,
        state: Failures,
    ) -> None:
        """After the commit: confirm; wake the waiters; hand back what librdkafka refused
        at once (those never were in the transaction, which committed without them)."""
        self._keeper.confirm([seq for seq, _ in entries])
        refused = 0
        for failure in reports.failures:
            refused += 1
            tracked = failure.tracked
            if tracked is not None and tracked.has_waiter:
                continue  # its send_and_wait caller raises it (woken below)
            state.route_failure(failure.error)
        waiters = self._waiters
        if waiters:
            for seq, _ in entries:
                tracked = waiters.pop(seq, None)
                if tracked is not None and tracked.waiter is not None:
                    tracked.waiter.set()
        if careful:
            self._careful = False
        for seq, _ in entries:
            self._suspects.discard(seq)
        self._in_transaction = []
        self.position = self.done_through = last
        self.committed += len(entries) - refused
        self.handed_back += refused
        self.transactions += 1
        self._progress.unpark_all()

    async def _abort(self, run_exclusive: RunExclusive, state: Failures) -> bool:
        """``abort_transaction``, tried again while it only timed out (an unreachable
        cluster); False: the producer failed, or the exit's deadline passed."""
        try:
            return await self._call(run_exclusive, self._client.abort_transaction, "abort")
        except TransactionError as exc:
            self._fail(exc, state)
            return False

    async def _aborted(
        self,
        entries: list[Entry],
        reports: DeliveryReports,
        careful: bool,
        run_exclusive: RunExclusive,
        cause: TransactionError,
        state: Failures,
    ) -> bool | None:
        """After a commit that failed: abort; send everything again, in order, except a
        message that failed on its own -- alone in its transaction, it is handed back;
        with others, it becomes a suspect (sent alone next); without a callback of its
        own, the next try gives every message one (``_careful``)."""
        self._last_cause_retriable = cause.retriable and not cause.abortable
        if not await self._abort(run_exclusive, state):
            return None
        own: dict[int, Failure] = {}
        anonymous = False
        for failure in reports.failures:
            if failure.error.error.name not in OWN_FAULT:
                continue
            tracked = failure.tracked
            if tracked is not None and tracked.ticket >= 0:
                own[tracked.ticket] = failure
            else:
                anonymous = True
        handed: list[int] = []
        if len(entries) == 1 and own:
            # Alone in its transaction: the failure is its own.
            failure = own[entries[0][0]]
            tracked = failure.tracked
            assert tracked is not None
            self._waiters.pop(tracked.ticket, None)
            self._suspects.discard(tracked.ticket)
            if tracked.has_waiter:
                assert tracked.waiter is not None
                tracked.waiter.set()  # its send_and_wait caller raises it
            else:
                state.route_failure(failure.error)
            handed.append(tracked.ticket)
            self._keeper.confirm(handed)
            self.handed_back += 1
        else:
            self._suspects.update(own)
            if anonymous and not careful:
                self._careful = True
        logger.warning(
            "exactly once: a transaction of %d message(s) was aborted (%s); %s",
            len(entries),
            cause,
            f"{len(handed)} handed back, the rest is sent again"
            if handed
            else f"{len(own)} failed on their own and are sent again alone"
            if own
            else "sent again",
        )
        rest = [entry for entry in entries if entry[0] not in handed]
        self._in_transaction = []
        self._retry.extendleft(reversed(rest))
        if not rest:
            self.done_through = max(self.done_through, *handed)
            self._progress.unpark_all()
        return False

    def _fail(self, exc: TransactionError, state: Failures) -> None:
        """A fatal (or unexpected) transactional error: the producer fails; what was not
        committed stays in the spool (this producer sends nothing more)."""
        self._retry.extendleft(reversed(self._in_transaction))
        self._in_transaction = []
        if state.fatal is None:
            logger.error("exactly once: the producer fails: %s", exc)
            state.on_fatal(exc.error)


class ExactlyOnceIntake(SpoolIntake):
    """The intake with ``exactly_once``: a message is accepted into the spool only; the
    :class:`Committer` sends it in a transaction (see the module docstring)."""

    def __init__(self, channel: BatchChannel, keeper: SpoolKeeper, committer: Committer) -> None:
        # Everything goes to the spool alone, never to the channel's batch: a backlog
        # that begins now and never ends (the inherited send_many takes its
        # store-and-forward path); the committer reads it, not the worker.
        backlog = Backlog(keeper)
        backlog.begin(keeper.spool.next_seq)
        super().__init__(channel, keeper, backlog)
        self._committer = committer

    def _accept_nowait(self, item: Pending, size: int, waiter: trio.Event | None) -> int:
        channel = self._channel
        if channel.closed:
            raise channel.closed_error()
        keeper = self._keeper
        if not keeper.has_room(item, size):
            raise trio.WouldBlock
        seq = keeper.spool_item(item, waiter)
        # The message as the committer hands it to librdkafka: no callback, no ticket.
        plain: Pending = {"topic": item["topic"], "value": item["value"]}
        key = item.get("key")
        if key is not None:
            plain["key"] = key
        if item.get("route") is Route.SINGLE:
            if "partition" in item:
                plain["partition"] = item["partition"]
            if "timestamp" in item:
                plain["timestamp"] = item["timestamp"]
            if "headers" in item:
                plain["headers"] = item["headers"]
            plain["route"] = Route.SINGLE
        tracked = item.get("callback") if waiter is not None else None
        self._committer.accepted(
            seq, plain, tracked if isinstance(tracked, TrackedReport) else None
        )
        return seq

    def _spool_chunk(
        self,
        topic: str,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        sizes: list[int],
        to_memory: bool,
    ) -> int:
        keeper = self._keeper
        first = keeper.spool_many(topic, values, keys)
        entries: list[Entry]
        id_header = keeper.id_header
        if id_header is not None:
            entries = []
            id_of = keeper.spool.id_of
            for i, value in enumerate(values):
                item: Pending = {"topic": topic, "value": value}
                key = keys[i] if keys is not None else None
                if key is not None:
                    item["key"] = key
                item["headers"] = [(id_header, id_of(first + i))]
                item["route"] = Route.SINGLE
                entries.append((first + i, item))
        elif keys is None:
            entries = [
                (first + i, {"topic": topic, "value": value}) for i, value in enumerate(values)
            ]
        else:
            entries = [
                (first + i, {"topic": topic, "value": value, "key": key})
                if key is not None
                else (first + i, {"topic": topic, "value": value})
                for i, (value, key) in enumerate(zip(values, keys, strict=True))
            ]
        self._committer.accepted_many(first, entries)
        return first

    def backlog(self) -> int:
        """Accepted messages not committed yet (they stay in the spool at the exit)."""
        return self._committer.pending()

    def take_backlog(self) -> list[Pending]:
        return self._committer.take_all()

    async def flush_target(self) -> int:
        """Wait until everything accepted before the call is committed (or handed back)."""
        channel = self._channel
        await self._committer.wait_done(self._keeper.spool.next_seq - 1)
        if channel.closed:
            raise channel.closed_error()
        return channel.request_flush()

    def statistics(self, stats: ProducerStatistics) -> ProducerStatistics:
        """``queued``: accepted, not in a transaction yet; ``in_flight``: in the
        transaction in progress; ``delivered``: committed."""
        stats = super().statistics(stats)  # (queued counts backlog(): every pending one)
        committer = self._committer
        in_transaction = committer.in_transaction
        return attrs.evolve(
            stats,
            queued=stats.queued - in_transaction,
            in_flight=stats.in_flight + in_transaction,
            delivered=stats.delivered + committer.committed,
            failed=stats.failed + committer.handed_back,
        )


async def open_exactly_once(
    cfg: ProducerConfig, client: KafkaClient, keeper: SpoolKeeper
) -> Committer:
    """Recovery with ``exactly_once`` (the spool is open and locked): fence and abort
    what a crashed producer left, read the committed position back, drop the recovered
    records it covers; return the committer.

    Raises:
        TransactionError: ``init_transactions`` failed.
        SpoolError: The committed position could not be read.
    """
    spool = keeper.spool
    timeout = cfg.transaction_timeout
    # (the threads below use clients and files of their own: abandoned on cancellation,
    # so that a dead cluster does not hold a Ctrl-C or a deadline; init_transactions
    # uses the producer's client and is bounded by its timeout)
    origin, made = await trio.to_thread.run_sync(
        read_or_create_origin, spool.path, abandon_on_cancel=True
    )
    if made and spool.recovered:
        logger.warning(
            "spool %r: exactly once: the directory holds %d unconfirmed message(s) but no "
            "%s file naming it (removed, or an at-least-once spool before): their committed "
            "position is unknown, so they are all sent again (those a transaction had "
            "committed are duplicates)",
            str(spool.path),
            len(spool.recovered),
            ORIGIN_FILE,
        )
    conf = client_conf(cfg.librdkafka_config())
    if client.oauth is not None:
        conf["oauth_cb"] = client.oauth  # the token provider's refreshes, shared
    topic = cfg.exactly_once_topic
    key = progress_key(cfg, origin)
    try:
        await trio.to_thread.run_sync(
            lambda: ensure_compacted_topic(conf, topic, timeout=timeout), abandon_on_cancel=True
        )
    except Exception as exc:
        raise SpoolError(f"exactly once: {exc}") from None
    # Blocking and not cancellable: bounded by its own timeout.
    await trio.to_thread.run_sync(client.init_transactions, timeout)
    _step("fenced")
    # Another producer's open transaction on the progress topic holds the read back until
    # it ends: when that producer is gone, until librdkafka's transaction.timeout.ms
    # (60 s by default) has passed and the broker aborted it.
    read_timeout = max(timeout, PROGRESS_READ_TIMEOUT)
    try:
        value = await trio.to_thread.run_sync(
            lambda: read_last_committed(conf, topic, key, timeout=read_timeout),
            abandon_on_cancel=True,
        )
    except Exception as exc:
        raise SpoolError(f"exactly once: {exc}") from None
    position, ignored = decode_position(value, origin)
    if ignored is not None:
        logger.warning(
            "spool %r: exactly once: %s; every message the spool holds is sent again",
            str(spool.path),
            ignored,
        )
    _step("recovered")
    recovered = list(spool.recovered)
    spool.recovered.clear()
    done = [record.seq for record in recovered if record.seq <= position]
    again = [record for record in recovered if record.seq > position]
    if done:
        keeper.confirm(done)
    keeper.recovered = len(again)  # (what statistics() says was recovered: sent again)
    keeper.recovery_done.set()
    if recovered:
        logger.info(
            "spool %r: exactly once: committed through seq %d; of %d recovered message(s), "
            "%d were committed already (dropped), %d are sent again",
            str(spool.path),
            position,
            len(recovered),
            len(done),
            len(again),
        )
    return Committer(keeper, client, position, again, origin, cfg)
