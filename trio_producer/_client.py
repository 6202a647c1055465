"""The producer's only module that imports confluent_kafka: produce, poll, purge, close.

A boundary converts: every confluent object (error, delivery report, message) is turned
into this library's own types here -- :class:`~trio_producer.KafkaErrorInfo`,
:class:`~trio_producer.DeliveryError`, :class:`~trio_producer.RecordMetadata` -- on the
poll thread, as the report is served. Nothing downstream holds a confluent object.

The report callbacks (:class:`DeliveryReports` for a whole group of fire-and-forget
messages, :class:`TrackedReport` for one message that needs more than a count, a
:class:`RunReports` for a run of own-run messages) only count and append to lists: they
run on librdkafka's poll thread and never touch Trio.

The client is complete when constructed and knows no intake: what an intake adds to the
produce loop (the callback of a run of its own-run messages) comes with each call to
:meth:`KafkaClient.produce`, from the delivery task that was built with it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from ._batch import Pending, ReportCallback, Route, message_from_pending
from ._config import is_secret
from ._exceptions import ConfigError, DeliveryError, TransactionError
from ._hooks import OAuthCallback, OAuthToken, OAuthTokenProvider
from ._logging import LibrdkafkaLog
from ._message import KafkaErrorInfo, Message, RecordMetadata
from ._topics import check_topic

if TYPE_CHECKING:
    from collections.abc import Callable

    import trio

logger = logging.getLogger("trio_producer")
librdkafka_logger = logging.getLogger("trio_producer.librdkafka")

#: Error for messages that were accepted but never handed to librdkafka.
NOT_PRODUCED = KafkaErrorInfo(
    code=-10_000,
    name="_NOT_PRODUCED",
    reason="accepted, but never handed to librdkafka before the producer closed",
)

#: The kinds of a message's timestamp (``msg.timestamp()[0]``): none, set by the producer.
TIMESTAMP_NOT_AVAILABLE = confluent_kafka.TIMESTAMP_NOT_AVAILABLE
TIMESTAMP_CREATE_TIME = confluent_kafka.TIMESTAMP_CREATE_TIME
_QUEUE_FULL = KafkaError._QUEUE_FULL

SHARED, TRACKED, OWN_RUN, SINGLE = Route.SHARED, Route.TRACKED, Route.OWN_RUN, Route.SINGLE


def check_offsets(offsets: object, group_metadata: object) -> list[Any]:
    """Validate the arguments of ``Producer.send_offsets``: raise before anything runs;
    return the offsets to send."""
    if isinstance(offsets, confluent_kafka.TopicPartition) or not isinstance(offsets, list | tuple):
        raise TypeError(
            "offsets must be a list of confluent_kafka.TopicPartition (e.g. "
            f"consumer.position(consumer.assignment())), not {type(offsets).__name__}"
        )

    for index, tp in enumerate(offsets):
        if not isinstance(tp, confluent_kafka.TopicPartition):
            raise TypeError(
                f"offsets must hold confluent_kafka.TopicPartition, not {type(tp).__name__} "
                f"{tp!r:.60}"
            )
        try:
            check_topic(tp.topic)  # as send does: librdkafka would abort the transaction
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"offsets[{index}]: {exc}") from None

    # confluent-kafka hands the consumer's group metadata over as an opaque bytes blob.
    if not isinstance(group_metadata, bytes) or not group_metadata:
        raise TypeError(
            "group_metadata must be what consumer.consumer_group_metadata() returns "
            f"(an opaque bytes object), not {type(group_metadata).__name__} "
            f"{group_metadata!r:.40}"
        )
    # A logical offset (OFFSET_INVALID -1001 for a partition nothing was consumed from
    # yet, as consumer.position() reports it) says "no position": skipped, as librdkafka
    # itself does, so that position(assignment()) can be passed as it is.
    return [tp for tp in offsets if tp.offset >= 0]


def error_info(err: object) -> KafkaErrorInfo:
    """Copy a confluent ``KafkaError`` (or ``KafkaException``) into a :class:`KafkaErrorInfo`."""
    if isinstance(err, KafkaErrorInfo):
        return err
    if isinstance(err, KafkaException):
        err = err.args[0]
    if isinstance(err, KafkaError):
        return KafkaErrorInfo(
            code=err.code(),
            name=err.name(),
            reason=err.str(),
            retriable=bool(err.retriable()),
            fatal=bool(err.fatal()),
        )
    return KafkaErrorInfo(code=-1, name=type(err).__name__, reason=str(err))


def kafka_error(name: str) -> KafkaErrorInfo:
    """librdkafka's own :class:`KafkaErrorInfo` for an error name (its code and its words),
    for the fake producer of ``trio_producer.testing``.

    Raises:
        ValueError: ``name`` is not one of librdkafka's error names.
    """
    return error_info(librdkafka_error(name))


def librdkafka_error(name: str, reason: str | None = None) -> Any:
    """confluent's ``KafkaError`` for a librdkafka error name (its code; its own words
    unless ``reason``): what librdkafka hands to the code that calls it. For the fake
    confluent producer of ``trio_producer.testing``, which does not import
    confluent_kafka (only the boundaries do: tests/unit/test_house.py).

    Raises:
        ValueError: ``name`` is not one of librdkafka's error names.
    """
    code = getattr(KafkaError, name, None)
    if not isinstance(code, int):
        raise ValueError(
            f"{name!r} is not a librdkafka error name (e.g. 'MSG_SIZE_TOO_LARGE', "
            "'_MSG_TIMED_OUT', 'NOT_ENOUGH_REPLICAS'): see confluent_kafka.KafkaError"
        )
    return KafkaError(code) if reason is None else KafkaError(code, reason)


def librdkafka_exception(error: object) -> Exception:
    """confluent's ``KafkaException`` carrying ``error`` (see :func:`librdkafka_error`):
    what a refused librdkafka call raises."""
    return KafkaException(error)


def normalize_headers(headers: object) -> list[tuple[str, bytes | None]] | None:
    """Headers of a consumed record as ``(name, bytes-or-None)`` pairs."""
    if headers is None:
        return None
    pairs: Any = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in pairs]


def record_timestamp(msg: Any) -> int | None:
    """A confluent message's timestamp in milliseconds, or ``None``."""
    kind, value = msg.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(value)


def failure_from_report(
    err: object, msg: Any, headers: list[tuple[str, bytes | None]] | None
) -> DeliveryError:
    """The :class:`DeliveryError` of one failed delivery report.

    librdkafka's reports do not carry headers: the message's own are passed in.
    It cannot fail: one odd report must never stop the poll thread's callbacks (which
    would strand every other message); what could not be read is said in the error.
    """
    try:
        partition = msg.partition()
        message = Message(
            topic=msg.topic(),
            value=msg.value(),
            key=msg.key(),
            headers=headers,
            partition=None if partition is None or partition < 0 else partition,
            timestamp=record_timestamp(msg),
        )
        return DeliveryError(message, error_info(err))
    except Exception as exc:  # pragma: no cover - a bug; the message is still handed back
        logger.exception("could not read a delivery report; handing back what is known")
        info = KafkaErrorInfo(code=-1, name="_INTERNAL", reason=f"{err!r} ({exc!r})")
        return DeliveryError(Message(topic="<unknown>", value=None, headers=headers), info)


def failure_from_pending(item: Pending, info: KafkaErrorInfo) -> DeliveryError:
    """The :class:`DeliveryError` of a message that never became a delivery report."""
    return DeliveryError(message_from_pending(item), info)


def metadata_from_report(msg: Any) -> RecordMetadata:
    return RecordMetadata(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        timestamp=record_timestamp(msg),
    )


class Failure(NamedTuple):
    """One failed message: the error to hand back, and its tracker if it had one."""

    error: DeliveryError
    tracked: TrackedReport | None


class DeliveryReports:
    """The shared report callback of a group of messages: counts, and failures converted.

    Called by librdkafka on the poll thread. Subclassed by the delivery task's epochs.
    """

    __slots__ = ("completed", "delivered", "failures", "runs", "tickets")

    def __init__(self) -> None:
        self.delivered = 0
        self.failures: list[Failure] = []
        #: Trackers with a waiter whose outcome arrived (the delivery task wakes them).
        self.completed: list[TrackedReport] = []
        #: The tickets of delivered messages that carry one (``TrackedReport.ticket``),
        #: for the intake's ``after_reports`` hook (poll thread appends, Trio takes).
        self.tickets: list[int] = []
        #: Run callbacks (:class:`RunReports`) handed to librdkafka's batch call that
        #: the intake's ``after_reports`` hook has not settled yet.
        self.runs: list[RunReports] = []

    def __call__(self, err: object, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failures.append(Failure(failure_from_report(err, msg, None), None))

    def fail_now(self, item: Pending, info: KafkaErrorInfo) -> None:
        """Settle one message librdkafka refused at once, as a failed delivery."""
        error = failure_from_pending(item, info)
        tracked = _own_callback(item)
        if isinstance(tracked, TrackedReport):
            tracked.settle_failed(error, self)
        else:
            self.failures.append(Failure(error, None))


class RunReports(Protocol):
    """The shared report callback of a run of :attr:`~trio_producer._batch.Route.OWN_RUN`
    messages handed to librdkafka's batch call together: made by the intake that
    accepted them (the ``run_reports`` argument of :meth:`KafkaClient.produce`, which the
    delivery task was built with; the durable spool's is ``spool._reports.SpooledRun``),
    called on the poll thread. It counts into the :class:`DeliveryReports` it was made
    for, like that one; what else it does is the intake's business (the delivery task's
    ``after_reports`` hook settles it).

    Attributes:
        items: The run's messages that librdkafka took, in order (set by ``produce``).
    """

    items: list[Pending]

    def __call__(self, err: object, msg: Any, /) -> None: ...


def no_run_reports(reports: DeliveryReports) -> RunReports:
    """``run_reports`` without an intake that gives messages the own-run route: there is
    no run callback to make (an own-run message there is a bug)."""
    raise AssertionError("an own-run message, and no intake that makes their run callbacks")


class TrackedReport:
    """The report callback of one message that needs more than a count.

    Used for ``send_and_wait`` (``waiter`` is the Event its caller waits on), for
    messages with headers (kept because librdkafka's reports do not carry them), and for
    messages with a ``ticket`` (``-1``: none): opaque here, handed to the intake's
    ``after_reports`` hook through :attr:`DeliveryReports.tickets` once delivered, and
    with the failure otherwise.

    Attributes:
        failure: The converted failure, once it came.
        metadata: Where it was written, once confirmed (only when there is a waiter).
        abandoned: The waiter gave up before the outcome came: a failure is routed like
            a fire-and-forget one. Set and read on the Trio thread only.
    """

    __slots__ = ("abandoned", "failure", "headers", "metadata", "reports", "ticket", "waiter")

    def __init__(
        self,
        headers: list[tuple[str, bytes | None]] | None,
        waiter: trio.Event | None,
        ticket: int = -1,
    ) -> None:
        self.headers = headers
        self.waiter = waiter
        self.ticket = ticket
        self.abandoned = False
        self.reports: DeliveryReports | None = None
        self.failure: DeliveryError | None = None
        self.metadata: RecordMetadata | None = None

    def __call__(self, err: object, msg: Any) -> None:
        reports = self.reports
        assert reports is not None
        if err is None:
            if self.waiter is not None:
                self.metadata = metadata_from_report(msg)
            if self.ticket >= 0:
                reports.tickets.append(self.ticket)
            reports.delivered += 1
            if self.waiter is not None:
                reports.completed.append(self)
        else:
            self.settle_failed(failure_from_report(err, msg, self.headers), reports)

    def settle_failed(self, error: DeliveryError, reports: DeliveryReports) -> None:
        self.failure = error
        reports.failures.append(Failure(error, self))
        if self.waiter is not None:
            reports.completed.append(self)

    @property
    def has_waiter(self) -> bool:
        """A ``send_and_wait`` caller still owns this message's outcome."""
        return self.waiter is not None and not self.abandoned


class KafkaClient:
    """A thin wrapper of ``confluent_kafka.Producer``.

    Created first and closed last by ``open_producer``. ``produce`` runs on the Trio
    thread; ``poll`` runs in the delivery task's worker thread; the callbacks it serves
    (delivery reports, ``error_cb``, logs) only append to plain lists.
    """

    def __init__(
        self,
        props: Mapping[str, Any],
        *,
        oauth_token: OAuthTokenProvider | None = None,
        first_token: OAuthToken | None = None,
        producer_class: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        """``producer_class`` stands in for ``confluent_kafka.Producer`` (for unit tests of
        the routing against a fake; see tests/unit/test_client.py)."""
        #: Errors reported by librdkafka's error_cb, appended on the poll thread.
        self.errors: list[KafkaErrorInfo] = []
        #: The latest statistics JSON (stats_cb, poll thread); see take_statistics.
        self._statistics: str | None = None
        conf = dict(props)
        conf["error_cb"] = self._on_error
        conf["logger"] = LibrdkafkaLog(librdkafka_logger)
        conf["stats_cb"] = self._on_statistics
        #: librdkafka's oauth_cb, when an OAuth token provider was given.
        self.oauth: OAuthCallback | None = None
        if oauth_token is not None:
            assert first_token is not None
            self.oauth = OAuthCallback(oauth_token, first_token, self._on_error)
            conf["oauth_cb"] = self.oauth
        try:
            self._producer = (producer_class or confluent_kafka.Producer)(conf)
        except (KafkaException, TypeError, ValueError) as exc:
            raise ConfigError(
                f"librdkafka rejected the configuration: {_scrub(exc, props)}"
            ) from None
        self._closed = False
        #: A transaction was left open at the exit (see leave_transaction_open).
        self._transaction_left_open = False
        self._transactional = bool(props.get("transactional.id"))
        #: librdkafka reports failures only (``delivery.report.only.error``).
        self.errors_only = props.get("delivery.report.only.error") is True

    def outstanding(self) -> int:
        """Messages librdkafka holds: queued, in flight, or with a report not yet served
        (and its queued logs and statistics). Thread-safe; not after :meth:`close`."""
        return len(self._producer)

    def poll(self, timeout: float, gather: float = 0.0) -> int:
        """Serve delivery reports, errors and logs (blocks up to ``timeout``; in a thread).

        ``gather``: once something was served while librdkafka still holds messages,
        sleep that long and serve what came meanwhile too, so that one return carries
        many reports. librdkafka serves them per partition batch: with many partitions
        they come in many small events, and each return is a round trip to the Trio
        thread (and a contended GIL while it runs). Never more than one such sleep,
        and none when nothing was served (no busy loop) or nothing more is expected.

        Returns how many events were served, or -1 when librdkafka raised (it does after
        a fatal error of a transactional producer): the error is recorded like one from
        ``error_cb``, never raised into the delivery task.
        """
        producer = self._producer
        try:
            served: int = producer.poll(timeout)
            if served > 0 and gather > 0 and len(producer):
                time.sleep(gather)
                served += producer.poll(0)
        except KafkaException as exc:
            self.errors.append(error_info(exc))
            return -1
        return served

    def _on_error(self, err: object) -> None:
        # Runs on the poll thread: record only, never touch Trio.
        self.errors.append(error_info(err))

    def _on_statistics(self, text: str) -> None:
        # Runs on the poll thread: keep the latest only, never touch Trio.
        self._statistics = text

    def take_statistics(self) -> str | None:
        """The statistics JSON librdkafka emitted since the last call, if any (Trio thread)."""
        text, self._statistics = self._statistics, None
        return text

    def produce(
        self,
        items: list[Pending],
        start: int,
        reports: DeliveryReports,
        run_reports: Callable[[DeliveryReports], RunReports] = no_run_reports,
    ) -> int:
        """Hand ``items[start:]`` to librdkafka; return the index of the first one not taken.

        Each message's route (:class:`~trio_producer._batch.Route`, decided when it was
        accepted) says how: runs of shared and tracked messages for one topic go through
        librdkafka's batch call in one go, runs of own-run ones likewise with a callback of
        their own (``run_reports(reports)`` makes it: the intake's, passed down by the
        delivery task); a single-route message (headers, a partition or a timestamp) goes
        through ``produce()``. Nothing else about a message decides its route. A full
        librdkafka queue stops the loop there: nothing is dropped, the caller waits for
        delivery reports and calls again from the returned index (order is kept). A message
        librdkafka refuses at once (too large, unknown partition, ...) is failed like a
        failed delivery and the loop goes on.
        """
        produce_batch = self._producer.produce_batch
        n = len(items)
        i = start
        while i < n:
            first = items[i]
            route = first.get("route", SHARED)
            if route is SINGLE:
                if not self._produce_one(first, reports):
                    return i
                i += 1
                continue
            if route is TRACKED:
                cast("TrackedReport", first["callback"]).reports = reports
            topic = first["topic"]
            own_run = route is OWN_RUN
            # The run: the next messages for this topic that the same batch call takes
            # (shared and tracked ones together; own-run ones in runs of their own).
            j = i + 1
            while j < n:
                item = items[j]
                if item["topic"] != topic:
                    break
                if "route" in item:
                    route = item["route"]
                    if route is SINGLE or (route is OWN_RUN) is not own_run:
                        break
                    if route is TRACKED:
                        cast("TrackedReport", item["callback"]).reports = reports
                elif own_run:
                    break
                j += 1
            run = items if i == 0 and j == n else items[i:j]
            own: RunReports | None = run_reports(reports) if own_run else None
            group = reports if own is None else own
            try:
                queued = produce_batch(topic, cast("list[dict[str, Any]]", run), on_delivery=group)
            except (KafkaException, TypeError, ValueError) as exc:
                # The whole call was refused (e.g. a bad topic for librdkafka): fail the
                # run message by message so that each is handed back.
                info = _call_error(exc)
                for item in run:
                    reports.fail_now(item, info)
                i = j
                continue
            if queued == len(run):
                if own is not None:
                    own.items = run
                    reports.runs.append(own)
                i = j
                continue
            queued_items: list[Pending] = []
            stop = len(run)
            for k, item in enumerate(run):
                err = cast("dict[str, Any]", item).pop("_error", None)
                if err is None:
                    if own is not None:
                        queued_items.append(item)
                    continue
                if err.code() == _QUEUE_FULL:
                    # librdkafka queued nothing from here on: try the rest again later.
                    for later in run[k + 1 :]:
                        cast("dict[str, Any]", later).pop("_error", None)
                    stop = k
                    break
                reports.fail_now(item, error_info(err))
            if queued_items:
                assert own is not None
                own.items = queued_items
                reports.runs.append(own)
            if stop < len(run):
                return i + stop
            i = j
        return i

    def _produce_one(self, item: Pending, reports: DeliveryReports) -> bool:
        """``produce()`` one message; False when librdkafka's queue is full."""
        callback = _own_callback(item)
        if isinstance(callback, TrackedReport):
            callback.reports = reports
        try:
            self._producer.produce(
                item["topic"],
                item["value"],
                item.get("key"),
                item.get("partition", -1),
                callback if callback is not None else reports,
                timestamp=item.get("timestamp", 0),
                headers=cast("Any", item.get("headers")),
            )
        except BufferError:
            return False
        except (KafkaException, TypeError, ValueError) as exc:
            reports.fail_now(item, _call_error(exc))
        return True

    # ---- transactions (blocking calls: run them in a thread, bounded by ``timeout``) ----

    @property
    def transactional(self) -> bool:
        return self._transactional

    def _txn(self, operation: str, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except KafkaException as exc:
            err = exc.args[0]
            abortable = bool(getattr(err, "txn_requires_abort", lambda: False)())
            raise TransactionError(operation, error_info(err), abortable=abortable) from None

    def init_transactions(self, timeout: float) -> None:
        self._txn("init_transactions", self._producer.init_transactions, timeout)

    def begin_transaction(self) -> None:
        self._txn("begin_transaction", self._producer.begin_transaction)

    def commit_transaction(self, timeout: float) -> None:
        self._txn("commit_transaction", self._producer.commit_transaction, timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._txn("abort_transaction", self._producer.abort_transaction, timeout)

    def send_offsets_to_transaction(
        self, offsets: list[Any], group_metadata: object, timeout: float
    ) -> None:
        self._txn(
            "send_offsets_to_transaction",
            self._producer.send_offsets_to_transaction,
            offsets,
            group_metadata,
            timeout,
        )

    def purge(self, *, in_flight: bool = True) -> None:
        """Purge queued (and in-flight) messages; their reports come with _PURGE_* errors.

        Thread-safe: called on the Trio thread while the poll thread may be polling.
        """
        self._producer.purge(True, in_flight, False)

    def serve_remaining_reports(self, deadline: float) -> None:
        """After a purge: serve delivery reports until none are outstanding or time is up.

        Blocks for at most until ``deadline`` (monotonic); purged reports are normally
        ready at once, so this returns after one non-blocking poll.
        """
        try:
            self._producer.poll(0)
            while len(self._producer) and time.monotonic() < deadline:
                self._producer.poll(0.01)
        except KafkaException as exc:
            # librdkafka raises here after a fatal error of a transactional producer:
            # record it (like one from error_cb); what was not served is counted unknown.
            self.errors.append(error_info(exc))

    def leave_transaction_open(self) -> None:
        """A transaction could be neither committed nor aborted before the exit: close
        without confluent's ``close()``, which would wait for its abort with no bound
        (the next producer with the same transactional.id fences and aborts it)."""
        self._transaction_left_open = True

    def close(self) -> None:
        """Release librdkafka (nothing is left to flush when this is called)."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._producer, "close", None)
        if self._transaction_left_open:
            close = None  # (dropping the handle destroys it without that wait)
        if close is not None:
            # confluent's close() aborts an open transaction and says so with a
            # RuntimeWarning when that fails (e.g. after being fenced): log, don't raise.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    close()
                except KafkaException as exc:
                    # (e.g. the abort of an open transaction failing after a fatal
                    # error): logged; the producer's own outcome is what leaves the block
                    logger.warning("closing the Kafka client: %s", error_info(exc))
            for warning in caught:
                logger.warning("closing the Kafka client: %s", warning.message)
        del self._producer


def _own_callback(item: Pending) -> ReportCallback | None:
    """The message's own report callback; an own-run message that has none (its run's
    shared callback would have served it) gets a tracker of its ticket."""
    callback = item.get("callback")
    if callback is None and item.get("route") is OWN_RUN:
        return TrackedReport(None, None, item["ticket"])
    return callback


def _call_error(exc: BaseException) -> KafkaErrorInfo:
    if isinstance(exc, KafkaException):
        return error_info(exc)
    return KafkaErrorInfo(code=-1, name="_INVALID_ARG", reason=str(exc))


def _scrub(exc: BaseException, props: Mapping[str, Any]) -> str:
    text = str(exc.args[0].str() if isinstance(exc, KafkaException) else exc)
    for name, value in props.items():
        if is_secret(name) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text
