"""OpenTelemetry metrics (SDK in-memory reader) and W3C trace-context propagation."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from trio_producer import DeliveryError, open_producer
from trio_producer._lifecycle import _sink
from trio_producer.otel import Telemetry, inject_trace_context
from trio_producer.testing import consume_all, create_topics

pytestmark = pytest.mark.broker


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "trio_producer"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def by_topic(data_points: list[Any], **extra: str) -> dict[str, int]:
    return {
        p.attributes["messaging.destination.name"]: p.value
        for p in data_points
        if all(p.attributes.get(k) == v for k, v in extra.items())
    }


async def test_counts_per_topic_batches_and_latency(kafka_bootstrap: str) -> None:
    create_topics(kafka_bootstrap, ["otel-a", "otel-b"])
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]), attributes={"app": "test"}
    )
    failed: list[DeliveryError] = []
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        telemetry=telemetry,
        on_delivery_error=failed.append,
        librdkafka={"message.max.bytes": 10_000},
    ) as producer:
        await producer.send_many("otel-a", [b"a%d" % i for i in range(300)])
        await producer.send_many("otel-b", [b"b%d" % i for i in range(200)])
        await producer.send("otel-b", b"x" * 20_000)  # refused by librdkafka: too large
        await producer.flush()
        during = points(reader)
    assert [f.error.name for f in failed] == ["MSG_SIZE_TOO_LARGE"]
    after = points(reader)
    for name in ("trio_producer.messages.queued", "trio_producer.messages.in_flight"):
        assert [p.value for p in during[name]] == [0]  # flushed, nothing pending
        assert during[name][0].attributes == {"messaging.system": "kafka", "app": "test"}
    assert by_topic(after["trio_producer.messages.sent"]) == {"otel-a": 300, "otel-b": 201}
    assert by_topic(after["trio_producer.messages.delivered"]) == {"otel-a": 300, "otel-b": 200}
    [failure] = after["trio_producer.messages.failed"]
    assert dict(failure.attributes) == {
        "messaging.system": "kafka",
        "app": "test",
        "messaging.destination.name": "otel-b",
        "error.type": "MSG_SIZE_TOO_LARGE",
    }
    assert failure.value == 1
    semconv = after["messaging.client.sent.messages"]
    assert by_topic([p for p in semconv if "error.type" not in p.attributes]) == {
        "otel-a": 300,
        "otel-b": 200,
    }
    assert by_topic(semconv, **{"error.type": "MSG_SIZE_TOO_LARGE"}) == {"otel-b": 1}
    [batches] = after["trio_producer.batch.messages"]
    assert batches.sum == 501
    assert 1 <= batches.count <= 501
    [duration] = after["messaging.client.operation.duration"]
    assert duration.count == batches.count
    assert 0 <= duration.sum < 30
    assert duration.attributes["messaging.operation.name"] == "send"


async def test_one_telemetry_for_two_producers(kafka_bootstrap: str, kafka_topic: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    async with open_producer(bootstrap_servers=kafka_bootstrap, telemetry=telemetry) as one:
        async with open_producer(bootstrap_servers=kafka_bootstrap, telemetry=telemetry) as two:
            await one.send(kafka_topic, b"1")
            await two.send(kafka_topic, b"2")
    assert by_topic(points(reader)["trio_producer.messages.delivered"]) == {kafka_topic: 2}


async def test_without_telemetry_the_worker_sink_is_the_tracker(kafka_bootstrap: str) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        tracker = producer._tracker
        assert tracker.observer is None
        assert _sink(tracker, None) is tracker


async def test_telemetry_without_an_sdk_is_a_no_op(kafka_bootstrap: str, kafka_topic: str) -> None:
    async with open_producer(bootstrap_servers=kafka_bootstrap, telemetry=Telemetry()) as p:
        await p.send_and_wait(kafka_topic, b"x")


def test_inject_trace_context() -> None:
    assert inject_trace_context({"k": b"v"}) == {"k": b"v"}  # no active span
    assert inject_trace_context(None) is None
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        headers = inject_trace_context({"k": b"v"})
        pairs = inject_trace_context([("k", b"v"), ("traceparent", b"mine")])
    context = span.get_span_context()
    assert headers is not None
    assert next(iter(headers)) == ("k", b"v")
    traceparent = dict(headers)["traceparent"]  # type: ignore[arg-type]
    assert traceparent.startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-".encode())
    assert pairs == [("k", b"v"), ("traceparent", b"mine")]  # the application's own wins


async def test_trace_context_reaches_the_topic(kafka_bootstrap: str, kafka_topic: str) -> None:
    tracer = TracerProvider().get_tracer("test")
    async with open_producer(bootstrap_servers=kafka_bootstrap) as producer:
        with tracer.start_as_current_span("publish") as span:
            await producer.send(kafka_topic, b"traced", headers=inject_trace_context())
    records = await trio.to_thread.run_sync(
        partial(consume_all, kafka_bootstrap, kafka_topic, expected=1)
    )
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert records[0].headers is not None
    header = dict(records[0].headers)["traceparent"]
    assert header is not None
    assert header.decode().split("-")[1] == trace_id
