"""The fake cluster of trio_producer.testing (testing/_backend.py): librdkafka's contract for
the calls KafkaClient makes, on its own and under the real client."""

from __future__ import annotations

import threading
import time
import zlib
from typing import Any

import pytest
import trio
from confluent_kafka import KafkaError, KafkaException

from trio_producer import ConfigError, KafkaErrorInfo, Message, RecordMetadata
from trio_producer._args import make_item
from trio_producer._client import DeliveryReports, KafkaClient, TrackedReport, error_info
from trio_producer.testing import ConsumedRecord
from trio_producer.testing._backend import FakeConfluentProducer, FakeMessage

Report = tuple[object, FakeMessage]


class Reports:
    """A report callback that keeps what it is served, in order."""

    def __init__(self) -> None:
        self.served: list[Report] = []

    def __call__(self, err: object, msg: FakeMessage) -> None:
        self.served.append((err, msg))


def fake(**options: Any) -> tuple[FakeConfluentProducer, list[object]]:
    errors: list[object] = []
    conf = {"bootstrap.servers": "fake:9092", "error_cb": errors.append}
    conf.update(options.pop("conf", {}))
    return FakeConfluentProducer(conf, **options), errors


def seen(report: Report) -> tuple[str | None, str, int, int, bytes | None, bytes | None]:
    err, msg = report
    name = None if err is None else error_info(err).name
    return (name, msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())


def test_written_messages_get_partitions_and_offsets_and_their_reports() -> None:
    backend, _ = fake(partitions=3)
    reports = Reports()
    backend.produce("a", b"1", b"k1", -1, reports)
    backend.produce("a", b"2", None, -1, reports)
    backend.produce("a", b"3", None, -1, reports)
    backend.produce("a", b"4", "k1", -1, reports, timestamp=1_700_000_000_000)
    backend.produce("b", b"5", None, 2, reports, headers=[("h", "v")])
    assert len(backend) == 5  # reports not served yet
    assert reports.served == []
    assert backend.poll(0) == 5
    assert len(backend) == 0
    assert zlib.crc32(b"k1") % 3 == 1
    assert [seen(r) for r in reports.served] == [
        (None, "a", 1, 0, b"k1", b"1"),
        (None, "a", 0, 0, None, b"2"),  # unkeyed: in turn
        (None, "a", 1, 1, None, b"3"),
        (None, "a", 1, 2, b"k1", b"4"),  # offsets count per topic and partition
        (None, "b", 2, 0, None, b"5"),
    ]
    # confluent's shapes: no timestamp is "not available", reports carry no headers
    assert [r[1].timestamp() for r in reports.served] == [
        (0, 0),
        (0, 0),
        (0, 0),
        (1, 1_700_000_000_000),
        (0, 0),
    ]
    assert reports.served[4][1].headers() is None
    assert backend.sent == [
        Message("a", b"1", key=b"k1"),
        Message("a", b"2"),
        Message("a", b"3"),
        Message("a", b"4", key=b"k1", timestamp=1_700_000_000_000),
        Message("b", b"5", headers=[("h", b"v")], partition=2),
    ]
    assert backend.delivered[4] == ConsumedRecord("b", 2, 0, None, b"5", [("h", b"v")], None)
    assert backend.poll(0) == 0


def test_the_batch_call_takes_per_message_callbacks_and_marks_what_does_not_fit() -> None:
    backend, _ = fake(conf={"queue.buffering.max.messages": 3})
    shared, own = Reports(), Reports()
    messages: list[dict[str, Any]] = [
        {"value": b"0"},
        {"value": b"1", "key": b"k", "callback": own},
        {"value": b"2"},
        {"value": b"3"},
        {"value": b"4"},
    ]
    assert backend.produce_batch("t", messages, on_delivery=shared) == 3
    assert ["_error" in m for m in messages] == [False, False, False, True, True]
    assert [m["_error"].code() for m in messages[3:]] == [KafkaError._QUEUE_FULL] * 2
    with pytest.raises(BufferError):
        backend.produce("t", b"5", None, -1, shared)
    assert backend.poll(0) == 3
    assert [seen(r) for r in shared.served] == [
        (None, "t", 0, 0, None, b"0"),
        (None, "t", 0, 2, None, b"2"),
    ]
    assert [seen(r) for r in own.served] == [(None, "t", 0, 1, b"k", b"1")]
    assert [m.value for m in backend.sent] == [b"0", b"1", b"2"]  # not the refused ones
    with pytest.raises(TypeError, match=r"^messages must be a list, not tuple$"):
        backend.produce_batch("t", ({"value": b"x"},))  # type: ignore[arg-type]


def test_failures_take_no_offset_and_report_the_partition_the_application_gave() -> None:
    denied = KafkaErrorInfo(code=29, name="TOPIC_AUTHORIZATION_FAILED", reason="denied")

    def rule(message: Message) -> KafkaErrorInfo | str | None:
        return {b"big": "MSG_SIZE_TOO_LARGE", b"secret": denied}.get(message.value or b"")

    backend, _ = fake(partitions=2, fail=rule)
    reports = Reports()
    for value, partition in ((b"big", -1), (b"secret", 1), (b"ok", 1), (b"far", 2)):
        backend.produce("t", value, None, partition, reports)
    backend.poll(0)
    assert [seen(r) for r in reports.served] == [
        ("MSG_SIZE_TOO_LARGE", "t", -1, -1001, None, b"big"),
        ("TOPIC_AUTHORIZATION_FAILED", "t", 1, -1001, None, b"secret"),
        (None, "t", 1, 0, None, b"ok"),
        ("_UNKNOWN_PARTITION", "t", 2, -1001, None, b"far"),
    ]
    assert reports.served[1][0] is denied  # a KafkaErrorInfo goes through as it is
    assert str(error_info(reports.served[3][0])) == "_UNKNOWN_PARTITION: Local: Unknown partition"
    assert [r.value for r in backend.delivered] == [b"ok"]


def test_an_unreachable_cluster_queues_says_so_and_purges_or_delivers_in_order() -> None:
    backend, errors = fake(unreachable=True)
    told: list[int] = []
    backend.on_work = lambda: told.append(backend.queued)
    reports = Reports()
    backend.produce("t", b"1", None, -1, reports)
    backend.produce_batch("t", [{"value": b"2"}, {"value": b"3"}], on_delivery=reports)
    assert told == [1, 3]
    assert (backend.queued, len(backend)) == (3, 5)  # and the two errors
    assert backend.poll(0) == 2  # the errors; the messages wait
    assert [str(error_info(e)) for e in errors] == [
        "_TRANSPORT: fake:9092/bootstrap: Connect to fake:9092 failed: the fake cluster is "
        "unreachable (FakeProducer.unreachable)",
        "_ALL_BROKERS_DOWN: 1/1 brokers are down",
    ]
    assert reports.served == []
    backend.purge(in_queue=False)  # nothing written is in flight
    assert backend.queued == 3
    backend.unreachable = False
    assert told == [1, 3, 0]
    backend.unreachable = True
    backend.produce("t", b"4", None, -1, reports)
    backend.purge()
    assert backend.poll(0) == 6  # three delivered, two errors again, one purged
    assert [seen(r) for r in reports.served] == [
        (None, "t", 0, 0, None, b"1"),
        (None, "t", 0, 1, None, b"2"),
        (None, "t", 0, 2, None, b"3"),
        ("_PURGE_QUEUE", "t", -1, -1001, None, b"4"),
    ]
    assert len(backend) == 0
    assert (backend.reports_made, backend.reports_served) == (4, 4)
    assert (backend.errors_made, backend.errors_served) == (4, 4)


def test_poll_waits_for_what_another_thread_makes_ready() -> None:
    backend, _ = fake(unreachable=True)
    reports = Reports()
    backend.produce("t", b"1", None, -1, reports)
    backend.poll(0)  # (the errors)
    start = time.monotonic()
    assert backend.poll(0.05) == 0
    assert time.monotonic() - start >= 0.05
    timer = threading.Timer(0.05, setattr, (backend, "unreachable", False))
    timer.start()
    try:
        assert backend.poll(10) == 1
    finally:
        timer.join()
    assert time.monotonic() - start < 5
    assert backend.flush(0) == 0
    backend.unreachable = True
    backend.produce("t", b"2", None, -1, reports)
    assert backend.flush(0.05) == 1  # still queued
    backend.unreachable = False
    assert backend.flush() == 0
    assert [seen(r)[5] for r in reports.served] == [b"1", b"2"]


def test_a_fail_rule_that_raises_or_answers_nonsense_fails_that_message() -> None:
    def rule(message: Message) -> Any:
        if message.value == b"raise":
            raise KeyError("oops")
        return {b"name": "NO_SUCH_ERROR", b"type": 42}.get(message.value or b"")

    backend, _ = fake(fail=rule)
    reports = Reports()
    for value in (b"raise", b"name", b"type", b"fine"):
        backend.produce("t", value, None, -1, reports)
    backend.poll(0)
    assert [str(error_info(err)) if err else None for err, _ in reports.served] == [
        "_INVALID_ARG: fail= raised KeyError('oops')",
        "_INVALID_ARG: fail= returned 'NO_SUCH_ERROR' is not a librdkafka error name (e.g. "
        "'MSG_SIZE_TOO_LARGE', '_MSG_TIMED_OUT', 'NOT_ENOUGH_REPLICAS'): see "
        "confluent_kafka.KafkaError",
        "_INVALID_ARG: fail= must return None, a librdkafka error name or a KafkaErrorInfo, not 42",
        None,
    ]


def test_no_transactions_and_nothing_after_close() -> None:
    with pytest.raises(ValueError, match=r"^the fake cluster runs no transactions"):
        fake(conf={"transactional.id": "x"})
    backend, _ = fake()
    calls = (
        lambda: backend.init_transactions(1),
        backend.begin_transaction,
        lambda: backend.commit_transaction(1),
        lambda: backend.abort_transaction(1),
        lambda: backend.send_offsets_to_transaction([], b"g", 1),
    )
    for call in calls:
        with pytest.raises(KafkaException) as info:
            call()
        assert info.value.args[0].name() == "_NOT_CONFIGURED"
    backend.close()
    with pytest.raises(RuntimeError, match=r"^Producer has been closed$"):
        backend.produce("t", b"1")


# -- under the real client -----------------------------------------------------------


def client(**options: Any) -> tuple[KafkaClient, FakeConfluentProducer]:
    made: list[FakeConfluentProducer] = []

    def connect(conf: dict[str, Any]) -> FakeConfluentProducer:
        made.append(FakeConfluentProducer(conf, **options))
        return made[0]

    kafka = KafkaClient(
        {"bootstrap.servers": "fake:9092", "queue.buffering.max.messages": 2},
        producer_class=connect,
    )
    return kafka, made[0]


def test_the_real_client_produces_polls_and_purges_through_it() -> None:
    kafka, backend = client()
    reports = DeliveryReports()
    waiter = trio.Event()
    plain = [make_item("t", b"%d" % i, None, None, None, None, None)[0] for i in range(2)]
    tracked, _ = make_item("t", b"w", b"k", None, None, None, waiter)
    items = [*plain, tracked]
    assert kafka.produce(items, 0, reports) == 2  # librdkafka's queue holds two
    assert kafka.outstanding() == 2
    assert kafka.poll(0) == 2
    assert (reports.delivered, reports.failures) == (2, [])
    assert kafka.produce(items, 2, reports) == 3
    kafka.poll(0)
    callback = tracked["callback"]
    assert isinstance(callback, TrackedReport)
    assert callback.metadata == RecordMetadata("t", 0, 2, None)
    assert reports.completed == [callback]
    backend.unreachable = True
    single, _ = make_item("t", b"s", None, {"h": b"v"}, None, None, None)
    assert kafka.produce([single], 0, reports) == 1
    assert kafka.poll(0) == 2  # the errors
    assert [e.name for e in kafka.errors] == ["_TRANSPORT", "_ALL_BROKERS_DOWN"]
    kafka.purge()
    kafka.serve_remaining_reports(time.monotonic() + 1)
    [failure] = reports.failures
    assert failure.error.error.name == "_PURGE_QUEUE"
    assert failure.error.message == Message("t", b"s", headers=[("h", b"v")])
    kafka.close()


def test_the_real_client_refuses_a_transactional_id() -> None:
    with pytest.raises(ConfigError, match=r"runs no transactions"):
        KafkaClient(
            {"bootstrap.servers": "fake:9092", "transactional.id": "x"},
            producer_class=FakeConfluentProducer,
        )
