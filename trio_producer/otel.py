"""OpenTelemetry metrics and trace-context propagation (``pip install 'trio-producer[otel]'``).

Depends on ``opentelemetry-api`` only: until the application configures an SDK
(a ``MeterProvider``), every instrument is a no-op. Pass a :class:`Telemetry` to
:func:`~trio_producer.open_producer`::

    from trio_producer.otel import Telemetry

    telemetry = Telemetry()  # the global MeterProvider; one object for all producers
    async with open_producer(config, telemetry=telemetry) as producer:
        ...

Instruments (``messaging.*`` names and attributes follow the OpenTelemetry messaging
semantic conventions; every measurement has ``messaging.system="kafka"``):

=========================================  ==============  ===============================
name                                       kind            attributes
=========================================  ==============  ===============================
``trio_producer.messages.sent``            Counter         ``messaging.destination.name``
``trio_producer.messages.delivered``       Counter         ``messaging.destination.name``
``trio_producer.messages.failed``          Counter         ``messaging.destination.name``,
                                                           ``error.type``
``messaging.client.sent.messages``         Counter         as delivered; failed ones with
                                                           ``error.type``
``trio_producer.messages.queued``          UpDownCounter   (observable)
``trio_producer.messages.in_flight``       UpDownCounter   (observable)
``trio_producer.batch.messages``           Histogram       messages per hand-over
``messaging.client.operation.duration``    Histogram (s)   ``messaging.operation.name``
=========================================  ==============  ===============================

*sent* counts messages handed to librdkafka, *delivered* and *failed* their outcomes.
Nothing is counted per :meth:`~trio_producer.Producer.send`: the worker counts each batch
it hands to librdkafka (one pass over the batch's topics), the delivery task counts each
group of delivery reports, and *queued* / *in flight* are read when the metrics are
collected (sampled by the delivery task at most a second earlier). With ``telemetry=None``
none of this code runs.

Delivery reports carry no per-message bookkeeping, so *delivered* is attributed to topics
in the order the batches were handed over, and the operation duration is measured per
hand-over: from the hand-over until as many reports came back as messages had been
handed over by then. Both are exact whenever nothing is in flight; while messages are in
flight the attribution can lag by up to one batch.

Trace context: :func:`inject_trace_context` adds W3C ``traceparent``/``tracestate``
headers for the active span (opt-in, per message).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, propagate

from . import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.util.types import AttributeValue

    from ._batch import Pending
    from ._delivery import DeliveryTracker
    from ._message import Headers
    from ._producer import Producer
    from ._worker import Sink

__all__ = ["Telemetry", "inject_trace_context"]

SYSTEM = {"messaging.system": "kafka"}
_topic_of = itemgetter("topic")


class Telemetry:
    """Metrics of the producers opened with it (``open_producer(telemetry=...)``).

    One object can serve any number of producers, also at the same time: counters add
    up, and the observable up-down counters report the sum over the open producers.

    Args:
        meter_provider: Where the instruments come from; the global one (set by the
            application's SDK setup) when ``None``.
        attributes: Added to every measurement (e.g. ``{"service.instance": "a"}``).
    """

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self.attributes: dict[str, AttributeValue] = {**SYSTEM, **(attributes or {})}
        self._meter_provider = meter_provider
        self._open: list[_ProducerInstruments] = []
        self._made = False

    def _make(self) -> None:
        meter = metrics.get_meter("trio_producer", __version__, meter_provider=self._meter_provider)
        self.sent = meter.create_counter(
            "trio_producer.messages.sent", "{message}", "Messages handed to librdkafka"
        )
        self.delivered = meter.create_counter(
            "trio_producer.messages.delivered", "{message}", "Messages the broker confirmed"
        )
        self.failed = meter.create_counter(
            "trio_producer.messages.failed",
            "{message}",
            "Messages whose delivery failed (error.type: the Kafka error name)",
        )
        self.sent_messages = meter.create_counter(
            "messaging.client.sent.messages",
            "{message}",
            "Number of messages producer attempted to send to the broker",
        )
        self.batch_size = meter.create_histogram(
            "trio_producer.batch.messages",
            "{message}",
            "Messages per hand-over to librdkafka",
        )
        self.duration = meter.create_histogram(
            "messaging.client.operation.duration",
            "s",
            "From a hand-over to librdkafka until its delivery reports came back",
        )
        meter.create_observable_up_down_counter(
            "trio_producer.messages.queued",
            [self._observe_queued],
            "{message}",
            "Accepted messages not yet handed to librdkafka",
        )
        meter.create_observable_up_down_counter(
            "trio_producer.messages.in_flight",
            [self._observe_in_flight],
            "{message}",
            "Messages handed to librdkafka whose delivery report has not come",
        )
        self._made = True

    def attach(self, producer: Producer) -> _ProducerInstruments:
        """Start observing one producer (``open_producer`` calls this)."""
        if not self._made:
            self._make()
        instruments = _ProducerInstruments(self, producer)
        self._open.append(instruments)
        return instruments

    def _detach(self, instruments: _ProducerInstruments) -> None:
        if instruments in self._open:
            self._open.remove(instruments)

    # Called by the SDK's reader, maybe in its own thread: reads plain ints only.
    def _observe_queued(self, _options: CallbackOptions) -> Iterable[Observation]:
        total = sum(p.queued for p in list(self._open))
        return [metrics.Observation(total, self.attributes)]

    def _observe_in_flight(self, _options: CallbackOptions) -> Iterable[Observation]:
        total = sum(p.in_flight for p in list(self._open))
        return [metrics.Observation(total, self.attributes)]


class _ProducerInstruments:
    """What one open producer reports (Trio thread only, except the sampled ints)."""

    def __init__(self, telemetry: Telemetry, producer: Producer) -> None:
        self.telemetry = telemetry
        self.producer = producer
        self.queued = 0
        self.in_flight = 0
        self._handed = 0
        #: Per hand-over: (messages handed over so far, per-topic counts, when).
        self._handovers: deque[tuple[int, Counter[str], float]] = deque()
        self._settled: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self._topic_attributes: dict[str, dict[str, AttributeValue]] = {}
        self._send_attributes = {
            **telemetry.attributes,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        }

    def _attributes(self, topic: str) -> dict[str, AttributeValue]:
        attributes = self._topic_attributes.get(topic)
        if attributes is None:
            attributes = {**self.telemetry.attributes, "messaging.destination.name": topic}
            self._topic_attributes[topic] = attributes
        return attributes

    def wrap_sink(self, sink: Sink) -> Sink:
        return _CountingSink(sink, self)

    def handed_over(self, batch: list[Pending], start: int, end: int) -> None:
        """The worker handed ``batch[start:end]`` to librdkafka: one count per topic."""
        telemetry = self.telemetry
        counts = Counter(map(_topic_of, batch[start:end]))
        for topic, n in counts.items():
            telemetry.sent.add(n, self._attributes(topic))
        telemetry.batch_size.record(end - start, telemetry.attributes)
        self._handed += end - start
        self._handovers.append((self._handed, counts, time.monotonic()))

    def after_poll(self, tracker: DeliveryTracker) -> None:
        telemetry = self.telemetry
        # Failures since the last hand-over: process() has not routed them yet.
        new_failures: Counter[tuple[str, str]] = Counter()
        for epoch in tracker.epochs:
            for failure in epoch.failures[epoch.routed :]:
                error = failure.error
                new_failures[error.message.topic, error.error.name] += 1
        for (topic, name), n in new_failures.items():
            attributes = {**self._attributes(topic), "error.type": name}
            telemetry.failed.add(n, attributes)
            telemetry.sent_messages.add(n, attributes)
            self._failed[topic] += n
        delivered = tracker.delivered
        settled = delivered + tracker.failed
        handovers = self._handovers
        if handovers and handovers[0][0] <= settled:
            now = time.monotonic()
            touched: set[str] = set()
            while handovers and handovers[0][0] <= settled:
                _end, counts, at = handovers.popleft()
                self._settled.update(counts)
                touched.update(counts)
                telemetry.duration.record(now - at, self._send_attributes)
            for topic in touched:
                more = self._settled[topic] - self._failed[topic] - self._reported[topic]
                if more > 0:
                    self._reported[topic] += more
                    attributes = self._attributes(topic)
                    telemetry.delivered.add(more, attributes)
                    telemetry.sent_messages.add(more, attributes)
        stats = self.producer.statistics()
        self.queued = stats.queued
        self.in_flight = stats.in_flight

    def close(self) -> None:
        self.queued = self.in_flight = 0
        self.telemetry._detach(self)


class _CountingSink:
    """The worker's sink, counting each hand-over (never each message)."""

    def __init__(self, sink: Sink, instruments: _ProducerInstruments) -> None:
        self.sink = sink
        self.instruments = instruments

    def produce(self, batch: list[Pending], start: int) -> int:
        end = self.sink.produce(batch, start)
        if end > start:
            self.instruments.handed_over(batch, start, end)
        return end

    async def wait_for_space(self) -> None:
        await self.sink.wait_for_space()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


def inject_trace_context(headers: Headers | None = None) -> Headers | None:
    """``headers`` plus the W3C trace context of the active span, for one message.

    Uses the application's configured propagator (W3C ``traceparent``/``tracestate`` by
    default). Without an active span (or without an SDK) it returns ``headers``
    unchanged. Opt-in, per message::

        await producer.send("events", value, headers=inject_trace_context({"k": b"v"}))

    Args:
        headers: The message's own headers (a mapping or ``(name, value)`` pairs).

    Returns:
        The headers with the trace-context headers added, as ``(name, bytes)`` pairs,
        or ``headers`` itself when there is nothing to add.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return headers
    pairs: list[tuple[str, Any]]
    if headers is None:
        pairs = []
    elif isinstance(headers, Mapping):
        pairs = list(headers.items())
    elif isinstance(headers, Sequence):
        pairs = list(headers)
    else:
        raise TypeError(f"headers must be a mapping or (name, value) pairs, not {headers!r:.80}")
    names = {name for name, _ in pairs}
    pairs.extend((name, value.encode()) for name, value in carrier.items() if name not in names)
    return pairs
