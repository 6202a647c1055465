"""KafkaClient.produce's routing, against a fake confluent producer (no broker).

Each message's route is decided when it is accepted (``_args.make_item``, the spool) and
carried in its ``route`` key; ``produce`` only reads it. These tests pin which librdkafka
call each message goes through, in which run, with which report callback -- the way
httpcore tests its layers on a mock backend.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from confluent_kafka import KafkaError

from trio_producer._args import make_item
from trio_producer._batch import Pending, Route
from trio_producer._client import DeliveryReports, KafkaClient, TrackedReport
from trio_producer.spool._format import SpoolRecord
from trio_producer.spool._keeper import pending_from_record
from trio_producer.spool._reports import SpooledRun


class FakeConfluent:
    """Records the calls ``KafkaClient.produce`` makes; ``queue_room`` emulates a full
    librdkafka queue (the batch call then marks the rest ``_QUEUE_FULL``)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.calls: list[tuple[Any, ...]] = []
        self.queue_room = 10**9

    def produce_batch(
        self, topic: str, messages: list[dict[str, Any]], *, on_delivery: object
    ) -> int:
        taken = min(len(messages), self.queue_room)
        self.queue_room -= taken
        for message in messages[taken:]:
            message["_error"] = KafkaError(KafkaError._QUEUE_FULL)
        self.calls.append(("batch", topic, [m["value"] for m in messages[:taken]], on_delivery))
        return taken

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        on_delivery: object,
        *,
        timestamp: int,
        headers: object,
    ) -> None:
        if self.queue_room <= 0:
            raise BufferError("queue full")
        self.queue_room -= 1
        self.calls.append(("one", topic, value, key, partition, timestamp, headers, on_delivery))

    def __len__(self) -> int:
        return 0


def client() -> tuple[KafkaClient, FakeConfluent]:
    fakes: list[FakeConfluent] = []

    def factory(conf: dict[str, Any]) -> FakeConfluent:
        fakes.append(FakeConfluent(conf))
        return fakes[-1]

    return KafkaClient({"bootstrap.servers": "fake:9092"}, producer_class=factory), fakes[0]


def plain(value: bytes, topic: str = "t", key: bytes | None = None) -> Pending:
    item, _ = make_item(topic, value, key, None, None, None, None)
    return item


def test_make_item_decides_the_route_once() -> None:
    assert "route" not in plain(b"a")
    assert "route" not in plain(b"a", key=b"k")
    waiter = trio.Event()
    tracked, _ = make_item("t", b"a", b"k", None, None, None, waiter)
    assert tracked["route"] is Route.TRACKED
    for args in (({"h": b"1"}, None, None), (None, 3, None), (None, None, 1_700_000_000_000)):
        single, _ = make_item("t", b"a", None, *args, None)
        assert single["route"] is Route.SINGLE


def test_shared_and_tracked_messages_share_one_batch_call_per_topic_run() -> None:
    kafka, fake = client()
    reports = DeliveryReports()
    waiter = trio.Event()
    tracked, _ = make_item("t", b"w", None, None, None, None, waiter)
    items = [plain(b"0"), plain(b"1", key=b"k"), tracked, plain(b"2"), plain(b"3", topic="u")]
    assert kafka.produce(items, 0, reports) == 5
    assert [c[:3] for c in fake.calls] == [
        ("batch", "t", [b"0", b"1", b"w", b"2"]),
        ("batch", "u", [b"3"]),
    ]
    assert fake.calls[0][3] is reports
    # The tracked message keeps its own callback, told which group it reports to.
    callback = tracked["callback"]
    assert isinstance(callback, TrackedReport)
    assert callback.reports is reports


def test_a_field_added_to_a_message_does_not_move_it_off_the_batch_call() -> None:
    # The route is carried, not inferred from how many keys the message has: a new
    # field (a trace context, say) rides along like ``seq`` does.
    kafka, fake = client()
    items = [plain(b"0"), plain(b"1"), plain(b"2")]
    items[1]["trace"] = b"00-abc"  # type: ignore[typeddict-unknown-key]
    assert kafka.produce(items, 0, DeliveryReports()) == 3
    assert [c[:3] for c in fake.calls] == [("batch", "t", [b"0", b"1", b"2"])]


def test_single_route_messages_go_through_produce_in_order_and_split_the_runs() -> None:
    kafka, fake = client()
    reports = DeliveryReports()
    with_headers, _ = make_item("t", b"h", None, {"a": b"1"}, None, None, None)
    with_partition, _ = make_item("t", b"p", b"k", None, 2, None, None)
    items = [plain(b"0"), with_headers, plain(b"1"), with_partition, plain(b"2")]
    assert kafka.produce(items, 0, reports) == 5
    assert [c[0:3] for c in fake.calls] == [
        ("batch", "t", [b"0"]),
        ("one", "t", b"h"),
        ("batch", "t", [b"1"]),
        ("one", "t", b"p"),
        ("batch", "t", [b"2"]),
    ]
    one_h, one_p = fake.calls[1], fake.calls[3]
    assert one_h[6] == [("a", b"1")]
    assert isinstance(one_h[7], TrackedReport)  # headers are kept for the hand-back
    assert (one_p[3], one_p[4], one_p[7]) == (b"k", 2, reports)


def spooled(seq: int, value: bytes, **fields: Any) -> Pending:
    record = SpoolRecord(
        seq=seq,
        topic="t",
        value=value,
        key=fields.get("key"),
        headers=fields.get("headers"),
        partition=fields.get("partition", -1),
        timestamp=fields.get("timestamp", 0),
        id=b"id-%d" % seq,
    )
    return pending_from_record(record, None)


def test_spooled_messages_go_in_runs_of_their_own_with_a_run_callback() -> None:
    kafka, fake = client()
    reports = DeliveryReports()
    items = [
        plain(b"m0"),
        spooled(1, b"s1"),
        spooled(2, b"s2", key=b"k"),
        plain(b"m1"),
        spooled(3, b"s3", partition=0),
    ]
    assert [i.get("route") for i in items] == [
        None,
        Route.OWN_RUN,
        Route.OWN_RUN,
        None,
        Route.SINGLE,
    ]
    # (The spool's run callback, which the delivery task passes down.)
    assert kafka.produce(items, 0, reports, SpooledRun) == 5
    assert [c[:3] for c in fake.calls] == [
        ("batch", "t", [b"m0"]),
        ("batch", "t", [b"s1", b"s2"]),
        ("batch", "t", [b"m1"]),
        ("one", "t", b"s3"),
    ]
    run = fake.calls[1][3]
    assert isinstance(run, SpooledRun)
    assert reports.runs == [run]
    assert [item["ticket"] for item in run.items] == [1, 2]
    own = fake.calls[3][7]
    assert isinstance(own, TrackedReport)
    assert own.ticket == 3


def test_an_own_run_message_with_no_run_callback_to_make_is_a_bug() -> None:
    # Without a spool the delivery task passes no run_reports: no intake gave the route.
    kafka, fake = client()
    with pytest.raises(AssertionError, match="an own-run message, and no intake"):
        kafka.produce([plain(b"m0"), spooled(1, b"s1")], 0, DeliveryReports())
    assert [c[:3] for c in fake.calls] == [("batch", "t", [b"m0"])]


@pytest.mark.parametrize("room", [0, 1, 2, 3])
def test_a_full_queue_stops_at_the_first_message_not_taken(room: int) -> None:
    kafka, fake = client()
    fake.queue_room = room
    with_headers, _ = make_item("t", b"h", None, {"a": b"1"}, None, None, None)
    items = [plain(b"0"), plain(b"1"), with_headers, plain(b"2")]
    assert kafka.produce(items, 0, DeliveryReports()) == room
    assert "_error" not in items[room] if room < len(items) else True
    # Nothing is dropped: the rest goes out from the returned index, in order.
    fake.queue_room = 10**9
    assert kafka.produce(items, room, DeliveryReports()) == 4
    sent = [v for c in fake.calls for v in (c[2] if c[0] == "batch" else [c[2]])]
    assert sent == [b"0", b"1", b"h", b"2"]
